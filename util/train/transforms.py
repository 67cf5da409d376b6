"""Image transforms of training and evaluation: PIL -> PIL spatial augmentation, then PIL -> tensor.

Every builder takes ``aug``, a :class:`util.config.AugmentConfig` (sizes and augmentation flags) and ends in
``ToTensor`` + ImageNet ``Normalize``, as the original did.  A training loader (``util.train.engine.make_loader``)
applies their :func:`shipping_form` instead: **uint8** ``[3, H, W]`` out of the workers (a quarter of the bytes of
float32 through shared memory and the pin-memory thread), converted and normalised on the training device,
batched, by :func:`util.train.engine.to_device` (:func:`normalize_batch`): the same values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from util.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

_CONSTANTS = {}  # (device, dtype) -> (mean, std) [1, 3, 1, 1]: made once per device, no copy per step


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[B, 3, H, W]`` -> float32 normalised with the ImageNet mean and std, on ``x``'s device.

    Computed as ``ToTensor`` + ``Normalize`` compute it (divide by 255, subtract the mean, divide by the std), so
    the values are those the per-image transforms gave; the memory format (channels-last) is kept."""
    key = str(x.device)
    if key not in _CONSTANTS:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(x.device)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1).to(x.device)
        _CONSTANTS[key] = mean, std
    mean, std = _CONSTANTS[key]
    return x.float().div_(255).sub_(mean).div_(std)


class ToUint8Tensor:
    """PIL image -> uint8 ``[3, H, W]``: what ``ToTensor`` + ``Normalize`` become in a loader
    (:func:`shipping_form`); a grey 'L' image gives its channel three times (R = G = B, as converting to RGB
    first would)."""

    def __call__(self, img):
        if img.mode == 'L':
            return T.functional.pil_to_tensor(img).expand(3, -1, -1)
        return T.functional.pil_to_tensor(img if img.mode == 'RGB' else img.convert('RGB'))

    def __repr__(self):
        return f'{type(self).__name__}()'


class ToRGB:
    """PIL image -> RGB (no-op for RGB): before colour steps that a grey image kept in one channel meets."""

    def __call__(self, img):
        return img if img.mode == 'RGB' else img.convert('RGB')

    def __repr__(self):
        return f'{type(self).__name__}()'


def _is_normalize(t):
    return (
        isinstance(t, T.Normalize)
        and tuple(float(m) for m in t.mean) == IMAGENET_MEAN
        and tuple(float(s) for s in t.std) == IMAGENET_STD
    )


def shipping_form(transform: Callable) -> Callable:
    """The form of ``transform`` a training loader applies in its workers: a trailing ``ToTensor`` + ImageNet
    ``Normalize`` replaced by :class:`ToUint8Tensor` (4x fewer bytes through shared memory and pinning; the
    engine normalises on the device with :func:`normalize_batch`, to the same values), colour steps before it
    given RGB; anything else unchanged (a float tensor passes the engine as it is)."""
    if not isinstance(transform, T.Compose) or not transform.transforms:
        return transform
    steps = list(transform.transforms)
    if len(steps) >= 2 and isinstance(steps[-2], T.ToTensor) and _is_normalize(steps[-1]):
        head = steps[:-2]
        return T.Compose(([ToRGB()] if head else []) + head + [ToUint8Tensor()])
    shipped = shipping_form(steps[-1])
    return transform if shipped is steps[-1] else T.Compose(steps[:-1] + [shipped])


# Every transform builder takes ``aug``: a :class:`util.config.AugmentConfig` (sizes and augmentation flags).
def _augment_config(aug):
    if not isinstance(aug, AugmentConfig):
        raise TypeError(f"the transforms take a util.config.AugmentConfig, not {type(aug).__name__}")
    return aug


class RandomRescale:
    """Resize a PIL image by a factor drawn uniformly from ``[1 - spread, 1 + spread]`` (torch's RNG, like
    torchvision's random transforms), keeping its aspect ratio; ``--random_scale``."""

    def __init__(self, spread):
        self.spread = float(spread)

    def __call__(self, img):
        factor = 1.0 + self.spread * (2.0 * torch.rand(()).item() - 1.0)
        w, h = img.size
        return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BILINEAR)

    def __repr__(self):
        return f'{type(self).__name__}(factor in [{1 - self.spread:g}, {1 + self.spread:g}])'


class WarpCrop:
    """Random-resized crop, rotation and shear as one affine warp whose source region lies wholly inside the
    image: ``--warp_scale``, ``--warp_rotation``, ``--warp_shear``.

    A draw takes an area fraction in ``scale`` and an aspect ratio in ``ratio`` (log-uniform), as
    ``RandomResizedCrop``; an angle in ``[-degrees, degrees]`` and an x-shear angle in ``[-shear, shear]``; the
    square ``size`` x ``size`` output is that rectangle, sheared and rotated, resampled bilinearly.  The draw's
    parallelogram is placed uniformly where it fits inside the image; one that fits nowhere is redrawn (10
    tries), then shrunk about the centre until it fits.  So there is no fill: every output pixel interpolates
    pixels of the image, and a ``-ph post`` label sees no invented corners or borders (a constant fill would
    add components or holes where the rotated image's corners were).  torch's RNG, as torchvision's transforms.
    """

    def __init__(self, size, scale, degrees=0.0, shear=0.0, ratio=(3 / 4, 4 / 3), attempts=10):
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.degrees = float(degrees)
        self.shear = float(shear)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.attempts = attempts

    @staticmethod
    def _uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(()).item()

    def _matrix(self, w, h):
        """2 x 2 map from output offsets (pixels from the output's centre) to source offsets."""
        area = w * h * self._uniform(*self.scale)
        ratio = math.exp(self._uniform(*self.log_ratio))
        sx, sy = math.sqrt(area * ratio) / self.size, math.sqrt(area / ratio) / self.size
        theta = math.radians(self._uniform(-self.degrees, self.degrees))
        tan_shear = math.tan(math.radians(self._uniform(-self.shear, self.shear)))
        cos, sin = math.cos(theta), math.sin(theta)
        # rotation @ [[1, tan], [0, 1]] @ diag(sx, sy)
        return (cos * sx, (cos * tan_shear - sin) * sy, sin * sx, (sin * tan_shear + cos) * sy)

    def params(self, w, h):
        """(a, b, d, e, cx, cy): the map of a draw for a ``w`` x ``h`` image and the source point that the
        output's centre shows."""
        half = self.size / 2
        for attempt in range(self.attempts + 1):
            a, b, d, e = self._matrix(w, h)
            ex, ey = (abs(a) + abs(b)) * half, (abs(d) + abs(e)) * half  # the parallelogram's half-extents
            if ex <= w / 2 and ey <= h / 2:
                return a, b, d, e, self._uniform(ex, w - ex), self._uniform(ey, h - ey)
        k = max(2 * ex / w, 2 * ey / h) * (1 + 1e-9)  # the last draw, shrunk to fit, at the centre
        return a / k, b / k, d / k, e / k, w / 2, h / 2

    def __call__(self, img):
        w, h = img.size
        a, b, d, e, cx, cy = self.params(w, h)
        half = self.size / 2
        # PIL: output pixel (x, y) shows source (a x + b y + c, d x + e y + f), both in [0, W] x [0, H] units
        coeffs = (a, b, cx - (a + b) * half, d, e, cy - (d + e) * half)
        return img.transform((self.size, self.size), Image.AFFINE, coeffs, resample=Image.BILINEAR)

    def __repr__(self):
        return (
            f'{type(self).__name__}(size={self.size}, scale={self.scale}, degrees={self.degrees:g}, '
            f'shear={self.shear:g}, no fill)'
        )


def _blur_kernel(crop_size):
    """Odd Gaussian-blur kernel of about a tenth of the crop (MoCo v2: 23 px at 224), at least 3."""
    k = max(3, int(0.1 * crop_size))
    return k if k % 2 else k + 1


def photometric_transforms(aug: AugmentConfig) -> list[Callable]:
    """PIL->PIL colour steps of ``--aug_plus`` (MoCo v2): ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8,
    RandomGrayscale p=0.2, GaussianBlur (sigma 0.1-2) p=0.5; empty without it.  They are applied after the
    PH label is computed (``-ph pre`` and ``post`` alike), so they never change a label."""
    aug = _augment_config(aug)
    if not aug.aug_plus:
        return []
    return [
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(_blur_kernel(aug.crop_size), sigma=(0.1, 2.0))], p=0.5),
    ]


def _geometric(aug):
    """[RandomRescale] [RandomRotation], the optional steps before the crop."""
    steps = []
    if aug.random_scale > 0:
        steps.append(RandomRescale(aug.random_scale))
    if aug.random_rotation > 0:
        steps.append(T.RandomRotation(aug.random_rotation, interpolation=T.InterpolationMode.BILINEAR))
    return steps


def _affine(aug):
    if aug.affine:
        return [T.RandomAffine(degrees=(-180, 180), scale=(0.5, 2), shear=(-100, 100, -100, 100))]
    return []


def _warp(aug):
    """[RandomRescale] WarpCrop: the crop step when --warp_scale is given (no Resize: it samples the image)."""
    steps = [RandomRescale(aug.random_scale)] if aug.random_scale > 0 else []
    return steps + [WarpCrop(aug.crop_size, aug.warp_scale, aug.warp_rotation, aug.warp_shear)]


def _random_crop(aug):
    padding = aug.crop_padding or None
    return T.RandomCrop(aug.crop_size, padding=padding, pad_if_needed=True)


def _to_tensor(aug):
    return T.Compose(photometric_transforms(aug) + [T.ToTensor(), NORMALIZE])


def pretrain_transforms(aug: AugmentConfig) -> tuple[Callable, Callable]:
    """(spatial PIL->PIL augmentation, PIL->normalised tensor); the split lets ``-ph
    post`` label the augmented crop, and keeps photometric augmentation after the label.

    Spatial, as the original: [RandomAffine] [Resize] [RandomRescale] [RandomRotation] RandomCrop (padding
    ``--crop_padding``); with ``--aug_plus``: [RandomAffine] [RandomRescale] [RandomRotation]
    RandomResizedCrop(crop, scale 0.2-1) and a horizontal flip; with ``--warp_scale``: [RandomRescale]
    :class:`WarpCrop` (crop, rotation and shear in one warp, no fill) in place of resize, rotation and crop;
    ``--hflip`` / ``--no-hflip`` add / drop the flip (a flip leaves every PH label unchanged).  Then the
    photometric steps (:func:`photometric_transforms`), ToTensor and Normalize."""
    aug = _augment_config(aug)
    spatial = _affine(aug)
    if aug.warp_scale:
        spatial += _warp(aug)
    elif aug.aug_plus:
        spatial += _geometric(aug)
        spatial.append(T.RandomResizedCrop(aug.crop_size, scale=(0.2, 1.0)))
    else:
        if aug.img_size > aug.crop_size:
            spatial.append(T.Resize(aug.img_size, interpolation=T.InterpolationMode.BILINEAR))
        spatial += _geometric(aug)
        spatial.append(_random_crop(aug))
    hflip = getattr(aug, 'hflip', None)
    if hflip or (hflip is None and aug.aug_plus):
        spatial.append(T.RandomHorizontalFlip())  # --hflip: off by default, on with --aug_plus
    return T.Compose(spatial), _to_tensor(aug)


def pretrain_val_transforms(aug: AugmentConfig) -> tuple[Callable, Callable]:
    """Validation: resize to crop x crop (deterministic), then ToTensor + Normalize."""
    aug = _augment_config(aug)
    return (
        T.Resize((aug.crop_size, aug.crop_size), interpolation=T.InterpolationMode.BILINEAR),
        T.Compose([T.ToTensor(), NORMALIZE]),
    )


def finetune_train_parts(aug: AugmentConfig) -> tuple[Callable, Callable]:
    """(spatial PIL->PIL, PIL->normalised tensor) of fine-tuning's training augmentation.

    Default: Resize(img_size), RandomResizedCrop(crop, scale 0.7-1), horizontal flip (``--no-hflip``: none).  With
    ``--random_scale`` or ``--crop_padding`` the crop is a RandomCrop (with that padding) after the random
    rescale; ``--random_rotation`` and ``--affine`` come before the crop; ``--aug_plus`` replaces resize and
    crop by RandomResizedCrop(crop, scale 0.2-1) and adds the photometric steps; ``--warp_scale`` replaces
    resize, rotation and crop by :class:`WarpCrop`."""
    aug = _augment_config(aug)
    spatial = _affine(aug)
    if aug.warp_scale:
        spatial += _warp(aug)
    elif aug.aug_plus:
        spatial += _geometric(aug)
        spatial.append(T.RandomResizedCrop(aug.crop_size, scale=(0.2, 1.0)))
    else:
        spatial.append(T.Resize(aug.img_size, interpolation=T.InterpolationMode.BILINEAR))
        spatial += _geometric(aug)
        if aug.random_scale > 0 or aug.crop_padding > 0:
            spatial.append(_random_crop(aug))
        else:
            spatial.append(T.RandomResizedCrop(aug.crop_size, scale=(0.7, 1.0)))
    if getattr(aug, 'hflip', None) is not False:  # --no-hflip turns it off (e.g. digits, text)
        spatial.append(T.RandomHorizontalFlip())
    return T.Compose(spatial), _to_tensor(aug)


def finetune_transforms(aug: AugmentConfig, train: bool) -> Callable:
    """PIL->normalised tensor for fine-tuning: the training augmentation (:func:`finetune_train_parts`), or
    for validation Resize(img_size) and CenterCrop(crop)."""
    aug = _augment_config(aug)
    if train:
        spatial, to_tensor = finetune_train_parts(aug)
        return T.Compose([spatial, to_tensor])
    return T.Compose(
        [
            T.Resize(aug.img_size, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(aug.crop_size),
            T.ToTensor(),
            NORMALIZE,
        ]
    )
