"""Writers: h5ad (safe + atomic) and OME-Zarr (NGFF 0.4) round trips (napari_stexp.io.export)."""

from __future__ import annotations

import json
import threading

import anndata
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from napari_stexp.errors import CancelledError, InputError
from napari_stexp.io.export import (
    add_ome_zarr_labels,
    read_ome_zarr,
    write_h5ad,
    write_ome_zarr,
)
from napari_stexp.io.wsi import downsample2, open_image


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(h: int, w: int) -> np.ndarray:
    lab = np.zeros((h, w), np.int32)
    lab[10:90, 20:200] = 3
    lab[150:, 300:] = 70000  # ids beyond uint16 survive
    lab[200:260, 50:120] = 12
    return lab


def _leftovers(folder, name):
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}")]


# --------------------------------------------------------------------------- OME-Zarr


def test_ome_zarr_rgb_round_trip_and_metadata(tmp_path):
    img = _rgb(700, 900)
    out = write_ome_zarr(tmp_path / "he.ome.zarr", img, axes="yxc", scale_um=(0.5, 0.5),
                         chunks=128, name="he")
    attrs = json.loads((out / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and ms["name"] == "he"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == "micrometer" and ms["axes"][0]["type"] == "channel"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [1.0, 4.0, 4.0]]
    zarray = json.loads((out / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dimension_separator"] == "/"
    assert zarray["chunks"] == [3, 128, 128]
    assert len(attrs["omero"]["channels"]) == 3

    pyr = read_ome_zarr(out)
    assert pyr.name == "he" and pyr.mpp == pytest.approx(0.5) and pyr.rgb
    assert [lv.shape for lv in pyr.levels] == [(700, 900, 3), (350, 450, 3), (175, 225, 3),
                                              (88, 113, 3)]
    assert pyr.downsamples == [1.0, 2.0, 4.0, 8.0]
    np.testing.assert_array_equal(pyr.levels[0].compute(), img)
    np.testing.assert_array_equal(pyr.levels[1].compute(), downsample2(img))
    np.testing.assert_array_equal(pyr.levels[2].compute(), downsample2(downsample2(img)))
    # open_image dispatches OME-Zarr folders too
    assert open_image(out).shape == (700, 900, 3)


def test_ome_zarr_gene_map_and_channels(tmp_path):
    gm = np.random.default_rng(2).random((300, 500)).astype(np.float32)
    write_ome_zarr(tmp_path / "gm.zarr", gm, scale_um=(2.0, 3.0), chunks=256)
    pyr = read_ome_zarr(tmp_path / "gm.zarr")
    assert pyr.dtype == np.float32 and pyr.mpp == pytest.approx(3.0)
    assert pyr.metadata["scale_um"] == (2.0, 3.0)
    assert [lv.shape for lv in pyr.levels] == [(300, 500), (150, 250)]
    np.testing.assert_array_equal(pyr.levels[0].compute(), gm)
    np.testing.assert_allclose(pyr.levels[1].compute(), downsample2(gm), rtol=1e-6)

    cyx = np.random.default_rng(3).integers(0, 4000, (5, 90, 70), dtype=np.uint16)
    write_ome_zarr(tmp_path / "c.zarr", cyx, axes="cyx", scale_um=(1, 1))
    c = read_ome_zarr(tmp_path / "c.zarr")
    assert c.shape == (90, 70, 5) and c.metadata["layout"] == "multichannel"
    np.testing.assert_array_equal(c.levels[0].compute(), np.moveaxis(cyx, 0, -1))


class _CountingArray:
    """Array-like that records the largest row span requested (bounded-memory check)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.max_rows = 0

    def __getitem__(self, key):
        rows = key[0]
        self.max_rows = max(self.max_rows, len(range(*rows.indices(self.shape[0]))))
        return self.data[key]


def test_ome_zarr_labels_round_trip_from_dask(tmp_path):
    lab = _labels(700, 900)
    src = _CountingArray(lab)
    dl = da.from_array(src, chunks=(100, 300), asarray=True)
    out = write_ome_zarr(tmp_path / "cells.zarr", dl, kind="labels", scale_um=(0.25, 0.25),
                         chunks=128)
    assert src.max_rows <= 100  # written band by band, never the whole image at once
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["image-label"]["version"] == "0.4"
    assert attrs["multiscales"][0]["type"] == "nearest"
    pyr = read_ome_zarr(out)
    assert pyr.metadata["kind"] == "labels" and pyr.dtype == np.int32
    assert pyr.mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(pyr.levels[0].compute(), lab)
    np.testing.assert_array_equal(pyr.levels[1].compute(), lab[::2, ::2])
    np.testing.assert_array_equal(pyr.levels[2].compute(), lab[::4, ::4])
    assert set(np.unique(pyr.levels[-1].compute())) <= {0, 3, 12, 70000}

    write_ome_zarr(tmp_path / "b.zarr", lab > 0, kind="labels")
    assert read_ome_zarr(tmp_path / "b.zarr").dtype == np.uint8
    write_ome_zarr(tmp_path / "f.zarr", lab.astype(np.float64), kind="labels")
    f = read_ome_zarr(tmp_path / "f.zarr")
    assert f.dtype == np.int32
    np.testing.assert_array_equal(f.levels[0].compute(), lab)


def test_labels_under_image_ngff_layout(tmp_path):
    img = _rgb(300, 400)
    write_ome_zarr(tmp_path / "s.zarr", img, axes="yxc", scale_um=(0.7, 0.7))
    lab = _labels(300, 400)
    add_ome_zarr_labels(tmp_path / "s.zarr", lab, "cells",
                        colors={3: (1.0, 0.0, 0.0, 1.0)})
    add_ome_zarr_labels(tmp_path / "s.zarr", lab == 12, "gland")
    root = read_ome_zarr(tmp_path / "s.zarr")
    assert root.metadata["labels"] == ["cells", "gland"]
    cells = read_ome_zarr(tmp_path / "s.zarr", labels="cells")
    assert cells.mpp == pytest.approx(0.7) and cells.metadata["kind"] == "labels"
    np.testing.assert_array_equal(cells.levels[0].compute(), lab)
    meta = json.loads((tmp_path / "s.zarr" / "labels" / "cells" / ".zattrs").read_text())
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert meta["image-label"]["colors"] == [{"label-value": 3, "rgba": [255, 0, 0, 255]}]
    with pytest.raises(InputError, match="differs"):
        add_ome_zarr_labels(tmp_path / "s.zarr", lab[:10], "bad")
    assert not (tmp_path / "s.zarr" / "labels" / "bad").exists()


@pytest.mark.parametrize("bad, word", [
    (np.zeros((3, 20, 20), np.int32), "2-d"),
    (np.array([[1.5, 2.0], [0.0, 1.0]]), "not integers"),
    (np.array([[np.nan, 2.0], [0.0, 1.0]]), "nan"),
    (np.array([["a", "b"], ["c", "d"]]), "integer"),
])
def test_bad_labels_rejected_and_nothing_written(tmp_path, bad, word):
    target = tmp_path / "lab.zarr"
    with pytest.raises(InputError) as info:
        write_ome_zarr(target, bad, kind="labels")
    assert word in str(info.value).lower() and str(target) in str(info.value)
    assert not target.exists() and _leftovers(tmp_path, "lab.zarr") == []


def test_nan_in_late_chunk_leaves_old_result(tmp_path):
    target = tmp_path / "lab.zarr"
    write_ome_zarr(target, _labels(300, 300), kind="labels")
    before = read_ome_zarr(target).levels[0].compute()
    bad = _labels(600, 300).astype(float)
    bad[550, 10] = np.nan  # only found while writing the last band
    with pytest.raises(InputError, match="NaN"):
        write_ome_zarr(target, da.from_array(bad, chunks=(128, 300)), kind="labels",
                       chunks=128)
    np.testing.assert_array_equal(read_ome_zarr(target).levels[0].compute(), before)
    assert _leftovers(tmp_path, "lab.zarr") == []


def test_ome_zarr_cancel_and_progress(tmp_path):
    stop = threading.Event()
    seen = []

    def progress(done, total, msg):
        seen.append((done, total))
        if done == 2:
            stop.set()

    with pytest.raises(CancelledError):
        write_ome_zarr(tmp_path / "x.zarr", _rgb(1024, 512), axes="yxc", chunks=128,
                       progress=progress, cancel=stop)
    assert not (tmp_path / "x.zarr").exists() and _leftovers(tmp_path, "x.zarr") == []
    assert seen[-1][0] == 2 and seen[-1][1] == 8 + 4 + 2 + 1


def test_read_ome_zarr_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_ome_zarr(tmp_path / "none.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    with pytest.raises(InputError, match="multiscales"):
        read_ome_zarr(tmp_path / "plain.zarr")
    with pytest.raises(InputError, match="axes"):
        write_ome_zarr(tmp_path / "y.zarr", _rgb(10, 10), axes="yx")
    with pytest.raises(InputError, match="scale_um"):
        write_ome_zarr(tmp_path / "y.zarr", np.zeros((10, 10)), scale_um=(0, 1))


def test_ome_zarr_py_reads_our_output(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    img = _rgb(300, 400)
    lab = _labels(300, 400)
    write_ome_zarr(tmp_path / "s.zarr", img, axes="yxc", scale_um=(0.5, 0.5))
    add_ome_zarr_labels(tmp_path / "s.zarr", lab, "cells")
    nodes = list(Reader(parse_url(str(tmp_path / "s.zarr")))())
    image = next(n for n in nodes if n.load(Multiscales) and not n.load(Label))
    np.testing.assert_array_equal(np.asarray(image.data[0]), np.moveaxis(img, -1, 0))
    tr = image.metadata["coordinateTransformations"][0]
    assert tr[0]["scale"] == [1.0, 0.5, 0.5]
    label = next(n for n in nodes if n.load(Label))
    np.testing.assert_array_equal(np.asarray(label.data[0]), lab)


# --------------------------------------------------------------------------- h5ad


def _adata() -> anndata.AnnData:
    ad = anndata.AnnData(np.arange(12, dtype=np.float32).reshape(4, 3))
    ad.obs_names = [f"s{i}" for i in range(4)]
    ad.var_names = ["ERBB2", "GATA3", "KRT5"]
    ad.obs["mixed"] = pd.Series([1, "a", None, 2.5], index=ad.obs_names, dtype=object)
    ad.obs["flag"] = pd.Series([True, False, None, True], index=ad.obs_names, dtype=object)
    ad.obs["num"] = pd.Series([1, 2, 3, None], index=ad.obs_names, dtype=object)
    ad.obs["label"] = pd.Series(["a", "b", np.nan, "a"], index=ad.obs_names, dtype=object)
    ad.obs[7] = [1, 2, 3, 4]
    ad.var["note"] = pd.Series([("x", 1), "y", 3], index=ad.var_names, dtype=object)
    ad.obsm["spatial"] = np.arange(8, dtype=float).reshape(4, 2)
    ad.uns["napari_stexp"] = {"params": (1, "a"), 5: {"seed": 0}, "obj": object(),
                              "history": [{"step": 1}, {"step": 2}]}
    return ad


def test_write_h5ad_makes_tables_safe(tmp_path):
    ad = _adata()
    dtypes_before = ad.obs.dtypes.copy()
    out = write_h5ad(ad, tmp_path / "res.h5ad")
    back = anndata.read_h5ad(out)
    assert list(back.obs["mixed"].astype(object).where(back.obs["mixed"].notna(), None)) == \
        ["1", "a", None, "2.5"]
    assert list(back.obs["flag"]) == [True, False, pd.NA, True]
    np.testing.assert_array_equal(back.obs["num"].to_numpy()[:3], [1.0, 2.0, 3.0])
    assert np.isnan(back.obs["num"].iloc[3])
    assert list(back.obs["7"]) == [1, 2, 3, 4]
    assert list(back.var["note"].astype(str)) == ["('x', 1)", "y", "3"]
    np.testing.assert_array_equal(back.X, ad.X)
    np.testing.assert_array_equal(back.obsm["spatial"], ad.obsm["spatial"])
    assert list(back.uns["napari_stexp"]["params"]) == ["1", "a"]
    assert back.uns["napari_stexp"]["5"]["seed"] == 0
    assert back.uns["napari_stexp"]["history"]["1"]["step"] == 2
    pd.testing.assert_series_equal(ad.obs.dtypes, dtypes_before)  # caller's object untouched
    assert ad.obs["mixed"].iloc[0] == 1


def test_write_h5ad_of_view(tmp_path):
    ad = _adata()
    view = ad[1:3]
    write_h5ad(view, tmp_path / "v.h5ad")
    back = anndata.read_h5ad(tmp_path / "v.h5ad")
    assert list(back.obs_names) == ["s1", "s2"]
    np.testing.assert_array_equal(back.X, ad.X[1:3])


def test_write_h5ad_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "res.h5ad"
    write_h5ad(_adata(), target)
    before = target.read_bytes()

    def broken_write(self, filename, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"\x89HDF partial")
        raise OSError("disk full")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", broken_write)
    with pytest.raises(InputError, match="disk full") as info:
        write_h5ad(_adata(), target)
    assert str(target) in str(info.value)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, "res.h5ad") == []
