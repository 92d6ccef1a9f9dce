"""Segmentation writes a cell .h5ad beside labels.tif that scanpy can plot (issue 17 item 11)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest


@pytest.fixture
def cli_main():
    from napari_stexp.cli import main  # 'segment' is one of cli.COMMAND_MODULES

    return main


def _image():
    img = np.full((200, 300, 3), 235, np.uint8)
    yy, xx = np.mgrid[:200, :300]
    centres = [(40, 50), (120, 200), (150, 60), (60, 250)]
    for i, (y, x) in enumerate(centres):
        m = ((yy - y) / (8 + 3 * i)) ** 2 + ((xx - x) / 8) ** 2 <= 1  # ellipses
        img[m] = (80, 50, 130)
    return img, centres


def test_segment_writes_a_cell_h5ad(cli_main, tmp_path):
    import anndata as ad
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc
    import tifffile
    from PIL import Image

    img, centres = _image()
    Image.fromarray(img).save(tmp_path / "s.png", dpi=(25400 / 0.5, 25400 / 0.5))
    assert cli_main(["segment", str(tmp_path / "s.png"), "--out", str(tmp_path / "o"),
                     "--mode", "nuclei"]) == 0
    d = tmp_path / "o" / "s"
    lab = tifffile.imread(d / "labels.tif")
    objs = pd.read_csv(d / "objects.csv")
    cells = ad.read_h5ad(d / "cells.h5ad")
    assert cells.n_obs == len(objs) == len(centres)
    xy = cells.obsm["spatial"]
    np.testing.assert_allclose(xy, objs[["x", "y"]].to_numpy())  # (x, y) full-res px
    for x, y in xy:
        assert lab[int(round(y)), int(round(x))] > 0
    for c in ("area", "perimeter", "eccentricity", "solidity", "major_axis_length"):
        assert np.isfinite(cells.obs[c]).all()
    # the elongated ellipses are more eccentric than the round one
    order = np.argsort(objs["label"].to_numpy())
    assert cells.obs["eccentricity"].to_numpy()[order].max() > 0.6
    lib = "s"
    meta = cells.uns["spatial"][lib]["metadata"]
    assert meta["mpp_fullres"] == pytest.approx(0.5, rel=1e-3)  # the PNG's dpi
    assert cells.uns["napari_stexp"]["mpp"] == pytest.approx(0.5, rel=1e-3)
    np.testing.assert_allclose(cells.obs["area_um2"], cells.obs["area"] * 0.25, rtol=1e-3)
    assert cells.uns["spatial"][lib]["images"]["hires"].shape[:2] == img.shape[:2]
    sc.pl.spatial(cells, color="area", library_id=lib, show=False)
    plt.close("all")


def test_cells_adata_of_lazy_labels_matches_in_memory():
    import dask.array as da

    from napari_stexp.segmentation import morphology, segment

    img, _ = _image()
    res = segment(img, mode="nuclei")
    a = morphology.morphology_features(res.labels, res.table)
    old = morphology.BLOCK
    try:
        morphology.BLOCK = 64  # blocks cut through the cells
        b = morphology.morphology_features(da.from_array(np.asarray(res.labels), chunks=50),
                                           res.table)
    finally:
        morphology.BLOCK = old
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy())
    adata = morphology.cells_adata(res, mpp=None)
    assert "mpp_fullres" not in adata.uns["spatial"]["cells"]["metadata"]
    assert "mpp" not in adata.uns["napari_stexp"]
