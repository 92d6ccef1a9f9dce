"""2-D projections of embeddings for the latent explorer: PCA, UMAP or two chosen dimensions.

Why a cache: the explorer recolours, reselects and redraws all the time; none of that may recompute
a projection. Results are keyed by a *data signature* (shape, dtype, a strided row sample and the
column sums, plus the method parameters), so the same matrix with the same parameters is projected
once per process, and an edited matrix is never served a stale projection.

Missing values: a row with any NaN/inf in the columns the method uses cannot be placed. It is kept
(the output has one row per input row), its coordinates are NaN and ``Projection.missing`` marks
it, so callers can show "k missing" instead of silently dropping rows.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, StexpError
from ..progress import CancelFlag, ProgressFn, check_cancel, report

METHODS = ("pca", "umap", "dims")
_CHUNK = 131_072  # rows per block for PCA (keeps float64 temporaries small for 1e6 x 512)


@dataclass(frozen=True)
class Projection:
    """A 2-D layout of ``n`` rows: ``coords`` (n, 2) float32 with NaN rows where ``missing``."""

    coords: np.ndarray
    missing: np.ndarray
    method: str
    axis_names: tuple[str, str]
    signature: str
    params: dict = field(default_factory=dict)
    explained_variance_ratio: tuple[float, float] | None = None

    @property
    def n_missing(self) -> int:
        return int(self.missing.sum())

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def umap_available() -> bool:
    """True when the optional ``umap-learn`` package is installed.

    Only looks it up: importing umap compiles numba code for seconds, which a widget must not
    pay at start-up (the import happens when UMAP actually runs).
    """
    import importlib.util

    try:
        return importlib.util.find_spec("umap") is not None
    except (ImportError, ValueError):
        return False


def as_matrix(data, source: str = "embedding") -> np.ndarray:
    """``data`` as a 2-D float array (no copy when it already is one); InputError otherwise."""
    try:
        arr = np.asarray(data)
    except Exception as exc:  # e.g. ragged lists
        raise InputError(source, f"cannot be read as a matrix ({exc})") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(source, f"must be a 2-D (n, d) matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        try:
            arr = arr.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(source, f"is not numeric (dtype {arr.dtype})") from exc
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    return arr


def missing_rows(data: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
    """Rows with any non-finite value (in ``columns`` when given), as a boolean mask."""
    sub = data if columns is None else data[:, list(columns)]
    out = np.empty(sub.shape[0], bool)
    for s in range(0, sub.shape[0], _CHUNK):
        # a float64 row sum is non-finite exactly when the row holds a NaN or an inf
        with np.errstate(all="ignore"):
            out[s:s + _CHUNK] = ~np.isfinite(sub[s:s + _CHUNK].sum(axis=1, dtype=np.float64))
    return out


def data_signature(data: np.ndarray, **params) -> str:
    """A short hash of ``data`` (shape, dtype, strided rows, column sums) and ``params``.

    Cheap for 1e6 rows (one pass for the column sums); any edit that changes a column sum or a
    sampled row changes the signature.
    """
    arr = np.asarray(data)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((arr.shape, str(arr.dtype))).encode())
    if arr.size:
        step = max(1, arr.shape[0] // 4096)
        h.update(np.ascontiguousarray(arr[::step]).tobytes())
        h.update(np.ascontiguousarray(arr[-1]).tobytes())
        with np.errstate(all="ignore"):  # NaN sums are fine: the bytes are still a signature
            sums = arr.sum(axis=0, dtype=np.float64)
        h.update(np.ascontiguousarray(sums).tobytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()


class ProjectionCache:
    """A small thread-safe LRU of projections keyed by :func:`data_signature`."""

    def __init__(self, maxsize: int = 8):
        self.maxsize = int(maxsize)
        self._items: OrderedDict[str, Projection] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Projection | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, value: Projection) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


PROJECTION_CACHE = ProjectionCache()


def project(
    data,
    method: str = "pca",
    *,
    dims: tuple[int, int] = (0, 1),
    seed: int = 0,
    standardize: bool = False,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    umap_max_fit: int = 200_000,
    column_names: Sequence[str] | None = None,
    cache: ProjectionCache | None = PROJECTION_CACHE,
    source: str = "embedding",
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
) -> Projection:
    """Project an (n, d) embedding to 2-D with ``method`` in ``METHODS``.

    - ``"dims"``: columns ``dims`` as they are (no fitting; NaN only in those two columns counts).
    - ``"pca"``: exact PCA from the d x d covariance (chunked, float64 accumulators), components
      signed so the largest loading is positive: deterministic, no randomness.
    - ``"umap"``: ``umap-learn`` with ``random_state=seed`` (needs the ``umap`` extra), on the
      first 50 principal components when d > 50; with more than ``umap_max_fit`` valid rows it is
      fitted on a seeded subsample and the remaining rows are placed with ``transform``.

    ``standardize`` z-scores columns first (useful when they have different units).
    """
    method = str(method).lower()
    if method not in METHODS:
        raise InputError(source, f"unknown projection method {method!r} (choose {METHODS})")
    X = as_matrix(data, source)
    n, d = X.shape
    names = list(column_names) if column_names is not None else [f"dim {i}" for i in range(d)]
    if method == "dims":
        dims = (int(dims[0]), int(dims[1]))
        for k in dims:
            if not 0 <= k < d:
                raise InputError(source, f"dimension {k} is out of range (the matrix has {d})")
        params: dict = {"method": "dims", "dims": list(dims)}
    else:
        if d < 2 and method == "pca":
            raise InputError(source, f"PCA needs at least 2 columns, got {d}")
        params = {"method": method, "standardize": bool(standardize)}
        if method == "umap":
            params.update(seed=int(seed), n_neighbors=int(n_neighbors), min_dist=float(min_dist),
                          umap_max_fit=int(umap_max_fit))
    key = data_signature(X, **params)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            report(progress, 1, 1, "projection (cached)")
            return hit

    report(progress, 0, 1, f"{method} projection")
    if method == "dims":
        cols = list(dims)
        missing = missing_rows(X, cols)
        coords = np.asarray(X[:, cols], dtype=np.float32).copy()
        coords[missing] = np.nan
        result = Projection(coords, missing, "dims", (names[dims[0]], names[dims[1]]), key, params)
    else:
        missing = missing_rows(X)
        valid = np.flatnonzero(~missing)
        if valid.size < 3:
            raise InputError(source, f"only {valid.size} of {n} rows have no missing values; "
                                     "need at least 3 to fit a projection")
        check_cancel(cancel, "projection")
        if method == "pca":
            xy, evr = _pca2(X, valid, standardize, cancel)
            result_axes, ratio = ("PC1", "PC2"), (float(evr[0]), float(evr[1]))
        else:
            xy = _umap2(X, valid, standardize, seed, n_neighbors, min_dist, umap_max_fit,
                        progress, cancel)
            result_axes, ratio = ("UMAP1", "UMAP2"), None
        coords = np.full((n, 2), np.nan, np.float32)
        coords[valid] = xy
        result = Projection(coords, missing, method, result_axes, key, params, ratio)
    result.coords.setflags(write=False)  # shared through the cache: never edited in place
    result.missing.setflags(write=False)
    if cache is not None:
        cache.put(key, result)
    report(progress, 1, 1, f"{method} projection")
    return result


def _blocks(X: np.ndarray, rows: np.ndarray):
    """Row blocks of ``X`` restricted to ``rows`` (views, no copies, when no row is missing)."""
    if rows.size == X.shape[0]:
        for s in range(0, X.shape[0], _CHUNK):
            yield X[s:s + _CHUNK]
    else:
        for s in range(0, rows.size, _CHUNK):
            yield X[rows[s:s + _CHUNK]]


def _pca_basis(X: np.ndarray, rows: np.ndarray, k: int, standardize: bool, cancel):
    """Mean, scale, top-``k`` components and explained-variance ratios in one pass.

    Blocks are shifted by the first block's mean (no cancellation) and multiplied in float32
    BLAS; sums accumulate in float64. Standardising rescales the covariance afterwards.
    """
    d = X.shape[1]
    shift = None
    total = np.zeros(d, np.float64)
    cross = np.zeros((d, d), np.float64)
    count = 0
    for blk in _blocks(X, rows):
        check_cancel(cancel, "projection")
        b = np.asarray(blk, np.float32)
        if shift is None:
            shift = b.mean(axis=0, dtype=np.float64).astype(np.float32)
        c = b - shift
        total += c.sum(axis=0, dtype=np.float64)
        cross += c.T @ c
        count += c.shape[0]
    mean_c = total / count
    cov = (cross - count * np.outer(mean_c, mean_c)) / max(count - 1, 1)
    mean = shift.astype(np.float64) + mean_c
    scale = np.ones(d)
    if standardize:
        scale = np.sqrt(np.clip(np.diag(cov), 0, None))
        scale[scale == 0] = 1.0
        cov = cov / np.outer(scale, scale)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0, None), evecs[:, order]
    # Deterministic signs: the largest-magnitude loading of each component is positive.
    flip = np.sign(evecs[np.argmax(np.abs(evecs), axis=0), np.arange(d)])
    flip[flip == 0] = 1
    evecs = evecs * flip
    total_var = evals.sum()
    ratio = evals / total_var if total_var > 0 else np.zeros_like(evals)
    return mean, scale, evecs[:, :k], ratio[:k]


def _apply_basis(X, rows, mean, scale, basis) -> np.ndarray:
    """(X[rows] - mean) / scale @ basis, block by block in float32."""
    out = np.empty((rows.size, basis.shape[1]), np.float32)
    w = basis / scale[:, None]
    offset = (mean @ w).astype(np.float32)
    wt = np.ascontiguousarray(w.T, np.float32)
    s = 0
    for blk in _blocks(X, rows):
        e = s + blk.shape[0]
        # (k, d) @ (d, m) is the BLAS-friendly orientation for a skinny result (4x faster)
        out[s:e] = (wt @ np.asarray(blk, np.float32).T).T
        out[s:e] -= offset
        s = e
    return out


def _pca2(X, rows, standardize, cancel):
    mean, scale, basis, ratio = _pca_basis(X, rows, 2, standardize, cancel)
    return _apply_basis(X, rows, mean, scale, basis), ratio


def _umap2(X, rows, standardize, seed, n_neighbors, min_dist, max_fit, progress, cancel):
    if not umap_available():
        raise StexpError("UMAP needs the optional package umap-learn "
                         "(pip install 'napari-stexp[umap]'); PCA and two chosen dimensions "
                         "work without it")
    try:
        import umap
    except Exception as exc:  # installed but broken (e.g. numba/llvmlite mismatch)
        raise StexpError(f"UMAP could not be loaded ({exc}); use PCA or two dimensions") from exc

    d = X.shape[1]
    if d > 50:
        mean, scale, basis, _ = _pca_basis(X, rows, 50, standardize, cancel)
        Z = _apply_basis(X, rows, mean, scale, basis)
    else:
        mean, scale, _, _ = _pca_basis(X, rows, 1, standardize, cancel)
        Z = ((X[rows].astype(np.float64) - mean) / scale).astype(np.float32)
    n = Z.shape[0]
    nn = int(min(max(2, n_neighbors), n - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=nn, min_dist=float(min_dist),
                        random_state=int(seed))
    check_cancel(cancel, "projection")
    if n <= max_fit:
        report(progress, 0, 1, "UMAP fit")
        return np.asarray(reducer.fit_transform(Z), np.float32)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=int(max_fit), replace=False))
    out = np.empty((n, 2), np.float32)
    report(progress, 0, n, f"UMAP fit on {max_fit} of {n} rows")
    out[fit_idx] = reducer.fit_transform(Z[fit_idx])
    rest = np.setdiff1d(np.arange(n), fit_idx, assume_unique=True)
    done = max_fit
    for s in range(0, rest.size, _CHUNK):
        check_cancel(cancel, "projection")
        idx = rest[s:s + _CHUNK]
        out[idx] = reducer.transform(Z[idx])
        done += idx.size
        report(progress, done, n, "UMAP transform")
    return out
