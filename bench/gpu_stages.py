"""The three stages of bench/gpu_bench.py: each measures, stores its figures in the :class:`bench.gpu_timing.
Results` as they come (so a timeout keeps them) and prints a line per figure.
"""

import os
import time

import numpy as np

from bench.gpu_accuracy import digits, finetune, held_out_r2, make_pretrain_data, pretrain, split, standardise
from bench.gpu_rates import (
    LABEL_DIM,
    ceiling_rate,
    cripser_floor,
    histogram_vectoriser,
    label_matrix,
    loader_rate,
    make_jpegs,
    train_args,
    train_rate,
)
from bench.gpu_timing import say, steady_skip


def stage_ceiling(cfg, clock, res):
    for arch in cfg.models:
        if clock.left() < cfg.ceiling_seconds + 10:
            res.data['notes'].append(f"ceiling {arch} skipped: deadline")
            break
        r = ceiling_rate(
            arch,
            cfg.batch_size,
            cfg.ceiling_size,
            cfg.ceiling_seconds,
            cfg.device,
            cfg.amp,
            cfg.channels_last,
            warmup=cfg.warmup,
        )
        res.set('ceiling', arch, r)
        say(
            clock,
            f"ceiling {arch}@{cfg.ceiling_size}: {r['img_s']:.0f} img/s (batch {cfg.batch_size}, "
            f"{'bf16' if cfg.amp else 'fp32'}{' + channels_last' if cfg.channels_last else ''}, "
            f"cudnn.benchmark)",
        )


def stage_pipeline(cfg, clock, res, tmp):
    import torch

    from util.config import AugmentConfig
    from util.ph.generator import GeneratorConfig
    from util.ph.labels import find_label_matrix, label_names, load_label_matrix, write_label_matrix
    from util.train.datasets import ComputedLabels, FolderPH, GeneratedPH, MatrixLabels, pretrain_transforms

    torch.backends.cudnn.benchmark = True  # as pretraining.py runs (util.train.distributed turns it on)
    folder = os.path.join(tmp, 'jpegs')
    os.makedirs(folder)
    rel, gen_rate = make_jpegs(folder, cfg.n_jpegs, cfg.jpeg_size, cfg.workers)
    res.set('pipeline', 'generator_img_s', gen_rate)
    say(clock, f"generated {len(rel)} JPEGs of {cfg.jpeg_size} px: {gen_rate:.0f} img/s with {cfg.workers} processes")
    matrix, lab_rate = label_matrix(folder, rel, cfg.workers)
    floor = cripser_floor(folder, rel, cfg.floor_images, os.cpu_count())
    res.set('pipeline', 'label_precompute_img_s', lab_rate)
    if floor is None:
        res.data['notes'].append("cripser floor skipped: cripser is not installed (no ratios to it)")
        say(clock, f"PH labels (diagrams + histogram): {lab_rate:.0f} img/s; cripser floor skipped (not installed)")
    else:
        res.set('pipeline', 'cripser_floor', floor)
        res.set('pipeline', 'label_precompute_vs_floor', lab_rate / floor['floor_img_s'])
        say(
            clock,
            f"PH labels (diagrams + histogram): {lab_rate:.0f} img/s with {cfg.workers} processes; cripser-only "
            f"floor {floor['floor_img_s']:.0f} img/s ({floor['cores']} cores / {floor['cripser_ms']:.1f} ms; "
            f"Otsu + signed distance {floor['otsu_signed_distance_ms']:.1f} ms) -> "
            f"{lab_rate / floor['floor_img_s']:.2f}x floor",
        )
    # the consolidated label matrix, as PHdict.py --label_type writes it, read back as pretraining.py -pc does
    ph_dir = os.path.join(tmp, 'PH')
    os.makedirs(ph_dir)
    write_label_matrix(ph_dir, label_names('histogram'), matrix, rel, {'label_type': 'histogram'})
    loaded, names = load_label_matrix(*find_label_matrix(ph_dir, 'histogram'), expected_dim=LABEL_DIM)
    loaded = np.array(loaded)  # a writable copy: torch warns about read-only (memory-mapped) label rows
    reps = max(1, -(-cfg.epoch_images // len(rel)))
    long_rel = rel * reps  # one long epoch; the timer stops it
    targs = train_args(cfg.device, cfg.batch_size, cfg.workers, cfg.amp, cfg.channels_last)
    spatial, to_tensor = pretrain_transforms(AugmentConfig(img_size=cfg.jpeg_size, crop_size=cfg.crop_size))
    from_labels = FolderPH(
        folder, long_rel, MatrixLabels(loaded, names, long_rel, 'labels_histogram.npy'), spatial, to_tensor, 'pre'
    )
    # the same image model as the JPEGs the floor was measured on (the README's -pb 0.5 -pc 0.5)
    gcfg = GeneratorConfig(img_size=cfg.jpeg_size, prob_binary=0.5, prob_colour=0.5)
    on_the_fly = GeneratedPH(
        gcfg, 1, cfg.epoch_images, ComputedLabels(histogram_vectoriser(), 'signed_distance'), spatial, to_tensor, 'pre'
    )
    skip = steady_skip(cfg.workers)
    need = cfg.pipeline_seconds + 30 + cfg.reserve_after_pipeline  # leave the accuracy stage its time
    if clock.left() > need:
        r = loader_rate(from_labels, targs, cfg.pipeline_seconds / 2, skip)
        res.set('pipeline', 'from_labels_loader_only', r)
        say(clock, f"loader alone from the label matrix (JPEG decode + crop + tensor): {r['img_s']:.0f} img/s")
    ceilings = res.data['stages'].get('ceiling', {})
    for arch in cfg.models:
        for name, ds in (('from_labels', from_labels), ('on_the_fly', on_the_fly)):
            if clock.left() < need:
                res.data['notes'].append(f"pipeline {name} {arch} skipped: deadline")
                continue
            r = train_rate(ds, arch, targs, cfg.pipeline_seconds, skip)
            ceil = ceilings.get(arch, {}).get('img_s')
            r['vs_ceiling'] = r['img_s'] / ceil if ceil else None
            if name == 'on_the_fly' and floor is not None:
                r['vs_floor'] = r['img_s'] / floor['floor_img_s']
            res.set('pipeline', f'{name}_{arch}', r)
            extra = f", {r['vs_ceiling']:.2f}x ceiling" if ceil else ''
            if 'vs_floor' in r:
                extra += f", {r['vs_floor']:.2f}x cripser floor"
            say(clock, f"pretraining {name.replace('_', ' ')} {arch}@{cfg.crop_size}: {r['img_s']:.0f} img/s{extra}")


def stage_accuracy(cfg, clock, res):
    import torch

    torch.backends.cudnn.benchmark = True
    arch = 'resnet18'
    t = time.perf_counter()
    images, labels = make_pretrain_data(cfg.pre_images, cfg.pre_size, cfg.workers, seed=0)
    z, const = standardise(labels)
    n_hold = max(1, cfg.pre_images // 10)
    res.set(
        'accuracy',
        'pretrain_data',
        dict(
            images=cfg.pre_images,
            size=cfg.pre_size,
            label='histogram',
            label_dim=LABEL_DIM,
            constant_outputs=const,
            held_out=n_hold,
            seconds=time.perf_counter() - t,
        ),
    )
    say(
        clock,
        f"{cfg.pre_images} images of {cfg.pre_size} px with PH histogram labels in "
        f"{time.perf_counter() - t:.1f} s ({const} of {LABEL_DIM} outputs constant)",
    )
    dev = cfg.device
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)
    x_train, x_hold = x_all[:-n_hold], x_all[-n_hold:]
    targets = {
        'ph': torch.from_numpy(z).to(dev),
        'random': torch.randn(z.shape, generator=torch.Generator().manual_seed(12345)).to(dev),
    }
    # steps from the time budget, measured on a throwaway run; both pretrainings get the same steps
    probe_steps = 2 if cfg.tiny else 20
    _, probe = pretrain(
        x_train, targets['ph'][:-n_hold], arch, probe_steps, cfg.pre_batch, dev, cfg.amp, cfg.channels_last
    )
    step_s = probe['seconds'] / probe_steps
    ft_reserve = cfg.ft_reserve
    budget = min(cfg.pre_seconds, max(step_s * 10, (clock.left() - ft_reserve) / 2))
    steps = max(cfg.min_pre_steps, int(budget / step_s))
    res.set(
        'accuracy',
        'pretrain_steps',
        dict(steps=steps, batch=cfg.pre_batch, step_seconds=step_s, epochs=steps * cfg.pre_batch / x_train.shape[0]),
    )
    say(
        clock,
        f"pretraining: {steps} steps of {cfg.pre_batch} ({steps * cfg.pre_batch / x_train.shape[0]:.1f} "
        f"epochs) per label kind, {step_s * 1000:.1f} ms/step",
    )
    backbones = {}
    for kind in ('ph', 'random'):
        model, stats = pretrain(
            x_train, targets[kind][:-n_hold], arch, steps, cfg.pre_batch, dev, cfg.amp, cfg.channels_last
        )
        stats['held_out_r2'] = held_out_r2(model, x_hold, targets[kind][-n_hold:], dev, cfg.amp, cfg.channels_last)
        backbones[kind] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        del model
        res.set('accuracy', f'pretrain_{kind}', stats)
        say(
            clock,
            f"pretrained on {kind} targets: final loss {stats['final_loss']:.3f}, held-out R^2 "
            f"{stats['held_out_r2']:.3f}, {stats['seconds']:.0f} s",
        )
    del x_all, x_train, x_hold, targets
    if str(dev).startswith('cuda'):
        torch.cuda.empty_cache()

    dx, dy = digits(cfg.ft_size)
    dx_t, dy_t = torch.from_numpy(dx).to(dev), torch.from_numpy(dy).to(dev)
    inits = {'scratch': None, 'ph': backbones['ph'], 'random': backbones['random']}
    table = {}
    per_seed_s = None
    for seed in cfg.seeds:
        if per_seed_s is not None and clock.left() < per_seed_s * 1.2:
            res.data['notes'].append(f"accuracy: seeds from {seed} on skipped (deadline)")
            say(clock, f"skipping seeds from {seed} on: deadline")
            break
        t_seed = time.perf_counter()
        for k in cfg.labels_per_class:
            tr, va = split(dy, 0.3, k, seed)
            if cfg.max_val:
                va = np.random.default_rng(seed).permutation(va)[: cfg.max_val]
            tr_t, va_t = torch.from_numpy(tr).to(dev), torch.from_numpy(va).to(dev)
            for name, state in inits.items():
                acc = finetune(
                    state,
                    arch,
                    dx_t[tr_t],
                    dy_t[tr_t],
                    dx_t[va_t],
                    dy_t[va_t],
                    cfg.ft_steps,
                    cfg.ft_batch,
                    dev,
                    cfg.amp,
                    cfg.channels_last,
                    seed=seed,
                )
                table.setdefault(f"{'all' if k <= 0 else k}", {}).setdefault(name, []).append(acc)
        per_seed_s = time.perf_counter() - t_seed
        res.set('accuracy', 'finetune_top1', table)
        res.set(
            'accuracy',
            'finetune_setup',
            dict(
                steps=cfg.ft_steps,
                batch=cfg.ft_batch,
                size=cfg.ft_size,
                seeds_done=len(next(iter(next(iter(table.values())).values()))),
                val_fraction=0.3,
                lr=0.05,
                arch=arch,
            ),
        )
        say(
            clock,
            f"fine-tuning seed {seed} done in {per_seed_s:.0f} s: "
            + '; '.join(f"K={k}: " + ', '.join(f"{n} {v[-1]:.1f}" for n, v in row.items()) for k, row in table.items()),
        )
    summary = {
        k: {
            n: dict(
                mean=float(np.mean(v)),
                std=float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                min=float(np.min(v)),
                max=float(np.max(v)),
                n=len(v),
            )
            for n, v in row.items()
        }
        for k, row in table.items()
    }
    res.set('accuracy', 'summary', summary)
