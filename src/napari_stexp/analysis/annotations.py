"""Annotations as labels (the QuPath habit): regions drawn on the slide, or a pick of spots,
named with a class, become ``obs['label']`` for the classifier's training and evaluation.

Qt-free. Polygons and spot coordinates share one frame: napari (row, col), by default the
spots' µm frame of :func:`napari_stexp.io.spatial.spots_rc_um` (pixels when µm/px is unknown),
which is where the loader puts the spots layer. A spot inside several polygons takes the last
one's class (draw the small region after the big one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError

LABEL_COLUMN = "label"


def spots_in_polygon(coords: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Boolean mask of the ``coords`` (n, 2) inside ``polygon`` (k, 2), both (row, col)."""
    from matplotlib.path import Path

    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[0] < 3 or poly.shape[1] < 2:
        raise InputError("annotation", f"a region needs at least 3 (row, col) vertices, got "
                                       f"shape {poly.shape}")
    return Path(poly[:, -2:]).contains_points(np.asarray(coords, np.float64)[:, -2:])


def labels_from_annotations(adata: Any, polygons: Sequence[np.ndarray], names: Sequence[str] | str,
                            *, coords: np.ndarray | None = None, column: str = LABEL_COLUMN,
                            keep_existing: bool = False) -> dict[str, int]:
    """Write ``obs[column]`` (categorical) from named regions; returns spots per class.

    ``polygons``: (k, 2) arrays of (row, col) vertices in the frame of ``coords`` (default the
    spots in µm, :func:`spots_rc_um`); ``names``: one class per polygon (or one for all).
    Spots outside every region become missing (NaN, "unlabelled"), or keep their previous
    label with ``keep_existing=True``.
    """
    from ..io.spatial import spots_rc_um

    polygons = list(polygons)
    names = [names] * len(polygons) if isinstance(names, str) else [str(n) for n in names]
    if len(names) != len(polygons):
        raise InputError("annotation", f"{len(polygons)} region(s) but {len(names)} class "
                                       "name(s); name every region")
    if any(not n.strip() for n in names):
        raise InputError("annotation", "every region needs a class name")
    xy = spots_rc_um(adata) if coords is None else np.asarray(coords, np.float64)
    if len(xy) != adata.n_obs:
        raise InputError("annotation", f"{len(xy)} coordinates for {adata.n_obs} spots")
    lab = np.full(adata.n_obs, None, dtype=object)
    if keep_existing and column in adata.obs:
        old = adata.obs[column].astype(object)
        lab[:] = [None if pd.isna(v) else v for v in old]
    for poly, name in zip(polygons, names, strict=True):
        lab[spots_in_polygon(xy, poly)] = name
    return _write(adata, lab, column)


def labels_from_selection(adata: Any, indices: Sequence[int], name: str, *,
                          column: str = LABEL_COLUMN) -> dict[str, int]:
    """Give the spots ``indices`` (a pick in napari) the class ``name``; the others keep theirs."""
    if not str(name).strip():
        raise InputError("annotation", "the picked spots need a class name")
    idx = np.asarray(list(indices), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= adata.n_obs):
        raise InputError("annotation", f"spot index out of range (0..{adata.n_obs - 1})")
    lab = np.full(adata.n_obs, None, dtype=object)
    if column in adata.obs:
        lab[:] = [None if pd.isna(v) else v for v in adata.obs[column].astype(object)]
    lab[idx] = str(name)
    return _write(adata, lab, column)


def _write(adata, lab: np.ndarray, column: str) -> dict[str, int]:
    cats = sorted({v for v in lab if v is not None})
    adata.obs[column] = pd.Categorical([v if v is not None else np.nan for v in lab],
                                       categories=cats)
    counts = adata.obs[column].value_counts()
    return {c: int(counts.get(c, 0)) for c in cats}
