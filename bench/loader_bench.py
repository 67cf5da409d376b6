#!/usr/bin/env python
"""Throughput of the on-the-fly pretraining loader against a plain re-implementation of the original one.

Both sides feed a torch ``DataLoader`` with the same number of worker processes and batch size, and each
sample is a freshly generated greyscale image (repeated to 3 channels), its persistent homology label and
the pretraining augmentation (``util.train.transforms.pretrain_transforms``: resize, random crop, to tensor)
-- images of ``img_size`` px cropped to ``crop_size`` px, labels of dimension ``label_dim``:

* ours: ``util.train.datasets.GeneratedPH`` with ``ComputedLabels(histogram vectoriser, 'signed_distance')``
  through ``util.train.loaders.make_loader`` -- exactly what ``pretraining.py`` without ``-t`` runs: uint8
  images through the workers (normalised on the training device), workers ended after the pass inside the
  CPU clock; ``ours_normalised`` is the same with the normalisation done here, in the parent, as a CPU-only
  run does it (so that the comparison does not gain from moving work to a GPU);
* original: per image ``ToTensor`` + ``Normalize`` in the workers (float32 through shared memory), as the
  original did;
* original: :class:`OriginalStyleGenerated` below, the original on-the-fly dataset's per-image work
  written out plainly: ``np.random`` draws, float64 complex ``scipy.fft.fft2``/``ifft2`` filtering,
  skimage's ``threshold_otsu`` on float64, two ``distance_transform_edt`` calls for the signed distance,
  ``cripser.computePH`` with its default arguments, and the lifetime/birth histograms with ``np.histogram``
  and reflective Hanning smoothing (:func:`original_histogram`), then PIL + the same torchvision transforms.

The rate is measured in steady state: the clock starts when every worker has delivered its first batch
(start-up and imports excluded) and stops at the last batch.  ``repeats`` rounds alternate the two loaders
and the best rate of each is kept (the machine may be shared).

    python bench/loader_bench.py                          # 768 images of 256 px, crop 224, 2 workers
    python bench/loader_bench.py -n 96 -w 2 -is 64 -cs 56 -b 16 --json out.json

``run(n_images, workers, img_size, crop_size, ...)`` returns a dict (ours_img_s, original_img_s, ratio, ...)
for bench/cpu_bench.py.
"""

import functools
import os
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench.common import add_json_flag, save_result
from bench.reference import original_diagram, original_histogram, original_random_image
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.train.loaders import release_loaders

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_PROB_BINARY = 0.5  # the original's default (-pb)
DEFAULT_LABEL_DIM = 200  # the README's --numof_classes=200
MAX_LIFE = 50.0  # label parameters shared by both sides (util.ph.vectorise defaults)
MAX_BIRTH = 50.0
BANDWIDTH = 1


# ----------------------------------------------------------------------------------------------------
# the original on-the-fly loader, written plainly


class OriginalStyleGenerated(Dataset):
    """The original on-the-fly pretraining dataset (greyscale images, histogram labels), written plainly.

    Item: ``(image tensor [3, crop, crop], label float32 [sum(num_bins)])``.
    """

    def __init__(
        self,
        n,
        img_size,
        transform,
        num_bins,
        prob_binary=DEFAULT_PROB_BINARY,
        alpha_range=(0.01, 1.0),
        beta_range=(0.5, 2.0),
    ):
        self.n, self.img_size, self.transform = n, img_size, transform
        self.num_bins, self.prob_binary = num_bins, prob_binary
        self.alpha_range, self.beta_range = alpha_range, beta_range

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        image = original_random_image(self.img_size, self.alpha_range, self.beta_range, self.prob_binary).convert('RGB')
        label = original_histogram(original_diagram(np.array(image)), self.num_bins)
        return self.transform(image), label


# ----------------------------------------------------------------------------------------------------
# the two loaders


def _ours_loader(n_images, workers, img_size, crop_size, batch_size, label_dim, prob_binary, seed):
    from util.config import AugmentConfig, TrainConfig
    from util.ph.generator import GeneratorConfig
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import ComputedLabels, GeneratedPH, pretrain_transforms
    from util.train.loaders import make_loader

    train = TrainConfig(batch_size=batch_size, num_workers=workers, device='cpu', seed=seed)
    cfg = GeneratorConfig(img_size=img_size, prob_binary=prob_binary, prob_colour=0.0)
    cfg.validate()
    spatial, to_tensor = pretrain_transforms(AugmentConfig(img_size=img_size, crop_size=crop_size))
    computed = ComputedLabels(
        make_vectoriser('histogram', label_dim, max_life=MAX_LIFE, max_birth=MAX_BIRTH, bandwidth=BANDWIDTH),
        'signed_distance',
    )
    dataset = GeneratedPH(cfg, seed, n_images, computed, spatial, to_tensor, 'pre')
    return make_loader(dataset, train, epoch=1, shuffle=True, train=True), train


def _original_loader(n_images, workers, img_size, crop_size, batch_size, label_dim, prob_binary):
    from util.config import AugmentConfig
    from util.train.datasets import pretrain_transforms

    spatial, to_tensor = pretrain_transforms(AugmentConfig(img_size=img_size, crop_size=crop_size))
    q = label_dim // 4
    dataset = OriginalStyleGenerated(
        n_images, img_size, T.Compose([spatial, to_tensor]), (q, q, q, label_dim - 3 * q), prob_binary
    )
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=len(dataset) >= batch_size
    )


def _ours_epochs(loader, train, epochs):
    """The batches of ``epochs`` epochs through the product's persistent loader (epoch e: set_epoch(e - 1), as
    the training loop does; ``make_loader`` returns the same loader, its workers kept)."""
    from util.train.loaders import make_loader

    dataset = loader.source
    for e in range(1, epochs + 1):
        dataset.set_epoch(e - 1)
        yield from make_loader(dataset, train, epoch=e, shuffle=True, train=True)


def _cpu_seconds():
    """CPU seconds (user + system) of this process and of its finished, waited-for children (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_loader(loader, workers, finish=None, normalise=False):
    """Drain ``loader``; return a dict: img_s (steady state), images, seconds, total_seconds, steady (bool),
    cpu_img_s (images per CPU-second of the parent and all workers over the whole pass).

    ``finish()`` is called after the pass, inside the CPU clock: it ends persistent workers (the product's
    loaders keep them across epochs), so that their CPU time is counted.  ``normalise``: uint8 batches are
    also normalised here, in the parent (what the engine does on the device; on a CPU-only run, its CPU cost).

    The steady-state clock starts when ``max(workers, 1)`` batches have arrived (each worker has then
    finished its first batch, so start-up is behind us) and counts the images of the later batches.  With
    too few batches for that, the rate over the whole pass (start-up included) is reported instead.
    The CPU time is less disturbed by other load on the machine (the workers are joined when the pass
    ends, so their time is counted).
    """
    skip = max(workers, 1)
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    stamps, sizes = [], []
    shape = None
    for batch in loader:
        images, labels = batch[0], batch[1]
        if images is None:
            continue
        if normalise and images.dtype == torch.uint8:
            from util.train.transforms import normalize_batch

            images = normalize_batch(images)
        stamps.append(time.perf_counter())
        sizes.append(images.shape[0])
        if shape is None:
            shape = (tuple(images.shape[1:]), tuple(labels.shape[1:]))
            if not torch.isfinite(labels).all():
                raise AssertionError("non-finite labels from the loader")
    total = time.perf_counter() - t0
    if finish is not None:
        finish()
    cpu = _cpu_seconds() - cpu0
    images = int(sum(sizes))
    if len(stamps) > skip:
        seconds = stamps[-1] - stamps[skip - 1]
        counted = int(sum(sizes[skip:]))
        steady = True
    else:
        seconds, counted, steady = total, images, False
    return dict(
        img_s=counted / seconds,
        images=images,
        counted=counted,
        seconds=seconds,
        total_seconds=total,
        steady=steady,
        cpu_img_s=images / cpu if cpu > 0 else float('nan'),
        image_shape=list(shape[0]),
        label_shape=list(shape[1]),
    )


def run(
    n_images=768,
    workers=2,
    img_size=256,
    crop_size=224,
    batch_size=32,
    repeats=2,
    label_dim=DEFAULT_LABEL_DIM,
    prob_binary=DEFAULT_PROB_BINARY,
    seed=0,
    verbose=False,
    epochs=1,
):
    """Time both loaders on ``n_images`` images each (alternating, ``repeats`` rounds, best kept).

    ``epochs`` > 1 draws that many epochs per round, each loader as its training script would: ours through
    the same persistent loader (workers forked once, ``make_loader`` called per epoch), the original's
    DataLoader iterated anew each epoch (workers forked every epoch, as it had them).

    Returns ``{'ours_img_s', 'original_img_s', 'ratio', 'ours_img_cpu_s', 'original_img_cpu_s', 'cpu_ratio',
    'n_images', 'workers', 'img_size', 'crop_size', 'batch_size', 'label_dim', 'prob_binary', 'steady',
    'image_shape', 'label_shape', 'rounds': [...]}``: rates are images per second through the DataLoader
    (ratio = ours / original), ``*_img_cpu_s`` images per CPU-second of the parent and its workers.
    """
    if min(n_images, img_size, crop_size, batch_size, repeats, label_dim, epochs) < 1 or workers < 0:
        raise UserError(
            "n_images, img_size, crop_size, batch_size, repeats, label_dim, epochs must be >= 1, workers >= 0"
        )
    if img_size < 8:
        raise UserError(f"--img_size must be at least 8 (got {img_size})")
    say = print if verbose else (lambda *a, **k: None)
    names = ('ours', 'ours_normalised', 'original')
    best = dict.fromkeys(names, 0.0)
    best_cpu = dict.fromkeys(names, 0.0)
    rounds = []
    steady = True
    shapes = {}
    for r in range(repeats):
        for name in names:
            finish = None
            if name.startswith('ours'):
                loader, train = _ours_loader(
                    n_images, workers, img_size, crop_size, batch_size, label_dim, prob_binary, seed + r
                )
                finish = functools.partial(release_loaders, train)
                passes = _ours_epochs(loader, train, epochs)
            else:
                loader = _original_loader(n_images, workers, img_size, crop_size, batch_size, label_dim, prob_binary)
                passes = (batch for _ in range(epochs) for batch in loader)
            res = time_loader(passes, workers, finish, normalise=name == 'ours_normalised')
            del loader
            shapes[name] = (res['image_shape'], res['label_shape'])
            steady = steady and res['steady']
            best[name] = max(best[name], res['img_s'])
            best_cpu[name] = max(best_cpu[name], res['cpu_img_s'])
            rounds.append(
                dict(
                    round=r + 1,
                    loader=name,
                    img_s=res['img_s'],
                    img_cpu_s=res['cpu_img_s'],
                    images=res['images'],
                    total_seconds=res['total_seconds'],
                )
            )
            say(
                f"  round {r + 1}: {name:8s} {res['img_s']:8.1f} img/s, {res['cpu_img_s']:6.1f} img per CPU-second "
                f"({res['images']} images, {res['total_seconds']:.1f} s with start-up)"
            )
    if shapes['ours'] != shapes['original'] or shapes['ours_normalised'] != shapes['original']:
        raise AssertionError(f"the two loaders disagree on shapes: {shapes}")
    return dict(
        ours_img_s=best['ours'],
        original_img_s=best['original'],
        ratio=best['ours'] / best['original'],
        ours_img_cpu_s=best_cpu['ours'],
        original_img_cpu_s=best_cpu['original'],
        cpu_ratio=best_cpu['ours'] / best_cpu['original'],
        ours_normalised_img_s=best['ours_normalised'],
        ours_normalised_img_cpu_s=best_cpu['ours_normalised'],
        cpu_ratio_normalised=best_cpu['ours_normalised'] / best_cpu['original'],
        n_images=n_images,
        epochs=epochs,
        workers=workers,
        img_size=img_size,
        crop_size=crop_size,
        batch_size=batch_size,
        label_dim=label_dim,
        prob_binary=prob_binary,
        steady=steady,
        image_shape=shapes['ours'][0],
        label_shape=shapes['ours'][1],
        rounds=rounds,
    )


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        description="On-the-fly pretraining loader (GeneratedPH) vs a plain "
        "re-implementation of the original one, images/s through a DataLoader.",
    )
    p.add_argument('--n_images', '-n', type=int, default=768, help="images per loader per round (default: %(default)s)")
    p.add_argument('--workers', '-w', type=int, default=2, help="DataLoader worker processes (default: %(default)s)")
    p.add_argument('--img_size', '-is', type=int, default=256, help="generated image side (default: %(default)s)")
    p.add_argument('--crop_size', '-cs', type=int, default=224, help="random crop side (default: %(default)s)")
    p.add_argument('--batch_size', '-b', type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument(
        '--repeats', type=int, default=2, help="alternating rounds; the best of each is kept (default: %(default)s)"
    )
    p.add_argument(
        '--label_dim', type=int, default=DEFAULT_LABEL_DIM, help="histogram label dimension (default: %(default)s)"
    )
    p.add_argument(
        '--prob_binary',
        '-pb',
        type=float,
        default=DEFAULT_PROB_BINARY,
        help="probability that an image is binarised, both sides (default: %(default)s)",
    )
    p.add_argument('--seed', type=int, default=0, help="seed of our generator (default: %(default)s)")
    p.add_argument(
        '--epochs',
        type=int,
        default=1,
        help="epochs per round, each loader as its script runs them: ours keeps its workers, the original's "
        "forks them anew (default: %(default)s)",
    )
    add_json_flag(p)
    return p


def main(args):
    res = run(
        args.n_images,
        args.workers,
        args.img_size,
        args.crop_size,
        args.batch_size,
        args.repeats,
        args.label_dim,
        args.prob_binary,
        args.seed,
        verbose=True,
        epochs=args.epochs,
    )
    print(
        f"{res['n_images']} images of {res['img_size']} px cropped to {res['crop_size']}, batch "
        f"{res['batch_size']}, {res['workers']} worker(s), {res['epochs']} epoch(s) per round, histogram labels of "
        f"{res['label_dim']}, "
        f"{os.cpu_count()} cores" + ('' if res['steady'] else ' (too few batches: rates include start-up)')
    )
    print(f"ours:     {res['ours_img_s']:8.1f} img/s  {res['ours_img_cpu_s']:8.1f} img per CPU-second")
    print(f"original: {res['original_img_s']:8.1f} img/s  {res['original_img_cpu_s']:8.1f} img per CPU-second")
    print(f"ratio:    {res['ratio']:8.2f}x       {res['cpu_ratio']:8.2f}x")
    print(
        f"ours, normalised in the parent (CPU-only training): {res['ours_normalised_img_cpu_s']:.1f} img per "
        f"CPU-second = {res['cpu_ratio_normalised']:.2f}x the original"
    )
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    save_result(args, res)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
