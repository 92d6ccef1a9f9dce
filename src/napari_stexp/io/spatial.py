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

µm/px, spot centres in every frame, spot size and grids live in :mod:`napari_stexp.io.frame`
(``spots_rc_um`` is re-exported here): napari wants (row, col) in micrometres so every layer of a
slide shares one physical frame.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .frame import clean_mpp, mpp_of, recorded_spot_diameter_px, spots_rc_um
from .keys import (
    IMAGE_SCALE,
    IMAGES,
    METADATA,
    MPP_FULLRES,
    SCALEFACTORS,
    SOURCE_IMAGE_PATH,
    SPATIAL,
    SPOT_DIAMETER_FULLRES,
)

__all__ = ["SPOT_COLUMNS", "build_st_adata", "counts_matrix", "library_id", "library_ids",
           "mpp_fullres", "spatial_info", "split_sections",
           "spot_diameter_fullres", "spots_rc_um", "validate_st_adata"]

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
    x_is_counts: bool = True,
    metadata: dict[str, Any] | None = None,
):
    """Assemble an ST AnnData following the conventions above (and validate it).

    ``x_is_counts=False`` (model results over spots: predictions, classes): ``counts`` is
    kept as ``X`` as given and there is no ``layers['counts']``. ``metadata`` adds entries to
    ``uns['spatial'][section]['metadata']``. ``mpp_fullres=None`` (unknown) stays absent.
    """
    import anndata as ad

    if x_is_counts:
        X = counts if sp.issparse(counts) else sp.csr_matrix(np.asarray(counts))
        X = sp.csr_matrix(X)
        if X.dtype.kind == "f" and X.nnz and np.allclose(X.data, np.round(X.data)):
            X = X.astype(np.float32)
    else:
        X = counts
    obs = pd.DataFrame(index=pd.Index([str(o) for o in obs_names], name=None))
    if extra_obs is not None:
        obs = obs.join(extra_obs)
    n = len(obs)  # constant columns from codes (no n-item lists: 10⁶ bins)
    obs["section"] = pd.Categorical.from_codes(np.zeros(n, np.int8), [str(section)])
    obs["patient"] = pd.Categorical.from_codes(
        np.zeros(n, np.int8), [str(patient if patient is not None else section)])
    if labels is None:
        obs["label"] = pd.Categorical.from_codes(np.full(n, -1, np.int8),
                                                 pd.Index([], dtype="float64"))
    else:
        obs["label"] = pd.Categorical(pd.Series(list(labels), index=obs.index, dtype=object))
    if array_xy is not None:
        a = np.asarray(array_xy)
        obs["array_x"] = np.round(a[:, 0]).astype(np.int64)
        obs["array_y"] = np.round(a[:, 1]).astype(np.int64)
    var_df = var if var is not None else pd.DataFrame(index=pd.Index([str(v) for v in var_names]))
    adata = ad.AnnData(X=X, obs=obs, var=var_df)
    if x_is_counts:
        adata.layers["counts"] = X.copy()
    adata.obsm[SPATIAL] = np.asarray(spatial_xy, dtype=np.float64)
    images = {}
    scalef: dict[str, float] = {}
    if hires_image is not None:
        images["hires"] = hires_image
        scalef["tissue_hires_scalef"] = float(hires_scalef if hires_scalef is not None else image_scale)
    if spot_diameter_fullres is not None:
        scalef[SPOT_DIAMETER_FULLRES] = float(spot_diameter_fullres)
    meta: dict[str, Any] = {IMAGE_SCALE: float(image_scale)}
    if image_path is not None:
        meta[SOURCE_IMAGE_PATH] = str(image_path)
    if clean_mpp(mpp_fullres) is not None:
        meta[MPP_FULLRES] = float(mpp_fullres)
    if source is not None:
        meta["source"] = str(source)
    meta.update(metadata or {})
    adata.uns[SPATIAL] = {str(section): {IMAGES: images, SCALEFACTORS: scalef, METADATA: meta}}
    validate_st_adata(adata, source or section)
    return adata


def validate_st_adata(adata, source: Any = None) -> None:
    """Raise :class:`InputError` naming ``source`` when ``adata`` breaks the ST conventions."""
    src = source if source is not None else "AnnData"
    if SPATIAL not in adata.obsm:
        raise InputError(src, "no spot coordinates: obsm['spatial'] is missing")
    xy = np.asarray(adata.obsm[SPATIAL])
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
    return list(adata.uns.get(SPATIAL, {}).keys())


def library_id(adata, section: str | None = None) -> str | None:
    libs = library_ids(adata)
    if section is not None:
        return section if section in libs else None
    return libs[0] if libs else None


def spatial_info(adata, section: str | None = None) -> dict:
    """The ``uns['spatial'][lib]`` entry (empty dict-like parts if absent)."""
    lib = library_id(adata, section)
    entry = adata.uns.get(SPATIAL, {}).get(lib, {}) if lib else {}
    return {
        "library_id": lib,
        IMAGES: entry.get(IMAGES, {}) or {},
        SCALEFACTORS: entry.get(SCALEFACTORS, {}) or {},
        METADATA: entry.get(METADATA, {}) or {},
    }


def mpp_fullres(adata, section: str | None = None, default: float | None = None
                ) -> float | None:
    """µm per full-resolution pixel; ``default`` (None: unknown) when the data do not say.
    Same as :func:`napari_stexp.io.frame.mpp_of`."""
    v = mpp_of(adata, section)
    return v if v is not None else default


def spot_diameter_fullres(adata, section: str | None = None) -> float | None:
    """The recorded spot diameter in full-resolution px (None when absent)."""
    return recorded_spot_diameter_px(adata, section)


def split_sections(adata) -> dict[str, Any]:
    """Split a multi-section AnnData by ``obs['section']`` (each keeps its own uns['spatial'])."""
    if "section" not in adata.obs:
        lib = library_id(adata) or "section"
        return {lib: adata}
    out = {}
    for sec in pd.unique(adata.obs["section"].astype(str)):
        sub = adata[adata.obs["section"].astype(str) == sec].copy()
        spatial = adata.uns.get(SPATIAL, {})
        if sec in spatial:
            sub.uns[SPATIAL] = {sec: spatial[sec]}
        out[sec] = sub
    return out


def counts_matrix(adata):
    """Raw counts: ``layers['counts']`` when present, else ``X``."""
    return adata.layers["counts"] if "counts" in adata.layers else adata.X
