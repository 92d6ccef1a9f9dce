"""Per-cell morphology and the cell AnnData written beside ``labels.tif``.

``cells_adata(result, ...)`` follows the ST conventions of :mod:`napari_stexp.io.spatial`
(built by ``build_st_adata``): one observation per label, ``obsm['spatial']`` the centroids as
**(x, y)** full-resolution pixels, the morphology features in ``obs`` (pixels, and µm / µm² when
µm/px is known), µm/px in ``uns['spatial'][lib]['metadata']['mpp_fullres']`` (absent when
unknown) and ``uns['napari_stexp']``; with the slide given, its hires overview as well, so
``sc.pl.spatial(adata, color='area', library_id=lib)`` draws the cells over the slide.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: regionprops features per cell (pixels).
MORPHOLOGY = ("perimeter", "eccentricity", "solidity", "major_axis_length", "minor_axis_length",
              "orientation", "equivalent_diameter_area")
#: Labels larger than this (pixels) are measured block by block.
BLOCK = 4096


def morphology_features(labels: Any, table: pd.DataFrame) -> pd.DataFrame:
    """One row per ``table`` row (same order): :data:`MORPHOLOGY` of each label.

    Lazy (dask/zarr) labels are measured in blocks: each block is read with a margin of the
    largest object's extent and keeps the objects whose centroid lies in its core."""
    from skimage.measure import regionprops_table

    cols = ["label", *MORPHOLOGY]
    if not len(table):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in MORPHOLOGY})
    H, W = labels.shape[:2]
    if H * W <= BLOCK * BLOCK and not hasattr(labels, "compute"):
        props = pd.DataFrame(regionprops_table(np.asarray(labels), properties=cols))
    else:
        halo = int(max((table["ymax"] - table["ymin"]).max(),
                       (table["xmax"] - table["xmin"]).max())) + 1
        parts = []
        for r in range(0, H, BLOCK):
            for c in range(0, W, BLOCK):
                core = table["y"].between(r, r + BLOCK, inclusive="left") & table["x"].between(
                    c, c + BLOCK, inclusive="left")
                if not core.any():
                    continue
                r0, c0 = max(r - halo, 0), max(c - halo, 0)
                block = labels[r0:min(r + BLOCK + halo, H), c0:min(c + BLOCK + halo, W)]
                block = np.asarray(block.compute() if hasattr(block, "compute") else block)
                want = np.isin(block, table.loc[core, "label"].to_numpy())
                block = np.where(want, block, 0)
                parts.append(pd.DataFrame(regionprops_table(block, properties=cols)))
        props = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    props = props.drop_duplicates("label").set_index("label")
    out = props.reindex(table["label"].to_numpy())
    return out.reset_index(drop=True).astype(np.float64)


def cells_adata(result, *, library_id: str = "cells", mpp: float | None = None,
                pyramid=None, source: str | None = None):
    """The cell AnnData of a :class:`SegmentationResult` (see the module doc)."""
    from ..io.spatial import build_st_adata

    tab = result.table.reset_index(drop=True)
    obs = tab.drop(columns=[c for c in ("y", "x") if c in tab]).copy()
    obs = pd.concat([obs, morphology_features(result.labels, tab)], axis=1)
    if mpp:
        obs["area_um2"] = obs["area"].astype(float) * mpp * mpp
        for c in ("perimeter", "major_axis_length", "minor_axis_length",
                  "equivalent_diameter_area"):
            obs[f"{c}_um"] = obs[c] * mpp
    if "class" in obs:
        obs["class"] = obs["class"].astype(str).astype("category")
    names = [f"cell_{int(v)}" for v in tab["label"]]
    obs.index = pd.Index(names)
    diam = float(np.nanmedian(obs["equivalent_diameter_area"])) if len(obs) else None
    hires = scalef = None
    if pyramid is not None:
        from ..io.hires import hires_image_for

        hires, scalef = hires_image_for(pyramid)
    adata = build_st_adata(
        np.zeros((len(tab), 0), np.float32), names, [],
        tab[["x", "y"]].to_numpy(np.float64), section=library_id,
        spot_diameter_fullres=diam if diam and np.isfinite(diam) else None,
        mpp_fullres=mpp, hires_image=hires, hires_scalef=scalef, source=source,
        extra_obs=obs)
    meta = {k: v for k, v in result.metadata.items() if isinstance(v, str | int | float | bool)}
    prov = {"kind": "cells", "n_cells": int(len(tab)),
            "coordinates": "obsm['spatial'] = (x, y) full-resolution px", "segmentation": meta}
    if mpp:  # absent when unknown (as mpp_fullres)
        prov["mpp"] = float(mpp)
    adata.uns["napari_stexp"] = prov
    return adata
