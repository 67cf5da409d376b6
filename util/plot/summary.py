"""One-page summary of a quickstart-style output folder: what was generated, learnt and measured.

Reads ``<root>/random`` (images), ``<root>/PH_random`` (diagrams, plots), the newest run folders under
``<root>/weights``, ``<root>/finetune_pretrained`` and ``<root>/finetune_scratch``, and writes one PNG page
plus the same numbers as ``summary.json``.
"""

import glob
import json
import os

from util.errors import UserError
from util.io import fileio


def newest_run(folder):
    """The most recently modified run folder under ``folder`` (or None)."""
    runs = [d for d in glob.glob(os.path.join(folder, '*')) if os.path.isdir(d)]
    return max(runs, key=os.path.getmtime) if runs else None


def last_record(run):
    from util.io.runlog import read_log

    records = read_log(os.path.join(run, 'log.jsonl')) if run else []
    return records[-1] if records else {}


def first_file(pattern):
    found = sorted(glob.glob(pattern))
    return found[0] if found else None


DIAG_PNG = 'diagnostics.png'


def label_diagnostics(ph_dir, numbers):
    """Lines describing the ``diagnostics`` of each ``labels_*.json`` in ``ph_dir`` (also put in ``numbers``)."""
    from util.ph import diagnostics

    lines = []
    for js in sorted(glob.glob(os.path.join(ph_dir, 'labels_*.json'))):
        if '.shard-' in js:
            continue
        try:
            with open(js, encoding='utf-8') as f:
                diag = json.load(f).get(diagnostics.JSON_KEY)
        except (OSError, ValueError, AttributeError):
            continue
        if not diag:
            continue
        name = os.path.basename(js)[: -len('.json')]
        numbers.setdefault('label_diagnostics', {})[name] = diag
        lines.append(f"{name}: " + diagnostics.summary_line(diag).split(': ', 1)[-1])
        lines += [f"  warning: {w}" for w in diagnostics.degeneracy_warnings(diag)]
    return lines


def collect(root):
    """(sections for the page, numbers for summary.json)."""
    if not os.path.isdir(root):
        raise UserError(f"{root!r} is not a folder")
    sections, numbers = [], {}
    images = fileio.list_images(os.path.join(root, 'random')) if os.path.isdir(os.path.join(root, 'random')) else []
    numbers['generated_images'] = len(images)
    preview = os.path.join(root, 'random', '.preview.png')
    sections.append(
        (
            f'1. {len(images)} synthetic images (FFT power-law noise, some binarised / coloured)',
            preview if os.path.exists(preview) else 'no preview found',
        )
    )
    plots = [
        p for p in sorted(glob.glob(os.path.join(root, 'PH_random', 'plots', '*.png'))) if not p.endswith(DIAG_PNG)
    ]
    sections.append(
        ('2. image | filtration | persistence diagram | label vector', plots[0] if plots else 'no PH plot found')
    )
    diag_lines = label_diagnostics(os.path.join(root, 'PH_random'), numbers)
    if diag_lines:
        sections.append(('   how much the label says beyond one number (label diagnostics)', '\n'.join(diag_lines)))
        if os.path.exists(os.path.join(root, 'PH_random', 'plots', DIAG_PNG)):
            sections.append(
                ('   variance spectrum of the label matrix', os.path.join(root, 'PH_random', 'plots', DIAG_PNG))
            )

    pre = newest_run(os.path.join(root, 'weights'))
    rec = last_record(pre)
    numbers['pretraining'] = {k: rec.get(k) for k in ('epoch', 'train_loss', 'val_loss', 'val_r2')}
    text = (
        f"3. pretraining ({os.path.relpath(pre, root) if pre else 'missing'}): epoch {rec.get('epoch')}, "
        f"train MSE {rec.get('train_loss', float('nan')):.4g}"
    )
    sections.append((text, os.path.join(pre, 'curves.png') if pre else 'no pretraining run found'))
    if pre and os.path.exists(os.path.join(pre, 'filters.png')):
        sections.append(('   first-layer filters learnt without any real image', os.path.join(pre, 'filters.png')))

    lines = []
    for name in ('finetune_pretrained', 'finetune_scratch'):
        run = newest_run(os.path.join(root, name))
        metrics = {}
        if run and os.path.exists(os.path.join(run, 'metrics.json')):
            with open(os.path.join(run, 'metrics.json'), encoding='utf-8') as f:
                metrics = json.load(f)
        numbers[name] = metrics
        acc = metrics.get('val_acc1')
        lines.append(
            f"{name.replace('finetune_', 'from ')}: top-1 {acc:.1f}%" if acc is not None else f"{name}: not found"
        )
        if name == 'finetune_pretrained' and run:
            numbers['confusion_matrix'] = os.path.join(run, 'confusion_matrix.png')
    sections.append(('4. fine-tuning on real handwritten digits (validation top-1)', '\n'.join(lines)))
    if os.path.exists(numbers.get('confusion_matrix', '')):
        sections.append(('   confusion matrix (PH-pretrained)', numbers['confusion_matrix']))
    return sections, numbers


def write_summary(root, output=None):
    """Render the summary page of ``root`` to ``output`` (default ``root/summary.png``) and its numbers beside it
    as JSON; return ``(png path, numbers)``."""
    from util.plot.plotting import summary_page

    sections, numbers = collect(root)
    out = output or os.path.join(root, 'summary.png')
    summary_page(out, 'Pretraining without real images: quickstart summary', sections)
    fileio.write_json(os.path.splitext(out)[0] + '.json', numbers)
    return out, numbers
