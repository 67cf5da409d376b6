"""Metrics in numpy.  Classification: confusion matrix, per-class precision/recall/F1, top-k accuracy and the
Matthews correlation coefficient (multi-class, Gorodkin's R_K), with scikit-learn's conventions (a ratio
whose denominator is 0 counts as 0).  Regression: R^2 of label vectors, the one definition every caller uses
(:func:`r_squared` on whole arrays, :func:`r_squared_of_sums` for sums gathered batch by batch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def r_squared_of_sums(sse: float, sst: float) -> float:
    """R^2 = 1 - ``sse`` / ``sst``: the sum of squared errors over the total sum of squares, both summed over
    every output (each output's squares taken about its own mean); NaN when ``sst`` is not positive (targets
    that never vary leave nothing to explain)."""
    return 1.0 - float(sse) / float(sst) if sst > 0 else float('nan')


def r_squared(pred: ArrayLike, target: ArrayLike) -> float:
    """R^2 of predictions ``pred`` for ``target`` (arrays or CPU tensors ``[N, D]``), in float64: one number over
    all outputs, 1 - SSE / SST with SST around each output's mean (:func:`r_squared_of_sums`)."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    sse = np.sum((pred - target) ** 2)
    sst = np.sum((target - target.mean(axis=0, keepdims=True)) ** 2)
    return r_squared_of_sums(sse, sst)


def confusion_matrix(truth: np.ndarray | Sequence[int], pred: np.ndarray | Sequence[int], n_classes: int) -> np.ndarray:
    """``[n, n]`` counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(truth, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def _ratio(num, den):
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """{'precision', 'recall', 'f1', 'support'}: arrays over the classes of the confusion matrix ``cm``."""
    tp = np.diag(cm).astype(float)
    precision = _ratio(tp, cm.sum(axis=0))
    recall = _ratio(tp, cm.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {'precision': precision, 'recall': recall, 'f1': f1, 'support': cm.sum(axis=1)}


def matthews_corrcoef(cm: np.ndarray) -> float:
    """Multi-class Matthews correlation of a confusion matrix (0 when undefined)."""
    cm = np.asarray(cm, dtype=float)
    t, p, c, s = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm), cm.sum()
    den = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    return float((c * s - t @ p) / den) if den > 0 else 0.0


def topk_accuracy(truth: np.ndarray | Sequence[int], ranked: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the first ``k`` of ``ranked`` ([N, >= k] class indices)."""
    ranked = np.asarray(ranked)[:, :k]
    return float(np.mean(np.any(ranked == np.asarray(truth)[:, None], axis=1))) if len(ranked) else 0.0


def classification_report(truth: np.ndarray | Sequence[int], ranked: np.ndarray, names: Sequence[str]) -> dict:
    """Everything above as a dict: ``confusion`` (list of rows), ``per_class`` (rows of name, precision,
    recall, f1, support), ``macro``/``weighted`` averages over the classes present in ``truth`` or the
    predictions, ``accuracy`` (top-1), ``top5`` (top-min(5, k)), ``mcc``."""
    truth = np.asarray(truth, dtype=np.int64)
    ranked = np.asarray(ranked, dtype=np.int64).reshape(len(truth), -1)
    cm = confusion_matrix(truth, ranked[:, 0], len(names))
    pc = per_class(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    support = pc['support']
    avg = {}
    for kind, w in (('macro', present.astype(float)), ('weighted', support.astype(float))):
        avg[kind] = {m: float(np.sum(pc[m] * w) / w.sum()) if w.sum() else 0.0 for m in ('precision', 'recall', 'f1')}
    k5 = min(5, ranked.shape[1])
    return {
        'confusion': cm.tolist(),
        'per_class': [
            {
                'class': n,
                'precision': float(pc['precision'][i]),
                'recall': float(pc['recall'][i]),
                'f1': float(pc['f1'][i]),
                'support': int(support[i]),
            }
            for i, n in enumerate(names)
        ],
        'macro': avg['macro'],
        'weighted': avg['weighted'],
        'accuracy': topk_accuracy(truth, ranked, 1),
        'top5': topk_accuracy(truth, ranked, k5),
        'top5_k': k5,
        'mcc': matthews_corrcoef(cm),
        'n': int(len(truth)),
    }


def format_report(report: dict) -> str:
    """The report as text: confusion matrix, per-class table, averages, top-1/top-5 and MCC."""
    names = [r['class'] for r in report['per_class']]
    width = max([len(n) for n in names] + [8])
    cm = report['confusion']
    cw = max([len(str(v)) for row in cm for v in row] + [3])
    lines = ['confusion matrix (rows: true class, columns: predicted, in the order of the rows)']
    for n, row in zip(names, cm):
        lines.append(f"{n:>{width}} " + ' '.join(f"{v:>{cw}}" for v in row))
    lines += ['', f"{'':>{width}} precision    recall        f1   support"]
    for r in report['per_class']:
        lines.append(f"{r['class']:>{width}} {r['precision']:9.3f} {r['recall']:9.3f} {r['f1']:9.3f} {r['support']:9d}")
    for kind in ('macro', 'weighted'):
        a = report[kind]
        lines.append(
            f"{kind + ' avg':>{width}} {a['precision']:9.3f} {a['recall']:9.3f} {a['f1']:9.3f} {report['n']:9d}"
        )
    lines += [
        '',
        f"top-1 accuracy {100 * report['accuracy']:.2f}%, top-{report['top5_k']} accuracy "
        f"{100 * report['top5']:.2f}%, Matthews correlation {report['mcc']:.4f} ({report['n']} images)",
    ]
    return '\n'.join(lines) + '\n'
