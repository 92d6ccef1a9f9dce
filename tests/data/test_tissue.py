"""Tissue mask and pseudo-spot grid on the real her2st H&E images: the measured spots (all under
tissue, per the ST selection files) fall on the mask, the glass does not, and the result does not
depend on how the image is stored (the JPEG as shipped vs a JPEG-tiled pyramidal TIFF)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stexp.data.tissue import od_threshold, pseudo_spot_grid, tissue_mask

pytestmark = pytest.mark.realdata

SECTIONS = ["B4", "C2", "C3", "C4", "C5"]


@pytest.fixture(scope="module")
def her2st(her2st_dir):
    from napari_stexp.io.st import read_st

    out = read_st(her2st_dir, sections=SECTIONS)
    return out if isinstance(out, dict) else {s: out[out.obs["section"] == s] for s in SECTIONS}


def _spots_on(mask, ds, adata):
    rc = (adata.obsm["spatial"][:, ::-1] / ds).astype(int)
    return mask[rc[:, 0], rc[:, 1]]


@pytest.mark.parametrize("section", SECTIONS)
def test_measured_spots_lie_on_the_tissue_mask(her2st, section):
    from napari_stexp.io.st import section_image

    adata = her2st[section]
    mask, ds = tissue_mask(section_image(adata))
    on = _spots_on(mask, ds, adata)
    # (B4 has adipose tissue: a few spot centres fall into empty fat cells, ~4 %)
    assert on.mean() > 0.95, f"{section}: {on.mean():.3f} of the spots on the mask"
    # glass is not tissue: the tissue covers 15-30 % of these scans, and the border is glass
    assert 0.1 < mask.mean() < 0.32
    border = np.concatenate([mask[:20].ravel(), mask[-20:].ravel(), mask[:, :20].ravel(),
                             mask[:, -20:].ravel()])
    assert border.mean() < 0.02


def test_mask_is_the_same_for_jpeg_and_tiled_tiff(her2st, tmp_path):
    from napari_stexp.io.st import section_image
    from napari_stexp.io.wsi import open_image, write_pyramidal_tiff

    jpg = section_image(her2st["C5"])
    tif = open_image(write_pyramidal_tiff(tmp_path / "c5.tif", np.asarray(jpg.levels[0]),
                                          mpp=jpg.mpp))
    (m1, d1), (m2, d2) = tissue_mask(jpg), tissue_mask(tif)
    assert m1.shape == m2.shape and d1 == pytest.approx(d2)
    iou = (m1 & m2).sum() / (m1 | m2).sum()
    assert iou > 0.9
    # and the pseudo-spot grid at the ST pitch (200 µm) covers the measured spots' area
    pitch = 200.0 / jpg.mpp
    c1, _, _ = pseudo_spot_grid(m1, d1, (jpg.height, jpg.width), pitch, 100 / jpg.mpp)
    c2, _, _ = pseudo_spot_grid(m2, d2, (tif.height, tif.width), pitch, 100 / jpg.mpp)
    n = her2st["C5"].n_obs
    assert 0.8 * n < len(c1) < 1.3 * n
    assert abs(len(c1) - len(c2)) <= 0.05 * n


def test_od_threshold_without_contrast_is_none():
    assert od_threshold(np.full(1000, 0.01, np.float32)) is None
    rng = np.random.default_rng(0)
    glass = rng.normal(0.01, 0.005, 9000)
    tissue = rng.normal(0.5, 0.15, 3000)
    t = od_threshold(np.concatenate([glass, tissue]).astype(np.float32))
    assert 0.05 < t < 0.4
