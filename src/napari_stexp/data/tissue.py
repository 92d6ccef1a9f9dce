"""Tissue mask of an H&E slide and a pseudo-spot grid over the tissue.

The mask is computed on a coarse pyramid level (never level 0 of a whole slide): stain absorbs
light, so the optical density relative to the glass colour (estimated from the overview, as
scans are often tinted) is high on pink stroma and purple cellular tissue alike and ~0 on glass;
Otsu's threshold on it separates them; very dark pixels (painted-black backgrounds, e.g. the
her2st app PNGs, slide labels) are excluded, and the mask is cleaned (gaps closed, small specks
removed, small holes filled). The pseudo-spot grid (:func:`napari_stexp.io.frame.pseudo_spot_grid`,
re-exported here) lays spots at the training spot pitch (square like ST v1, or hexagonal like
Visium) and keeps those whose disk is mostly tissue.
"""

from __future__ import annotations

import numpy as np

from ..io.frame import frame_scale, pseudo_spot_grid
from ..io.image import ImagePyramid

__all__ = ["background_rgb", "od_threshold", "pseudo_spot_grid", "tissue_mask"]


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


def background_rgb(rgb: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The glass colour of an overview: the median colour of its brightest 5 % of pixels
    (tinted glass, e.g. the pinkish her2st scans, is not pure white)."""
    v = rgb.max(axis=-1) if rgb.ndim == 3 else rgb
    sel = valid if valid is not None else np.ones(v.shape, bool)
    vals = v[sel]
    if vals.size == 0:
        return np.full(3, 255.0)
    hi = np.percentile(vals, 95)
    pick = sel & (v >= hi)
    return np.median(rgb[pick].reshape(-1, 3), axis=0).astype(np.float64).clip(1, 255)


def od_threshold(od: np.ndarray) -> float | None:
    """Tissue/glass threshold of (smoothed) optical densities, ``None`` if there is no contrast.

    Glass is the histogram's mode with a narrow spread ``σ`` (from the values below the mode);
    Otsu's threshold alone lands inside the tissue on slides with pale, loose tissue, and
    ``mode + 8σ`` alone picks up stain haze around it: the geometric mean of the two does
    neither on the her2st sections (tests/data/test_tissue.py)."""
    from skimage.filters import threshold_otsu

    od = np.asarray(od, np.float32).ravel()
    if od.size < 16 or np.ptp(od) < 0.05:
        return None
    hist, edges = np.histogram(od, bins=256, range=(0.0, float(od.max())))
    mode = float(edges[np.argmax(hist)] + (edges[1] - edges[0]) / 2)
    below = od[od < mode]
    sigma = float(np.sqrt(np.mean((below - mode) ** 2))) if below.size else 0.01
    otsu = float(threshold_otsu(od))
    glass = mode + 8.0 * max(sigma, 1e-3)
    if otsu <= glass:
        return max(otsu, 0.02)
    return float(np.sqrt(glass * otsu))


def tissue_mask(pyramid: ImagePyramid, max_size: int = 1024, min_object_um2: float = 2e4,
                dark_value: float = 0.12, smooth_um: float = 10.0) -> tuple[np.ndarray, float]:
    """``(mask, downsample)``: boolean tissue mask of a coarse overview; ``downsample`` = level-0
    px per mask px.

    Stain absorbs light: the optical density relative to the glass colour
    (:func:`background_rgb`), summed over R, G, B, is ~0 on glass and high on both pink
    stroma and purple, nuclei-dense tissue (saturation alone misses the latter on tinted
    scans), smoothed over ``smooth_um``, is thresholded by :func:`od_threshold`; pixels
    darker than ``dark_value`` (HSV value; painted-black backgrounds, labels) are excluded;
    objects smaller than ``min_object_um2`` are removed and holes of that size filled."""
    from scipy import ndimage as ndi

    rgb, ds = _coarse_rgb(pyramid, max_size)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # elementwise max of the planes (a reduction over the short last axis is ~5x slower)
    mx = np.maximum(np.maximum(r, g), b)
    valid = mx > dark_value * 255.0
    if valid.sum() < 16:
        return np.zeros(mx.shape, bool), ds
    bg = background_rgb(rgb, valid)
    lut = np.log10(np.arange(256, dtype=np.float32).clip(1, None))  # OD via a lookup table
    od = np.zeros(mx.shape, np.float32)
    for c, plane in enumerate((r, g, b)):
        od += np.maximum(np.float32(np.log10(bg[c])) - lut[plane], 0)
    px_um = frame_scale(pyramid) * ds  # µm (frame units when µm/px is unknown) per mask px
    od = ndi.gaussian_filter(od, max(smooth_um / px_um, 0.5))
    t = od_threshold(od[valid])
    if t is None:
        return np.zeros(mx.shape, bool), ds
    mask = valid & (od > t)
    mask = ndi.binary_opening(mask, iterations=1)
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
