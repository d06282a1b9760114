"""The inertia-vs-k curve against scikit-learn and a numpy sign-invariant Lloyd from the same
initial centres, and its knee on units with a planted number of clusters."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from rankwise.kcurve import default_ks, inertia_curve, knee


def _planted(k: int, per: int = 30, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    x = np.repeat(centres, per, axis=0) + 0.2 * rng.standard_normal((k * per, d))
    return rng.permutation(x).astype(np.float32)


def _sign_invariant_lloyd(x: np.ndarray, c: np.ndarray) -> float:
    x, c = x.astype(np.float64), c.astype(np.float64)
    state = None
    for _ in range(200):
        dots = x @ c.T
        dist = (x**2).sum(1)[:, None] + (c**2).sum(1)[None, :] - 2 * np.abs(dots)
        labels = dist.argmin(1)
        sign = np.where(dots[np.arange(len(x)), labels] < 0, -1.0, 1.0)
        if state is not None and np.array_equal(labels, state[0]) and np.array_equal(sign, state[1]):
            break
        state = (labels, sign)
        c = np.stack([(sign[labels == j, None] * x[labels == j]).mean(0) for j in range(len(c))])
    return float(dist.min(1).sum() / len(x))


def test_curve_matches_sklearn_and_numpy_at_the_same_init() -> None:
    x = _planted(4)
    ks = [1, 2, 4, 8]
    inits = {k: x[:k] for k in ks}
    plain = dict(inertia_curve(x, ks, sign_invariant=False, inits=inits))
    signed = dict(inertia_curve(x, ks, sign_invariant=True, inits=inits))
    for k in ks:
        ref = KMeans(k, init=x[:k], n_init=1, tol=0.0, algorithm="lloyd").fit(x.astype(np.float64)).inertia_
        np.testing.assert_allclose(plain[k], ref / len(x), rtol=1e-4)
        np.testing.assert_allclose(signed[k], _sign_invariant_lloyd(x, x[:k]), rtol=1e-4)


def test_knee_finds_the_planted_k_and_subsampling_is_seeded() -> None:
    for k in (3, 6):
        x = _planted(k, seed=k)
        assert knee(inertia_curve(x, [1, 2, 3, 6, 12, 24], sign_invariant=False)) == k
    x = _planted(4, per=100)
    a = inertia_curve(x, [4], max_units=64, seed=3)
    assert a == inertia_curve(x, [4], max_units=64, seed=3) and a != inertia_curve(x, [4], max_units=64, seed=4)


def test_default_ks_and_flat_curves() -> None:
    assert default_ks(16, 10_000) == [1, 4, 8, 16, 32, 64]
    assert default_ks(16, 20) == [1, 4, 8, 16, 20]
    assert knee([(1, 2.0), (2, 2.0), (4, 2.0)]) is None  # flat
    assert knee([(1, 2.0), (2, 1.0)]) is None  # too few points
    assert knee([(1, 1.0), (2, 0.99), (4, 0.95), (8, 0.5)]) is None  # concave: random units
    assert knee([(1, 1.0), (2, 0.2), (4, 0.1), (8, 0.05)]) == 2
