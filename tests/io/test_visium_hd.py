"""Visium HD binned outputs: the real layout mock (zero counts), a 700,000-bin 8 µm fixture, and
broken folders."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from napari_stexp.errors import InputError
from napari_stexp.io.open import detect_kind, format_summary, open_path
from napari_stexp.io.visium_hd import read_visium_hd


@pytest.fixture(scope="session")
def hd_700k(tmp_path_factory):
    from napari_stexp.data.synthetic_hd import write_visium_hd

    root = tmp_path_factory.mktemp("hd700k")
    write_visium_hd(root, n_bins=700_000, bin_size_um=8, n_genes=300, nnz_per_bin=8)
    return root


def test_layout_mock_h5_and_mtx(hd_mock, hd_copy):
    assert detect_kind(hd_mock) == "visium-hd"
    a = read_visium_hd(hd_mock)
    sec = "visium-hd-layout-mock_002um"
    assert a.shape == (10, 10) and a.X.nnz == 0
    meta = a.uns["spatial"][sec]["metadata"]
    sf = a.uns["spatial"][sec]["scalefactors"]
    assert meta["mpp_fullres"] == pytest.approx(0.2738242950835738)  # microns_per_pixel
    assert sf["bin_size_um"] == 2.0 and meta["shape"] == "square"
    pos = pd.read_parquet(hd_mock / "binned_outputs/square_002um/spatial/tissue_positions.parquet")
    pos = pos.set_index("barcode").loc[a.obs_names]
    np.testing.assert_allclose(a.obsm["spatial"], pos[["pxl_col_in_fullres",
                                                       "pxl_row_in_fullres"]].to_numpy())
    # the mtx folder (its *.tsv.gz are plain text) gives the same section
    copy = hd_copy
    (copy / "binned_outputs/square_002um/filtered_feature_bc_matrix.h5").unlink()
    b = read_visium_hd(copy)
    assert list(b.obs_names) == list(a.obs_names) and list(b.var_names) == list(a.var_names)
    op = open_path(hd_mock)
    assert op.kind == "visium-hd"
    assert "10 spots × 10 genes" in format_summary(op.summary)
    assert sec in op.images  # the lowres H&E, placed by tissue_lowres_scalef


def test_700k_bins_numbers_and_frame(hd_700k):
    a = read_visium_hd(hd_700k)
    assert a.n_obs == 700_000 and a.n_vars == 300
    sec = a.obs["section"].iloc[0]
    meta = a.uns["spatial"][sec]["metadata"]
    assert meta["bin_size_um"] == 8.0
    # bin pitch in µm from the frame: neighbouring bins are 8 µm apart
    xy = a.obsm["spatial"]
    r, c = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy()
    i = np.flatnonzero((r == r[0]) & (c == c[0] + 1))[0]
    assert (xy[i, 0] - xy[0, 0]) * meta["mpp_fullres"] == pytest.approx(8.0)
    import h5py

    with h5py.File(hd_700k / "binned_outputs/square_008um/filtered_feature_bc_matrix.h5") as f:
        total = f["matrix/data"][()].sum()
        bcs = f["matrix/barcodes"][:3]
    assert a.X.sum(dtype=np.float64) == total
    assert list(a.obs_names[:3]) == [b.decode() for b in bcs]


def test_wrong_bin_folder(hd_mock, tmp_path):
    with pytest.raises(InputError, match=r"square_008um: bin folder not found; available: "
                                         r"square_002um"):
        read_visium_hd(hd_mock, bin_size_um=8)
    bad = tmp_path / "run" / "binned_outputs"
    (bad / "square_3um").mkdir(parents=True)
    with pytest.raises(InputError, match=r"binned_outputs: no square_NNNum bin folder"):
        read_visium_hd(bad)


@pytest.fixture
def hd_copy(hd_mock, tmp_path):
    copy = tmp_path / "hd"
    shutil.copytree(hd_mock, copy)
    return copy


def test_corrupt_parquet(hd_copy):
    copy = hd_copy
    p = copy / "binned_outputs/square_002um/spatial/tissue_positions.parquet"
    p.write_bytes(b"PAR1" + b"\0" * 100)
    with pytest.raises(InputError, match=r"tissue_positions\.parquet: cannot read parquet"):
        open_path(copy)


def test_bin_size_mismatch(hd_copy):
    import json

    copy = hd_copy
    sf = copy / "binned_outputs/square_002um/spatial/scalefactors_json.json"
    d = json.loads(sf.read_text())
    d["bin_size_um"] = 16
    sf.write_text(json.dumps(d))
    with pytest.raises(InputError, match="does not match the folder square_002um"):
        read_visium_hd(copy)
