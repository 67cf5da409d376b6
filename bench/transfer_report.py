"""bench/transfer.py's report: the Markdown tables (fine-tuning, probes, held-out R^2) and the PNG plot."""

import math

from bench.transfer_presets import INIT_NAMES, MARGINS, PROBE_NAMES
from util.io import fileio

ONE_SEED = 'one seed: no s.e.'


def _mean_sd(mean, sd, n):
    """A table cell 'mean ± sd', or 'mean (one seed: no s.e.)' where one seed (the unit) gives no spread."""
    return f"{mean:.1f} ± {sd:.1f}" if n > 1 else f"{mean:.1f} ({ONE_SEED})"


def _margin(mean, se, star=''):
    """A margin cell '+m (s.e. x)', or '+m (one seed: no s.e.)' where its standard error is undefined."""
    return f"{mean:+.1f} (s.e. {se:.1f}){star}" if math.isfinite(se) else f"{mean:+.1f} ({ONE_SEED})"


def format_table(table, labels, inits):
    head = '| init | ' + ' | '.join(f'{k} labels/class' for k in labels) + ' |'
    lines = [head, '|---|' + '---|' * len(labels)]
    for init in inits:
        lines.append(
            f'| {INIT_NAMES[init]} | '
            + ' | '.join(
                _mean_sd(table[k]['inits'][init]['mean'], table[k]['inits'][init]['std'], table[k]['inits'][init]['n'])
                for k in labels
            )
            + ' |'
        )
    names = {f'{a}-{b}': f'{INIT_NAMES[a]} − {INIT_NAMES[b]}, paired' for a, b in MARGINS}
    names.update({'ph-scratch': 'PH − scratch, paired', 'ph-random': 'PH − random targets, paired'})
    names['random-scratch'] = 'random − scratch, paired'
    for m, title in names.items():
        if all(m in table[k]['margins'] for k in labels):
            cells = []
            for k in labels:
                c = table[k]['margins'][m]
                star = ' ✓' if c['beyond_2se'] else ''
                cells.append(_margin(c['mean'], c['se'], star))
            lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(table, labels, inits, path, title):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(len(labels)))
    for j, init in enumerate(inits):
        m = [table[k]['inits'][init]['mean'] for k in labels]
        s = [table[k]['inits'][init]['std'] for k in labels]
        ax.errorbar([x + 0.05 * (j - 1) for x in xs], m, yerr=s, marker='o', capsize=4, label=INIT_NAMES[init])
    ax.set_xticks(xs)
    ax.set_xticklabels(labels)
    ax.set_xlabel('labels per class')
    ax.set_ylabel('top-1 on held-out test (%)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with fileio.atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)


def format_probe(rec, levels, inits):
    lines = []
    for c in ('logreg', 'knn'):
        t = rec['table'][c]
        lines.append(f"\n{'linear probe (logistic regression)' if c == 'logreg' else 'kNN probe'}, top-1 (%)\n")
        lines.append('| init | ' + ' | '.join(f'{k} labels/class' for k in levels) + ' |')
        lines.append('|---|' + '---|' * len(levels))
        for i in inits:
            lines.append(
                f'| {PROBE_NAMES[i]} | '
                + ' | '.join(
                    _mean_sd(t[k]['inits'][i]['mean'], t[k]['inits'][i]['sd_units'], t[k]['inits'][i]['n_units'])
                    for k in levels
                )
                + ' |'
            )
        for a, b in MARGINS:
            name = f'{a}-{b}'
            if all(name in t[k]['margins'] for k in levels):
                cells = []
                for k in levels:
                    m = t[k]['margins'][name]
                    cells.append(_margin(m['mean'], m['se'], ' ✓' if m['beyond_2se'] else ''))
                lines.append(f'| {PROBE_NAMES[a]} − {PROBE_NAMES[b]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def r2_text(x, digits=3):
    """An R² as the table prints it: ``digits`` decimals, or '-' where it is undefined (NaN: targets that never
    vary on the fresh images, or no second component to go beyond)."""
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else '-'


def format_r2(rec):
    lines = [
        f"\nheld-out R² of the pretraining on {rec['n']} fresh images (mean over pretraining seeds)\n",
        '| pretraining target | R² overall | R² beyond PC1 | per seed (overall / beyond PC1) |',
        '|---|---|---|---|',
    ]
    for init, r in rec['inits'].items():
        per = ', '.join(f"{r2_text(x['r2'], 2)} / {r2_text(x.get('r2_beyond_pc1'), 2)}" for x in r['per_seed'])
        lines.append(f"| {INIT_NAMES[init]} | {r2_text(r['r2'])} | {r2_text(r['r2_beyond_pc1'])} | {per} |")
    return '\n'.join(lines)
