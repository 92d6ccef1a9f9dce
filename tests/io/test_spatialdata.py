"""SpatialData stores: the real merfish store (zarr v2, spatialdata ~0.2 layout, points parquet
absent), a current-format store written here, and broken stores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("spatialdata")

from napari_stexp.errors import InputError
from napari_stexp.io.open import detect_kind, format_summary, open_path
from napari_stexp.io.spatialdata import SpatialDataWarning, read_spatialdata


def test_merfish_old_layout(merfish):
    assert detect_kind(merfish) == "spatialdata"  # not swallowed by the ome-zarr detection
    with pytest.warns(SpatialDataWarning, match=r"single_molecule: points element has no "
                                                r"points\.parquet"):
        op = open_path(merfish)
    assert list(op.adatas) == ["cells"]
    ad = op.adatas["cells"]
    assert ad.shape == (2389, 268)
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sd.read_zarr(merfish, selection=("shapes", "tables"))
    t = ref.tables["table"]
    np.testing.assert_array_equal(ad.X.toarray(), np.asarray(t.X))
    cells = ref.shapes["cells"].loc[t.obs["cell_id"].to_numpy()]
    np.testing.assert_allclose(ad.obsm["spatial"], np.column_stack([cells.geometry.x,
                                                                    cells.geometry.y]))
    meta = ad.uns["spatial"]["cells"]["metadata"]
    assert meta["mpp_fullres"] is None if "mpp_fullres" in meta else True  # unit unknown
    assert meta["coordinate_system"] == "global" and meta["shape"] == "circle"
    sf = ad.uns["spatial"]["cells"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(2 * np.median(cells["radius"]))
    img = op.images["cells"]
    assert img.shape[:2] == (522, 575)
    np.testing.assert_allclose(np.asarray(img.metadata["affine"])[:2, :2],
                               np.diag([3.8631135, 3.5077751]), rtol=1e-5)
    assert "2389 spots × 268 genes" in format_summary(op.summary)
    layers = op.layers()
    assert [k for _, _, k in layers] == ["image", "points"]
    pts = layers[1]
    assert pts[1]["metadata"]["region_key"] == "region"
    assert pts[1]["metadata"]["instance_key"] == "cell_id"
    assert pts[1]["metadata"]["sdata"] is op.sdata
    # the image (pixels → global by its affine) lands where spatialdata says it is, and the
    # cells are in the same global frame (their min corner: the raster's origin)
    aff = np.asarray(layers[0][1]["affine"])
    np.testing.assert_allclose(aff @ np.array([0, 0, 1.0]), [4548, 1154, 1])
    np.testing.assert_allclose(aff @ np.array([522, 575, 1.0]), [6564.545257, 3170.970702, 1])
    np.testing.assert_allclose(pts[0].min(axis=0), [4547.758687 + 7.358295 * 0, 1153.755075],
                               atol=15)


def test_current_format_store(tmp_path, make_sdata_store):
    path, xy, a = make_sdata_store(tmp_path / "s.zarr")
    op = read_spatialdata(path)
    ad = op.adatas["cells"]
    # rows follow the table; positions are looked up by instance id
    ids = a.obs["cell_id"].to_numpy()
    np.testing.assert_allclose(ad.obsm["spatial"], xy[ids - 10])
    np.testing.assert_array_equal(ad.X.toarray(), a.X)
    img = op.images["cells"]
    assert len(img.levels) == 2 and img.levels[0].shape == (200, 300, 3)
    assert hasattr(img.levels[0], "compute")  # lazy


def test_unknown_coordinate_system(tmp_path, make_sdata_store):
    path, _, _ = make_sdata_store(tmp_path / "s.zarr")
    with pytest.raises(InputError, match=r"s\.zarr: unknown coordinate system 'aligned'; the "
                                         r"store has: global"):
        read_spatialdata(path, coordinate_system="aligned")


def test_missing_element_file(tmp_path, make_sdata_store):
    path, _, _ = make_sdata_store(tmp_path / "s.zarr")
    (path / "shapes" / "cells" / "shapes.parquet").unlink()
    with pytest.raises(InputError, match=r"shapes/cells: cannot read element"):
        open_path(path)


def test_region_names_absent_element(tmp_path, make_sdata_store):
    path, _, _ = make_sdata_store(tmp_path / "s.zarr", region="nuclei")
    with pytest.raises(InputError, match=r"tables/table: region 'nuclei' names an element the "
                                         r"store does not have"):
        read_spatialdata(path)


def test_mismatched_instance_ids(tmp_path, make_sdata_store):
    path, _, _ = make_sdata_store(tmp_path / "s.zarr", ids_offset=45)
    with pytest.raises(InputError, match=r"tables/table: 45 of 50 instance ids \('cell_id'\) are "
                                         r"not in element 'cells'"):
        read_spatialdata(path)


def test_without_the_extra(tmp_path, monkeypatch, make_sdata_store):
    import sys

    path, _, _ = make_sdata_store(tmp_path / "s.zarr")
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # import spatialdata -> ImportError
    assert detect_kind(path) == "spatialdata"  # detection needs no extra
    with pytest.raises(InputError) as err:
        open_path(path)
    assert str(err.value) == (f"{path}: reading SpatialData stores needs the spatialdata extra: "
                              "pip install 'napari-stexp[spatialdata]'")
