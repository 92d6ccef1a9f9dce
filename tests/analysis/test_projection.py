"""Projections for the latent explorer: PCA / UMAP / two dims, NaN rows, the signature cache."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stexp.analysis import projection as P
from napari_stexp.errors import InputError, StexpError


def _latent(n=2000, d=12, seed=0):
    """Data whose first two principal directions are known latent factors."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2)) * np.array([5.0, 2.0])
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:, :2]
    X = z @ basis.T + 0.05 * rng.normal(size=(n, d))
    return X.astype(np.float32), z


def test_pca_recovers_the_two_latent_factors_deterministically():
    X, z = _latent()
    a = P.project(X, "pca", cache=None)
    b = P.project(X, "pca", cache=None)
    np.testing.assert_array_equal(a.coords, b.coords)  # no randomness at all
    assert abs(np.corrcoef(a.coords[:, 0], z[:, 0])[0, 1]) > 0.995
    assert abs(np.corrcoef(a.coords[:, 1], z[:, 1])[0, 1]) > 0.995
    assert a.explained_variance_ratio[0] > a.explained_variance_ratio[1] > 0.1
    assert sum(a.explained_variance_ratio) > 0.99
    assert a.axis_names == ("PC1", "PC2") and a.n_missing == 0


def test_pca_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    X, _ = _latent(500, 6, seed=3)
    ours = P.project(X, "pca", cache=None).coords
    ref = PCA(2).fit_transform(X.astype(np.float64))
    for k in range(2):
        s = np.sign(np.dot(ours[:, k], ref[:, k]))
        np.testing.assert_allclose(ours[:, k] * s, ref[:, k], rtol=1e-3, atol=1e-3)


def test_nan_rows_are_kept_and_reported_not_dropped():
    X, _ = _latent(300, 5)
    X[[7, 42]] = np.nan
    X[100, 3] = np.inf
    proj = P.project(X, "pca", cache=None)
    assert len(proj) == 300  # one output row per input row
    assert proj.n_missing == 3
    assert np.flatnonzero(proj.missing).tolist() == [7, 42, 100]
    assert np.isnan(proj.coords[proj.missing]).all()
    assert np.isfinite(proj.coords[~proj.missing]).all()
    # "dims" only cares about the two chosen columns: row 100 has inf in column 3 only
    dims = P.project(X, "dims", dims=(0, 1), cache=None)
    assert np.flatnonzero(dims.missing).tolist() == [7, 42]
    np.testing.assert_array_equal(dims.coords[5], X[5, :2])


def test_dims_uses_the_chosen_columns_and_names():
    X = np.arange(30, dtype=np.float32).reshape(10, 3)
    proj = P.project(X, "dims", dims=(2, 0), column_names=["a", "b", "c"], cache=None)
    np.testing.assert_array_equal(proj.coords, X[:, [2, 0]])
    assert proj.axis_names == ("c", "a")


def test_cache_hits_same_data_and_misses_on_any_change():
    cache = P.ProjectionCache(maxsize=4)
    X, _ = _latent(400, 4)
    a = P.project(X, "pca", cache=cache)
    b = P.project(X.copy(), "pca", cache=cache)
    assert b is a and cache.hits == 1 and cache.misses == 1
    assert not a.coords.flags.writeable  # cached arrays cannot be edited by a caller
    P.project(X, "pca", standardize=True, cache=cache)  # other parameters: recompute
    assert cache.misses == 2
    Y = X.copy()
    Y[201, 1] += 1.0  # a row that the strided sample may skip: column sums still catch it
    c = P.project(Y, "pca", cache=cache)
    assert c is not a and cache.misses == 3
    assert P.data_signature(X, method="pca") != P.data_signature(Y, method="pca")


def test_cache_is_an_lru():
    cache = P.ProjectionCache(maxsize=2)
    for k in range(3):
        P.project(np.random.default_rng(k).normal(size=(20, 3)), "pca", cache=cache)
    assert len(cache) == 2


@pytest.mark.parametrize(
    "data, method, kwargs, match",
    [
        (np.zeros((10, 1)), "pca", {}, "at least 2 columns"),
        (np.zeros((10, 3)), "dims", {"dims": (0, 5)}, "out of range"),
        (np.full((10, 3), np.nan), "pca", {}, "only 0 of 10 rows"),
        (np.zeros((10, 3)), "tsne", {}, "unknown projection method"),
        (np.zeros((2, 3, 4)), "pca", {}, "2-D"),
        (np.array([["a", "b"], ["c", "d"]]), "pca", {}, "not numeric"),
    ],
)
def test_bad_input_is_an_input_error(data, method, kwargs, match):
    with pytest.raises(InputError, match=match):
        P.project(data, method, cache=None, **kwargs)


def test_umap_without_umap_learn_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(P, "umap_available", lambda: False)
    with pytest.raises(StexpError, match="umap-learn"):
        P.project(np.random.default_rng(0).normal(size=(50, 4)), "umap", cache=None)


def test_progress_and_cancel():
    import threading

    seen = []
    X, _ = _latent(100, 4)
    P.project(X, "pca", cache=None, progress=lambda d, t, m: seen.append((d, t)))
    assert seen[-1] == (1, 1)
    ev = threading.Event()
    ev.set()
    from napari_stexp.errors import CancelledError

    with pytest.raises(CancelledError):
        P.project(X, "pca", cache=None, cancel=ev)


def test_umap_is_seeded_and_separates_clusters():
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2, 8)) * 6
    X = np.concatenate([c + rng.normal(size=(80, 8)) for c in centers]).astype(np.float32)
    y = np.repeat([0, 1], 80)
    X[5] = np.nan
    a = P.project(X, "umap", seed=1, n_neighbors=10, cache=None)
    b = P.project(X, "umap", seed=1, n_neighbors=10, cache=None)
    np.testing.assert_allclose(a.coords, b.coords, rtol=1e-5, atol=1e-5)
    assert a.n_missing == 1 and np.isnan(a.coords[5]).all()
    ok = ~a.missing
    c0, c1 = (a.coords[ok & (y == k)].mean(axis=0) for k in (0, 1))
    pred = np.linalg.norm(a.coords - c1, axis=1) < np.linalg.norm(a.coords - c0, axis=1)
    assert (pred[ok] == (y[ok] == 1)).mean() > 0.97


class _FakeUMAP:
    """Stands in for umap.UMAP (records calls; 'embeds' by the first two inputs)."""

    calls: list = []

    def __init__(self, **kw):
        self.kw = kw

    def fit_transform(self, Z):
        _FakeUMAP.calls.append(("fit", len(Z)))
        return Z[:, :2] * 2

    def transform(self, Z):
        _FakeUMAP.calls.append(("transform", len(Z)))
        return Z[:, :2] * 2


def test_umap_large_inputs_fit_a_seeded_subsample_then_transform(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("umap")
    fake.UMAP = _FakeUMAP
    monkeypatch.setitem(sys.modules, "umap", fake)
    monkeypatch.setattr(P, "umap_available", lambda: True)
    _FakeUMAP.calls = []
    X = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    X[10] = np.nan
    proj = P.project(X, "umap", seed=3, umap_max_fit=200, cache=None)
    assert _FakeUMAP.calls[0] == ("fit", 200)
    assert sum(n for k, n in _FakeUMAP.calls if k == "transform") == 999 - 200
    assert proj.n_missing == 1 and np.isfinite(proj.coords[~proj.missing]).all()
    # every valid row is placed by the same (fake) map, whether fitted or transformed
    Xc = X[~proj.missing].astype(np.float64)
    expected = (Xc - Xc.mean(axis=0))[:, :2] * 2
    np.testing.assert_allclose(proj.coords[~proj.missing], expected, rtol=1e-4, atol=1e-4)
