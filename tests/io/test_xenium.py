"""Xenium XOA folders: the real 36-cell mouse ileum output, and broken copies of it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_stexp.errors import InputError
from napari_stexp.io.open import detect_kind, format_summary, open_path
from napari_stexp.io.st import read_st
from napari_stexp.io.xenium import read_xenium


def test_real_xenium_cells_matrix_and_frame(xenium_dir):
    r = read_xenium(xenium_dir)
    ad = r["adata"]
    assert ad.shape == (36, 5006)  # the 5K panel's gene features, controls dropped
    cells = pd.read_parquet(xenium_dir / "cells.parquet").set_index("cell_id")
    # centroids: µm / 0.2125 = full-res morphology pixels, (x, y)
    xy = ad.obsm["spatial"]
    np.testing.assert_allclose(xy[:, 0] * 0.2125, cells.loc[ad.obs_names, "x_centroid"])
    np.testing.assert_allclose(xy[:, 1] * 0.2125, cells.loc[ad.obs_names, "y_centroid"])
    # per-cell gene counts of the h5 equal XOA's transcript_counts column
    np.testing.assert_array_equal(np.asarray(ad.X.sum(axis=1)).ravel(),
                                  cells.loc[ad.obs_names, "transcript_counts"].to_numpy())
    meta = ad.uns["spatial"][ad.obs["section"].iloc[0]]["metadata"]
    assert meta["mpp_fullres"] == pytest.approx(0.2125)
    img = r["image"]
    assert img.mpp == pytest.approx(0.2125) and img.shape == (3522, 5789)
    assert len(img.levels) == 5 and img.levels[0].ndim == 2  # DAPI channel, JPEG-2000 pyramid
    x, y = (int(v) for v in xy[0])
    tile = img.read_region(y - 32, x - 32, 64, 64, level=0)  # around the first cell: DAPI signal
    assert tile.dtype == np.uint16 and tile.max() > 0
    assert int(r["transcripts"].shape[0].compute()) == 1985  # lazy until asked
    assert r["cell_boundaries"]["cell_id"].nunique() == 36


def test_xenium_in_open_path_info_and_read_st(xenium_dir):
    assert detect_kind(xenium_dir) == "xenium"
    op = open_path(xenium_dir)
    assert op.kind == "xenium" and len(op.adatas) == 1
    text = format_summary(op.summary)
    assert "36 spots × 5006 genes" in text and "0.212 µm/px" in text and "image 5789×3522" in text
    layers = op.layers()
    kinds = [k for _, _, k in layers]
    assert kinds == ["image", "points"]
    assert layers[0][1]["scale"] == (0.2125, 0.2125)
    # spots land on the image: point (row, col) in µm equals centroid µm
    assert layers[1][0][:, 1].max() < 5789 * 0.2125
    secs = read_st(xenium_dir)
    assert list(secs.values())[0].n_obs == 36


@pytest.fixture
def xenium_copy(xenium_dir, tmp_path):
    dst = tmp_path / "xen"
    shutil.copytree(xenium_dir, dst, ignore=shutil.ignore_patterns("*.tif", "morphology_focus"))
    return dst


def test_xenium_without_manifest(xenium_copy):
    (xenium_copy / "experiment.xenium").unlink()
    assert detect_kind(xenium_copy) == "xenium"  # still recognised, so the error is specific
    with pytest.raises(InputError, match=r"experiment\.xenium: missing"):
        open_path(xenium_copy)


def test_xenium_truncated_parquet(xenium_copy):
    p = xenium_copy / "cells.parquet"
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"cells\.parquet: cannot read parquet"):
        read_xenium(xenium_copy)


def test_xenium_bad_pixel_size(xenium_copy):
    m = json.loads((xenium_copy / "experiment.xenium").read_text())
    m["pixel_size"] = "x"
    (xenium_copy / "experiment.xenium").write_text(json.dumps(m))
    with pytest.raises(InputError, match="pixel_size"):
        read_xenium(xenium_copy)


def test_xenium_matrix_cells_not_in_cells_parquet(xenium_copy):
    df = pd.read_parquet(xenium_copy / "cells.parquet").iloc[5:]
    df.to_parquet(xenium_copy / "cells.parquet")
    with pytest.raises(InputError, match=r"cell_feature_matrix\.h5: 5 cell id"):
        read_xenium(xenium_copy)
