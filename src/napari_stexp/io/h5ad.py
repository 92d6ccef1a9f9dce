"""Reader for ``.h5ad`` files following the scanpy/squidpy spatial conventions.

Accepted: ``obsm['spatial']`` (required: spot centres in full-resolution pixels, x = column),
``uns['spatial'][library_id]`` with ``images``/``scalefactors`` (optional ``metadata``), raw counts in
``layers['counts']`` or ``X``. Files with several libraries are split into one AnnData per section,
using ``obs['section']`` or a squidpy-style ``obs['library_id']`` column.
Missing ``obs`` columns are filled: ``section``/``patient`` from the library id (or the file stem),
``label`` NaN, ``array_x``/``array_y`` from Visium's ``array_col``/``array_row``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, StexpWarning
from .spatial import split_sections, validate_st_adata

#: obs columns that may say which library (section) a spot belongs to, in order of preference.
LIBRARY_COLUMNS = ("section", "library_id", "library", "sample", "batch")


class H5adWarning(StexpWarning):
    """An h5ad was read with a repair or a doubtful assumption (e.g. normalised X as counts)."""


def _looks_like_counts(X, max_values: int = 100_000) -> bool:
    """Non-negative and integer valued (checked on up to ``max_values`` stored values)."""
    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    vals = np.asarray(vals[:max_values])
    if vals.size == 0:
        return True
    if vals.dtype.kind in "iub":
        return bool((vals >= 0).all())
    return bool(np.all(vals >= 0) and np.allclose(vals, np.round(vals)))


def _section_column(adata, libs: list[str]) -> str | None:
    for col in LIBRARY_COLUMNS:
        if col in adata.obs.columns:
            vals = set(pd.unique(adata.obs[col].astype(str)))
            if col == "section" or not libs or vals <= set(libs):
                return col
    return None


def _fill_obs(adata, path: Path) -> None:
    libs = [str(k) for k in (adata.uns.get("spatial") or {}).keys()]
    col = _section_column(adata, libs)
    if col is not None:
        adata.obs["section"] = adata.obs[col].astype(str)
    elif len(libs) > 1:
        raise InputError(path, f"{len(libs)} libraries in uns['spatial'] ({', '.join(libs)}) but "
                               f"no obs column ({', '.join(LIBRARY_COLUMNS)}) says which spot "
                               "belongs to which")
    else:
        adata.obs["section"] = libs[0] if libs else path.stem
    adata.obs["section"] = pd.Categorical(adata.obs["section"].astype(str))
    if "patient" not in adata.obs.columns:
        adata.obs["patient"] = adata.obs["section"]
    adata.obs["patient"] = pd.Categorical(adata.obs["patient"].astype(str))
    if "label" not in adata.obs.columns:
        adata.obs["label"] = pd.Categorical([np.nan] * adata.n_obs)
    elif not isinstance(adata.obs["label"].dtype, pd.CategoricalDtype):
        adata.obs["label"] = pd.Categorical(adata.obs["label"])
    for dst, src in (("array_x", "array_col"), ("array_y", "array_row")):
        if dst not in adata.obs.columns and src in adata.obs.columns:
            adata.obs[dst] = adata.obs[src].astype(np.int64)


def _fill_uns(adata, section: str, path: Path) -> None:
    """Make sure ``uns['spatial'][section]`` has images/scalefactors/metadata dicts."""
    spatial = dict(adata.uns.get("spatial") or {})
    if section not in spatial and len(spatial) == 1:  # one library under another name
        spatial = {section: next(iter(spatial.values()))}
    entry = dict(spatial.get(section) or {})
    for k in ("images", "scalefactors", "metadata"):
        entry[k] = dict(entry.get(k) or {})
    meta = entry["metadata"]
    meta.setdefault("image_scale", 1.0)
    meta.setdefault("source", str(path))
    sf = entry["scalefactors"]
    if "mpp_fullres" not in meta and sf.get("spot_diameter_fullres") and \
            {"array_row", "array_col"} <= set(adata.obs.columns):
        # scanpy-read Visium: 55 µm spots
        meta["mpp_fullres"] = 55.0 / float(sf["spot_diameter_fullres"])
        meta["mpp_source"] = "Visium spot diameter (55 um)"
    adata.uns["spatial"] = {section: entry}


def read_st_h5ad(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ST ``.h5ad`` into ``{section: AnnData}`` (validated, obs/uns filled, counts kept)."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many types on corrupt files
        raise InputError(path, f"cannot read h5ad (corrupt or truncated?): "
                               f"{type(exc).__name__}: {exc}") from exc
    if "spatial" not in adata.obsm:
        raise InputError(path, "no spot coordinates: obsm['spatial'] is missing")
    xy = np.asarray(adata.obsm["spatial"])
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise InputError(path, f"obsm['spatial'] must be (n_spots, 2), got {xy.shape}")
    adata.obsm["spatial"] = xy[:, :2].astype(np.float64)
    if "counts" not in adata.layers:
        if not _looks_like_counts(adata.X):
            warnings.warn(f"{path}: X looks normalised (non-integer or negative values) and there "
                          "is no layers['counts']; using X as counts", H5adWarning, stacklevel=2)
        adata.layers["counts"] = adata.X.copy() if sp.issparse(adata.X) else np.array(adata.X)
    _fill_obs(adata, path)
    sections = split_sections(adata) if adata.obs["section"].nunique() > 1 else {
        str(adata.obs["section"].iloc[0]) if adata.n_obs else path.stem: adata}
    out: dict[str, Any] = {}
    for sec, sub in sections.items():
        sub.obs["section"] = pd.Categorical([sec] * sub.n_obs)
        _fill_uns(sub, sec, path)
        validate_st_adata(sub, f"{path} [{sec}]" if len(sections) > 1 else path)
        out[sec] = sub
    return out
