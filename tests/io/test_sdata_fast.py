"""The fast path for big SpatialData stores gives the same sections as spatialdata.read_zarr."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("spatialdata")

from napari_stexp.io import sdata_fast
from napari_stexp.io.spatialdata import read_spatialdata


def _same(a, b):
    assert list(a.adatas) == list(b.adatas)
    for sec in a.adatas:
        x, y = a.adatas[sec], b.adatas[sec]
        assert x.shape == y.shape and list(x.obs_names) == list(y.obs_names)
        assert list(x.var_names) == list(y.var_names)
        np.testing.assert_array_equal(x.X.toarray(), y.X.toarray())
        np.testing.assert_allclose(x.obsm["spatial"], y.obsm["spatial"])
        assert x.obs.columns.tolist() == y.obs.columns.tolist()
        assert x.uns["spatial"][sec]["metadata"] == y.uns["spatial"][sec]["metadata"]
        assert x.uns["spatial"][sec]["scalefactors"] == pytest.approx(
            y.uns["spatial"][sec]["scalefactors"])
        assert set(x.layers) == set(y.layers)
    assert list(a.images) == list(b.images)
    for k in a.images:
        np.testing.assert_array_equal(np.asarray(a.images[k].levels[-1]),
                                      np.asarray(b.images[k].levels[-1]))
        assert a.images[k].metadata["affine"] == b.images[k].metadata["affine"]
    sa, sb = dict(a.summary), dict(b.summary)
    assert set(sa.pop("coordinate_systems")) == set(sb.pop("coordinate_systems"))
    assert sa == sb


def test_fast_path_matches_read_zarr(tmp_path, make_sdata_store, monkeypatch):
    path, _, _ = make_sdata_store(tmp_path / "s.zarr")
    slow = read_spatialdata(path)
    assert not isinstance(slow.sdata, sdata_fast.FastSData)
    monkeypatch.setattr(sdata_fast, "FAST_MIN_ROWS", 0)
    fast = read_spatialdata(path)
    assert isinstance(fast.sdata, sdata_fast.FastSData)
    _same(fast, slow)
    # layers need napari-spatialdata's metadata: the real SpatialData is read then
    layers = fast.layers()
    assert [k for _, _, k in layers] == ["image", "points"]
    import spatialdata as sd

    assert isinstance(layers[1][1]["metadata"]["sdata"], sd.SpatialData)


def test_fast_path_big_store_is_a_raster(tmp_path, monkeypatch):
    from napari_stexp.data.synthetic_hd import write_visium_hd
    from napari_stexp.io.sdata_write import write_sdata
    from napari_stexp.io.visium_hd import read_visium_hd
    from napari_stexp.viewer import raster

    write_visium_hd(tmp_path / "run", n_bins=3000, n_genes=30, nnz_per_bin=5, lowres=False)
    ad = read_visium_hd(tmp_path / "run")
    store = write_sdata(ad, tmp_path / "hd.zarr", name="bins")
    slow = read_spatialdata(store)
    monkeypatch.setattr(sdata_fast, "FAST_MIN_ROWS", 1000)
    fast = read_spatialdata(store)
    assert isinstance(fast.sdata, sdata_fast.FastSData)
    _same(fast, slow)
    (sec, got), = fast.adatas.items()
    np.testing.assert_array_equal(got.X.toarray(), ad.X.toarray())
    monkeypatch.setattr(raster, "RASTER_THRESHOLD", 1000)
    from napari_stexp._reader import read_paths

    monkeypatch.setattr(sdata_fast, "FastSData", _NoLoad)
    layers = read_paths(str(store))
    assert [k for _, _, k in layers] == ["image", "labels"]
    assert layers[0][1]["metadata"]["kind"] == "bin-raster"
    assert layers[1][1]["metadata"]["kind"] == "bin-selection"
    # the raster holds each bin's count of the shown gene at its grid pixel
    grid = layers[0][1]["metadata"]["bin_grid"]
    key = layers[0][1]["metadata"]["key"]
    col = got.X[:, got.var_names.get_loc(key)].toarray().ravel()
    np.testing.assert_array_equal(np.asarray(layers[0][0][0])[grid.r, grid.c], col)


class _NoLoad(sdata_fast.FastSData):
    def load(self):
        raise AssertionError("the full store was read for a raster")


@pytest.mark.parametrize("what", ["labels", "points"])
def test_fast_path_falls_back(tmp_path, make_sdata_store, monkeypatch, what):
    path, _, _ = make_sdata_store(tmp_path / "s.zarr")
    (path / what / "x").mkdir(parents=True)
    assert sdata_fast.fast_sdata(path, min_rows=0) is None
