"""Layer data tuples for napari (no Qt, no napari import): images, spots, boxes, cells.

Every layer of a slide shares one physical frame in micrometres (``scale`` = µm/px), so spots,
masks and gene maps overlay exactly. When µm/px is unknown, full-resolution pixels are the unit
(:mod:`napari_stexp.io.frame` decides both).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .frame import layer_scale, mpp_of, spot_diameter_um, spots_rc_um
from .image import ImagePyramid
from .spatial import counts_matrix

LayerDataTuple = tuple[Any, dict, str]

# Categorical colours (tab10): napari's default cycle has too few distinct colours for classes.
CATEGORY_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                   "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def image_layer(pyr: ImagePyramid, name: str | None = None, *, mpp: float | None = None,
                **kwargs) -> LayerDataTuple:
    """A (multiscale) Image layer tuple from a lazy pyramid; level 0 is never read whole."""
    if mpp is not None:
        m, source, scale = mpp, "user", layer_scale(mpp)
    else:
        m, source, scale = pyr.mpp, pyr.mpp_source, layer_scale(pyr)
    meta = {"path": pyr.path, "kind": "image", **pyr.metadata}
    if "mpp_source" in meta:  # the reader's detail (tiff tag, dpi, ...)
        meta["mpp_detail"] = meta.pop("mpp_source")
    meta.update({"mpp": m, "mpp_source": source})
    data = pyr.levels if pyr.multiscale else pyr.levels[0]
    attrs = {"name": name or pyr.name, "scale": scale, "multiscale": pyr.multiscale,
             "rgb": pyr.rgb, "metadata": meta}
    attrs.update(kwargs)
    return data, attrs, "image"


def spot_features(adata) -> pd.DataFrame:
    """The per-spot table for a Points layer: obs columns plus count summaries.

    Categorical columns with missing values get the explicit category ``"unknown"`` so napari's
    colour cycles and the explorer never see NaN categories.
    """
    obs = adata.obs.copy()
    for col in obs.columns:
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            if obs[col].isna().any():
                obs[col] = obs[col].cat.add_categories(["unknown"]).fillna("unknown")
        elif obs[col].dtype == object:
            obs[col] = obs[col].fillna("unknown").astype(str)
    X = counts_matrix(adata)
    obs["total_counts"] = np.asarray(X.sum(axis=1)).ravel().astype(np.float32)
    obs["n_genes"] = np.asarray((X > 0).sum(axis=1)).ravel().astype(np.int32)
    obs.insert(0, "spot_id", adata.obs_names.astype(str))
    return obs.reset_index(drop=True)


def spots_layer(adata, name: str | None = None, *, section: str | None = None,
                color_by: str | None = None, **kwargs) -> LayerDataTuple:
    """A Points layer tuple: spot centres in µm (row, col), size = spot diameter in µm."""
    coords = spots_rc_um(adata, section)
    mpp = mpp_of(adata, section)
    size = spot_diameter_um(adata, section) or 1.0
    features = spot_features(adata)
    if color_by is None:
        labelled = "label" in features and (features["label"].astype(str) != "unknown").any()
        color_by = "label" if labelled else "total_counts"
    sec = section or (str(adata.obs["section"].iloc[0]) if "section" in adata.obs and adata.n_obs
                      else "spots")
    attrs = {"name": name or f"{sec} spots", "size": size, "features": features,
             "border_width": 0.0, "opacity": 0.75,
             "metadata": {"kind": "spots", "section": sec, "mpp": mpp}}
    if color_by in features:
        attrs["face_color"] = color_by
        attrs["metadata"]["color_by"] = color_by
        if isinstance(features[color_by].dtype, pd.CategoricalDtype) or \
                features[color_by].dtype == object:
            attrs["face_color_cycle"] = fixed_cycle(features[color_by])
        else:
            attrs["face_colormap"] = "viridis"
    attrs.update(kwargs)
    return coords, attrs, "points"


def boxes_layer(boxes: pd.DataFrame, name: str = "boxes", *, scale: float = 1.0,
                **kwargs) -> LayerDataTuple:
    """A Shapes layer tuple of rectangles from a table with xmin, ymin, xmax, ymax (pixels)."""
    rects = [np.array([[r.ymin, r.xmin], [r.ymin, r.xmax], [r.ymax, r.xmax], [r.ymax, r.xmin]],
                      dtype=float) for r in boxes.itertuples()]
    features = boxes.reset_index(drop=True).copy()
    attrs = {"name": name, "shape_type": "rectangle", "features": features,
             "face_color": "transparent", "edge_width": 2, "scale": (scale, scale),
             "metadata": {"kind": "boxes"}}
    if "name" in features:
        attrs["edge_color"] = fixed_colors(features["name"])  # the fixed box-class colours
    attrs.update(kwargs)
    return rects, attrs, "shapes"


def fixed_cycle(values: pd.Series) -> dict:
    """Points ``face_color_cycle`` mapping each category to its fixed colour (io.palette)."""
    from .palette import color_map

    cats = values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else \
        pd.unique(values.dropna())
    cmap = color_map(cats)
    return {c: cmap[str(c)] for c in cats}


def fixed_colors(values: pd.Series) -> list[str]:
    """One fixed colour (io.palette) per row of ``values``."""
    from .palette import color_map

    cmap = color_map(pd.unique(values.astype(str)))
    return [cmap[v] for v in values.astype(str)]


