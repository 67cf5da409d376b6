"""What a -pd folder was made with, checked against this run's flags: the settings PHdict.py recorded with its
label matrix (its json) or its diagrams (settings.json), the labels computed here that reproduce them (for -val
images the matrix has no rows for), the values ``auto`` stood for, and what pins a run's labels in args.json.
:mod:`util.train.sources` asks, when it builds a folder's data set."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from util.errors import UserError

if TYPE_CHECKING:
    from util.config import DataConfig


def _plain(value: object) -> object:
    """A setting as compared with a recorded one: numbers as floats (50 and 50.0 agree), lists element-wise."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return json.dumps(value, sort_keys=True, default=str)


def _shown(value: object) -> str:
    """A value as typed on the command line (a list as its words)."""
    return ' '.join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)


class PhDirMismatch(UserError):
    """-pd was made with other settings than this run's flags (:func:`check_ph_dir`)."""


class FolderRecipe:
    """How -pd's label matrix was made, as its json records it: ``labels`` computes such labels in the loader
    (for -val images the matrix has no rows for), or ``problem`` names the recorded parameter that labels computed
    here cannot honour; ``facts``: what the run records (``fitted_<name>``: the values ``auto`` stands for)."""

    def __init__(self, labels: Any = None, problem: str | None = None, facts: dict | None = None):
        self.labels, self.problem, self.facts = labels, problem, dict(facts or {})


def _recorded_parts(meta):
    """[(filtration, label parameters)] of a label matrix's json: one, or one per filtration of PHdict.py
    --filtration A B (its ``params`` and ``filtration`` are then lists); None when they do not pair up."""
    params, filtration = meta.get('params'), meta.get('filtration')
    if isinstance(params, list):
        pairs = isinstance(filtration, list) and len(filtration) == len(params)
        if not (pairs and all(isinstance(p, dict) for p in params)):
            return None
        return list(zip(filtration, params))
    return [(filtration, params if isinstance(params, dict) else {})]


def _fitted_names(meta, ph_dir, label_type):
    """The label parameters PHdict.py fitted (``auto``) for the matrix whose json is ``meta`` (a joined one: its
    parts' jsons say), or None where that cannot be read."""
    from util.ph.labels import label_names, read_json

    def of(m):
        auto = m.get('auto') if isinstance(m, dict) else None
        return set(auto.get('fitted') or ()) if isinstance(auto, dict) else set()

    if not isinstance(meta.get('params'), list):
        return of(meta)
    names = set()
    for part in meta.get('parts') or ():
        m = read_json(os.path.join(ph_dir, str(part), label_names(label_type)[2]))
        if not isinstance(m, dict):
            return None
        names |= of(m)
    return names if meta.get('parts') else None


def _recipe(data, meta, parts, where):
    """The :class:`FolderRecipe` of -pd's label matrix (json ``meta``, its ``parts``)."""
    from util.ph.vectorise import LABEL_FLAGS, vectoriser_from_params
    from util.train.datasets import ComputedLabels, JoinedLabels

    problem, labels = None, []
    for filtration, params in parts:
        dim = params.get('dim', meta.get('dim'))
        try:
            vec = vectoriser_from_params({**params, 'label_type': data.label.label_type}, int(dim))
            rebuilt = vec.get_params()
        except (UserError, TypeError, ValueError) as e:
            problem = f"its parameters {params} cannot be read here ({e})"
            break
        off = [k for k in params if k in rebuilt and _plain(rebuilt[k]) != _plain(params[k])]
        if off:
            problem = (
                f"{where} records {off[0]} {params[off[0]]!r} (filtration {filtration}), which labels computed "
                f"here cannot reproduce (they would have {rebuilt[off[0]]!r})"
            )
            break
        size = meta.get('size_normalise') or None
        labels.append(ComputedLabels(vec, filtration, bool(meta.get('gradient')), data.ph_engine, size))
    if problem:
        return FolderRecipe(problem=problem)
    fitted = {}
    for name in (n for n in LABEL_FLAGS if _is_auto(getattr(data.label, n, None))):
        values = [params.get(name) for _, params in parts]
        fitted[f'fitted_{name}'] = values[0] if len(values) == 1 else values
    return FolderRecipe(labels[0] if len(labels) == 1 else JoinedLabels(labels), facts=fitted)


def _is_auto(value):
    from util.ph.vectorise import AUTO

    return value == AUTO or (isinstance(value, (list, tuple)) and AUTO in value)


def check_ph_dir(data: DataConfig, vectoriser: Any, dim: int | None = None) -> FolderRecipe | None:
    """Refuse an explicit -pd made with other settings than this run's flags: the label matrix's json (-pc:
    filtration(s), gradient, --size_normalise, the label dimension and every label parameter; ``auto`` flags
    stand for the values PHdict.py fitted there) or PHdict.py's settings.json (diagrams: filtration, gradient,
    --size_normalise), as the automatically found folder is refused.  A folder that records nothing (the
    original's, older versions') is used as it is.  Returns the :class:`FolderRecipe` of a label matrix's json
    (None: diagrams, or nothing recorded)."""
    from util.ph.labels import find_label_matrix, read_json

    auto = [n for n in ('max_life', 'max_birth', 'min_birth', 'sigma') if _is_auto(getattr(data.label, n, None))]
    label_type = data.label.label_type
    differ = []  # 'what -pd was made with (this run: ...)'
    recipe = None
    if data.precomputed:
        found = find_label_matrix(data.ph_dir, label_type)
        js = os.path.splitext(found[0])[0] + '.json' if found else None
        meta = read_json(js) if found else None
        if not isinstance(meta, dict):
            if auto and found:
                raise UserError(
                    f"--{auto[0]} auto: -pd {data.ph_dir} has no readable {os.path.basename(js)} recording the "
                    f"values PHdict.py fitted; rerun PHdict.py with --label_type {label_type} --{auto[0]} auto, or "
                    "give the values"
                )
            return None
        parts = _recorded_parts(meta)
        if parts is None:
            raise UserError(
                f"-pd {data.ph_dir}: {js} pairs {len(meta.get('params'))} parameter sets with filtration "
                f"{meta.get('filtration')!r}; rerun PHdict.py --label_type {label_type} into that folder"
            )
        what, fix = f"label matrix {found[0]}", f"or rerun PHdict.py --label_type {label_type} with them"
        recorded = [name for name, _ in parts]
        made_filtration = recorded[0] if len(parts) == 1 else recorded
        ours_filtration = data.filtration if isinstance(data.filtration, str) else list(data.filtration)
        if _plain(made_filtration) != _plain(ours_filtration) and made_filtration is not None:
            differ.append(f"--filtration {_shown(made_filtration)} (this run: {_shown(ours_filtration)})")
        made_dim = meta.get('dim')
        if isinstance(made_dim, int) and dim is not None and made_dim != dim:
            differ.append(f"label dimension {made_dim} (--numof_classes/-nc; this run: {dim})")
        fitted = _fitted_names(meta, data.ph_dir, label_type)
        ours = vectoriser.get_params()
        skip = set(auto) | ({'max_birth', 'min_birth'} if {'max_birth', 'min_birth'} & set(auto) else set())
        from util.ph.vectorise import LABEL_FLAGS

        for filtration, params in parts:
            at = f" for filtration {filtration}" if len(parts) > 1 else ''
            for key in (k for k in LABEL_FLAGS if k != 'label_type' and k in params):
                if (
                    key in auto
                    and fitted is not None
                    and key not in fitted
                    and not (key in ('max_birth', 'min_birth') and fitted & {'max_birth', 'min_birth'})
                ):
                    differ.append(f"--{key} {params[key]!r}{at}, not fitted (this run: auto)")
                elif key not in skip and key in ours and _plain(params[key]) != _plain(ours[key]):
                    differ.append(f"--{key} {params[key]!r}{at} (this run: {ours[key]!r})")
        made_grad, made_size = bool(meta.get('gradient')), meta.get('size_normalise') or None
        recipe = _recipe(data, meta, parts, f"its {os.path.basename(js)}")
    else:
        settings = read_json(os.path.join(data.ph_dir, 'settings.json'))
        diagram = settings.get('diagram') if isinstance(settings, dict) else None
        if not isinstance(diagram, dict):
            return None
        if diagram.get('filtration') is not None and diagram.get('filtration') != data.filtration:
            differ.append(f"--filtration {diagram.get('filtration')!r} (this run: {data.filtration!r})")
        made_grad, made_size = bool(diagram.get('gradient', False)), diagram.get('size_normalise') or None
        what, fix = 'diagrams', 'or give -pd a folder of diagrams made with them'
    if made_grad != bool(data.gradient):
        differ.append(f"--gradient {made_grad!r} (this run: {bool(data.gradient)!r})")
    if bool(made_size) != bool(data.size_normalise):
        made = '--size_normalise' if made_size else 'no --size_normalise'
        differ.append(f"{made} (this run: {'--size_normalise' if data.size_normalise else 'without it'})")
    if differ:
        shown = ', '.join(dict.fromkeys(differ))  # once each (the parts of several filtrations)
        raise PhDirMismatch(
            f"-pd {data.ph_dir}: its {what} were made with {shown}; give the same flags (args.json then records "
            f"what the labels are) {fix}"
        )
    return recipe


def label_record(train: Any) -> dict:
    """What pins a run's PH labels, for args.json and its checkpoints (a --resume after the labels were
    recomputed differs): the label matrix (its file name and BLAKE2b digest) the training set reads, else {}."""
    from util.io.provenance import fingerprint

    facts = dict(getattr(train, 'label_facts', None) or {})  # fitted_<name>: what -pd's 'auto' stood for
    source = getattr(getattr(train, 'labels', None), 'source', None)
    if not source or not os.path.isfile(source):
        return facts
    return {**facts, 'label_matrix': f"{os.path.basename(source)} blake2b {fingerprint(source)['hash']}"}
