"""The vectorisers of a PHdict run (-ch histogram, -cpi persistence image, the --label_type label) and the fit of
the label's ``auto`` parameters (``--max_life auto`` ...) on a sample of the inputs' diagrams."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

from tqdm import tqdm

from util.ph import cubical as ph
from util.ph import diagnostics
from util.ph.outputs import Run
from util.ph.phconfig import PHConfig
from util.ph.random_targets import RANDOM
from util.ph.vectorise import Vectoriser, make_vectoriser, vectoriser_from_params

PI_BIRTH_PIXELS = 10  # the original's persistence image: pixel size = (birth range) / 10
FIT_SAMPLE = 256  # diagrams --max_life/--sigma ... auto are fitted on (evenly spaced over all inputs)
AUTO_NAMES = ('max_life', 'max_birth', 'min_birth', 'sigma')  # the label parameters that may be 'auto'


def values(v: object) -> list:
    """A flag's value as a list (one value, or the several given)."""
    return v if isinstance(v, list) else [v]


@dataclass
class Vectorisers:
    """The vectorisers of one run: -ch histogram, -cpi persistence image, --label_type label (None if off)."""

    hist: object = None
    pimg: object = None
    label: object = None
    label_info: dict = None  # what labels_TYPE.json records of the label's making


def pi_dim(cfg: PHConfig) -> int:
    """Length of the -cpi vector: 2 x (10 birth pixels x square-pixel lifetime rows), as the original."""
    min_birth = -cfg.max_birth if cfg.min_birth is None else cfg.min_birth
    pixel = (cfg.max_birth - min_birth) / PI_BIRTH_PIXELS
    life_pixels = max(1, int(round(cfg.max_life / pixel))) if pixel > 0 else 1
    return 2 * PI_BIRTH_PIXELS * life_pixels


def histogram_vectoriser(cfg: PHConfig) -> Vectoriser:
    """The -ch histogram of the run's bins and ranges."""
    return make_vectoriser(
        'histogram',
        sum(cfg.num_bins),
        max_life=cfg.max_life,
        max_birth=cfg.max_birth,
        bandwidth=cfg.bandwidth,
        num_bins=cfg.num_bins,
    )


def label_vectoriser(cfg: PHConfig, flag: str | None = None) -> Vectoriser:
    """The --label_type vectoriser of length --numof_dims (``flag``: refuse a length the type cannot split)."""
    return vectoriser_from_params(cfg.params(), cfg.numof_dims, flag)


def vectorisers(cfg: PHConfig, run: Run | None = None) -> Vectorisers:
    """The vectorisers this run writes with, and the record of the label's making.  Without a ``run``: only
    made from ``cfg`` (which refuses bad parameters), nothing fitted.  With one, ``auto`` parameters are fitted
    and ``run.cfg`` becomes the configuration with the fitted values."""
    vecs = Vectorisers()
    if cfg.compute_hist:
        vecs.hist = histogram_vectoriser(cfg)
    if cfg.compute_persistence_image:
        vecs.pimg = make_vectoriser(
            'persistence_image',
            pi_dim(cfg),
            max_life=cfg.max_life,
            max_birth=cfg.max_birth,
            min_birth=cfg.min_birth,
            sigma=cfg.sigma,
            power=cfg.power,
        )
    if cfg.label_type and cfg.label_type != RANDOM:
        vecs.label = label_vectoriser(cfg, '--numof_dims')
        if run is None:
            return vecs
        if vecs.label.auto:
            run.cfg = cfg = fit_auto(run, vecs.label)
        vecs.label_info = dict(
            label_type=cfg.label_type,
            params=vecs.label.get_params(),
            filtration=cfg.filtration,
            imgtype=cfg.imgtype,
            target_dir=os.path.abspath(run.target_dir),
            ph_engine=cfg.ph_engine,
        )  # the engine is recorded, not compared: both engines give equal pairs
        if cfg.auto_fitted:
            vecs.label_info['auto'] = dict(fitted=cfg.auto_fitted, sample=FIT_SAMPLE)
            if vecs.label.without_pairs:  # kept the values given (or the defaults) there
                vecs.label_info['auto']['without_pairs'] = [f'H{h}' for h in vecs.label.without_pairs]
        if cfg.gradient:
            vecs.label_info['gradient'] = True
        if cfg.size_normalise:
            vecs.label_info['size_normalise'] = ph.SIZE_REFERENCE
    return vecs


def fit_auto(run: Run, vec: Vectoriser) -> PHConfig:
    """Fit the ``auto`` parameters of ``vec`` on the diagrams of a sample of the inputs -- the same sample
    for every shard (it is taken from all of them), so the shards' matrices agree.  Returns the run's
    configuration with the fitted values (labels_TYPE.json's ``params``/``auto`` and args.json record them)."""
    cfg = run.cfg
    sample = [run.all_files[i] for i in diagnostics.sample_rows(len(run.all_files), FIT_SAMPLE)]
    source = 'npy' if cfg.imgtype == 'npy' else 'image'
    jobs = [
        (
            os.path.join(run.target_dir, *rel.split('/')),
            source,
            cfg.filtration,
            cfg.gradient,
            cfg.ph_engine,
            cfg.size_normalise,
        )
        for rel in sample
    ]
    diagrams = []
    for _, dgm, _err in tqdm(
        ph.iter_diagrams(jobs, workers=min(cfg.num_workers, len(jobs))),
        total=len(jobs),
        desc='fitting auto',
        unit='file',
        file=sys.stderr,
    ):
        if dgm is not None:  # a bad input is reported by the main pass
            diagrams.append(dgm)
    fitted = vec.auto
    vec.fit(diagrams)
    params = vec.get_params()
    names = {f.name for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(
        cfg, **{n: params[n] for n in fitted if n in names and n in params}, auto_fitted=list(fitted)
    )
    warning = vec.fit_warning()  # a homology dimension (or all) without pairs to fit on
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if len(vec.without_pairs) < 2:
        print(
            f"fitted on {len(diagrams)} diagrams: "
            + ', '.join(f"{n} {params[n]}" for n in ('max_life', 'min_birth', 'max_birth', 'sigma') if n in params)
        )
    return cfg
