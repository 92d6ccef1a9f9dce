"""A deterministic synthetic H&E-like slide with ST spots whose expression depends on the image.

Why: the plugin needs sample data that works offline, and the learning tests need data where
expression is a *known* function of local appearance, so a model that learns clears a threshold
that an untrained model misses. Per spot we measure three appearance features from the rendered
pixels (nuclear fraction, mean nucleus size, eosin intensity); gene rates are log-linear in them
and counts are negative-binomial with a varying library size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..io.image import ImagePyramid
from ..io.spatial import build_st_adata

HEMATOXYLIN = np.array([72, 42, 120], dtype=np.float32)  # nuclei (purple-blue)
EOSIN = np.array([236, 120, 170], dtype=np.float32)  # stroma/cytoplasm (pink)
BACKGROUND = np.array([242, 242, 240], dtype=np.float32)
CLASSES = ("invasive cancer", "connective tissue", "adipose tissue")


@dataclass
class SyntheticSlide:
    image: np.ndarray  # (H, W, 3) uint8
    adata: object  # AnnData, ST conventions
    pyramid: ImagePyramid
    features: pd.DataFrame  # per-spot appearance features that drive expression
    gene_weights: np.ndarray  # (n_features, n_genes)
    mpp: float


def _smooth_field(rng, shape, coarse, lo=0.0, hi=1.0, block=8):
    """Low-frequency random field in [lo, hi]: bicubic-upsampled noise, computed at 1/``block``
    resolution and repeated (the field varies over hundreds of pixels, so this is invisible)."""
    small = rng.random(coarse).astype(np.float32)
    small = ndi.gaussian_filter(small, 1.0)
    mid = (-(-shape[0] // block), -(-shape[1] // block))
    f = ndi.zoom(small, (mid[0] / coarse[0], mid[1] / coarse[1]), order=3)
    f = (f - f.min()) / max(float(f.max() - f.min()), 1e-6)
    f = np.repeat(np.repeat(f, block, axis=0), block, axis=1)[: shape[0], : shape[1]]
    return lo + (hi - lo) * f


def make_synthetic_slide(
    n_rows: int = 12,
    n_cols: int = 12,
    *,
    n_genes: int = 30,
    seed: int = 0,
    mpp: float = 0.7,
    pitch_um: float = 200.0,
    spot_diameter_um: float = 100.0,
    section: str = "SYN1",
    patient: str = "P1",
    library_size: float = 3000.0,
    batch_shift: np.ndarray | None = None,
) -> SyntheticSlide:
    """Render the slide, place a square spot grid over tissue and simulate counts.

    ``batch_shift`` (length ``n_genes``, log-scale) adds a patient-specific effect to the gene
    rates, for tests of batch correction.
    """
    rng = np.random.default_rng(seed)
    pitch = pitch_um / mpp
    margin = int(pitch)
    H = int(margin * 2 + pitch * (n_rows - 1))
    W = int(margin * 2 + pitch * (n_cols - 1))
    shape = (H, W)
    coarse = (max(n_rows // 2, 3), max(n_cols // 2, 3))

    tissue = _smooth_field(rng, shape, (4, 4)) > 0.25
    tissue = ndi.binary_opening(tissue, iterations=3)
    cellularity = _smooth_field(rng, shape, coarse, 0.0, 1.0)
    eosin_level = _smooth_field(rng, shape, coarse, 0.35, 1.0)
    nucleus_scale = _smooth_field(rng, shape, coarse, 0.0, 1.0)
    fat = (_smooth_field(rng, shape, coarse) > 0.72) & (cellularity < 0.5)

    # Eosin-stained stroma, with fat vacuoles (white circles) in adipose regions.
    img = np.empty(shape + (3,), np.float32)
    img[:] = BACKGROUND
    stroma = BACKGROUND + (EOSIN - BACKGROUND) * eosin_level[..., None]
    img[tissue] = stroma[tissue]
    n_fat = int(fat.sum() / (60 / mpp) ** 2 * 1.2)
    if n_fat:
        ys, xs = np.nonzero(fat)
        pick = rng.choice(len(ys), size=n_fat, replace=True)
        vac = _stamp_disks(shape, ys[pick], xs[pick], int(22 / mpp))
        vac_edges = vac & ~ndi.binary_erosion(vac, iterations=2)
        img[vac & tissue] = BACKGROUND
        img[vac_edges & tissue] = EOSIN * 0.9

    # Nuclei: Poisson points with density ~ cellularity, radius ~ nucleus_scale.
    density = tissue * (0.05 + cellularity**1.5) * (~fat) / (14 / mpp) ** 2
    n_nuc = rng.poisson(float(density.sum()))
    flat = density.ravel() / density.sum()
    idx = rng.choice(flat.size, size=n_nuc, p=flat)
    ny, nx = np.unravel_index(idx, shape)
    nuclei = np.zeros(shape, bool)
    small_r, large_r = int(2.5 / mpp), int(5.5 / mpp)
    big = nucleus_scale[ny, nx] + 0.25 * rng.standard_normal(n_nuc) > 0.5
    for sel, r in ((~big, small_r), (big, large_r)):
        nuclei |= _stamp_disks(shape, ny[sel], nx[sel], r)
    img[nuclei] = HEMATOXYLIN * (0.9 + 0.2 * rng.random((int(nuclei.sum()), 1)))
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    img = ndi.gaussian_filter(img, sigma=(0.8, 0.8, 0))
    image = np.clip(img, 0, 255).astype(np.uint8)

    # Spot grid (array coords start at 1 like ST v1), kept where the spot is mostly tissue.
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    cy = margin + rr.ravel() * pitch
    cx = margin + cc.ravel() * pitch
    radius = spot_diameter_um / mpp / 2
    feats, keep = [], []
    for i, (y, x) in enumerate(zip(cy, cx, strict=True)):
        y0, y1 = int(y - radius), int(y + radius) + 1
        x0, x1 = int(x - radius), int(x + radius) + 1
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disk = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        t = tissue[y0:y1, x0:x1][disk]
        if t.mean() < 0.5:
            continue
        nuc = nuclei[y0:y1, x0:x1][disk]
        lab, n_obj = ndi.label(nuclei[y0:y1, x0:x1] & disk)
        size = (nuc.sum() / n_obj) * mpp**2 if n_obj else 0.0
        pix = image[y0:y1, x0:x1][disk & ~nuclei[y0:y1, x0:x1]].astype(np.float32)
        pink = float(((pix[:, 0] - pix[:, 1]) / 255).mean()) if len(pix) else 0.0
        white = float((pix.min(axis=1) > 225).mean()) if len(pix) else 0.0
        feats.append((nuc.mean(), size, pink, white))
        keep.append(i)
    keep = np.asarray(keep)
    F = pd.DataFrame(feats, columns=["nuclear_fraction", "nucleus_area_um2", "eosin", "fat"])
    Z = ((F - F.mean()) / F.std(ddof=0).replace(0, 1)).to_numpy(np.float32)

    # Gene rates: log-linear in the appearance features; a few genes are pure noise.
    n_feat = Z.shape[1]
    Wg = rng.normal(0, 0.9, (n_feat, n_genes)).astype(np.float32)
    Wg[:, -max(n_genes // 6, 1):] = 0.0
    base = rng.normal(0, 1.0, n_genes).astype(np.float32)
    log_rate = base + Z @ Wg
    if batch_shift is not None:
        log_rate = log_rate + np.asarray(batch_shift, np.float32)[None, :]
    prop = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    prop /= prop.sum(axis=1, keepdims=True)
    lib = library_size * np.exp(rng.normal(0, 0.3, len(keep)))
    mu = prop * lib[:, None]
    theta = 10.0  # NB dispersion
    counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)

    nf, eo, ft = F["nuclear_fraction"], F["eosin"], F["fat"]
    labels = np.where(nf > nf.quantile(0.6), CLASSES[0],
                      np.where(ft > ft.quantile(0.75), CLASSES[2], CLASSES[1]))
    del eo
    genes = [f"GENE{g:03d}" for g in range(n_genes)]
    array_x = cc.ravel()[keep] + 1
    array_y = rr.ravel()[keep] + 1
    obs_names = [f"{x}x{y}" for x, y in zip(array_x, array_y, strict=True)]
    hires_scalef = min(1.0, 2000 / max(H, W))
    step = max(1, int(round(1 / hires_scalef)))
    adata = build_st_adata(
        counts, obs_names, genes, np.column_stack([cx[keep], cy[keep]]),
        section=section, patient=patient, labels=labels,
        array_xy=np.column_stack([array_x, array_y]),
        spot_diameter_fullres=spot_diameter_um / mpp, mpp_fullres=mpp,
        hires_image=image[::step, ::step], hires_scalef=1.0 / step,
        extra_obs=None,
    )
    F.index = adata.obs_names
    return SyntheticSlide(image=image, adata=adata, pyramid=pyramid_from_array(image, mpp, section),
                          features=F, gene_weights=Wg, mpp=mpp)


def pyramid_from_array(image: np.ndarray, mpp: float | None, name: str = "image",
                       min_size: int = 256, chunk: int = 512) -> ImagePyramid:
    """Wrap an in-memory image as a lazy multiscale pyramid (2× strided levels)."""
    import dask.array as da

    levels = [da.from_array(image, chunks=(chunk, chunk) + image.shape[2:])]
    while max(levels[-1].shape[:2]) > min_size * 2:
        levels.append(levels[-1][::2, ::2])
    return ImagePyramid(levels=levels, name=name, mpp=mpp)


def _stamp_disks(shape, ys: np.ndarray, xs: np.ndarray, r: int) -> np.ndarray:
    """Boolean image with a disk of radius ``r`` at each (y, x): one vectorised write per
    disk offset, far cheaper than a morphological dilation of a point image."""
    out = np.zeros(shape, bool)
    r = max(int(r), 1)
    for dy in range(-r, r + 1):
        w = int(np.sqrt(r * r - dy * dy))
        yy = np.clip(ys + dy, 0, shape[0] - 1)
        for dx in range(-w, w + 1):
            out[yy, np.clip(xs + dx, 0, shape[1] - 1)] = True
    return out
