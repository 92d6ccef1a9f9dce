"""Whole-slide segmentation restricted to tissue.

A whole H&E slide is mostly glass: global settings computed from evenly spread tiles (the
corners) describe glass noise, and nuclei are then searched on the glass. Here the tissue mask
(:func:`napari_stexp.data.tissue.tissue_mask`, the optical-density mask on a coarse overview)
decides (1) where the global settings are sampled (tiles inside tissue, statistics on tissue
pixels only), (2) which tiles are segmented at all (tiles without tissue are skipped) and (3)
which objects are kept (centroid inside tissue). Each tile's stain channel is also normalised
to the slide's background level (:func:`normalise_tile`), so uneven staining across the slide
does not move the nucleus threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: A mask covering less / more than this fraction of the overview is "no glass-vs-tissue
#: contrast" (a crop inside tissue, a smear): the whole image is used.
MIN_TISSUE_FRACTION = 0.01
MAX_TISSUE_FRACTION = 0.97
#: Tiles of the global sample (full resolution, inside tissue).
SAMPLE_TILES = 6
SAMPLE_TILE = 1024
#: A tile is normalised when at least this many of its pixels are tissue.
MIN_NORMALISE_PIXELS = 4096


def _pyramid(image: Any):
    from ..io.image import ImagePyramid

    if isinstance(image, ImagePyramid):
        return image
    import dask.array as da

    arr = image if hasattr(image, "chunks") else da.from_array(np.asarray(image))
    return ImagePyramid(levels=[arr])


def slide_tissue(image: Any) -> tuple[np.ndarray, float] | None:
    """``(mask, downsample)`` of the tissue in ``image`` (level-0 px per mask px), or ``None``
    when the image shows no tissue/glass contrast (all tissue, all glass, grey images)."""
    from ..data.tissue import tissue_mask

    pyr = _pyramid(image)
    if len(pyr.shape) != 3:
        return None
    mask, ds = tissue_mask(pyr)
    frac = float(mask.mean()) if mask.size else 0.0
    if not MIN_TISSUE_FRACTION <= frac <= MAX_TISSUE_FRACTION:
        return None
    return mask, float(ds)


def window_mask(tissue: tuple[np.ndarray, float], r0: int, c0: int, r1: int, c1: int
                ) -> np.ndarray:
    """The tissue mask over level-0 window ``[r0:r1, c0:c1]`` (nearest neighbour)."""
    mask, ds = tissue
    rows = np.clip((np.arange(r0, r1) / ds).astype(np.int64), 0, mask.shape[0] - 1)
    cols = np.clip((np.arange(c0, c1) / ds).astype(np.int64), 0, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def tissue_sample(image: Any, tissue: tuple[np.ndarray, float], n_tiles: int = SAMPLE_TILES,
                  tile: int = SAMPLE_TILE) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, tissue pixels)``: a mosaic of up to ``n_tiles`` full-resolution tiles spread
    over the tissue (the tiles with most tissue, in raster order) and its tissue mask."""
    from .tiling import image_shape, read_window

    H, W = image_shape(image)[:2]
    mask, ds = tissue
    t = int(min(tile, H, W))
    cand = []
    for r in range(0, max(H - t, 0) + 1, t):
        for c in range(0, max(W - t, 0) + 1, t):
            frac = float(window_mask(tissue, r, c, r + t, c + t)[::8, ::8].mean())
            cand.append((frac, r, c))
    good = [x for x in cand if x[0] >= 0.5] or sorted(cand, reverse=True)[:n_tiles]
    pick = [good[i] for i in np.unique(np.linspace(0, len(good) - 1, n_tiles).astype(int))]
    tiles = [read_window(image, r, c, r + t, c + t) for _, r, c in pick]
    masks = [window_mask(tissue, r, c, r + t, c + t) for _, r, c in pick]
    return np.concatenate(tiles, axis=1), np.concatenate(masks, axis=1)


def normalise_tile(ch: np.ndarray, tissue_px: np.ndarray, background: float) -> np.ndarray:
    """Shift a tile's stain channel so the background of its tissue (the median of the palest
    quarter of tissue pixels, as in the global settings) matches the slide's ``background``;
    glass pixels are set to the background. Tiles with little tissue are only masked."""
    out = np.where(tissue_px, ch, np.float32(background)).astype(np.float32, copy=False)
    vals = ch[tissue_px]
    if vals.size >= MIN_NORMALISE_PIXELS:
        pale = vals <= np.quantile(vals, 0.25)
        out = out + np.float32(background - float(np.median(vals[pale])))
        out[~tissue_px] = background
    return out


def drop_outside(result, tissue_px: np.ndarray):
    """``result`` without the objects whose centroid is outside ``tissue_px`` (same shape as
    its labels), relabelled 1..n."""
    from .base import objects_table, relabel_sequential

    labels = np.asarray(result.labels)
    tab = result.table
    if not len(tab):
        return result
    ys = np.clip(tab["y"].to_numpy().astype(int), 0, labels.shape[0] - 1)
    xs = np.clip(tab["x"].to_numpy().astype(int), 0, labels.shape[1] - 1)
    inside = tissue_px[ys, xs]
    if inside.all():
        return result
    keep = np.zeros(int(labels.max()) + 1, bool)
    keep[tab["label"].to_numpy()[inside]] = True
    labels = np.where(keep[labels], labels, 0)
    labels, mapping = relabel_sequential(labels)
    old_scores = dict(zip(tab["label"].astype(int), tab["score"].astype(float), strict=True))
    scores = {new: old_scores.get(old, 1.0) for old, new in mapping.items()}
    result.labels = labels
    result.table = objects_table(labels, scores)
    result.metadata["dropped_outside_tissue"] = int((~inside).sum())
    return result
