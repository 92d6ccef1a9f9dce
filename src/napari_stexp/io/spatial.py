"""The one in-memory model of an ST section: an AnnData following scanpy/squidpy conventions.

Every ST reader (her2st, Visium, h5ad) returns AnnData built or checked here:

- ``X`` raw counts (CSR, integer valued) and the same matrix in ``layers['counts']``;
- ``obsm['spatial']`` spot centres in full-resolution image pixels as **(x, y) = (column, row)**;
- ``obs``: ``section``, ``patient`` (the batch), ``label`` (categorical, NaN when unknown),
  ``array_x``/``array_y`` (integer array coordinates, used as position indices by mclSTExp);
- ``uns['spatial'][section]``: ``images`` (``hires`` when available), ``scalefactors``
  (``tissue_hires_scalef``, ``spot_diameter_fullres``) and ``metadata`` (``source_image_path``:
  the full-resolution image for lazy access, ``image_scale``: image px per full-res px,
  ``mpp_fullres``: µm per full-resolution pixel).

napari wants (row, col): :func:`spots_rc_um` converts to micrometres so every layer of a slide
shares one physical frame.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

SPOT_COLUMNS = ("section", "patient", "label", "array_x", "array_y")


def build_st_adata(
    counts: Any,
    obs_names: list[str] | pd.Index,
    var_names: list[str] | pd.Index,
    spatial_xy: np.ndarray,
    *,
    section: str,
    patient: str | None = None,
    labels: Any = None,
    array_xy: np.ndarray | None = None,
    spot_diameter_fullres: float | None = None,
    mpp_fullres: float | None = None,
    image_path: str | os.PathLike | None = None,
    image_scale: float = 1.0,
    hires_image: np.ndarray | None = None,
    hires_scalef: float | None = None,
    source: str | os.PathLike | None = None,
    extra_obs: pd.DataFrame | None = None,
    var: pd.DataFrame | None = None,
):
    """Assemble an ST AnnData following the conventions above (and validate it)."""
    import anndata as ad

    X = counts if sp.issparse(counts) else sp.csr_matrix(np.asarray(counts))
    X = sp.csr_matrix(X)
    if X.dtype.kind == "f" and X.nnz and np.allclose(X.data, np.round(X.data)):
        X = X.astype(np.float32)
    obs = pd.DataFrame(index=pd.Index([str(o) for o in obs_names], name=None))
    if extra_obs is not None:
        obs = obs.join(extra_obs)
    obs["section"] = pd.Categorical([str(section)] * len(obs))
    obs["patient"] = pd.Categorical([str(patient if patient is not None else section)] * len(obs))
    if labels is None:
        obs["label"] = pd.Categorical([np.nan] * len(obs))
    else:
        obs["label"] = pd.Categorical(pd.Series(list(labels), index=obs.index, dtype=object))
    if array_xy is not None:
        a = np.asarray(array_xy)
        obs["array_x"] = np.round(a[:, 0]).astype(np.int64)
        obs["array_y"] = np.round(a[:, 1]).astype(np.int64)
    var_df = var if var is not None else pd.DataFrame(index=pd.Index([str(v) for v in var_names]))
    adata = ad.AnnData(X=X, obs=obs, var=var_df)
    adata.layers["counts"] = X.copy()
    adata.obsm["spatial"] = np.asarray(spatial_xy, dtype=np.float64)
    images = {}
    scalef: dict[str, float] = {}
    if hires_image is not None:
        images["hires"] = hires_image
        scalef["tissue_hires_scalef"] = float(hires_scalef if hires_scalef is not None else image_scale)
    if spot_diameter_fullres is not None:
        scalef["spot_diameter_fullres"] = float(spot_diameter_fullres)
    meta: dict[str, Any] = {"image_scale": float(image_scale)}
    if image_path is not None:
        meta["source_image_path"] = str(image_path)
    if mpp_fullres is not None:
        meta["mpp_fullres"] = float(mpp_fullres)
    if source is not None:
        meta["source"] = str(source)
    adata.uns["spatial"] = {str(section): {"images": images, "scalefactors": scalef, "metadata": meta}}
    validate_st_adata(adata, source or section)
    return adata


def validate_st_adata(adata, source: Any = None) -> None:
    """Raise :class:`InputError` naming ``source`` when ``adata`` breaks the ST conventions."""
    src = source if source is not None else "AnnData"
    if "spatial" not in adata.obsm:
        raise InputError(src, "no spot coordinates: obsm['spatial'] is missing")
    xy = np.asarray(adata.obsm["spatial"])
    if xy.ndim != 2 or xy.shape[1] < 2 or xy.shape[0] != adata.n_obs:
        raise InputError(src, f"obsm['spatial'] must be (n_spots, 2), got {xy.shape}")
    bad = ~np.isfinite(xy[:, :2]).all(axis=1)
    if bad.any():
        ids = ", ".join(map(str, adata.obs_names[bad][:5]))
        raise InputError(src, f"{int(bad.sum())} spot(s) have NaN/inf coordinates (e.g. {ids})")
    if adata.obs_names.has_duplicates:
        dup = adata.obs_names[adata.obs_names.duplicated()][:5]
        raise InputError(src, f"duplicate spot ids: {', '.join(map(str, dup))}")


def library_ids(adata) -> list[str]:
    return list(adata.uns.get("spatial", {}).keys())


def library_id(adata, section: str | None = None) -> str | None:
    libs = library_ids(adata)
    if section is not None:
        return section if section in libs else None
    return libs[0] if libs else None


def spatial_info(adata, section: str | None = None) -> dict:
    """The ``uns['spatial'][lib]`` entry (empty dict-like parts if absent)."""
    lib = library_id(adata, section)
    entry = adata.uns.get("spatial", {}).get(lib, {}) if lib else {}
    return {
        "library_id": lib,
        "images": entry.get("images", {}) or {},
        "scalefactors": entry.get("scalefactors", {}) or {},
        "metadata": entry.get("metadata", {}) or {},
    }


def mpp_fullres(adata, section: str | None = None, default: float = 1.0) -> float:
    """µm per full-resolution pixel; ``default`` (1.0: pixels as units) when unknown."""
    meta = spatial_info(adata, section)["metadata"]
    v = meta.get("mpp_fullres")
    return float(v) if v else float(default)


def spot_diameter_fullres(adata, section: str | None = None) -> float | None:
    v = spatial_info(adata, section)["scalefactors"].get("spot_diameter_fullres")
    return float(v) if v else None


def spots_rc_um(adata, section: str | None = None) -> np.ndarray:
    """Spot centres as napari (row, col) in micrometres (pixels if µm/px is unknown)."""
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    return xy[:, ::-1] * mpp_fullres(adata, section)


def split_sections(adata) -> dict[str, Any]:
    """Split a multi-section AnnData by ``obs['section']`` (each keeps its own uns['spatial'])."""
    if "section" not in adata.obs:
        lib = library_id(adata) or "section"
        return {lib: adata}
    out = {}
    for sec in pd.unique(adata.obs["section"].astype(str)):
        sub = adata[adata.obs["section"].astype(str) == sec].copy()
        spatial = adata.uns.get("spatial", {})
        if sec in spatial:
            sub.uns["spatial"] = {sec: spatial[sec]}
        out[sec] = sub
    return out


def counts_matrix(adata):
    """Raw counts: ``layers['counts']`` when present, else ``X``."""
    return adata.layers["counts"] if "counts" in adata.layers else adata.X
