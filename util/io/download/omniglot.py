"""Omniglot's two small background sets (``omniglot_small``) as class folders split by drawer.

The Omniglot repository (brendenlake/omniglot, MIT licence; Lake, Salakhutdinov & Tenenbaum, Science 2015) publishes,
beside the full ``images_background.zip``, two small background sets: ``images_background_small1.zip`` (Balinese,
Early_Aramaic, Greek, Korean, Latin) and ``images_background_small2.zip`` (Greek, Japanese_(katakana), Latin,
Sanskrit, Tagalog).  Greek and Latin are in both, with identical bytes: together 8 alphabets, 242 characters,
4,840 distinct images of 105 x 105 pixels (1-bit PNG, black strokes on white).

Each character was drawn once by each of 20 people; an image's file name is ``<character id>_<drawer>.png`` with
the drawer numbered ``01``..``20``.  The split is **by drawer**, so that no person's hand is on both sides: the
last ``round(20 * val_ratio)`` drawer numbers go to ``val/`` (at least one and at most 19 when ``val_ratio > 0``;
drawers 17-20 at the default 0.2), every other drawer to ``train/``, in every class.  A drawer number is taken as
one person wherever it appears.

Classes are characters: ``<alphabet>_<character folder>`` (``Greek_character01``), so every split holds every
class.  A character found in both archives is written once; two archives giving one file name different bytes
are refused.  The PNGs are copied byte for byte as published (105 x 105, not resized: the training scripts and
``bench/transfer.py`` resize to their ``--img_size``).
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from typing import TYPE_CHECKING

from util.errors import UserError
from util.io.download import archives, converters

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

NAME = 'omniglot_small'
#: the published archives, each with the folder it holds
ARCHIVES = ('images_background_small1.zip', 'images_background_small2.zip')
DRAWERS = 20
_FILE = re.compile(r'(\d+)_(\d+)\.png', re.IGNORECASE)


def val_drawers(val_ratio: float) -> tuple[int, ...]:
    """The drawer numbers written to ``val/`` (the last ``round(20 * val_ratio)``, 1..19 of them when > 0)."""
    n = int(round(val_ratio * DRAWERS))
    if val_ratio > 0:
        n = min(max(n, 1), DRAWERS - 1)
    return tuple(range(DRAWERS - n + 1, DRAWERS + 1))


def drawer_of(file_name: str, where: str) -> int:
    """The drawer number (1..20) in ``<character id>_<drawer>.png``; UserError for any other PNG name."""
    m = _FILE.fullmatch(file_name)
    if not m or not 1 <= int(m.group(2)) <= DRAWERS:
        raise UserError(
            f"{os.path.join(where, file_name)}: an Omniglot image is named <character id>_<drawer>.png with a "
            f"drawer from 01 to {DRAWERS}; cannot split by drawer"
        )
    return int(m.group(2))


def _unpack(archive, raw_dir, progress):
    """The alphabet folder root of one verified archive, unpacked once into ``raw_dir``."""
    set_name = os.path.basename(archive)[: -len('.zip')]
    unpacked = os.path.join(raw_dir, set_name)
    if not os.path.isdir(unpacked):
        if not zipfile.is_zipfile(archive):  # (a whole zip ends with its directory: a cut file has none)
            raise UserError(
                f"{archive} is not a whole zip archive (truncated?); delete it and rerun to download it again"
            )
        archives.extract_once(archive, raw_dir, progress)
    inner = os.path.join(unpacked, set_name)
    return inner if os.path.isdir(inner) else unpacked


def _same_bytes(a, b):
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        return fa.read() == fb.read()


def collect(roots: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{class: {file name: path}}`` from ``<root>/<alphabet>/<character>/<id>_<drawer>.png`` of every root.

    A character in several roots is one class (its files merged; a file name with different bytes in two roots
    is refused); two characters whose folder names give the same class name are refused.
    """
    classes, origin = {}, {}
    for root in roots:
        for alphabet, char, c_dir in converters.omniglot_characters(root):
            name = converters.safe_class_name(f'{alphabet}_{char}', c_dir)
            if origin.setdefault(name, (alphabet, char)) != (alphabet, char):
                raise UserError(f"{c_dir} and {'/'.join(origin[name])} would both be class {name!r}; rename one folder")
            files = classes.setdefault(name, {})
            for f in sorted(os.listdir(c_dir)):
                path = os.path.join(c_dir, f)
                if f.startswith('.') or not f.lower().endswith('.png') or not os.path.isfile(path):
                    continue
                drawer_of(f, c_dir)
                if f in files and not _same_bytes(files[f], path):
                    raise UserError(f"{files[f]} and {path} are one image of class {name!r} with different bytes")
                files.setdefault(f, path)
    return {c: files for c, files in classes.items() if files}


def split_by_drawer(
    classes: Mapping[str, Mapping[str, str]], val_ratio: float
) -> dict[str, list[tuple[str, str, str]]]:
    """``{'train': [(class, path, file name)], 'val': [...]}``: val holds the files of :func:`val_drawers`.

    A class that would have no image on one side (a partial copy) is left out with a warning, so that
    ``train/`` and ``val/`` hold the same classes.
    """
    to_val = set(val_drawers(val_ratio))
    out = {'train': [], 'val': []}
    for c in sorted(classes):
        sides = {'train': [], 'val': []}
        for f in sorted(classes[c]):
            sides['val' if drawer_of(f, c) in to_val else 'train'].append((c, classes[c][f], f))
        if not sides['train'] or (to_val and not sides['val']):
            print(f"warning: class {c!r} has no image on one side of the drawer split; left out", file=sys.stderr)
            continue
        for split in out:
            out[split].extend(sides[split])
    return out


def convert(
    raw_paths: Mapping[str, str], raw_dir: str, out_root: str, val_ratio: float, progress: bool = True
) -> dict[str, dict[str, int] | None]:
    """Unpack the two verified archives of ``raw_paths`` and write ``out_root/{train,val}/<class>/``; returns
    ``{split: {class: count}}`` (None for a split already done)."""
    roots = []
    for filename in ARCHIVES:
        if filename not in raw_paths:
            raise UserError(f"the sources of {NAME} must include a file named {filename!r}")
        roots.append(_unpack(raw_paths[filename], raw_dir, progress))
    classes = collect(roots)
    if not classes:
        raise UserError(f"no images found in the {NAME} archives in {raw_dir}")
    return {
        split: converters.write_folder_split(out_root, split, items, progress)
        for split, items in split_by_drawer(classes, val_ratio).items()
    }
