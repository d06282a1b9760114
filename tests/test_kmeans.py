"""The core's k-means (kmeans.py): scikit-learn as the oracle (given its init, and k-means++ to
equal inertia), the same bytes at any thread count, sign-invariant clustering, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import rankwise as rw
from precision import assert_centroids_match
from rankwise.kmeans import sign_invariant_kmeans


def test_kmeans_matches_sklearn_given_its_init() -> None:
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=600, n_features=12, centers=5, random_state=0)
    x = x.astype(np.float32)
    init = x[[0, 100, 200, 300, 400]].copy()
    sk = KMeans(5, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(x)
    ours = rw.kmeans(x, 5, init=init)
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    assert_centroids_match(ours.centroids, sk.cluster_centers_, x, ours.labels)
    assert ours.inertia == pytest.approx(sk.inertia_, rel=1e-4)


# (n, d, k, cluster_std, n_init). The wide case has d >= 1024 and k >= 16, so seeding measures
# distances in a random projection (kmeans.rs, projects_for_seeding); its blobs are noisy enough
# that restarts land in different local optima on either side of scikit-learn's.
@pytest.mark.parametrize("shape", [(2000, 32, 12, 3.0, 4), (2000, 1100, 16, 25.0, 3)], ids=["narrow", "wide"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_plus_plus_inertia_close_to_sklearn(seed: int, shape: tuple[int, int, int, float, int]) -> None:
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    n, d, k, std, n_init = shape
    x, _ = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std, random_state=seed)
    x = x.astype(np.float32)
    sk = KMeans(k, n_init=n_init, algorithm="lloyd", random_state=seed).fit(x)
    ours = rw.kmeans(x, k, n_init=n_init, seed=seed)
    assert ours.inertia <= 1.01 * sk.inertia_


@pytest.mark.parametrize(("n", "d", "sign_invariant"), [(3000, 40, False), (900, 1100, False), (900, 1100, True)])
def test_kmeans_same_bytes_at_one_and_two_threads(n: int, d: int, sign_invariant: bool) -> None:
    x = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    try:
        rw.set_num_threads(1)
        one = rw.kmeans(x, 16, n_init=2, seed=5, sign_invariant=sign_invariant)
        rw.set_num_threads(2)
        two = rw.kmeans(x, 16, n_init=2, seed=5, sign_invariant=sign_invariant)
    finally:
        rw.set_num_threads(0)
    assert one.centroids.tobytes() == two.centroids.tobytes()
    assert one.labels.tobytes() == two.labels.tobytes()
    assert one.inertia == two.inertia and one.n_iter == two.n_iter


def test_kmeans_bad_input() -> None:
    x = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(rw.OptionError, match="larger than the n=10"):
        rw.kmeans(x, 11)
    with pytest.raises(rw.OptionError, match="k"):
        rw.kmeans(x, 0)
    with pytest.raises(rw.OptionError, match="2-D"):
        rw.kmeans(np.zeros(5, dtype=np.float32), 2)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(rw.OptionError, match="finite"):
        rw.kmeans(bad, 2)
    with pytest.raises(rw.OptionError, match="init"):
        rw.kmeans(x, 2, init=np.zeros((3, 3), dtype=np.float32))


def test_sign_invariant_kmeans_groups_units_with_either_sign() -> None:
    """Noisy copies of 5 prototypes with random signs: clusters are the prototypes, and the
    returned signs orient every member like its cluster."""
    rng = np.random.default_rng(0)
    protos = rng.standard_normal((5, 40)).astype(np.float32)
    truth = rng.integers(0, 5, size=300)
    flips = rng.choice([-1.0, 1.0], size=300).astype(np.float32)
    x = (protos[truth] + 0.05 * rng.standard_normal((300, 40))).astype(np.float32) * flips[:, None]
    labels, signs = sign_invariant_kmeans(x, 5, seed=1)
    # Same partition as the truth (up to relabelling) ...
    pairs = set(zip(labels.tolist(), truth.tolist()))
    assert len(pairs) == 5
    # ... and within each cluster, sign·flip is constant (members oriented alike).
    for c in range(5):
        assert len(set((signs * flips)[labels == c].tolist())) == 1


def test_kmeans_gram_equals_the_row_path_on_unit_features() -> None:
    """LEGO's small-module route: k-means from the summed unit Grams gives the row path's labels
    and signs (exact seeding, as the Gram route seeds), and the Grams and the target norm from
    them match numpy."""
    from rankwise import _core
    from rankwise.kmeans import kmeans_gram

    rng = np.random.default_rng(3)
    d_out, d_in, n = 24, 20, 90
    protos = rng.standard_normal((6, d_out + d_in))
    x = protos[np.arange(n) % 6] * rng.choice([-1.0, 1.0], (n, 1)) + 0.2 * rng.standard_normal((n, d_out + d_in))
    x = x.astype(np.float32)
    gb, ga = _core.unit_grams(x, d_out)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(gb, xd[:, :d_out] @ xd[:, :d_out].T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ga, xd[:, d_out:] @ xd[:, d_out:].T, rtol=1e-5, atol=1e-4)
    p = rng.uniform(0.5, 2.0, n)
    t = (xd[:, :d_out] * p[:, None]).T @ xd[:, d_out:]
    assert _core.grams_sq_norm(gb, ga, p) == pytest.approx(float(np.sum(t**2)), rel=1e-5)
    for si in (False, True):
        got = kmeans_gram(gb + ga, 6, d=x.shape[1], n_init=3, max_iter=100, seed=4, sign_invariant=si)
        _, labels, inertia, n_iter, signs = _core.kmeans(x, 6, 3, 100, 1e-4, 4, None, si, True, False)
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_array_equal(got.signs, signs)
        assert got.n_iter == n_iter
        assert got.inertia == pytest.approx(inertia, rel=1e-5)
    with pytest.raises(rw.RankwiseError, match="non-finite value .* at row 0, column 0"):
        kmeans_gram(np.full((3, 3), np.nan, dtype=np.float32), 2, d=4)
    with pytest.raises(rw.OptionError, match="square"):
        kmeans_gram(np.zeros((3, 4), dtype=np.float32), 2, d=4)
    with pytest.raises(rw.RankwiseError, match="larger than the n=3 points"):
        kmeans_gram(np.eye(3, dtype=np.float32), 4, d=4)
    with pytest.raises(rw.RankwiseError, match="d_out = 50"):
        _core.unit_grams(x, 50)
    with pytest.raises(rw.RankwiseError, match="for 89 row scales"):
        _core.grams_sq_norm(gb, ga, p[1:])
