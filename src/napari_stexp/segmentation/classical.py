"""Classical (weight-free) white-cell and nucleus segmentation: stain colour -> nuclei ->
cytoplasm -> seeded watershed. Works offline everywhere.

Why this recipe: in Giemsa/Wright smears and in H&E the nucleus is the one strongly blue-purple
structure (red cells are pink, background is grey), so a "purple" channel ``B - (R + G) / 2``
separates nuclei with a global multi-Otsu threshold. A white cell is its nucleus plus a pale,
slightly bluish cytoplasm around it; neutrophil nuclei come in lobes that are merged by a small
closing. Touching cells are split by a watershed seeded with one marker per nucleus (flooding the
distance-from-nucleus map, i.e. each pixel goes to the nearest nucleus within the cell mask).
In ``mode='nuclei'`` (H&E tiles) the objects are the nuclei themselves, seeded at the peaks of
their distance transform so touching nuclei split.

Thresholds and the expected cell diameter are *global* settings computed once per image by
:func:`prepare_classical` (tiled runs reuse them for every tile, so tiles agree with an untiled
run).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from .base import Backend, SegmentationResult, as_rgb_or_grey, objects_table, register_backend

STAINS = ("auto", "purple", "hematoxylin", "dark")
MODES = ("cells", "nuclei")
#: Minimal nucleus-vs-background contrast per stain channel (its own units).
MIN_CONTRAST = {"purple": 0.06, "hematoxylin": 0.02, "dark": 0.08}

DEFAULTS: dict[str, Any] = {
    "mode": "cells",           # 'cells' (nucleus + cytoplasm, smears) or 'nuclei' (H&E)
    "stain": "auto",           # 'purple' (B-(R+G)/2), 'hematoxylin' (colour deconvolution), 'dark'
    "diameter": None,          # expected cell (or nucleus) diameter in pixels; None: estimate
    "nucleus_threshold": None,  # stain threshold; None: multi-Otsu on the image
    "cytoplasm_contrast": 0.02,  # cytoplasm: stain above background by this much ('purple')
    "max_cytoplasm": 0.3,      # cytoplasm grows at most this fraction of the diameter
    "min_cytoplasm": 0.04,     # ... and at least this fraction (pale cytoplasm)
    "merge_lobes": 0.07,       # nucleus pieces closer than this fraction of d are one nucleus
    "min_area": None,          # smallest object (px); None: 12 % of a disc of the diameter
    "max_area": None,          # largest object (px); None: 5 discs of the diameter
    "smooth": None,            # Gaussian sigma of the stain channel; None: from the diameter
}


def _disk(r: float):
    from skimage.morphology import disk

    return disk(max(int(round(r)), 1))


def stain_channel(img: np.ndarray, stain: str = "auto") -> np.ndarray:
    """A channel in which nuclei are bright: 'purple' = B - (R+G)/2, 'hematoxylin' (HED
    deconvolution), or 'dark' = 1 - intensity (grey images)."""
    if stain == "auto":
        stain = "dark" if img.ndim == 2 else "purple"
    if stain not in MIN_CONTRAST:
        raise InputError(None, f"unknown stain '{stain}' (choose from {', '.join(STAINS)})")
    if img.ndim == 2:
        if stain != "dark":
            raise InputError(None, f"stain '{stain}' needs an RGB image; grey images use 'dark'")
        return (1.0 - img).astype(np.float32)
    if stain == "purple":
        return (img[..., 2] - 0.5 * (img[..., 0] + img[..., 1])).astype(np.float32)
    if stain == "hematoxylin":
        from skimage.color import rgb2hed

        return rgb2hed(img)[..., 0].astype(np.float32)
    return (1.0 - img.mean(axis=-1)).astype(np.float32)


def _resolve_stain(img: np.ndarray, stain: str) -> str:
    if stain == "auto":
        return "dark" if img.ndim == 2 else "purple"
    return stain


def prepare_classical(image: np.ndarray, params: dict) -> dict:
    """Global settings from one (sample of the) image: stain, smoothing, background level,
    nucleus threshold and expected diameter. Returns a new params dict (explicit values kept)."""
    p = {**DEFAULTS, **params}
    if p["mode"] not in MODES:
        raise InputError(None, f"unknown mode '{p['mode']}' (choose from {', '.join(MODES)})")
    img = as_rgb_or_grey(image)
    stain = _resolve_stain(img, p["stain"])
    p["stain"] = stain
    ch = stain_channel(img, stain)
    sigma0 = 1.0 if p["smooth"] is None else float(p["smooth"])
    from skimage.filters import gaussian, threshold_multiotsu, threshold_otsu

    chs = gaussian(ch, sigma0) if sigma0 > 0 else ch
    # Background level: the stain value of the brightest (emptiest) quarter of the image.
    grey = img if img.ndim == 2 else img.mean(axis=-1)
    bright = grey >= np.quantile(grey, 0.75)
    bg = float(np.median(chs[bright])) if bright.any() else float(np.median(chs))
    p["background"] = bg
    if p["nucleus_threshold"] is None:
        try:
            if p["mode"] == "cells":
                t = float(threshold_multiotsu(chs, classes=3)[-1])
            else:
                t = float(threshold_otsu(chs))
        except ValueError:  # flat image
            t = bg + MIN_CONTRAST[stain]
        p["nucleus_threshold"] = max(t, bg + MIN_CONTRAST[stain])
    if p["diameter"] is None:
        p["diameter"] = _estimate_diameter(chs > p["nucleus_threshold"], p["mode"])
    d = float(p["diameter"])
    if not d > 0:
        raise InputError(None, f"diameter must be positive, got {p['diameter']!r}")
    if p["smooth"] is None:
        p["smooth"] = float(np.clip(d / 120.0, 0.7, 2.0))
    return p


def _estimate_diameter(mask: np.ndarray, mode: str) -> float:
    """Typical object diameter from a nucleus mask: area-weighted median component size."""
    from scipy import ndimage as ndi

    mask = ndi.binary_opening(mask, iterations=1)
    if mode == "cells":
        mask = ndi.binary_closing(mask, structure=_disk(3), iterations=1)
    lab, n = ndi.label(mask)
    if n == 0:
        return 60.0 if mode == "cells" else 12.0
    areas = np.bincount(lab.ravel())[1:].astype(float)
    areas = areas[areas >= 20]
    if areas.size == 0:
        return 60.0 if mode == "cells" else 12.0
    if mode == "cells":
        order = np.sort(areas)
        cum = np.cumsum(order) / order.sum()
        a = float(order[np.searchsorted(cum, 0.5)])
        return 1.5 * 2.0 * np.sqrt(a / np.pi)
    return float(2.0 * np.sqrt(np.median(areas) / np.pi))


def classical_halo(params: dict) -> int:
    """Context a tile needs: one and a half expected diameters (a whole cell plus margin)."""
    d = params.get("diameter") or 60.0
    return int(np.ceil(1.5 * float(d))) + 4


def segment_classical(image: Any, params: dict | None = None, progress: ProgressFn | None = None,
                      cancel: CancelFlag | None = None) -> SegmentationResult:
    """Segment white cells (``mode='cells'``) or nuclei (``mode='nuclei'``) in one image.

    Missing global settings are computed from this image (:func:`prepare_classical`).
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    params = dict(params or {})
    need = ("background", "nucleus_threshold", "diameter")
    p = params if all(params.get(k) is not None for k in need) and "stain" in params \
        and params.get("stain") != "auto" else prepare_classical(image, params)
    p = {**DEFAULTS, **p}
    img = as_rgb_or_grey(image)
    if p["stain"] != "dark" and img.ndim == 2:
        raise InputError(None, f"stain '{p['stain']}' needs an RGB image")
    report(progress, 0, 4, "stain")
    d = float(p["diameter"])
    ch = stain_channel(img, p["stain"])
    ch = gaussian(ch, float(p["smooth"])) if p["smooth"] else ch
    bg, t_nuc = float(p["background"]), float(p["nucleus_threshold"])
    disc = np.pi * (d / 2) ** 2
    min_area = float(p["min_area"]) if p["min_area"] is not None else 0.12 * disc
    max_area = float(p["max_area"]) if p["max_area"] is not None else 5.0 * disc

    nuc = ch > t_nuc
    nuc = ndi.binary_opening(nuc, iterations=1)
    nuc = remove_small_objects(nuc, max_size=max(int(0.01 * disc), 4))
    check_cancel(cancel, "segmentation")
    report(progress, 1, 4, "nuclei")

    if p["mode"] == "cells":
        merged = ndi.binary_closing(np.pad(nuc, 1), structure=_disk(p["merge_lobes"] * d / 2 + 1)
                                    )[1:-1, 1:-1] | nuc
        merged = ndi.binary_fill_holes(merged)
        markers, n = ndi.label(merged)
        if n:
            nuc_area = ndi.sum(nuc, markers, index=np.arange(1, n + 1))
            keep = np.zeros(n + 1, bool)
            keep[1:] = nuc_area >= 0.4 * min_area  # drop platelets and specks
            markers = np.where(keep[markers], markers, 0)
        seeds = markers > 0
        dist_nuc = ndi.distance_transform_edt(~seeds) if seeds.any() else np.full(ch.shape, 1e9)
        check_cancel(cancel, "segmentation")
        report(progress, 2, 4, "cytoplasm")
        cyto_t = bg + float(p["cytoplasm_contrast"]) * (1.0 if p["stain"] == "purple" else 2.0)
        cyto = (ch > cyto_t) & (dist_nuc <= p["max_cytoplasm"] * d)
        cyto = ndi.binary_opening(cyto, structure=_disk(max(d * 0.02, 1)))
        fg = seeds | cyto | (dist_nuc <= p["min_cytoplasm"] * d)
        fg = ndi.binary_closing(np.pad(fg, 2), structure=_disk(max(d * 0.03, 1)))[2:-2, 2:-2]
        fg = ndi.binary_fill_holes(fg | seeds)
        labels = watershed(dist_nuc, markers=markers, mask=fg)
        labels = _fill_label_holes(labels)
        score_ch = np.where(seeds, ch, np.nan)
    else:
        report(progress, 2, 4, "split")
        nuc = ndi.binary_fill_holes(nuc)
        dist = ndi.distance_transform_edt(nuc)
        from skimage.feature import peak_local_max

        comp, _ = ndi.label(nuc)
        peaks = peak_local_max(gaussian(dist, 1.0), min_distance=max(int(0.35 * d), 2),
                               labels=comp, exclude_border=False)
        markers = np.zeros(nuc.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # components without a peak (tiny/flat ones) still get one marker
        missing = np.setdiff1d(np.unique(comp[nuc]), np.unique(comp[markers > 0]))
        for lab in missing:
            ys, xs = np.nonzero(comp == lab)
            k = int(np.argmax(dist[ys, xs]))
            markers[ys[k], xs[k]] = markers.max() + 1
        labels = watershed(-dist, markers=markers, mask=nuc)
        score_ch = np.where(nuc, ch, np.nan)
    check_cancel(cancel, "segmentation")
    report(progress, 3, 4, "filter")

    labels = labels.astype(np.int32)
    ids = np.arange(labels.max() + 1)
    areas = np.bincount(labels.ravel(), minlength=len(ids))
    bad = (areas < min_area) | (areas > max_area)
    bad[0] = True
    labels[bad[labels]] = 0
    from .base import relabel_sequential

    labels, _ = relabel_sequential(labels)
    scores = {}
    n_obj = int(labels.max())
    if n_obj:
        # score: mean stain of the object's nucleus pixels, mapped to 0..1 around the threshold
        idx = np.arange(1, n_obj + 1)
        core = np.isfinite(score_ch)
        tot = ndi.sum(np.where(core, ch, 0.0), labels, index=idx)
        cnt = ndi.sum(core, labels, index=idx)
        mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), ndi.mean(ch, labels, index=idx))
        span = max(t_nuc - bg, 1e-3)
        sc = np.clip(0.5 + (mean - t_nuc) / (2 * span), 0.0, 1.0)
        scores = {i + 1: float(s) for i, s in enumerate(sc)}
    table = objects_table(labels, scores)
    report(progress, 4, 4, "done")
    meta = {k: p[k] for k in ("mode", "stain", "diameter", "background", "nucleus_threshold")}
    return SegmentationResult(labels=labels, table=table, metadata={"method": "classical", **meta})


def _fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes inside each object (a pale nucleus centre must not stay a hole)."""
    from scipy import ndimage as ndi

    out = labels.copy()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        filled = ndi.binary_fill_holes(m)
        view = out[sl]
        view[filled & (view == 0)] = i
    return out


register_backend(Backend(
    name="classical",
    run=segment_classical,
    prepare=prepare_classical,
    halo=classical_halo,
    description="stain colour + seeded watershed (no weights)",
    defaults=DEFAULTS,
))
