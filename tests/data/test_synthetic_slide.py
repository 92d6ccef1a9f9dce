"""The synthetic slide: deterministic, spots on tissue, expression driven by appearance."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stexp.data.genes import expression_transform
from napari_stexp.data.synthetic_slide import make_synthetic_slide
from napari_stexp.io.spatial import spots_rc_um, validate_st_adata


@pytest.fixture(scope="module")
def slide():
    return make_synthetic_slide(n_rows=8, n_cols=8, n_genes=24, seed=3)


def test_follows_st_conventions(slide):
    ad = slide.adata
    validate_st_adata(ad, "synthetic")
    assert {"section", "patient", "label", "array_x", "array_y"} <= set(ad.obs.columns)
    assert ad.obsm["spatial"].shape == (ad.n_obs, 2)
    assert "counts" in ad.layers and ad.n_vars == 24
    # napari (row, col) in µm is the (x, y) pixel position flipped and scaled
    np.testing.assert_allclose(spots_rc_um(ad)[:, 0], ad.obsm["spatial"][:, 1] * slide.mpp)


def test_deterministic():
    a = make_synthetic_slide(n_rows=5, n_cols=5, seed=7)
    b = make_synthetic_slide(n_rows=5, n_cols=5, seed=7)
    np.testing.assert_array_equal(a.image, b.image)
    assert (a.adata.X != b.adata.X).nnz == 0


def test_spots_fall_on_tissue(slide):
    img = slide.image.astype(float).mean(axis=2)
    xy = slide.adata.obsm["spatial"].astype(int)
    at_spots = np.array([img[y - 10:y + 10, x - 10:x + 10].mean() for x, y in xy])
    background = img[:20, :20].mean()
    assert at_spots.mean() < background - 20


def test_expression_depends_on_image(slide):
    """Genes with nonzero weights correlate with the measured appearance features."""
    Y = expression_transform(slide.adata.layers["counts"], library="all")
    F = slide.features.to_numpy()
    Fz = (F - F.mean(0)) / np.where(F.std(0) > 0, F.std(0), 1)
    # linear fit of each gene on the features: R^2 clearly > 0 for driven genes, ~0 for noise genes
    A = np.column_stack([Fz, np.ones(len(Fz))])
    coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
    resid = Y - A @ coef
    r2 = 1 - resid.var(0) / np.maximum(Y.var(0), 1e-9)
    driven = np.abs(slide.gene_weights).sum(0) > 0
    assert np.median(r2[driven]) > 0.3
    assert np.median(r2[driven]) > np.median(r2[~driven]) + 0.2
