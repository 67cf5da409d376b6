"""The Vectoriser protocol: the registry of label types, get/set_params, and scikit-learn Pipelines."""

import numpy as np
import pytest

from util.errors import UserError
from util.ph.vectorise import LABEL_TYPES, VECTORISERS, Vectoriser, make_vectoriser


def _diagrams(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 12))
        dim = rng.integers(0, 2, k).astype(float)
        birth = rng.uniform(-40, 30, k)
        death = birth + rng.uniform(0, 45, k)
        out.append(np.stack([dim, birth, death], axis=1) if k else np.zeros((0, 3)))
    out[0] = np.vstack([out[0], [[0, -5.0, np.finfo(np.float64).max]]])  # an essential class is ignored
    return out


def test_registry_holds_every_label_type():
    assert tuple(VECTORISERS) == LABEL_TYPES
    assert LABEL_TYPES == ('histogram', 'persistence_image', 'betti_curve', 'landscape', 'split_image')  # issue 20
    for name, cls in VECTORISERS.items():
        v = make_vectoriser(name, 40)
        assert type(v) is cls and isinstance(v, Vectoriser) and v.dim == 40 and v.label_type == name
        assert repr(v).startswith(cls.__name__) and v.get_params()['label_type'] == name
    with pytest.raises(UserError, match='unknown --label_type'):
        make_vectoriser('nope', 40)


@pytest.mark.parametrize('label_type', LABEL_TYPES)
def test_pipeline_equals_direct_call(label_type):
    from sklearn.pipeline import Pipeline

    diagrams = _diagrams()
    v = make_vectoriser(label_type, 36)
    direct = np.stack([v(d) for d in diagrams])
    piped = Pipeline([('label', make_vectoriser(label_type, 36))]).fit_transform(diagrams)
    assert piped.dtype == np.float32 and piped.shape == (len(diagrams), 36)
    np.testing.assert_array_equal(piped, direct)
    np.testing.assert_array_equal(v.fit_transform(diagrams), direct)  # fit learns nothing by default


@pytest.mark.parametrize('label_type', LABEL_TYPES)
def test_set_params_rebuilds(label_type):
    v = make_vectoriser(label_type, 36)
    assert v.set_params(max_birth=20.0) is v
    # the other parameters keep their current values (a derived min_birth stays -50)
    expected = make_vectoriser(label_type, 36, max_birth=20.0, min_birth=v.get_params().get('min_birth'))
    assert v.get_params()['max_birth'] == 20.0 and v.get_params() == expected.get_params()
    np.testing.assert_array_equal(v.transform(_diagrams()), expected.transform(_diagrams()))
    with pytest.raises(UserError, match='no parameter'):
        v.set_params(colour='red')


@pytest.mark.parametrize('label_type', LABEL_TYPES)
def test_fit_learns_ranges_when_asked(label_type):
    diagrams = _diagrams(seed=3)
    finite = np.vstack([d[d[:, 2] < 1e300] for d in diagrams])
    v = make_vectoriser(label_type, 36, max_birth=1.0, max_life=1.0).set_params(learn_ranges=True)
    v.fit(diagrams)
    p = v.get_params()
    assert p['max_birth'] == pytest.approx(np.abs(finite[:, 1]).max())
    if 'max_life' in p:
        assert p['max_life'] == pytest.approx((finite[:, 2] - finite[:, 1]).max())
    if 'min_birth' in p:
        assert p['min_birth'] == pytest.approx(finite[:, 1].min())
