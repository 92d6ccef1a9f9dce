"""A synthetic Giemsa/Wright-like blood smear with known white cells (offline, deterministic).

Stains absorb light, so the image is built in optical density (Beer-Lambert): every object adds
its absorbance and the pixel is ``255 * exp(-OD)``. Overlapping red cells therefore look darker
where they overlap, as in a real smear. Ingredients:

- light, slightly uneven background;
- red blood cells: pale pink discs with a paler centre (central pallor), overlaps allowed;
- white blood cells: a lighter lilac cytoplasm and a dark purple nucleus (round lymphocytes,
  lobed neutrophils, kidney-shaped monocytes, bilobed eosinophils with pinkish granules);
  about a third of them come in touching pairs, so a segmentation has to split them.

Ground truth: an int32 label image of the white cells (touching cells split along the line of
equal distance to both centres) and a table of their boxes and classes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Optical densities (R, G, B) per unit stain: -ln(rgb / 255).
_BG = np.array([0.015, 0.012, 0.035])
_RBC = np.array([0.10, 0.33, 0.28])
_CYTO = np.array([0.16, 0.20, 0.07])
_EOS_CYTO = np.array([0.12, 0.30, 0.20])
_NUC = np.array([0.95, 1.25, 0.38])

WBC_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil")
#: Roughly the order of their frequency in blood (neutrophils most, eosinophils few).
WBC_CLASS_P = (0.4, 0.3, 0.2, 0.1)
WBC_TABLE_COLUMNS = ["label", "y", "x", "ymin", "xmin", "ymax", "xmax", "area", "class",
                     "touching"]


def _disc_alpha(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
                angle: float = 0.0, soft: float = 1.2) -> np.ndarray:
    """Anti-aliased coverage (0..1) of an ellipse on the grid (yy, xx)."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    d = (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)  # ~ signed distance in px
    return np.clip(0.5 - d / soft, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy import ndimage as ndi

    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    sd = n.std()
    return n / sd if sd > 0 else n


def _nucleus(kind: str, yy, xx, cy, cx, R, rng) -> np.ndarray:
    """Coverage of a nucleus of ``kind`` for a cell of radius R centred at (cy, cx)."""
    if kind == "lymphocyte":
        return _disc_alpha(yy, xx, cy + rng.uniform(-.05, .05) * R, cx, 0.76 * R,
                           0.72 * R, rng.uniform(0, np.pi))
    if kind == "monocyte":
        a = rng.uniform(0, 2 * np.pi)
        body = _disc_alpha(yy, xx, cy, cx, 0.72 * R, 0.62 * R, a)
        dent = _disc_alpha(yy, xx, cy + 0.62 * R * np.sin(a), cx + 0.62 * R * np.cos(a),
                           0.30 * R, 0.30 * R)
        return np.clip(body - dent, 0, 1)
    eos = kind == "eosinophil"
    n_lobes = 2 if eos else int(rng.integers(3, 5))
    a0 = rng.uniform(0, 2 * np.pi)
    out = np.zeros_like(yy, dtype=float)
    centres = []
    # eosinophils: two big "spectacle" lobes; neutrophils: 3-4 smaller lobes on an arc
    dist, ry, rx, spread = (0.36, 0.40, 0.34, 0.75) if eos else (0.40, 0.34, 0.29, 0.8)
    for k in range(n_lobes):
        a = a0 + 2 * np.pi * k / n_lobes * spread
        ly, lx = cy + dist * R * np.sin(a), cx + dist * R * np.cos(a)
        centres.append((ly, lx))
        out = np.maximum(out, _disc_alpha(yy, xx, ly, lx, ry * R, rx * R, a))
    for (y0, x0), (y1, x1) in zip(centres[:-1], centres[1:], strict=True):  # thin strands
        my, mx = (y0 + y1) / 2, (x0 + x1) / 2
        ang = np.arctan2(y1 - y0, x1 - x0)
        half = np.hypot(y1 - y0, x1 - x0) / 2
        out = np.maximum(out, _disc_alpha(yy, xx, my, mx, 0.08 * R, half, ang))
    return out


def _place(rng, shape, radius, existing, min_gap, tries=200, margin=0):
    """A random centre at least ``min_gap(r_other)`` away from ``existing`` (or None)."""
    H, W = shape
    for _ in range(tries):
        cy = rng.uniform(margin + radius, H - margin - radius)
        cx = rng.uniform(margin + radius, W - margin - radius)
        if all(np.hypot(cy - y, cx - x) >= min_gap(r) for y, x, r in existing):
            return cy, cx
    return None


def make_synthetic_smear(shape: tuple[int, int] = (768, 1024), n_wbc: int = 6, n_rbc: int = 120,
                         seed: int = 0, *, wbc_radius: float = 42.0, rbc_radius: float = 24.0,
                         touching_fraction: float = 0.5
                         ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Generate a smear: ``(image uint8 (Y, X, 3), wbc_labels int32 (Y, X), wbc_table)``.

    ``wbc_table`` has one row per white cell: ``label, y, x, ymin, xmin, ymax, xmax, area,
    class, touching`` (pixel units, bbox max exclusive; ``touching`` is the label of the cell
    it touches, 0 if none). Same ``seed`` -> same image.
    """
    H, W = int(shape[0]), int(shape[1])
    if H < 4 * wbc_radius or W < 4 * wbc_radius:
        raise ValueError(f"shape {shape} too small for white cells of radius {wbc_radius}")
    rng = np.random.default_rng(seed)
    od = np.empty((H, W, 3), dtype=np.float32)
    illum = 1.0 + 0.25 * _smooth_noise(rng, (max(H // 16, 2), max(W // 16, 2)), 4)
    from scipy import ndimage as ndi

    illum = ndi.zoom(illum, (H / illum.shape[0], W / illum.shape[1]), order=1)[:H, :W]
    od[:] = _BG[None, None, :] * illum[..., None]

    # White cells: centres first (pairs touching), so red cells can avoid them.
    wbcs: list[dict] = []
    n_pairs = int(round(n_wbc * touching_fraction / 2))
    placed: list[tuple[float, float, float]] = []
    label = 0
    for i in range(n_wbc):
        kind = WBC_CLASSES[int(rng.choice(len(WBC_CLASSES), p=WBC_CLASS_P))]
        R = wbc_radius * rng.uniform(0.85, 1.1) * (0.8 if kind == "lymphocyte" else 1.0)
        partner = None
        if i % 2 == 1 and i // 2 < n_pairs and wbcs:
            prev = wbcs[-1]
            for _ in range(100):
                a = rng.uniform(0, 2 * np.pi)
                d = (prev["R"] + R) * 0.95
                cy, cx = prev["cy"] + d * np.sin(a), prev["cx"] + d * np.cos(a)
                if (R + 2 <= cy <= H - R - 2 and R + 2 <= cx <= W - R - 2 and
                        all(np.hypot(cy - y, cx - x) >= (r + R) * 1.3
                            for y, x, r in placed[:-1])):
                    partner = prev["label"]
                    break
            else:
                cy = cx = None
        if partner is None:
            pos = _place(rng, (H, W), R + 2, placed, lambda r, R=R: (r + R) * 1.5)
            if pos is None:
                continue
            cy, cx = pos
        label += 1
        wbcs.append({"label": label, "cy": cy, "cx": cx, "R": R, "kind": kind,
                     "touching": partner or 0})
        if partner:
            wbcs[-2]["touching"] = label
        placed.append((cy, cx, R))

    # Red cells (drawn first in OD: order does not matter, absorbance adds up).
    rbc_avoid = [(w["cy"], w["cx"], w["R"]) for w in wbcs]
    for _ in range(n_rbc):
        r = rbc_radius * rng.uniform(0.85, 1.15)
        pos = _place(rng, (H, W), -r * 0.3, rbc_avoid, lambda R, r=r: R + 0.6 * r, tries=50)
        if pos is None:
            continue
        cy, cx = pos
        y0, y1 = max(int(cy - r - 3), 0), min(int(cy + r + 4), H)
        x0, x1 = max(int(cx - r - 3), 0), min(int(cx + r + 4), W)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
        ecc = rng.uniform(0.88, 1.0)
        ang = rng.uniform(0, np.pi)
        body = _disc_alpha(yy, xx, cy, cx, r * ecc, r, ang, soft=1.5)
        pallor = _disc_alpha(yy, xx, cy, cx, 0.45 * r * ecc, 0.45 * r, ang, soft=0.35 * r)
        rim = 1.0 + 0.25 * np.clip(np.hypot(yy - cy, xx - cx) / r, 0, 1) ** 4
        stain = body * (1.0 - 0.55 * pallor) * rim * rng.uniform(0.85, 1.15)
        od[y0:y1, x0:x1] += stain[..., None] * _RBC[None, None, :]

    labels = np.zeros((H, W), dtype=np.int32)
    owner_dist = np.full((H, W), np.inf, dtype=np.float32)
    for w in wbcs:
        cy, cx, R = w["cy"], w["cx"], w["R"]
        y0, y1 = max(int(cy - R - 3), 0), min(int(cy + R + 4), H)
        x0, x1 = max(int(cx - R - 3), 0), min(int(cx + R + 4), W)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
        ang = rng.uniform(0, np.pi)
        cell = _disc_alpha(yy, xx, cy, cx, R * rng.uniform(0.92, 1.0), R, ang, soft=1.5)
        nuc = _nucleus(w["kind"], yy, xx, cy, cx, R, rng)
        tex = 1.0 + 0.12 * _smooth_noise(rng, yy.shape, 1.5)
        cyto = _EOS_CYTO if w["kind"] == "eosinophil" else _CYTO
        cyto_od = (cell * (1 - nuc))[..., None] * cyto[None, None, :] * rng.uniform(0.8, 1.2)
        nuc_od = (nuc * tex)[..., None] * _NUC[None, None, :] * rng.uniform(0.85, 1.1)
        # A white cell lies on top of the background; where two touch, the nearer centre wins.
        region = od[y0:y1, x0:x1]
        od[y0:y1, x0:x1] = region * (1 - cell[..., None]) + cell[..., None] * (
            _BG[None, None, :]) + cyto_od + nuc_od
        dist = np.hypot(yy - cy, xx - cx) / R
        inside = cell >= 0.5
        win = inside & (dist < owner_dist[y0:y1, x0:x1])
        labels[y0:y1, x0:x1][win] = w["label"]
        owner_dist[y0:y1, x0:x1][win] = dist[win]

    img = 255.0 * np.exp(-od)
    img = ndi.gaussian_filter(img, sigma=(0.7, 0.7, 0))
    img += rng.normal(0.0, 2.0, img.shape)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    rows = []
    for w in wbcs:
        m = labels == w["label"]
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        rows.append((w["label"], float(ys.mean()), float(xs.mean()), int(ys.min()),
                     int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1, int(m.sum()),
                     w["kind"], int(w["touching"])))
    table = pd.DataFrame(rows, columns=WBC_TABLE_COLUMNS)
    return image, labels, table


def synthetic_smear_dask(shape: tuple[int, int] = (8192, 8192), block: int = 1024,
                         seed: int = 0, **kwargs):
    """A large lazy smear (dask, (Y, X, 3) uint8): every ``block`` x ``block`` chunk is its own
    :func:`make_synthetic_smear` (seeded by position), generated only when read. Cell counts
    scale with the block area. For throughput benchmarks of tiled segmentation."""
    import dask
    import dask.array as da

    H, W = int(shape[0]), int(shape[1])
    scale = block * block / (768 * 1024)
    n_wbc = kwargs.pop("n_wbc", max(1, int(round(6 * scale))))
    n_rbc = kwargs.pop("n_rbc", max(1, int(round(120 * scale))))

    def _block(i: int, j: int, h: int, w: int) -> np.ndarray:
        img, _, _ = make_synthetic_smear((block, block), n_wbc=n_wbc, n_rbc=n_rbc,
                                         seed=seed * 100003 + i * 1009 + j, **kwargs)
        return img[:h, :w]

    rows = []
    for i, y in enumerate(range(0, H, block)):
        row = []
        for j, x in enumerate(range(0, W, block)):
            h, w = min(block, H - y), min(block, W - x)
            row.append(da.from_delayed(dask.delayed(_block)(i, j, h, w), (h, w, 3), np.uint8))
        rows.append(da.concatenate(row, axis=1))
    return da.concatenate(rows, axis=0)


def sample_layers() -> list[tuple]:
    """Layer data tuples for napari's sample menu: the smear and (hidden) its true white cells."""
    image, labels, table = make_synthetic_smear()
    return [
        (image, {"name": "synthetic smear", "rgb": True,
                 "metadata": {"kind": "image", "sample": "synthetic smear"}}, "image"),
        (labels, {"name": "synthetic smear true cells", "features": table, "visible": False,
                  "opacity": 0.4, "metadata": {"kind": "cells", "ground_truth": True}},
         "labels"),
    ]
