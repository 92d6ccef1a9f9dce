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
    "cytoplasm_darkness": 0.0,  # also count pixels this much darker than background (0: off)
    "max_cytoplasm": 0.5,      # cytoplasm reaches at most this fraction of the nucleus radius
    "min_cytoplasm": 0.08,     # ... and at least this fraction (pale cytoplasm)
    "merge_lobes": 0.07,       # nucleus pieces closer than this fraction of d are one nucleus
    "neck_ratio": 0.55,        # neighbours whose shared border is this wide (vs. their inner
                               # radius) are one cell with a lobed nucleus, not two cells
    "min_area": None,          # smallest nucleus (px) of a kept cell/nucleus; None: 15 %
                               # (cells) or 20 % (nuclei) of a disc of the diameter
    "max_area": None,          # largest object (px); None: 5 discs of the diameter
    "smooth": None,            # Gaussian sigma of the stain channel; None: from the diameter
    "stain_vectors": None,     # 'hematoxylin': 3x3 (H, E, residual) optical-density rows;
                               # None: estimated from the (tissue) pixels, else skimage's
    "tissue": "auto",          # whole slides: segment only inside the tissue mask; 'auto': on
                               # for RGB nuclei mode on large images, True/False: always/never
}


def _disk(r: float):
    from skimage.morphology import disk

    return disk(max(int(round(r)), 1))


# Morphology with a disk of radius r through Euclidean distance transforms: O(pixels), whatever
# the radius (scipy's binary morphology costs O(pixels x disk area)).
_SMALL_RADIUS = 3.0  # below this a structuring element is cheaper than a distance transform


def _dilate(m: np.ndarray, r: float) -> np.ndarray:
    from scipy import ndimage as ndi

    if not m.any():
        return m.copy()
    if r <= _SMALL_RADIUS:
        return ndi.binary_dilation(m, structure=_disk(r))
    return ndi.distance_transform_edt(~m) <= r


def _erode(m: np.ndarray, r: float) -> np.ndarray:
    from scipy import ndimage as ndi

    # pad with "inside" so objects touching the border are not eaten from outside the image
    if r <= _SMALL_RADIUS:
        return ndi.binary_erosion(m, structure=_disk(r), border_value=1)
    k = int(np.ceil(r)) + 1
    return (ndi.distance_transform_edt(np.pad(m, k, constant_values=True)) > r)[k:-k, k:-k]


def _open(m: np.ndarray, r: float) -> np.ndarray:
    return _dilate(_erode(m, r), r) & m


def _close(m: np.ndarray, r: float) -> np.ndarray:
    k = int(np.ceil(r)) + 1
    pm = np.pad(m, k)
    return _erode(_dilate(pm, r), r)[k:-k, k:-k] | m


def stain_channel(img: np.ndarray, stain: str = "auto", vectors=None) -> np.ndarray:
    """A channel in which nuclei are bright: 'purple' = B - (R+G)/2, 'hematoxylin' (colour
    deconvolution with the slide's ``vectors``, see :func:`estimate_stain_vectors`, or
    skimage's fixed H&E vectors), or 'dark' = 1 - intensity (grey images)."""
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
        if vectors is None:
            from skimage.color import rgb2hed

            return rgb2hed(img)[..., 0].astype(np.float32)
        conv = np.linalg.inv(np.asarray(vectors, np.float64))[:, 0].astype(np.float32)
        return np.maximum(_od(img) @ conv, 0).astype(np.float32)
    return (1.0 - img.mean(axis=-1)).astype(np.float32)


def _od(img: np.ndarray) -> np.ndarray:
    """Optical density in skimage's HED units (natural log scaled by ``log(1e-6)``)."""
    return (np.log(np.maximum(img, 1e-6)) / np.float32(np.log(1e-6))).astype(np.float32)


def estimate_stain_vectors(img: np.ndarray, mask: np.ndarray | None = None,
                           min_od: float = 0.15 / np.log10(1e6), max_pixels: int = 200_000
                           ) -> np.ndarray | None:
    """H&E stain vectors of an RGB image (Macenko et al. 2009), from the stained pixels inside
    ``mask``: rows ``(hematoxylin, eosin, residual)`` of unit optical-density vectors, or
    ``None`` when the pixels do not show two distinct stains.

    The optical densities of stained pixels lie near the plane of the two largest principal
    directions; the extreme angles (1st and 99th percentile) in that plane are the two stains,
    the one absorbing more red is hematoxylin."""
    od = _od(img)
    sel = od.sum(axis=-1) > min_od
    if mask is not None:
        sel &= mask
    px = od[sel]
    if len(px) < 500:
        return None
    if len(px) > max_pixels:
        px = px[np.random.default_rng(0).choice(len(px), max_pixels, replace=False)]
    _, vecs = np.linalg.eigh(np.cov(px.T.astype(np.float64)))
    plane = vecs[:, 1:]  # the two largest principal directions
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    proj = px @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, (1, 99))
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    h, e = np.abs(h) / np.linalg.norm(h), np.abs(e) / np.linalg.norm(e)
    if float(h @ e) > np.cos(np.deg2rad(10)):  # one stain only
        return None
    res = np.cross(h, e)
    res = np.abs(res) / max(np.linalg.norm(res), 1e-9)
    return np.stack([h, e, res])


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur in float32 (half the memory of skimage's float64 result)."""
    from scipy import ndimage as ndi

    a = np.asarray(a, dtype=np.float32)
    return ndi.gaussian_filter(a, float(sigma), output=np.float32) if sigma and sigma > 0 else a


def _resolve_stain(img: np.ndarray, stain: str) -> str:
    if stain == "auto":
        return "dark" if img.ndim == 2 else "purple"
    return stain


def prepare_classical(image: np.ndarray, params: dict, mask: np.ndarray | None = None) -> dict:
    """Global settings from one (sample of the) image: stain (and its vectors), smoothing,
    background level, nucleus threshold and expected diameter, computed on the pixels of
    ``mask`` (the tissue; default all). Returns a new params dict (explicit values kept)."""
    p = {**DEFAULTS, **params}
    if p["mode"] not in MODES:
        raise InputError(None, f"unknown mode '{p['mode']}' (choose from {', '.join(MODES)})")
    img = as_rgb_or_grey(image)
    stain = _resolve_stain(img, p["stain"])
    p["stain"] = stain
    if stain not in MIN_CONTRAST:
        raise InputError(None, f"unknown stain '{stain}' (choose from {', '.join(STAINS)})")
    if mask is not None and mask.sum() < 64:
        mask = None
    if stain == "hematoxylin" and p["stain_vectors"] is None and img.ndim == 3:
        vec = estimate_stain_vectors(img, mask)
        p["stain_vectors"] = None if vec is None else vec.tolist()
    ch = stain_channel(img, stain, p["stain_vectors"])
    sigma0 = 1.0 if p["smooth"] is None else float(p["smooth"])
    from skimage.filters import threshold_multiotsu, threshold_otsu

    chs = _smooth(ch, sigma0)
    # Background level: the stain value of the brightest (emptiest) quarter of the image
    # (of the tissue, when a mask is given).
    grey = img if img.ndim == 2 else img.mean(axis=-1)
    g_in = grey if mask is None else grey[mask]
    c_in = chs if mask is None else chs[mask]
    bright = g_in >= np.quantile(g_in, 0.75)
    bg = float(np.median(c_in[bright])) if bright.any() else float(np.median(c_in))
    p["background"] = bg
    p["background_grey"] = float(np.median(g_in[bright])) if bright.any() else float(
        np.median(g_in))
    if p["nucleus_threshold"] is None:
        try:
            if p["mode"] == "cells":
                t = float(threshold_multiotsu(c_in, classes=3)[-1])
            else:
                t = float(threshold_otsu(c_in))
        except ValueError:  # flat image
            t = bg + MIN_CONTRAST[stain]
        p["nucleus_threshold"] = max(t, bg + MIN_CONTRAST[stain])
    if p["diameter"] is None:
        p["diameter"] = _estimate_diameter(chs if mask is None else np.where(mask, chs, bg), p)
    d = float(p["diameter"])
    if not d > 0:
        raise InputError(None, f"diameter must be positive, got {p['diameter']!r}")
    if p["smooth"] is None:
        p["smooth"] = float(np.clip(d / 120.0, 0.7, 2.0))
    return p


def _estimate_diameter(stain: np.ndarray, p: dict) -> float:
    """Typical object diameter (px) from the image: area-weighted median size of the nuclei
    (``nuclei`` mode) or of the cells = nucleus + the cytoplasm connected to it (``cells``)."""
    from scipy import ndimage as ndi

    fallback = 60.0 if p["mode"] == "cells" else 12.0
    nuc = ndi.binary_opening(stain > p["nucleus_threshold"], iterations=1)
    if p["mode"] == "cells":
        cyto_t = p["background"] + float(p["cytoplasm_contrast"]) * (
            1.0 if p["stain"] == "purple" else 2.0)
        cell = ndi.binary_fill_holes(_open(stain > cyto_t, 2) | nuc)
        lab, n = ndi.label(cell)
        if n == 0:
            return fallback
        idx = np.arange(1, n + 1)
        n_nuc = ndi.sum(nuc, lab, idx)
        areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(float)
        ok = (n_nuc >= 50) & (n_nuc >= 0.1 * areas) & (areas < 0.25 * stain.size)
        areas = areas[ok]
        if areas.size == 0:  # cytoplasm not separable: nuclei only, scaled up
            lab, n = ndi.label(_close(nuc, 3))
            areas = np.bincount(lab.ravel())[1:].astype(float) * 2.25
            areas = areas[areas >= 50]
    else:
        lab, n = ndi.label(nuc)
        areas = np.bincount(lab.ravel())[1:].astype(float)
        areas = areas[areas >= 20]
    if areas.size == 0:
        return fallback
    if p["mode"] == "cells":
        order = np.sort(areas)
        cum = np.cumsum(order) / order.sum()
        a = float(order[np.searchsorted(cum, 0.5)])
    else:
        a = float(np.median(areas))
    return float(2.0 * np.sqrt(a / np.pi))


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
    from skimage.morphology import remove_small_objects

    from .base import relabel_sequential

    params = dict(params or {})
    tissue_px = params.pop("tissue_window", None)
    need = ("background", "nucleus_threshold", "diameter", "smooth")
    prepared = all(params.get(k) is not None for k in need) and params.get("stain") in MIN_CONTRAST
    p = {**DEFAULTS, **(params if prepared else prepare_classical(image, params))}
    img = as_rgb_or_grey(image)
    if p["stain"] != "dark" and img.ndim == 2:
        raise InputError(None, f"stain '{p['stain']}' needs an RGB image; grey images use 'dark'")
    report(progress, 0, 4, "stain")
    d = float(p["diameter"])
    ch = stain_channel(img, p["stain"], p.get("stain_vectors"))
    ch = _smooth(ch, p["smooth"] or 0.0)
    bg, t_nuc = float(p["background"]), float(p["nucleus_threshold"])
    if tissue_px is not None:  # a whole-slide tile: its tissue, normalised to the slide
        from .tissue import normalise_tile

        ch = normalise_tile(ch, np.asarray(tissue_px, bool), bg)
    disc = np.pi * (d / 2) ** 2
    min_area = float(p["min_area"]) if p["min_area"] is not None else (
        0.15 if p["mode"] == "cells" else 0.2) * disc
    max_area = float(p["max_area"]) if p["max_area"] is not None else 5.0 * disc

    nuc = ch > t_nuc
    nuc = ndi.binary_opening(nuc, iterations=1)
    nuc = remove_small_objects(nuc, max_size=max(int(0.01 * disc), 4))
    check_cancel(cancel, "segmentation")
    report(progress, 1, 4, "nuclei")
    if p["mode"] == "cells":
        labels, core = _cells(img, ch, nuc, p, min_area, max_area, cancel)
    else:
        labels, core = _nuclei(ch, nuc, d)
    check_cancel(cancel, "segmentation")
    report(progress, 3, 4, "filter")

    labels = labels.astype(np.int32, copy=False)
    areas = np.bincount(labels.ravel())
    bad = (areas < min_area) | (areas > max_area)
    bad[0] = True
    if bad[1:].any():
        labels[bad[labels]] = 0
    labels, _ = relabel_sequential(labels)
    scores = {}
    n_obj = int(labels.max())
    if n_obj:
        # score: mean stain of the object's nucleus pixels, mapped to 0..1 around the threshold
        idx = np.arange(1, n_obj + 1)
        tot = ndi.sum(np.where(core, ch, 0.0), labels, index=idx)
        cnt = ndi.sum(core, labels, index=idx)
        mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), t_nuc)
        span = max(t_nuc - bg, 1e-3)
        sc = np.clip(0.5 + (mean - t_nuc) / (2 * span), 0.0, 1.0)
        scores = {i + 1: float(v) for i, v in enumerate(sc)}
    table = objects_table(labels, scores)
    report(progress, 4, 4, "done")
    meta = {k: p[k] for k in ("mode", "stain", "diameter", "background", "nucleus_threshold")}
    res = SegmentationResult(labels=labels, table=table, metadata={"method": "classical", **meta})
    if tissue_px is not None:
        from .tissue import drop_outside

        res = drop_outside(res, np.asarray(tissue_px, bool))
    return res


def _windows(mask: np.ndarray, margin: int) -> list[tuple[slice, slice]]:
    """Disjoint boxes around the objects of ``mask``, each grown by ``margin``; boxes that
    would overlap are merged (objects that can interact end up in one window)."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return []
    H, W = mask.shape
    boxes = [[max(s0.start - margin, 0), max(s1.start - margin, 0),
              min(s0.stop + margin, H), min(s1.stop + margin, W)]
             for s0, s1 in ndi.find_objects(lab)]
    merged = True
    while merged:
        merged = False
        out: list[list[int]] = []
        for b in boxes:
            for o in out:
                if b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]:
                    o[0], o[1] = min(o[0], b[0]), min(o[1], b[1])
                    o[2], o[3] = max(o[2], b[2]), max(o[3], b[3])
                    merged = True
                    break
            else:
                out.append(list(b))
        boxes = out
    return [(slice(b[0], b[2]), slice(b[1], b[3])) for b in boxes]


def _cells(img, ch, nuc, p, min_area, max_area, cancel):
    """White cells: nucleus groups as seeds, cytoplasm grown around them, watershed split.
    Work happens only in windows around the nuclei (smears are mostly red cells)."""
    d = float(p["diameter"])
    merge_r = p["merge_lobes"] * d / 2 + 1
    reach_max = p["max_cytoplasm"] * np.sqrt(max_area / np.pi)
    margin = int(np.ceil(2 * merge_r + reach_max + 0.2 * d)) + 4
    labels = np.zeros(ch.shape, np.int32)
    core = np.zeros(ch.shape, bool)
    grey = None
    if p["cytoplasm_darkness"] and img.ndim == 3:
        grey = img.mean(axis=-1)
    nxt = 0
    for sl in _windows(nuc, margin):
        check_cancel(cancel, "segmentation")
        g = None if grey is None else grey[sl]
        lab, seeds = _cells_window(ch[sl], nuc[sl], g, p, min_area)
        if lab.max() == 0:
            continue
        m = lab > 0
        labels[sl][m] = lab[m] + nxt
        core[sl] |= seeds
        nxt += int(lab.max())
    return labels, core


def _cells_window(ch, nuc, grey, p, min_area):
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    d = float(p["diameter"])
    bg = float(p["background"])
    merged = _close(nuc, p["merge_lobes"] * d / 2 + 1)
    merged = ndi.binary_fill_holes(merged)
    markers, n = ndi.label(merged)
    if n:
        nuc_area = np.bincount(markers[nuc], minlength=n + 1)
        keep = nuc_area >= min_area  # drop platelets and specks
        keep[0] = False
        markers = np.where(keep[markers], markers, 0)
    seeds = markers > 0
    if not seeds.any():
        return np.zeros(ch.shape, np.int32), seeds
    dist_nuc = ndi.distance_transform_edt(~seeds)
    # per nucleus: its equivalent radius sets how far its cytoplasm may reach
    n = int(markers.max())
    r_nuc = np.sqrt(np.bincount(markers.ravel(), minlength=n + 1) / np.pi)
    reach = np.maximum(p["max_cytoplasm"] * r_nuc, 2.0)
    min_reach = np.maximum(p["min_cytoplasm"] * r_nuc, 1.0)
    cyto_t = bg + float(p["cytoplasm_contrast"]) * (1.0 if p["stain"] == "purple" else 2.0)
    cand = ch > cyto_t
    if grey is not None:
        grey = _smooth(grey, p["smooth"] or 0.0)
        cand |= grey < float(p.get("background_grey", 1.0)) - float(p["cytoplasm_darkness"])
    cand &= dist_nuc <= float(reach.max())
    cand = _open(cand, max(d * 0.02, 1.0))
    fg = seeds | cand | (dist_nuc <= float(min_reach[1:].max()))
    labels = watershed(dist_nuc, markers=markers, mask=fg)
    # each cell keeps what lies within its own reach (and at least its minimal reach)
    keep = (labels > 0) & (dist_nuc <= reach[labels]) & (
        (dist_nuc <= min_reach[labels]) | cand | seeds)
    labels = np.where(keep, labels, 0).astype(np.int32)
    if p["neck_ratio"]:
        labels = _merge_without_neck(labels, float(p["neck_ratio"]))
    labels = _smooth_labels(labels, max(float(r_nuc[1:].max()) * 0.15, 1.0))
    return labels, seeds


def _merge_without_neck(labels: np.ndarray, ratio: float) -> np.ndarray:
    """Merge touching objects that form one blob without a neck between them.

    Two touching cells meet along a narrow neck: the largest distance-to-background on their
    shared border is small compared with each cell's inner radius. Lobes of one cell (split
    because the nucleus came in pieces) share a wide border. Merge when
    ``border depth >= ratio * min(inner radius a, inner radius b)``.
    """
    from scipy import ndimage as ndi

    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        m = (a > 0) & (b > 0) & (a != b)
        if m.any():
            pa, pb = a[m], b[m]
            pairs.update(zip(np.minimum(pa, pb).tolist(), np.maximum(pa, pb).tolist(),
                             strict=True))
    if not pairs:
        return labels
    slices = ndi.find_objects(labels)
    parent = list(range(int(labels.max()) + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in sorted(pairs):
        sa, sb = slices[a - 1], slices[b - 1]
        sl = tuple(slice(max(min(x.start, y.start) - 1, 0), max(x.stop, y.stop) + 1)
                   for x, y in zip(sa, sb, strict=True))
        sub = labels[sl]
        ma, mb = sub == a, sub == b
        dist = ndi.distance_transform_edt(np.pad(ma | mb, 1))[1:-1, 1:-1]
        border = ma & ndi.binary_dilation(mb)
        if not border.any():
            continue
        depth = float(dist[border].max())
        inner = min(float(dist[ma].max()), float(dist[mb].max()))
        if depth >= ratio * inner:
            parent[find(b)] = find(a)
    lut = np.array([find(i) for i in range(len(parent))], dtype=np.int32)
    return lut[labels]


def _nuclei(ch, nuc, d):
    """Nuclei (H&E): split touching nuclei at the peaks of their distance transform."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian
    from skimage.segmentation import watershed

    nuc = ndi.binary_fill_holes(nuc)
    dist = ndi.distance_transform_edt(nuc)
    comp, n = ndi.label(nuc)
    if n == 0:
        return np.zeros(ch.shape, np.int32), nuc
    peaks = peak_local_max(gaussian(dist, 1.0), min_distance=max(int(0.35 * d), 2),
                           labels=comp, exclude_border=False)
    markers = np.zeros(nuc.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (tiny or flat ones) still get one marker
    has = np.zeros(n + 1, bool)
    has[np.unique(comp[markers > 0])] = True
    nxt = int(markers.max())
    for lab_id, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None or has[lab_id]:
            continue
        sub = np.where(comp[sl] == lab_id, dist[sl], -1)
        y, x = np.unravel_index(int(np.argmax(sub)), sub.shape)
        nxt += 1
        markers[sl][y, x] = nxt
    return watershed(-dist, markers=markers, mask=nuc).astype(np.int32), nuc


def _smooth_labels(labels: np.ndarray, radius: float) -> np.ndarray:
    """Per object: open with a disk (cuts thin tendrils along neighbouring red cells), keep the
    largest piece and fill holes."""
    from scipy import ndimage as ndi

    out = np.zeros_like(labels)
    pad = int(np.ceil(radius)) + 2
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in sl)
        m = labels[sl] == i
        o = _open(m, radius)
        if not o.any():
            o = m
        lab, k = ndi.label(o)
        if k > 1:
            o = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        o = ndi.binary_fill_holes(o)
        view = out[sl]
        view[o & (view == 0)] = i
    return out


register_backend(Backend(
    name="classical",
    run=segment_classical,
    prepare=prepare_classical,
    halo=classical_halo,
    description="stain colour + seeded watershed (no weights)",
    defaults=DEFAULTS,
    tissue_aware=True,
))
