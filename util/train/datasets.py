"""Datasets for pretraining (images + PH label vectors) and fine-tuning (class folders).

Pretraining samples are ``(image tensor [3, crop, crop], label float32 [D])``; the transforms are in
:mod:`util.train.transforms` (a training loader, :func:`util.train.loaders.make_loader`, applies them in their
uint8 :func:`~util.train.transforms.shipping_form` and the engine normalises on the device). Where the label
comes from:

* ``DiagramDirLabels``  - raw diagrams written by PHdict.py (``<relative path>.npy``), vectorised at load time;
* ``MatrixLabels``      - a consolidated label matrix written by ``PHdict.py --label_type`` (nothing computed);
* ``ComputedLabels``    - persistent homology computed in the loader from the image itself (``JoinedLabels``:
  several filtrations side by side).

``-ph pre`` labels the full image before augmentation (the label is fixed per image); ``-ph post`` labels
the augmented crop, i.e. exactly what the network sees.

An image that cannot be decoded is returned as ``None`` (dropped and counted by
:func:`util.train.loaders.collate_skip_bad`) when ``bad_images='skip'``, or stops the run with its name otherwise.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

from util.errors import BadImageError, UserError
from util.io import fileio
from util.ph.dgmcheck import check_diagram
from util.train.transforms import (  # noqa: F401  (the transforms lived here; importers of the old place keep working)
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZE,
    RandomRescale,
    finetune_train_parts,
    finetune_transforms,
    photometric_transforms,
    pretrain_transforms,
    pretrain_val_transforms,
)

if TYPE_CHECKING:
    from util.ph.generator import GeneratorConfig


# ------------------------------------------------------------------------------------------ label sources
class ComputedLabels:
    """Label = vectoriser(persistent homology of the image), computed when asked; ``gradient`` takes the PH
    of the Canny edge map instead of the Otsu mask (see :func:`util.ph.cubical.edge_map`); ``engine`` is the PH
    engine (:data:`util.ph.cubical.ENGINES`; both give the same diagrams, hence the same labels), loaded here once so
    that DataLoader workers forked later inherit it instead of each loading or compiling it; ``size_normalise``
    (None: off, else the reference size, :data:`util.ph.cubical.SIZE_REFERENCE`): filtration values times
    reference / the image's larger side, as ``PHdict.py --size_normalise``."""

    def __init__(self, vectoriser, filtration='signed_distance', gradient=False, engine='auto', size_normalise=None):
        from util.ph.cubical import warm_up

        self.vectoriser = vectoriser
        self.filtration = filtration
        self.gradient = bool(gradient)
        self.engine = engine
        self.size_normalise = size_normalise or None
        self.dim = vectoriser.dim
        warm_up(engine)

    def diagram(self, image):
        from util.ph.cubical import compute_ph, normalise_size

        dgm = compute_ph(image, filtration=self.filtration, gradient=self.gradient, engine=self.engine)
        if self.size_normalise:
            size = max(image.size) if hasattr(image, 'size') and not hasattr(image, 'shape') else max(image.shape[:2])
            dgm = normalise_size(dgm, size, self.size_normalise)
        return dgm

    def from_image(self, image):
        """image: PIL image (converted to grey as PHdict does) -> float32 [D]."""
        return np.asarray(self.vectoriser(self.diagram(image)), dtype=np.float32)


class JoinedLabels:
    """The labels of several filtrations side by side (``--filtration A B ...``, as PHdict.py joins its label
    matrices: the columns of A, then of B ...), each part a :class:`ComputedLabels`; computed from the image."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.dim = sum(p.dim for p in self.parts)
        self.filtration = [p.filtration for p in self.parts]

    def from_image(self, image):
        return np.concatenate([p.from_image(image) for p in self.parts]).astype(np.float32)


COMPUTED = (ComputedLabels, JoinedLabels)  # label sources that compute the label from the image


class DiagramDirLabels:
    """Diagrams precomputed by PHdict.py, found by the image's relative path (``cat/x.jpg`` -> ``cat/x.npy``),
    or by the original's flat naming (``x.npy`` for ``cat/x.jpg``) where that name stands for one image only.

    Two images that would share a diagram (``x.jpg`` / ``x.png``, or ``a/x.jpg`` / ``b/x.jpg`` under flat
    naming) are refused by name, never given one another's label.
    """

    def __init__(self, ph_dir, rel_paths, vectoriser):
        self.ph_dir = ph_dir
        self.vectoriser = vectoriser
        self.dim = vectoriser.dim
        by_stem, by_base = {}, {}
        for rel in rel_paths:
            stem = os.path.splitext(rel)[0]
            by_stem.setdefault(stem, []).append(rel)
            by_base.setdefault(stem.rsplit('/', 1)[-1], []).append(rel)
        shared = next((names for names in by_stem.values() if len(names) > 1), None)
        if shared:
            raise UserError(
                f"{' and '.join(shared[:3])} would share the diagram {os.path.splitext(shared[0])[0]}.npy "
                f"in {ph_dir!r}; rename one of them (PHdict.py names diagrams by path without extension)"
            )
        self.paths, self.keys = [], []
        missing, ambiguous = [], []
        for rel in rel_paths:
            stem = os.path.splitext(rel)[0]
            key = stem
            if not os.path.isfile(os.path.join(ph_dir, *stem.split('/')) + '.npy'):
                base = stem.rsplit('/', 1)[-1]
                key = None
                if os.path.isfile(os.path.join(ph_dir, base + '.npy')):
                    if len(by_base[base]) == 1:
                        key = base  # the original's flat naming, unambiguous here
                    else:
                        ambiguous.append(rel)
                        continue
            if key is None:
                missing.append(rel)
            self.keys.append(key)
            self.paths.append(None if key is None else os.path.join(ph_dir, *key.split('/')) + '.npy')
        if ambiguous:
            others = by_base[os.path.splitext(ambiguous[0])[0].rsplit('/', 1)[-1]]
            raise UserError(
                f"{len(ambiguous)} images have no diagram under their own path in {ph_dir!r} and share "
                f"a flat diagram name with another image ({', '.join(others[:3])} -> "
                f"{os.path.basename(os.path.splitext(others[0])[0])}.npy); rerun PHdict.py on the image "
                f"folder with -o {ph_dir}, which names diagrams by relative path"
            )
        if missing:
            raise UserError(
                f"{len(missing)} of {len(rel_paths)} images have no diagram in {ph_dir!r} (first: "
                f"{', '.join(missing[:3])}); run PHdict.py on the image folder with -o {ph_dir}"
            )
        self.rel_paths = list(rel_paths)

    def changed(self, root):
        """The images (below ``root``) whose diagram was not recorded (PHdict's sources.jsonl) as computed from
        them as they are now; None when the folder has no such record (made by the original or an older
        version), so nothing can be checked."""
        from util.io.provenance import SourceLog, fingerprint_below

        log = SourceLog(self.ph_dir)
        if not log.exists:
            return None
        changed = []
        for rel, key in zip(self.rel_paths, self.keys):
            source = log.source_of(key + '.npy')
            fp = fingerprint_below(root, rel)
            same_name = source == rel or (
                key != os.path.splitext(rel)[0]
                and source is not None
                and source.rsplit('/', 1)[-1] == rel.rsplit('/', 1)[-1]
            )
            if not (same_name and log.fresh(key + '.npy', source, fp)):
                changed.append(rel)
        return changed

    def label(self, index):
        path = self.paths[index]
        try:
            dgm = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read diagram file {path}: {e}; delete it and rerun PHdict.py") from None
        dgm = check_diagram(dgm, path)  # shape, columns, homology dimensions, NaN
        return np.asarray(self.vectoriser(dgm), dtype=np.float32)


class MatrixLabels:
    """Rows of a consolidated label matrix ``[N, D]`` matched to images by their path relative to the image folder,
    exactly as PHdict.py wrote them (``labels_<type>.txt``); an image without its own row is refused, never given
    the row of another file with a similar name."""

    def __init__(self, matrix, names, rel_paths, source):
        by_rel = {n: i for i, n in enumerate(names)}
        rows, missing = [], []
        for rel in rel_paths:
            r = by_rel.get(rel)
            if r is None:
                missing.append(rel)
            rows.append(r)
        if missing:
            hint = ''
            base = {n.rsplit('/', 1)[-1] for n in names}
            if any(m.rsplit('/', 1)[-1] in base for m in missing[:100]):
                hint = " (rows are named by the path relative to the folder PHdict.py read: give -t that same folder)"
            raise UserError(
                f"{len(missing)} of {len(rel_paths)} images have no row in {source} (first: "
                f"{', '.join(missing[:3])}){hint}; rerun PHdict.py with --label_type on this folder"
            )
        self.matrix = matrix
        self.source = source  # the matrix file (util/train/sources.py records its digest in the run)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.dim = matrix.shape[1]

    def label(self, index):
        return np.array(self.matrix[self.rows[index]], dtype=np.float32)  # a writable copy of the row


# ------------------------------------------------------------------------------------------ datasets
class _PHBase(Dataset):
    """Shared __getitem__: load -> label (pre or post augmentation) -> tensor."""

    def __init__(self, spatial, to_tensor, persistence='pre', bad_images='skip', max_pixels=None):
        self.spatial = spatial
        self.to_tensor = to_tensor
        self.persistence = persistence
        self.bad_images = bad_images
        self.max_pixels = max_pixels  # --max_pixels (None: util.io.fileio's default)

    def _image(self, index):
        raise NotImplementedError

    def _label_pre(self, index, image):
        raise NotImplementedError

    def _label_post(self, image):
        return self.computed.from_image(image)

    def __getitem__(self, index):
        try:
            image = self._image(index)
        except BadImageError as e:
            if self.bad_images == 'skip':
                print(f"warning: skipped {e}", file=sys.stderr, flush=True)
                return None
            raise UserError(f"{e} (use --bad_images skip to skip such files)") from None
        if self.persistence == 'pre':
            label = self._label_pre(index, image)
            image = self.spatial(image)
        else:
            image = self.spatial(image)
            label = self._label_post(image)
        return self.to_tensor(image), torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))


class FolderPH(_PHBase):
    """Images below ``root`` (recursive) with labels from ``labels`` (Diagram/Matrix/ComputedLabels)."""

    def __init__(
        self,
        root,
        rel_paths,
        labels,
        spatial,
        to_tensor,
        persistence='pre',
        computed=None,
        bad_images='skip',
        max_pixels=None,
    ):
        super().__init__(spatial, to_tensor, persistence, bad_images, max_pixels)
        self.root = root
        self.rel_paths = rel_paths
        self.labels = labels
        self.computed = computed if computed is not None else (labels if isinstance(labels, COMPUTED) else None)
        if persistence == 'post' and self.computed is None:
            raise UserError(
                "-ph post labels the augmented crop, so it needs PH computed in the loader; drop -pd/-pc or use -ph pre"
            )
        self.dim = labels.dim

    def __len__(self):
        return len(self.rel_paths)

    def _image(self, index):
        return fileio.load_image(os.path.join(self.root, self.rel_paths[index]), 'RGB', self.max_pixels)

    def _label_pre(self, index, image):
        if isinstance(self.labels, COMPUTED):
            return self.labels.from_image(image)
        return self.labels.label(index)


class GeneratedPH(_PHBase):
    """Images generated on the fly (util.ph.generator) with PH computed in the loader.

    Image ``i`` of epoch ``e`` is ``generate_image(cfg, seed, e * n + i, stream)``: fresh images every epoch,
    reproducible from (seed, epoch, index); epoch 0 equals ``random_image.py --seed seed`` output. With
    ``cache_dir`` the same ``n`` images (indices 0..n-1) are reused every epoch and kept on disk
    (``images/v%08d.png`` + ``PH/v%08d.npy``) for later runs; nothing there is ever deleted.
    """

    def __init__(
        self,
        cfg,
        seed,
        n_samples,
        computed,
        spatial,
        to_tensor,
        persistence='pre',
        stream=0,
        cache_dir=None,
        fresh_each_epoch=True,
        index_labels=None,
        max_pixels=None,
    ):
        super().__init__(spatial, to_tensor, persistence, 'fail', max_pixels)
        self.cfg, self.seed, self.n, self.stream = cfg, seed, n_samples, stream
        self.computed = computed
        self.index_labels = index_labels  # label(generated index) instead of PH (util/train/sources.py)
        self.dim = (index_labels if index_labels is not None else computed).dim
        self.cache_dir = cache_dir
        self.fresh_each_epoch = fresh_each_epoch and cache_dir is None
        self.epoch = 0
        # True in the loader's copy (util.train.loaders.make_loader): a grey image stays one 'L' channel through
        # labelling and the spatial transforms (a third of the bytes), the uint8 tensor is made 3-channel at the
        # end (util.train.transforms.ToUint8Tensor): the same values as converting to RGB first
        self.keep_grey = False
        if cache_dir:
            prepare_cache(
                cache_dir,
                cfg,
                seed,
                stream,
                computed.filtration,
                getattr(computed, 'gradient', False),
                getattr(computed, 'size_normalise', None),
            )

    def set_epoch(self, epoch):
        self.epoch = epoch

    @staticmethod
    def worker_init(worker_id):
        """DataLoader worker start-up for generation: seeds as usual, and keeps freed buffers for reuse."""
        from util.ph.generator import reduce_allocator_churn
        from util.train.seeding import worker_init_fn

        worker_init_fn(worker_id)
        reduce_allocator_churn()

    def __len__(self):
        return self.n

    def _index(self, i):
        return self.epoch * self.n + i if self.fresh_each_epoch else i

    def _image(self, i):
        from util.ph.generator import generate_image

        idx = self._index(i)
        if self.cache_dir:
            path = os.path.join(self.cache_dir, 'images', f'v{idx:08d}.png')
            if os.path.exists(path):
                return fileio.load_image(path, 'RGB', self.max_pixels)
            arr = generate_image(self.cfg, self.seed, idx, self.stream)
            fileio.save_image(path, arr, 'png')
        else:
            arr = generate_image(self.cfg, self.seed, idx, self.stream)
        image = Image.fromarray(arr)
        return image if self.keep_grey and image.mode == 'L' else image.convert('RGB')

    def _label_pre(self, i, image):
        if self.index_labels is not None:
            return self.index_labels.label(self._index(i))
        if not self.cache_dir:
            return self.computed.from_image(image)
        path = os.path.join(self.cache_dir, 'PH', f'v{self._index(i):08d}.npy')
        if os.path.exists(path):
            dgm = check_diagram(np.load(path, allow_pickle=False), path)
        else:
            dgm = self.computed.diagram(image)
            fileio.save_npy(path, dgm)
        return np.asarray(self.computed.vectoriser(dgm), dtype=np.float32)


def prepare_cache(
    cache_dir: str,
    cfg: GeneratorConfig,
    seed: int,
    stream: int,
    filtration: str,
    gradient: bool = False,
    size_normalise: int | None = None,
) -> None:
    """Create the cache layout, or check that an existing cache was made with the same settings (its diagrams
    are size-normalised when ``size_normalise`` is)."""
    import dataclasses

    generator = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    if generator.get('spectrum') == 'original':  # recorded only when not the original's, so older caches stay valid
        del generator['spectrum']
    meta = {
        'generator': generator,
        'seed': seed,
        'stream': stream,
        'filtration': filtration,
    }
    if gradient:  # recorded only when on, so caches made before the option existed stay valid
        meta['gradient'] = True
    if size_normalise:  # likewise
        meta['size_normalise'] = size_normalise
    for sub in ('images', 'PH'):
        fileio.ensure_dir(os.path.join(cache_dir, sub), 'cache directory')
    meta_path = os.path.join(cache_dir, 'cache.json')
    if os.path.exists(meta_path):
        import json

        try:
            with open(meta_path, encoding='utf-8') as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(
                f"--cache_dir {cache_dir!r}: its record {meta_path} cannot be read ({e}), so the settings its images "
                "and diagrams were made with are unknown; use another folder (or delete this one)"
            ) from None
        if old != meta:
            raise UserError(
                f"--cache_dir {cache_dir!r} holds images made with other settings ({meta_path}); use another folder"
            )
        return
    cached = [
        n for sub in ('images', 'PH') for n in os.listdir(os.path.join(cache_dir, sub)) if not fileio.is_temp_file(n)
    ]
    if cached and os.path.exists(meta_path):  # another process recorded it and began meanwhile
        return prepare_cache(cache_dir, cfg, seed, stream, filtration, gradient, size_normalise)
    if cached:  # made with settings nobody recorded: mixing them in could pair other diagrams with the images
        raise UserError(
            f"--cache_dir {cache_dir!r} holds {len(cached)} cached images/diagrams but no record of their settings "
            f"({meta_path} is missing); use another folder (or delete this one)"
        )
    fileio.write_json(meta_path, meta)


class LabelledPH(_PHBase):
    """A class-folder dataset (ImageFolder layout) whose samples carry both targets:
    ``(image tensor [3, crop, crop], (class index, PH label float32 [D]))``, the label computed from the same
    image by ``computed`` (a :class:`ComputedLabels`), before (``'pre'``) or after (``'post'``) the spatial
    augmentation.  Used by ``--learning_mode simultaneous``.  Undecodable images: None / stop, as above."""

    def __init__(self, root, computed, spatial, to_tensor, persistence='pre', bad_images='skip', max_pixels=None):
        super().__init__(spatial, to_tensor, persistence, bad_images, max_pixels)
        self.folder = SafeImageFolder(root, None, bad_images, max_pixels)
        self.root = root
        self.classes = self.folder.classes
        self.samples = self.folder.samples
        self.computed = computed
        self.dim = computed.dim

    def __len__(self):
        return len(self.samples)

    def _image(self, index):
        return fileio.load_image(self.samples[index][0], 'RGB', self.max_pixels)

    def _label_pre(self, index, image):
        return self.computed.from_image(image)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if item is None:
            return None
        return item[0], (self.samples[index][1], item[1])


class SafeImageFolder(tv_datasets.ImageFolder):
    """torchvision ImageFolder that converts any image kind to RGB and returns None for undecodable files."""

    def __init__(self, root, transform=None, bad_images='skip', max_pixels=None):
        fileio.require_dir(root, 'image folder')
        try:
            super().__init__(root, transform=transform, loader=lambda p: fileio.load_image(p, 'RGB', max_pixels))
        except FileNotFoundError as e:
            raise UserError(f"{root}: {e}; every class folder needs at least one image") from None
        self.bad_images = bad_images

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return fileio.class_samples(directory, class_to_idx)  # symlink loops, FIFOs: skipped with a warning

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except BadImageError as e:
            if self.bad_images == 'skip':
                print(f"warning: skipped {e}", file=sys.stderr, flush=True)
                return None
            raise UserError(f"{e} (use --bad_images skip to skip such files)") from None
