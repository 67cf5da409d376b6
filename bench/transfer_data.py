"""bench/transfer.py's labelled data: the fine-tuning splits (digits or a ``--data`` ImageFolder, cached in the
work folder under its data lock) and the probe's labelled pool as tensors."""

import functools
import os
import shutil

import numpy as np

from bench.transfer_runner import _hash, run_lock
from util.errors import UserError
from util.io import fileio


def _link_or_copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _list_folder(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(classes) < 2:  # one class: every prediction right, a top-1 of 100%
        raise UserError(
            f"--data {root!r} has {len(classes)} class sub-folder(s) {classes}: a transfer task needs at least 2 "
            "classes (<class>/<image>)"
        )
    files, targets = [], []
    for ci, c in enumerate(classes):
        for rel in fileio.list_images(os.path.join(root, c)):
            files.append(os.path.join(c, rel))
            targets.append(ci)
    return files, np.asarray(targets, dtype=np.int64)


def _cap_test(folder, max_test, seed):
    """Keep a class-stratified random ``max_test`` of the test images (tiny preset only)."""
    files, targets = _list_folder(folder)
    if max_test <= 0 or len(files) <= max_test:
        return
    rng = np.random.default_rng([seed, 7])
    keep = set()
    per = max(1, max_test // len(np.unique(targets)))
    for c in np.unique(targets):
        keep.update(rng.permutation(np.flatnonzero(targets == c))[:per].tolist())
    for i, rel in enumerate(files):
        if i not in keep:
            os.remove(os.path.join(folder, rel))


@functools.lru_cache(maxsize=None)
def _content_key(data):
    """A hash of every image below ``data`` (relative path, size and BLAKE2b digest: util.io.provenance), so
    that the splits cached in the work folder follow the folder's content, not its path."""
    from util.io.provenance import fingerprint_below

    return _hash([[rel, (fingerprint_below(data, rel) or {}).get('hash')] for rel in fileio.list_images(data)])


def make_split(runner, cfg, seed, k):
    """An ImageFolder train/val pair for (seed, k labels per class); k = 0 means all. Returns its folder (made
    under the work folder's data lock: another bench/transfer.py sharing --work never removes one being made)."""
    with run_lock(os.path.join(runner.work, 'data.lock'), f'the split of seed {seed}, {k} labels', runner.log):
        return _make_split(runner, cfg, seed, k)


def _make_split(runner, cfg, seed, k):
    kk = 0 if k == 'all' else int(k)
    if cfg['data'] is None:
        key = _hash(['digits', seed, kk, cfg['val_fraction'], cfg['max_test']])
        out = os.path.join(runner.work, 'data', f'digits_s{seed}_k{k}_{key}')
        if not os.path.isfile(os.path.join(out, 'export.json')):
            if os.path.isdir(out):
                shutil.rmtree(out)
            # what scripts/export_digits.py does, in this process (saves a Python start per split)
            from util.io.digits import export_digits

            export_digits(out, labels_per_class=kk, val_fraction=cfg['val_fraction'], size=32, seed=seed)
            _cap_test(os.path.join(out, 'val'), cfg['max_test'], seed)
        return out
    data = os.path.abspath(cfg['data'])
    key = _hash([_content_key(data), seed, kk, cfg['val_fraction'], cfg['max_test']])  # the content, not the path
    out = os.path.join(runner.work, 'data', f'{os.path.basename(data)}_s{seed}_k{k}_{key}')
    done = os.path.join(out, 'split.json')
    if os.path.isfile(done):
        return out
    if os.path.isdir(out):
        shutil.rmtree(out)
    has_split = os.path.isdir(os.path.join(data, 'train')) and os.path.isdir(os.path.join(data, 'val'))
    pool_root = os.path.join(data, 'train') if has_split else data
    files, targets = _list_folder(pool_root)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        if not has_split:
            n_test = int(round(len(idx) * cfg['val_fraction']))
            if n_test < 1 or n_test >= len(idx):
                raise UserError(
                    f"--data: class {os.path.dirname(files[idx[0]])!r} of {pool_root} has {len(idx)} image(s): "
                    f"--val_fraction {cfg['val_fraction']} holds out {n_test} for testing, leaving "
                    f"{len(idx) - n_test} to train; give each class enough images for both (or train/ and val/)"
                )
            test.extend(idx[:n_test])
            idx = idx[n_test:]
        if kk:
            if kk > len(idx):
                raise UserError(f"--labels {kk}: a class of {pool_root} has only {len(idx)} training images")
            idx = idx[:kk]
        train.extend(idx)
    for i in train:
        _link_or_copy(os.path.join(pool_root, files[i]), os.path.join(out, 'train', files[i]))
    if has_split:
        vfiles, _ = _list_folder(os.path.join(data, 'val'))
        for rel in vfiles:
            _link_or_copy(os.path.join(data, 'val', rel), os.path.join(out, 'val', rel))
    else:
        for i in test:
            _link_or_copy(os.path.join(pool_root, files[i]), os.path.join(out, 'val', files[i]))
    _cap_test(os.path.join(out, 'val'), cfg['max_test'], seed)
    fileio.write_json(done, {'data': data, 'seed': seed, 'labels_per_class': kk, 'train': len(train)})
    return out


# ------------------------------------------------------------------------------------------ the probe's pool
def _eval_tensor(pils, size, resize_to_square=False):
    """Normalised float tensor [N, 3, S, S]: fine-tuning's evaluation transform (Resize + CenterCrop), or
    pretraining's (Resize to S x S) with ``resize_to_square``."""
    import torch
    import torchvision.transforms as T

    from util.train.datasets import NORMALIZE

    if resize_to_square:
        tf = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(), NORMALIZE])
    else:
        tf = T.Compose(
            [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size), T.ToTensor(), NORMALIZE]
        )
    return torch.stack([tf(im) for im in pils])


def probe_pool(cfg):
    """(images tensor [N,3,S,S], targets [N], fixed test indices or None, description) of the labelled pool:
    all 1797 digits, or every image of --data (its val/ as the fixed test split when it has train/ and val/)."""
    from PIL import Image

    if cfg['data'] is None:
        from util.io.digits import load_digit_images

        imgs, targets = load_digit_images(32)
        pils = [Image.fromarray(x).convert('RGB') for x in imgs]
        return _eval_tensor(pils, cfg['ft_img']), targets, None, 'digits (1797 images)'
    data = os.path.abspath(cfg['data'])
    has_split = os.path.isdir(os.path.join(data, 'train')) and os.path.isdir(os.path.join(data, 'val'))
    roots = [os.path.join(data, 'train'), os.path.join(data, 'val')] if has_split else [data]
    paths, targets, fixed = [], [], []
    classes = None
    for r in roots:
        files, t = _list_folder(r)
        cl = sorted(d for d in os.listdir(r) if os.path.isdir(os.path.join(r, d)))
        if classes is None:
            classes = cl
        elif cl != classes:
            raise UserError(f"--data {data}: train/ and val/ hold different classes")
        if r.endswith('val'):
            fixed = list(range(len(paths), len(paths) + len(files)))
        paths += [os.path.join(r, f) for f in files]
        targets += t.tolist()
    pils = [fileio.load_image(q, 'RGB') for q in paths]
    return (
        _eval_tensor(pils, cfg['ft_img']),
        np.asarray(targets, np.int64),
        np.asarray(fixed, np.int64) if has_split else None,
        f'{data} ({len(paths)} images)',
    )
