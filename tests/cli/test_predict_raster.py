"""``expression predict --raster``: the pseudo-spot grid's predictions as an OME-Zarr raster."""

from __future__ import annotations

import numpy as np
import pytest
from tests.cli.test_expression_cli import _cli, synthetic_model  # noqa: F401  (the same fixtures)

from napari_stexp import cli


@pytest.fixture(scope="module")
def model_and_slide(synthetic_model, tmp_path_factory):  # noqa: F811
    from PIL import Image

    model_dir, pyr = synthetic_model
    png = tmp_path_factory.mktemp("slide") / "slide.png"
    Image.fromarray(np.asarray(pyr.levels[0])).save(png)
    return model_dir, png


def test_predict_raster_writes_the_grid_as_ome_zarr(tmp_path, model_and_slide, capsys):
    import anndata as ad
    import zarr

    from napari_stexp.io.export import read_ome_zarr
    from napari_stexp.viewer.raster import BinGrid

    model_dir, png = model_and_slide
    out = tmp_path / "pred.h5ad"
    rc = cli.main(["expression", "predict", "--model", str(model_dir), "--image", str(png),
                   "--out", str(out), "--device", "cpu", "--quiet", "--raster"])
    assert rc == 0
    raster = tmp_path / "pred_raster.ome.zarr"
    assert str(raster) in capsys.readouterr().out
    a = ad.read_h5ad(out)
    pyr = read_ome_zarr(raster)
    attrs = dict(zarr.open_group(str(raster), mode="r").attrs)["napari_stexp"]
    assert attrs["genes"] == list(a.var_names) and attrs["n_bins"] == a.n_obs
    lvl0 = np.asarray(pyr.levels[0])  # (y, x, c): one channel per gene
    grid = BinGrid(a)
    assert lvl0.shape == grid.shape + (a.n_vars,)
    # each pseudo-spot's predicted value sits at its grid pixel; no-spot pixels are NaN
    np.testing.assert_allclose(lvl0[grid.r, grid.c], np.asarray(a.X), rtol=1e-6)
    assert np.isnan(lvl0[grid.index < 0]).all()
    # the affine puts raster pixels on the pseudo-spot centres of the result's frame
    from napari_stexp.io.frame import spots_rc_um

    A = np.asarray(attrs["affine"])
    got = np.column_stack([grid.r, grid.c, np.ones(len(grid.r))]) @ A[:2].T
    np.testing.assert_allclose(got, spots_rc_um(a), atol=1e-3)


def test_predict_raster_needs_the_square_layout(tmp_path, model_and_slide, capsys):
    model_dir, png = model_and_slide
    rc = cli.main(["expression", "predict", "--model", str(model_dir), "--image", str(png),
                   "--out", str(tmp_path / "p.h5ad"), "--layout", "hex", "--quiet", "--raster"])
    err = capsys.readouterr().err
    assert rc == 2 and "--raster needs the square pseudo-spot layout" in err
    assert not (tmp_path / "p.h5ad").exists()
