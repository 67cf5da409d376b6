"""bench/transfer.py's statistics: the fine-tuning table, per init mean and sd, and paired margins with their
standard error (the pretraining seed as the unit when there are several)."""

import math

import numpy as np

from bench.transfer_presets import MARGINS

FT_SE_FORMULA = (
    'one pretraining per init: s.e. = sd(d_s) / sqrt(n) over fine-tuning seeds s (paired differences d_s; the '
    'pretraining\'s own seed variation is not included)'
)
FT_SE_CLUSTERED = (
    's.e. = sd_p(d_p) / sqrt(P): fine-tuning seed s uses pretraining seed p = s mod P; d_p = mean paired difference '
    'over the fine-tuning seeds of pretraining seed p (the pretraining seed is the unit)'
)


def summarise(runs, labels, inits, seeds, pre_seeds=1):
    """{k: {'inits': {init: {mean, std, n, values}}, 'margins': {name: {mean, se, n, diffs}}}} from the runs.

    With ``pre_seeds`` P > 1 fine-tuning seed s starts from pretraining seed s mod P, and each margin's s.e. is
    taken over the P pretraining seeds (:data:`FT_SE_CLUSTERED`; equal to the plain formula when P = seeds)."""
    table = {}
    for k in labels:
        by = {(r['init'], r['seed']): r['top1'] for r in runs if r['labels'] == k}
        cell = {'inits': {}, 'margins': {}}
        for init in inits:
            vals = [by[(init, s)] for s in seeds if (init, s) in by]
            cell['inits'][init] = {
                'mean': float(np.mean(vals)),
                'std': float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                'n': len(vals),
                'values': vals,
            }
        for a, b in MARGINS:
            if a in inits and b in inits:
                paired = [s for s in seeds if (a, s) in by and (b, s) in by]
                d = [by[(a, s)] - by[(b, s)] for s in paired]
                units = d
                if pre_seeds > 1:
                    units = [
                        float(np.mean([x for s, x in zip(paired, d) if s % pre_seeds == p]))
                        for p in range(pre_seeds)
                        if any(s % pre_seeds == p for s in paired)
                    ]
                se = float(np.std(units, ddof=1) / math.sqrt(len(units))) if len(units) > 1 else float('nan')
                m = float(np.mean(units))
                cell['margins'][f'{a}-{b}'] = {
                    'mean': m,
                    'se': se,
                    'n': len(d),
                    'diffs': d,
                    'unit_diffs': units,
                    'beyond_2se': bool(len(units) > 1 and m > 2 * se),
                }
        table[k] = cell
    return table
