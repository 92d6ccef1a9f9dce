"""Tissue mask of an H&E slide and a pseudo-spot grid over the tissue.

The mask is computed on a coarse pyramid level (never level 0 of a whole slide): stained tissue
is *saturated* (pink/purple) while glass is white and grey, so Otsu's threshold on the HSV
saturation separates them; very dark pixels (painted-black backgrounds, e.g. the her2st app
PNGs, slide labels) are excluded, and the mask is cleaned (small specks removed, small holes
filled). The pseudo-spot grid lays spots at the training spot pitch (square like ST v1, or
hexagonal like Visium) and keeps those whose disk is mostly tissue.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io.image import ImagePyramid


def _coarse_rgb(pyramid: ImagePyramid, max_size: int) -> tuple[np.ndarray, float]:
    """An RGB overview of about ``max_size`` px and its downsample w.r.t. level 0."""
    target = max(pyramid.height, pyramid.width) / max(max_size, 1)
    lvl = pyramid.best_level(max(target, 1.0))
    arr = pyramid.levels[lvl]
    step = max(1, int(np.floor(max(arr.shape[:2]) / max_size)))
    small = arr[::step, ::step]
    small = np.asarray(small.compute() if hasattr(small, "compute") else small)
    if small.ndim == 2:
        small = np.repeat(small[..., None], 3, axis=2)
    small = small[..., :3]
    if small.dtype != np.uint8:
        hi = float(small.max()) or 1.0
        small = np.clip(small * (255.0 / hi), 0, 255).astype(np.uint8)
    ds = pyramid.height / small.shape[0]
    return small, float(ds)


def tissue_mask(pyramid: ImagePyramid, max_size: int = 1024, min_object_um2: float = 2e4,
                dark_value: float = 0.12) -> tuple[np.ndarray, float]:
    """``(mask, downsample)``: boolean tissue mask of a coarse overview; ``downsample`` = level-0
    px per mask px. Otsu on saturation; pixels darker than ``dark_value`` (HSV value) excluded;
    objects smaller than ``min_object_um2`` removed and holes of that size filled."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    rgb, ds = _coarse_rgb(pyramid, max_size)
    f = rgb.astype(np.float32) / 255.0
    mx, mn = f.max(axis=2), f.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    valid = mx > dark_value
    if valid.sum() < 16 or np.ptp(sat[valid]) < 0.02:
        return np.zeros(sat.shape, bool), ds
    t = max(float(threshold_otsu(sat[valid])), 0.04)
    mask = valid & (sat > t)
    mask = ndi.binary_opening(mask, iterations=1)
    px_um = (pyramid.mpp or 1.0) * ds
    min_px = max(int(min_object_um2 / (px_um * px_um)), 4)
    lab, n = ndi.label(mask)
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= min_px
        keep[0] = False
        mask = keep[lab]
    holes = ndi.binary_fill_holes(mask) & ~mask
    lab, n = ndi.label(holes)
    if n:
        sizes = np.bincount(lab.ravel())
        small = sizes < min_px
        small[0] = False
        mask = mask | small[lab]
    return mask, ds


def pseudo_spot_grid(mask: np.ndarray, downsample: float, shape: tuple[int, int],
                     pitch_px: float, spot_diameter_px: float | None = None, *,
                     min_tissue: float = 0.5, layout: str = "square"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-spots over tissue: ``(centres (n, 2) level-0 (row, col), grid (n, 2) integer
    (x, y) array coordinates, tissue fraction (n,))``.

    Spots are ``pitch_px`` apart (square grid, or hexagonal with rows ``pitch·√3/2`` apart and
    every other row shifted by half a pitch); a spot is kept when at least ``min_tissue`` of its
    disk (``spot_diameter_px``, default half the pitch) is tissue.
    """

    H, W = int(shape[0]), int(shape[1])
    if pitch_px <= 0:
        raise InputError("pitch", f"spot pitch must be positive, got {pitch_px}")
    if layout not in ("square", "hex"):
        raise InputError("layout", f"unknown grid layout '{layout}' (square or hex)")
    row_step = pitch_px * (np.sqrt(3) / 2 if layout == "hex" else 1.0)
    rows = np.arange(pitch_px / 2, H, row_step)
    centres, grid = [], []
    for i, r in enumerate(rows):
        shift = pitch_px / 2 if (layout == "hex" and i % 2) else 0.0
        cols = np.arange(pitch_px / 2 + shift, W, pitch_px)
        centres.append(np.column_stack([np.full(len(cols), r), cols]))
        gx = np.arange(len(cols)) * (2 if layout == "hex" else 1) + (1 if shift else 0)
        grid.append(np.column_stack([gx, np.full(len(cols), i)]))
    if not centres:
        return np.empty((0, 2)), np.empty((0, 2), np.int64), np.empty(0)
    c = np.concatenate(centres)
    g = np.concatenate(grid).astype(np.int64)
    diam = float(spot_diameter_px or pitch_px / 2) / downsample
    rad = max(diam / 2, 0.5)
    yy, xx = np.mgrid[-int(np.ceil(rad)):int(np.ceil(rad)) + 1,
                      -int(np.ceil(rad)):int(np.ceil(rad)) + 1]
    disk = (yy * yy + xx * xx) <= rad * rad
    mr = np.clip((c[:, 0] / downsample).astype(int), 0, mask.shape[0] - 1)
    mc = np.clip((c[:, 1] / downsample).astype(int), 0, mask.shape[1] - 1)
    # Tissue fraction sampled at the spot centres only (same as correlating the mask with the
    # disk, zero outside, but costs spots × disk instead of image × disk).
    m = mask.astype(bool)
    hits = np.zeros(len(c), np.float64)
    for dy, dx in zip(yy[disk], xx[disk], strict=True):
        r, q = mr + dy, mc + dx
        ok = (r >= 0) & (r < m.shape[0]) & (q >= 0) & (q < m.shape[1])
        hits[ok] += m[r[ok], q[ok]]
    frac = hits / disk.sum()
    keep = frac >= min_tissue
    return c[keep], g[keep], frac[keep].astype(np.float32)
