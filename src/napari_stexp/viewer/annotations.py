"""napari side of the annotation loop (Qt-free): a Shapes layer of named regions in another
layer's data frame, and the spots layer updated after labelling."""

from __future__ import annotations

from typing import Any

import numpy as np

CLASS_FEATURE = "class"


def _to_frame(data: np.ndarray, src, dst) -> np.ndarray:
    """(n, 2) data coordinates of layer ``src`` in the data frame of layer ``dst`` (through the
    world: ``data * scale + translate``; the last two axes)."""
    s_scale, s_tr = np.asarray(src.scale)[-2:], np.asarray(src.translate)[-2:]
    d_scale, d_tr = np.asarray(dst.scale)[-2:], np.asarray(dst.translate)[-2:]
    return (np.asarray(data, np.float64)[:, -2:] * s_scale + s_tr - d_tr) / d_scale


def regions_from_shapes(shapes, target) -> tuple[list[np.ndarray], list[str]]:
    """The polygons/rectangles/ellipses of ``shapes`` in ``target``'s data frame and their class
    names (``features['class']``; empty for unnamed regions). Lines and paths are skipped."""
    names = (shapes.features[CLASS_FEATURE].astype(str).tolist()
             if CLASS_FEATURE in shapes.features else [""] * len(shapes.data))
    polys, out = [], []
    for data, kind, name in zip(shapes.data, shapes.shape_type, names, strict=True):
        if kind in ("line", "path") or len(data) < 3:
            continue
        polys.append(_to_frame(data, shapes, target))
        out.append("" if name in ("nan", "None") else name)
    return polys, out


def region_layer_kwargs(name: str = "annotations", class_name: str = "") -> dict:
    """Attributes of a new Shapes layer for drawing named regions (new shapes take the class
    typed in the widget through ``feature_defaults``)."""
    import pandas as pd

    return {"name": name, "shape_type": "polygon", "face_color": "transparent",
            "edge_width": 3, "edge_color": "yellow",
            "features": pd.DataFrame({CLASS_FEATURE: pd.Series([], dtype=object)}),
            "feature_defaults": {CLASS_FEATURE: class_name},
            "metadata": {"kind": "annotations"}}


def colour_regions(shapes) -> None:
    """Edge colours of the regions from the fixed class palette."""
    from ..io.layers import fixed_colors

    if len(shapes.data) and CLASS_FEATURE in shapes.features:
        shapes.edge_color = fixed_colors(shapes.features[CLASS_FEATURE].astype(str))


def show_labels(points, adata: Any, column: str = "label") -> None:
    """Copy ``adata.obs[column]`` into the spots layer's features and colour by it (the fixed
    palette), so the classifier widget and the explorer see the new labels."""
    import pandas as pd

    from ..io.layers import fixed_cycle

    vals = adata.obs[column]
    vals = vals.cat.add_categories(["unknown"]).fillna("unknown") if vals.isna().any() else vals
    feats = points.features.copy()
    feats[column] = pd.Categorical(np.asarray(vals.astype(str)),
                                   categories=list(vals.cat.categories))
    points.features = feats
    points.face_color_cycle = fixed_cycle(feats[column])
    points.face_color = column
