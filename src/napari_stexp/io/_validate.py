"""Checks every count matrix we read goes through (10x h5, h5ad, her2st tables).

What is refused, repaired or allowed is listed in docs/formats-st.md ("Counts and matrices").
Refused: a compressed-sparse matrix whose ``indptr`` does not start at 0, decreases, or does not
end at the number of stored values, or whose ``indices`` fall outside the other axis; negative
counts; NaN, inf, or values that overflow float32 (1e300 would become inf).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_columns(source: Any, found, required, where: str = "") -> None:
    """Raise ``InputError(source, "missing column(s) …{where}; found: …")`` unless every name in
    ``required`` is among the table's columns ``found``."""
    found = list(found)
    missing = [c for c in required if c not in found]
    if missing:
        raise InputError(source, f"missing column(s) {', '.join(missing)}{where}; "
                                 f"found: {', '.join(map(str, found))}")


def check_compressed(source: Any, indices, indptr, n_major: int, n_minor: int, *,
                     n_values: int | None = None, major: str = "row", minor: str = "column"
                     ) -> None:
    """Raise ``InputError(source, ...)`` unless ``(indices, indptr)`` is a valid CSR/CSC layout
    with ``n_major`` rows (CSR) and ``n_minor`` columns. Cheap: vectorised, no copy of data."""
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    if indptr.ndim != 1 or indptr.size != n_major + 1:
        raise InputError(source, f"invalid sparse matrix: indptr has {indptr.size} entries for "
                                 f"{n_major} {major}s (expected {n_major + 1})")
    if not (np.issubdtype(indptr.dtype, np.integer) and np.issubdtype(indices.dtype, np.integer)):
        raise InputError(source, "invalid sparse matrix: indices/indptr are not integers")
    if indptr.size and indptr[0] != 0:
        raise InputError(source, f"invalid sparse matrix: indptr starts at {int(indptr[0])}, "
                                 "not 0")
    steps = np.diff(indptr)
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0])
        raise InputError(source, f"invalid sparse matrix: indptr decreases at {major} {i} "
                                 f"({int(indptr[i])} -> {int(indptr[i + 1])})")
    n_values = indices.size if n_values is None else int(n_values)
    if int(indptr[-1]) != indices.size or indices.size != n_values:
        raise InputError(source, f"invalid sparse matrix: indptr ends at {int(indptr[-1])} but "
                                 f"there are {indices.size} indices and {n_values} values")
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n_minor:
            bad = lo if lo < 0 else hi
            raise InputError(source, f"invalid sparse matrix: {minor} index {bad} outside "
                                     f"0..{n_minor - 1}")


def check_sparse(source: Any, X) -> None:
    """check_compressed for a scipy CSR/CSC matrix (other layouts pass)."""
    import scipy.sparse as sp

    if not sp.issparse(X) or X.format not in ("csr", "csc"):
        return
    n_rows, n_cols = X.shape
    if X.format == "csr":
        check_compressed(source, X.indices, X.indptr, n_rows, n_cols, n_values=X.data.size)
    else:
        check_compressed(source, X.indices, X.indptr, n_cols, n_rows, n_values=X.data.size,
                         major="column", minor="row")


def _values(X) -> np.ndarray:
    import scipy.sparse as sp

    return np.asarray(X.data if sp.issparse(X) else X)


def _rows_of(X, mask_values: np.ndarray) -> np.ndarray:
    """Row numbers holding the flagged stored values."""
    import scipy.sparse as sp

    if sp.issparse(X):
        coo = X.tocoo()
        return np.unique(coo.row[mask_values])
    return np.unique(np.nonzero(mask_values)[0])


def check_counts(source: Any, X, row_names=None, *, what: str = "counts") -> None:
    """Refuse negative, NaN/inf or float32-overflowing values in a count matrix, naming the
    first rows (spot ids when ``row_names`` is given)."""
    vals = _values(X)
    if vals.size == 0 or not np.issubdtype(vals.dtype, np.number):
        if vals.size and not np.issubdtype(vals.dtype, np.number):
            raise InputError(source, f"{what} are not numbers (dtype {vals.dtype})")
        return
    if np.issubdtype(vals.dtype, np.floating):
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~np.isfinite(vals) | (np.abs(vals) > FLOAT32_MAX)
        if bad.any():
            _refuse(source, X, bad, row_names, f"{int(bad.sum())} {what} value(s) are NaN, "
                                               "infinite or beyond float32 (> 3.4e38)")
    neg = vals < 0
    if neg.any():
        _refuse(source, X, neg, row_names, f"{int(neg.sum())} negative {what} value(s) "
                                           f"(min {vals.min():g})")


def _refuse(source, X, mask, row_names, problem: str) -> None:
    rows = _rows_of(X, mask)
    names = [str(row_names[i]) for i in rows[:5]] if row_names is not None else \
        [str(int(i)) for i in rows[:5]]
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    raise InputError(source, f"{problem} in row(s) {', '.join(names)}{more}; refused")
