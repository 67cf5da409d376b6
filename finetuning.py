"""Fine-tune a (pretrained) torchvision CNN on a labelled image folder, or evaluate fine-tuned weights.

Folders are torchvision ImageFolder layouts: ``train/<class>/*.png``. Without -val the validation folder is
the training path with ``train`` replaced by ``val`` (else ``test``).

Other learning modes (-lm combined, simultaneous, alternating, pretraining, evaluation) are shared with
pretraining.py; see util/train/modes.py and -h.
"""

from util.cli import flags as cli

# part of this script's importable API:
from util.cli.build import build_finetune_model  # noqa: F401
from util.errors import run_cli
from util.train.reports import write_evaluation  # noqa: F401
from util.train.sources import build_sets, resolve_val  # noqa: F401

EXAMPLES = """examples:
  python finetuning.py -t data/CIFAR100/train -val data/CIFAR100/val -pw weights/XX/resnet50_epoch90.pth -npc 200 -o result -nc 100 -e 90
  python finetuning.py -t data/CIFAR100/train -pw imagenet -u resnet18 -nc 100      # torchvision's ImageNet weights
  python finetuning.py -t data/CIFAR100/train -pw weights/XX/resnet50_epoch90.pth --freeze_encoder   # linear probe
  python finetuning.py --evaluate -val data/CIFAR100/val -pw result/XX/ft_resnet50_epoch90.pth -u resnet50
  python finetuning.py -lm simultaneous -t data/CIFAR100/train --ph_weight 0.5      # PH as an auxiliary task
  python finetuning.py -lm alternating -t data/CIFAR100/train -n 5000               # + generated PH batches

Outputs go to a new dated folder under -o: args.json, log.jsonl, checkpoint.pth (for --resume),
ft_{usenet}_epoch{E}.pth, classes.json, curves.png, and the final evaluation (metrics.json, per_class.csv,
confusion_matrix.csv/.png). predict.py labels new images with ft_{usenet}_epoch{E}.pth and classes.json.
"""


def get_args_parser(default_mode='finetuning'):
    return cli.get_args_parser(
        default_mode, description='Fine-tune a CNN on a labelled image folder (or evaluate it).', epilog=EXAMPLES
    )


def main(args):
    return cli.main(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
