"""Writers for results: AnnData to ``.h5ad`` and images / labels / gene maps to OME-Zarr.

Everything is written atomically (temporary sibling, then rename), so a crash or a cancel never
leaves a half-written file where a user expects a result.

- ``write_h5ad``: makes ``obs`` / ``var`` / ``uns`` h5ad-safe first (mixed-type object columns
  become categorical strings, tuples become lists, ...) instead of failing after minutes of work.
- ``write_ome_zarr`` / ``add_ome_zarr_labels`` / ``read_ome_zarr`` live in :mod:`.ome_zarr` (the
  OME-Zarr reader, writer and sniffer in one module) and are re-exported here for callers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._provenance import clean_provenance  # noqa: F401 - re-exported (analysis.slide_predict)
from ._atomic import atomic_writer
from .ome_zarr import (  # noqa: F401 - re-exported: the OME-Zarr writer/reader moved
    add_ome_zarr_labels,
    read_ome_zarr,
    write_ome_zarr,
)

# --------------------------------------------------------------------------- h5ad


def _safe_column(col: Any) -> Any:
    """An h5ad-writable version of one obs/var column (object columns only are touched)."""
    import pandas as pd

    if not (col.dtype == object or str(col.dtype) == "string"):
        return col
    values = col.dropna()
    if len(values) == 0:
        return col.astype("category") if len(col) else col
    kinds = {type(v) for v in values}
    if all(issubclass(k, str) for k in kinds):
        return pd.Categorical(col)
    if all(issubclass(k, bool | np.bool_) for k in kinds):
        return col.astype("boolean") if col.isna().any() else col.astype(bool)
    if all(issubclass(k, int | float | np.integer | np.floating) and not issubclass(k, bool)
           for k in kinds):
        if col.isna().any() or any(issubclass(k, float | np.floating) for k in kinds):
            return col.astype(float)
        return col.astype(np.int64)
    as_str = col.map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v))
                     else str(v))
    return pd.Categorical(as_str)


def _safe_frame(df: Any) -> Any:
    import pandas as pd

    out = pd.DataFrame(index=pd.Index(df.index.astype(str), name=df.index.name))
    for name in df.columns:
        col = _safe_column(df[name])
        out[str(name)] = col.values if isinstance(col, pd.Series) else col
    return out


def _safe_uns(value: Any) -> Any:
    """Recursively turn ``uns`` values into things anndata can write."""
    import pandas as pd
    import scipy.sparse as sp

    if isinstance(value, dict):
        return {str(k): _safe_uns(v) for k, v in value.items()}
    if value is None or isinstance(value, str | bytes | bool | int | float | np.generic):
        return value
    if isinstance(value, pd.DataFrame):
        return _safe_frame(value)
    if sp.issparse(value):
        return value
    if isinstance(value, np.ndarray):
        return value.astype(str) if value.dtype == object else value
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        if all(isinstance(v, dict) for v in items) and items:
            return {str(i): _safe_uns(v) for i, v in enumerate(items)}
        try:
            arr = np.asarray(items)
        except (ValueError, TypeError):
            arr = np.asarray([str(v) for v in items])
        return arr.astype(str) if arr.dtype == object else arr
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def h5ad_safe(adata: Any) -> Any:
    """A new AnnData sharing ``adata``'s arrays whose obs/var/obsm frames and uns can be written
    to h5ad (object columns with mixed types -> categorical strings, etc.); ``adata`` is not
    modified."""
    import anndata

    if adata.is_view:
        adata = adata.copy()
    obsm = {k: _safe_frame(v) if hasattr(v, "columns") else v for k, v in adata.obsm.items()}
    varm = {k: _safe_frame(v) if hasattr(v, "columns") else v for k, v in adata.varm.items()}
    raw = None
    if adata.raw is not None:
        raw = {"X": adata.raw.X, "var": _safe_frame(adata.raw.var),
               "varm": dict(adata.raw.varm)}
    return anndata.AnnData(
        X=adata.X, obs=_safe_frame(adata.obs), var=_safe_frame(adata.var),
        uns=_safe_uns(dict(adata.uns)), obsm=obsm, varm=varm, layers=dict(adata.layers),
        obsp=dict(adata.obsp), varp=dict(adata.varp), raw=raw)


def write_h5ad(adata: Any, path: str | os.PathLike, *, compression: str | None = None) -> Path:
    """Write ``adata`` to ``path`` atomically, after making its tables h5ad-safe.

    Returns the path. A failure mid-write leaves any existing file at ``path`` untouched.
    """
    target = Path(path)
    if adata.isbacked:
        safe = adata
    else:
        safe = h5ad_safe(adata)
    with atomic_writer(target, "h5ad") as tmp:
        safe.write_h5ad(tmp, compression=compression)
    return target
