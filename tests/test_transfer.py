"""bench/transfer.py: the tiny preset end to end (every table cell traced to a real fine-tuning run), and the
random-target control through the product's --label_type random."""

import json
import os

import numpy as np
import pytest

from bench import transfer
from bench.transfer_presets import RATE_PRETRAIN_S_PER_K
from util.ph.labels import load_label_matrix

# the shared runs of the whole evaluation (their own limits: 600 s and 900 s) start in a test's setup
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """One tiny run of the whole evaluation (shared by the tests below): (result dict, stdout, work dir)."""
    import subprocess
    import sys

    base = tmp_path_factory.mktemp('transfer')
    work, out = base / 'work', base / 'out'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(transfer._ROOT, 'bench', 'transfer.py'),
            '--preset',
            'tiny',
            '--work',
            str(work),
            '--out',
            str(out),
            '--name',
            'test',
        ],
        cwd=transfer._ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    with open(out / 'transfer_test.json', encoding='utf-8') as f:
        result = json.load(f)
    assert (out / 'transfer_test.png').stat().st_size > 0
    assert (out / 'transfer_test.md').read_text(encoding='utf-8').count('\n') >= 6
    return result, res.stdout, work


def test_table_structure(tiny_run):
    result, stdout, _ = tiny_run
    labels = result['settings']['labels']
    seeds = result['seeds']
    assert labels == transfer.PRESETS['tiny']['labels'] and seeds == list(range(transfer.PRESETS['tiny']['seeds']))
    assert set(result['table']) == set(labels)
    for k in labels:
        cell = result['table'][k]
        assert set(cell['inits']) == {'scratch', 'ph', 'random'}
        assert set(cell['margins']) == {'ph-scratch', 'ph-random', 'random-scratch'}
        for init, stats in cell['inits'].items():
            values = [r['top1'] for r in result['runs'] if r['labels'] == k and r['init'] == init]
            assert stats['n'] == len(seeds) == len(values)
            assert stats['mean'] == pytest.approx(np.mean(values))
            assert stats['std'] == pytest.approx(np.std(values, ddof=1))
        for name, m in cell['margins'].items():
            a, b = name.split('-')
            by = {(r['init'], r['seed']): r['top1'] for r in result['runs'] if r['labels'] == k}
            diffs = [by[(a, s)] - by[(b, s)] for s in seeds]  # paired by seed
            assert m['diffs'] == pytest.approx(diffs)
            assert m['se'] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
            assert m['beyond_2se'] == (m['mean'] > 2 * m['se'])
    # the printed table: one row per init and per margin, a column per labels level
    rows = [line for line in stdout.splitlines() if line.startswith('| ')]
    assert len(rows) == 1 + 3 + 3 and all(line.count('|') == len(labels) + 2 for line in rows)


def test_every_cell_is_a_real_finetuning_run(tiny_run):
    result, _, work = tiny_run
    pre = result['pretraining']
    assert set(pre) == {'ph', 'random'}
    for init, p in pre.items():
        assert os.path.isfile(p['weights']) and p['weights'].startswith(str(work))
        with open(os.path.join(p['run_dir'], 'args.json'), encoding='utf-8') as f:
            pargs = json.load(f)
        assert pargs['learning_mode'] == 'pretraining'
        expected_pd = result['files']['ph_labels_used'] if init == 'ph' else result['files']['random_dir']
        assert os.path.samefile(pargs['path2PHdir'], expected_pd) and pargs['precomputed']
    seen_dirs = set()
    for r in result['runs']:
        assert r['run_dir'] not in seen_dirs  # one fine-tuning run per cell
        seen_dirs.add(r['run_dir'])
        with open(r['metrics_file'], encoding='utf-8') as f:
            metrics = json.load(f)
        assert os.path.dirname(r['metrics_file']) == r['run_dir']
        assert metrics['mode'] == 'finetuning' and metrics['val_acc1'] == r['top1']
        assert metrics['val_images'] == r['val_images'] > 0
        with open(os.path.join(r['run_dir'], 'args.json'), encoding='utf-8') as f:
            fargs = json.load(f)
        assert fargs['seed'] == r['seed'] and fargs['epochs'] == r['epochs']
        weights = fargs.get('path2weight') or None
        if r['init'] == 'scratch':
            assert weights is None
        else:
            assert os.path.samefile(weights, pre[r['init']]['weights'])
        assert os.path.isfile(os.path.join(r['run_dir'], f"ft_{result['settings']['arch']}_epoch{r['epochs']}.pth"))
        # the labelled subset has k images per class
        train = fargs['train']
        classes = sorted(os.listdir(train))
        assert len(classes) == 10
        assert all(len(os.listdir(os.path.join(train, c))) == int(r['labels']) for c in classes)
    # same subset for every init of one (labels, seed): the pairing is real
    for k in result['settings']['labels']:
        for s in result['seeds']:
            subsets = set()
            for r in result['runs']:
                if r['labels'] == k and r['seed'] == s:
                    with open(os.path.join(r['run_dir'], 'args.json'), encoding='utf-8') as f:
                        subsets.add(json.load(f)['train'])
            assert len(subsets) == 1


def test_random_targets_come_from_the_product_flag(tiny_run):
    """The control is PHdict.py --label_type random, read by pretraining.py --label_type random."""
    from util.ph import random_targets

    result, _, _ = tiny_run
    dims = result['settings']['dims']
    rand = result['files']['random_dir']
    matrix, names = load_label_matrix(
        os.path.join(rand, 'labels_random.npy'), os.path.join(rand, 'labels_random.txt'), expected_dim=dims
    )
    assert matrix.shape == (result['settings']['n_images'], dims)
    keys = [random_targets.image_key(n) for n in names]
    np.testing.assert_array_equal(matrix, random_targets.random_matrix(0, keys, dims))
    with open(os.path.join(result['pretraining']['random']['run_dir'], 'args.json'), encoding='utf-8') as f:
        pargs = json.load(f)
    assert pargs['label_type'] == 'random' and pargs['numof_classes'] == dims and pargs['seed'] == 0


def test_contrastive_inits_run_and_are_in_the_table(tmp_path):
    """--inits contrastive: pretraining.py -lm contrastive --ph_weight 0 on the same images and budget (no label
    read), beside contrastive_ph (--ph_weight 1 on the PH labels) and contrastive_shuffled (on the shuffled PH
    labels); the table has their rows and the margins of PH beside contrastive over both controls."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, os.path.join(transfer._ROOT, 'bench', 'transfer.py'), '--preset', 'tiny', '--seeds', '1']
        + ['--inits', 'scratch', 'contrastive', 'contrastive_ph', 'contrastive_shuffled', '--r2_images', '4']
        + ['--work', str(tmp_path / 'work'), '--out', str(tmp_path / 'out'), '--name', 'c'],
        cwd=transfer._ROOT,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((tmp_path / 'out' / 'transfer_c.json').read_text(encoding='utf-8'))
    cell = result['table']['3']
    assert set(cell['inits']) == {'scratch', 'contrastive', 'contrastive_ph', 'contrastive_shuffled'}
    assert {'contrastive_ph-contrastive', 'contrastive_ph-contrastive_shuffled'} <= set(cell['margins'])
    for row in ('| contrastive alone |', '| PH beside contrastive − contrastive alone, paired |'):
        assert row in res.stdout
    by_seed, pre = result['pretraining_by_seed'], {}
    for init in ('contrastive', 'contrastive_ph', 'contrastive_shuffled'):
        with open(os.path.join(by_seed[init][0]['run_dir'], 'args.json'), encoding='utf-8') as f:
            pre[init] = json.load(f)
        assert pre[init]['learning_mode'] == 'contrastive'
        assert os.path.samefile(pre[init]['train'], result['files']['images'])  # the same images
        assert pre[init]['epochs'] == result['settings']['pre_epochs']  # the same budget
    assert pre['contrastive']['ph_weight'] == 0 and not pre['contrastive']['path2PHdir']
    assert pre['contrastive_ph']['ph_weight'] == 1 and pre['contrastive_shuffled']['ph_weight'] == 1
    assert os.path.samefile(pre['contrastive_ph']['path2PHdir'], result['files']['ph_dir'])
    assert os.path.samefile(pre['contrastive_shuffled']['path2PHdir'], result['files']['shuffled_dirs'][0])
    assert set(result['heldout_r2']['inits']) == {'contrastive_ph', 'contrastive_shuffled'}


@pytest.fixture(scope='module')
def probe_run(tmp_path_factory):
    """One tiny probe-only run with two pretraining seeds and the shuffled / generator-parameter controls."""
    import subprocess
    import sys

    base = tmp_path_factory.mktemp('transfer_probe')
    work, out = base / 'work', base / 'out'
    res = subprocess.run(
        [sys.executable, os.path.join(transfer._ROOT, 'bench', 'transfer.py'), '--preset', 'tiny']
        + ['--probe', '--no-finetune', '--pre_seeds', '2', '--r2_images', '8']
        + ['--inits', 'scratch', 'ph', 'random', 'shuffled', 'genparams']
        + ['--work', str(work), '--out', str(out), '--name', 'probe'],
        cwd=transfer._ROOT,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    with open(out / 'transfer_probe.json', encoding='utf-8') as f:
        result = json.load(f)
    return result, res.stdout


def _args_of(run_dir):
    with open(os.path.join(run_dir, 'args.json'), encoding='utf-8') as f:
        return json.load(f)


def test_probe_table_pairs_subsets_and_takes_the_pretraining_seed_as_the_unit(probe_run):
    from bench import probe

    result, stdout = probe_run
    rec = result['probe']
    # a progress line per finished run: 4 inits x 2 pretraining seeds pretrained, 5 x 2 networks probed
    lines = [line for line in stdout.splitlines() if line.startswith('progress ')]
    assert [line.split(':')[0] for line in lines] == [f'progress {i}/18' for i in range(1, 19)], lines
    assert sum(': probe (' in line for line in lines[8:]) == 10 and lines[-1].endswith('; 0 left')
    assert result['runs'] == [] and result['table'] is None  # --no-finetune
    P, J = 2, transfer.PRESETS['tiny']['subsets']
    assert rec['pre_seeds'] == P and rec['subsets_per_seed'] == J
    inits = ['scratch', 'ph', 'random', 'shuffled', 'genparams']
    for clf in ('logreg', 'knn'):
        for k in result['settings']['labels']:
            cell = rec['table'][clf][k]
            assert set(cell['inits']) == set(inits)
            assert set(cell['margins']) == {'ph-scratch', 'ph-random', 'ph-shuffled', 'ph-genparams', 'random-scratch'}
            for init in inits:
                acc = np.asarray(rec['acc'][init][k][clf])
                assert acc.shape == (P, J) and np.all((acc >= 0) & (acc <= 100))
                assert cell['inits'][init]['mean'] == pytest.approx(acc.mean())
            for name, m in cell['margins'].items():
                a, b = name.split('-')
                d = (np.asarray(rec['acc'][a][k][clf]) - np.asarray(rec['acc'][b][k][clf])).mean(axis=1)
                assert m['unit_diffs'] == pytest.approx(d)
                assert m['se'] == pytest.approx(np.std(d, ddof=1) / np.sqrt(P))
    # different pretraining seeds give different networks: their probes differ
    assert rec['acc']['ph'][k]['logreg'][0] != rec['acc']['ph'][k]['logreg'][1]
    assert probe.SE_FORMULA in stdout and 'untrained network' in stdout


def test_pretraining_seeds_and_the_controls_labels(probe_run):
    """Each init is pretrained with --seed 0..P-1; shuffled reads a row permutation of the PH matrix (same flags,
    same label type); genparams reads the generator's parameters of the same images."""
    from bench import probe

    result, _ = probe_run
    by_seed = result['pretraining_by_seed']
    assert set(by_seed) == {'ph', 'random', 'shuffled', 'genparams'}
    weights = set()
    for init, recs in by_seed.items():
        assert [_args_of(r['run_dir'])['seed'] for r in recs] == [0, 1]
        weights.update(r['weights'] for r in recs)
    assert len(weights) == 8
    lt = result['settings']['label_type']
    ph_matrix, ph_names = load_label_matrix(
        *(os.path.join(result['files']['ph_dir'], f'labels_{lt}.{e}') for e in ('npy', 'txt')),
        expected_dim=result['settings']['dims'],
    )
    ph_args = _args_of(by_seed['ph'][0]['run_dir'])
    for p, d in enumerate(result['files']['shuffled_dirs']):
        m, names = load_label_matrix(
            *(os.path.join(d, f'labels_{lt}.{e}') for e in ('npy', 'txt')), expected_dim=result['settings']['dims']
        )
        assert names == ph_names and not np.array_equal(m, ph_matrix)
        assert sorted(map(tuple, np.asarray(m))) == sorted(map(tuple, np.asarray(ph_matrix)))
        sargs = _args_of(by_seed['shuffled'][p]['run_dir'])
        assert os.path.samefile(sargs['path2PHdir'], d) and sargs['precomputed']
        assert sargs['label_type'] == ph_args['label_type'] == lt
        assert sargs['numof_classes'] == ph_args['numof_classes']
    gp = result['files']['genparams_dir']
    names, raw = probe.genparams_matrix(result['files']['images'])
    z, _, _ = probe.standardise_columns(raw)
    m, gnames = load_label_matrix(
        os.path.join(gp, 'labels_random.npy'), os.path.join(gp, 'labels_random.txt'), len(probe.GENPARAM_NAMES)
    )
    assert gnames == names
    np.testing.assert_allclose(np.asarray(m), z, rtol=1e-5, atol=1e-5)
    gargs = _args_of(by_seed['genparams'][1]['run_dir'])
    assert os.path.samefile(gargs['path2PHdir'], gp) and gargs['numof_classes'] == len(probe.GENPARAM_NAMES)


def test_heldout_r2_on_fresh_images(probe_run):
    result, stdout = probe_run
    r2 = result['heldout_r2']
    assert r2['n'] == 8 and set(r2['inits']) == {'ph', 'random', 'shuffled', 'genparams'}
    # fresh: generated with another seed than the pretraining images, the same image settings
    fresh, seen = _args_of_images(r2['images']), _args_of_images(result['files']['images'])
    assert fresh['seed'] != seen['seed'] and fresh['img_size'] == seen['img_size']
    for init, r in r2['inits'].items():
        assert len(r['per_seed']) == 2
        for x in r['per_seed']:
            assert np.isfinite(x['r2']) and np.isfinite(x['r2_beyond_pc1'])
        assert r['r2'] == pytest.approx(np.mean([x['r2'] for x in r['per_seed']]))
    assert 'held-out R²' in stdout


def _args_of_images(folder):
    with open(os.path.join(folder, 'args.json'), encoding='utf-8') as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------ the documented commands
DOCS = ('README.md', 'BENCHMARKS.md')
COMMAND = 'python bench/transfer.py'
# appended to every documented command (later flags win): tiny sizes, one seed, on the CPU
TINY_FLAGS = (
    '--n_images 24 --gen_size 24 --pre_img 24 --pre_crop 20 --pre_epochs 1 --pre_batch 12 --ft_img 16 --ft_batch 32 '
    '--ft_samples 32 --ft_min_epochs 1 --ft_max_epochs 1 --labels 3 --seeds 1 --pre_seeds 1 --subsets 2 '
    '--r2_images 6 --max_test 40 --jobs 2 --workers 1'
).split()


def documented_commands(root=transfer._ROOT):
    """[(file:line, argv after bench/transfer.py)] of every ``python bench/transfer.py ...`` the docs show: in
    inline code (which may run over several lines) or in an indented code block (continued by a trailing \\)."""
    import re
    import shlex

    found = []
    for doc in DOCS:
        text = open(os.path.join(root, doc), encoding='utf-8').read()
        for m in re.finditer(re.escape(COMMAND), text):
            line = text.count('\n', 0, m.start()) + 1
            if text[m.start() - 1] == '`':  # inline code: up to the closing backtick
                cmd = text[m.end() : text.index('`', m.end())]
            else:  # a code block line, and those it continues
                end = m.end()
                while True:
                    nl = text.find('\n', end)
                    nl = len(text) if nl < 0 else nl
                    if not text[end:nl].rstrip().endswith('\\'):
                        break
                    end = nl + 1
                cmd = text[m.end() : nl].replace('\\\n', ' ').split(' #')[0]
            found.append((f'{doc}:{line}', shlex.split(cmd.replace('\n', ' '))))
    return found


def test_the_docs_show_transfer_commands():
    """The parser finds the commands the docs show (the README's probe screen with its --ph_extra among them)."""
    cmds = documented_commands()
    assert len(cmds) >= 5
    assert any('--ph_extra' in argv and f.startswith('README') for f, argv in cmds)
    for _, argv in cmds:
        transfer.get_args_parser().parse_args(argv)  # each is a command line of the script


@pytest.fixture(scope='module')
def docs_data(tmp_path_factory):
    """A folder to run the commands in, holding a tiny two-class data/<name>/{train,val} for any --data they
    name (relative paths, as the README's `data/pathmnist_64`)."""
    from PIL import Image

    base = tmp_path_factory.mktemp('docs_commands')
    rng = np.random.default_rng(0)
    for _, argv in documented_commands():
        if '--data' in argv:
            for split, n in (('train', 5), ('val', 3)):
                for c in ('a', 'b'):
                    d = base / argv[argv.index('--data') + 1] / split / c
                    d.mkdir(parents=True, exist_ok=True)
                    for i in range(n):
                        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f'{i}.png')
    return base


def test_every_documented_transfer_command_runs(docs_data):
    """Every `python bench/transfer.py ...` of README.md and BENCHMARKS.md, as shown, shrunk to tiny sizes by
    flags appended after it (and on the CPU): exit 0 and its result written.  Commands that differ only in
    --name run once; all share one --work (as a user's would).  With --ph_extra, the PH pretraining was given
    the label flags the labels were made with (README item: its -pd check refused them otherwise)."""
    import subprocess
    import sys

    import torch

    work, out = docs_data / 'work', docs_data / 'results'
    done = {}
    for where, argv in documented_commands():
        full = argv + TINY_FLAGS + ['--work', str(work), '--out', str(out), '--name', 'docs']
        if '--device' in argv and not torch.cuda.is_available():
            full += ['--device', 'cpu']
        key = json.dumps(transfer.resolve(transfer.get_args_parser().parse_args(full)), sort_keys=True)
        if key in done:
            continue
        res = subprocess.run(
            [sys.executable, os.path.join(transfer._ROOT, 'bench', 'transfer.py')] + full,
            cwd=docs_data,
            env={k: v for k, v in dict(os.environ, OMP_NUM_THREADS='1').items() if k != 'OUT'},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert res.returncode == 0, f"{where}: {' '.join(argv)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        with open(out / 'transfer_docs.json', encoding='utf-8') as f:
            result = json.load(f)
        done[key] = where
        assert result['settings']['ph_extra'] == transfer.get_args_parser().parse_args(argv).ph_extra
        if transfer.resolve(transfer.get_args_parser().parse_args(full))['ph_label_flags']:
            ph_args = _args_of(result['pretraining_by_seed']['ph'][0]['run_dir'])
            given = transfer.get_args_parser().parse_args(argv).ph_extra.split()
            for flag, value in zip(given[::2], given[1::2]):
                assert ph_args[flag.lstrip('-')] == float(value), (where, flag)
    assert len(done) >= 4, done


# ------------------------------------------------------------------------------------------ the clock
def _estimate_cfg(**over):
    cfg = dict(transfer.PRESETS['screen'], inits=['scratch', 'ph', 'random'], threads=1, device=None)
    return dict(cfg, n_images=1000, pre_epochs=4, pre_crop=40, pre_seeds=3, jobs=2, r2_images=0, **over)


def test_screen_estimate_scales_with_the_rates_it_is_given():
    """Given rates -> predicted minutes: 3 seeds of one recipe init, 2 at a time, are 2 rounds of one pretraining
    (4000 image-epochs at 40 px x 10 s per 1000 = 40 s); from nothing the control (random) shares the rounds
    (6 runs in 3);
    PH labels and probes add their own rates' share."""
    cfg = _estimate_cfg()
    new, cold = transfer.screen_estimate(cfg, rates={'pretraining': 10.0, 'prepare': 0.0, 'probe': 0.0})
    assert new == pytest.approx(80 / 60) and cold == pytest.approx(120 / 60)  # 6 pretrainings: 3 rounds
    new2, cold2 = transfer.screen_estimate(cfg, rates={'pretraining': 20.0, 'prepare': 0.0, 'probe': 0.0})
    assert (new2, cold2) == pytest.approx((2 * new, 2 * cold))
    with_rest = transfer.screen_estimate(cfg, rates={'pretraining': 10.0, 'prepare': 6.0, 'probe': 2.0})
    probe_s = 2.0 * 3 * 3 * len(cfg['labels']) * cfg['subsets'] / 10  # 3 seeds x 3 inits networks
    assert with_rest[0] == pytest.approx((80 + 6.0 + probe_s) / 60)
    crop = transfer.screen_estimate(dict(cfg, pre_crop=80), rates={'pretraining': 10.0, 'prepare': 0, 'probe': 0})
    assert crop[0] == pytest.approx(4 * new)  # a crop of twice the side costs four times


def test_estimate_is_calibrated_by_the_durations_recorded_in_the_work_folder(tmp_path):
    """Pretrainings timed in --work (as each finished run records itself) set the next estimate's rate; runs
    made another way (other --jobs) do not; with none recorded the built-in rate is used, and said."""
    from bench import transfer_timing as timing

    cfg = _estimate_cfg()
    rates, basis = timing.measured_rates(timing.read_timings(tmp_path), cfg)
    assert rates['pretraining'] == RATE_PRETRAIN_S_PER_K and 'built-in' in basis['pretraining']
    assert 'finetuning' not in rates  # no built-in rate: unknown until timed
    units = timing.pretraining_units(cfg, 'ph')  # 4 (1000 images x 4 epochs at 40 px)
    for secs in (100.0, 120.0, 400.0):  # median: 120 s -> 30 s per unit
        timing.record_timing(str(tmp_path), cfg, 'pretraining', secs, units)
    timing.record_timing(str(tmp_path), dict(cfg, jobs=1), 'pretraining', 4.0, units)  # not this set-up
    timing.record_timing(str(tmp_path), cfg, 'pretraining', None, units)  # a cached run: nothing recorded
    records = timing.read_timings(tmp_path)
    assert len(records) == 4
    rates, basis = timing.measured_rates(records, cfg)
    assert rates['pretraining'] == pytest.approx(30.0) and basis['pretraining'] == 'measured here (3 runs)'
    new, cold = transfer.screen_estimate(cfg, rates=dict(rates, prepare=0.0, probe=0.0))
    assert new == pytest.approx(2 * 120 / 60) and cold == pytest.approx(3 * 120 / 60)  # rounds of the median run
    assert 'measured here (3 runs)' in timing.basis_text(rates, basis)
    (tmp_path / timing.TIMINGS).write_text('{not json', encoding='utf-8')  # a damaged file: built-in rates again
    assert timing.measured_rates(timing.read_timings(tmp_path), cfg)[0]['pretraining'] == RATE_PRETRAIN_S_PER_K


def test_progress_line_counts_runs_and_projects_the_end():
    """Each finished run prints what it was, how long it took, how many are left and the expected end: the
    runs left times the measured mean of their kind (before one is timed: the fallback), divided by the runs
    made at a time."""
    import time

    from bench import transfer_timing as timing

    lines, now = [], 1_000_000.0
    prog = timing.Progress(
        {'pretraining': 3, 'probe': 2},
        {'pretraining': 100.0, 'probe': 10.0},
        {'pretraining': 2, 'probe': 1},
        lines.append,
        clock=lambda: now,
    )
    end = lambda secs: time.strftime('%H:%M', time.localtime(now + secs))  # noqa: E731
    prog.done('pretraining', 'PH labels, seed 0', 60.0)
    # 2 pretrainings left at the measured 60 s, 2 at a time (60 s), then 2 probes at the fallback 10 s (20 s)
    assert lines[-1] == f"progress 1/5: pretraining (PH labels, seed 0) took 60 s; 4 left, expected end {end(80)}"
    prog.done('pretraining', 'random targets, seed 0', None)
    assert 'cached; 3 left' in lines[-1] and end(60 + 20) in lines[-1]  # a cached run adds no duration
    prog.done('pretraining', 'PH labels, seed 1', 180.0)
    prog.done('probe', 'untrained network, seed 0', 30.0)
    assert lines[-1] == f"progress 4/5: probe (untrained network, seed 0) took 30 s; 1 left, expected end {end(30)}"
    prog.done('probe', 'PH labels, seed 0', 30.0)
    assert lines[-1].startswith('progress 5/5: ') and lines[-1].endswith('0 left')
    unknown = timing.Progress({'pretraining': 1, 'finetuning': 2}, {'pretraining': 5.0}, {}, lines.append)
    unknown.done('pretraining', 'PH labels, seed 0', 5.0)
    assert 'expected end after' in lines[-1] and '(finetuning not timed yet)' in lines[-1]


def test_tiny_run_prints_a_progress_line_per_finished_run(tiny_run):
    """The tiny evaluation (2 pretrainings, 2 seeds x 3 inits fine-tunings): one progress line per run, counted
    1..8, the kinds right, and each finished run's duration recorded in the work folder for the next estimate."""
    from bench import transfer_timing as timing

    _, stdout, work = tiny_run
    lines = [line for line in stdout.splitlines() if line.startswith('progress ')]
    assert [line.split(':')[0] for line in lines] == [f'progress {i}/8' for i in range(1, 9)], lines
    assert (
        sum(': pretraining (' in line for line in lines) == 2 and sum(': finetuning (' in line for line in lines) == 6
    )
    assert all(' left, expected end ' in line for line in lines[:-1]) and lines[-1].endswith('; 0 left')
    assert all(' took ' in line for line in lines)  # a fresh work folder: nothing cached
    kinds = [r['kind'] for r in timing.read_timings(work)]
    assert kinds.count('pretraining') == 2 and kinds.count('finetuning') == 6 and kinds.count('prepare') == 1
    assert kinds[-1] == 'evaluation'
