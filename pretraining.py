"""Pretrain a torchvision CNN to regress the persistent-homology label vector of its input images.

Data modes (chosen by the flags):
  -t DIR -pd PHDIR        images with raw diagrams written by PHdict.py, vectorised at load time
  -t DIR -pd PHDIR -pc    images with a consolidated label matrix (PHdict.py --label_type), nothing computed
  -t DIR                  images; persistent homology computed in the data loader
  (no -t)                 images generated on the fly (fresh every epoch; --cache_dir keeps and reuses them)
  -t DIR --label_type class   the class folders of DIR as labels, cross-entropy (the labelled control)

Other learning modes (-lm combined, simultaneous, alternating, finetuning, evaluation) are shared with
finetuning.py; see util/train/modes.py and -h.
"""

from util.cli import flags as cli
from util.cli.build import build_pretraining_sets  # noqa: F401  (part of this script's importable API)
from util.errors import run_cli

EXAMPLES = """examples:
  python pretraining.py -o weights --numof_classes=200 -ph pre -t random -pd PH_random -u resnet50
  python pretraining.py -u resnet18 -nc 200 -n 20000 -e 30 --img_size 128 --crop_size 112   # no dataset at all
  torchrun --nproc_per_node 4 pretraining.py -t random -pd PH_random -pc --label_type persistence_image -nc 200
  python pretraining.py -t data/CIFAR100/train --label_type class -u resnet50     # labelled control
  python pretraining.py -lm combined -t data/CIFAR100/train -nd 200 --epochs_pre 30 -e 90   # PH, then classes

Outputs go to a new dated folder under -o: args.json, log.jsonl (one line per epoch), checkpoint.pth (for
--resume) and {usenet}_epoch{E}.pth, a plain state_dict that torchvision.models.<usenet>(num_classes=D) loads.
"""


def get_args_parser(default_mode='pretraining'):
    return cli.get_args_parser(
        default_mode,
        epilog=EXAMPLES,
        description='Pretrain a CNN on persistent-homology labels (no real images or human labels needed).',
    )


def main(args):
    return cli.main(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
