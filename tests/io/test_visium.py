"""Visium (Space Ranger) reader on scanpy's real fixture, its v2/parquet variants and bad input."""

from __future__ import annotations

import csv
import json
import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_stexp.errors import InputError
from napari_stexp.io.visium import VisiumWarning, read_10x_h5, read_visium


@pytest.fixture(scope="session")
def visium_read(visium_dir):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        adata = read_visium(visium_dir)
    return adata, [str(w.message) for w in rec]


@pytest.fixture(scope="session")
def positions(visium_dir):
    with open(visium_dir / "spatial" / "tissue_positions_list.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return {r[0]: [int(v) for v in r[1:]] for r in rows}


def _copy_fixture(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "filtered_feature_bc_matrix.h5", dst)
    (dst / "spatial").mkdir()
    for name in ("scalefactors_json.json", "tissue_lowres_image.png", "tissue_hires_image.png",
                 "tissue_positions_list.csv"):
        shutil.copy(src / "spatial" / name, dst / "spatial" / name)
    return dst


def _write_10x_h5(path, X_bc_by_feat, barcodes, ids, names):
    m = sp.csc_matrix(sp.csr_matrix(X_bc_by_feat).T)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"] = m.data.astype(np.int32)
        g["indices"] = m.indices.astype(np.int64)
        g["indptr"] = m.indptr.astype(np.int64)
        g["shape"] = np.array(m.shape, dtype=np.int32)
        ft = g.create_group("features")
        ft["id"] = np.array(ids, dtype="S")
        ft["name"] = np.array(names, dtype="S")
        ft["feature_type"] = np.array(["Gene Expression"] * (len(ids) - 1) + ["Antibody Capture"],
                                      dtype="S")


def test_fixture_shape_and_fields(visium_read, visium_dir):
    a, msgs = visium_read
    assert a.shape == (100, 100)
    with h5py.File(visium_dir / "filtered_feature_bc_matrix.h5") as f:
        bcs = [b.decode() for b in f["matrix/barcodes"][()]]
        ids = [b.decode() for b in f["matrix/features/id"][()]]
        nnz = len(f["matrix/data"])
        total = int(f["matrix/data"][()].sum())
    assert list(a.obs_names) == bcs
    assert list(a.var["gene_ids"]) == ids
    assert a.X.nnz == nnz == 656 and a.X.sum() == total
    assert (a.X != a.layers["counts"]).nnz == 0
    lib = "custom"  # the matrix's library_ids attribute
    assert set(a.obs["section"]) == {lib} and set(a.obs["patient"]) == {lib}
    entry = a.uns["spatial"][lib]
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(89.42751063343188)
    assert entry["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(0.045004502)
    assert entry["metadata"]["mpp_fullres"] == pytest.approx(55.0 / 89.42751063343188)
    assert "source_image_path" not in entry["metadata"]
    assert a.obs["label"].isna().all()


def test_coordinates_are_col_row(visium_read, positions):
    a, _ = visium_read
    exp = np.array([[positions[b][4], positions[b][3]] for b in a.obs_names], dtype=float)
    assert np.array_equal(a.obsm["spatial"], exp)
    assert list(a.obs["array_x"]) == [positions[b][2] for b in a.obs_names]  # array_col
    assert list(a.obs["array_y"]) == [positions[b][1] for b in a.obs_names]  # array_row
    assert (a.obs["in_tissue"] == 1).all()


def test_black_hires_placeholder_replaced_by_lowres(visium_read):
    a, msgs = visium_read
    images = a.uns["spatial"]["custom"]["images"]
    assert "hires" not in images
    assert images["lowres"].shape == (600, 600, 3) and images["lowres"].std() > 10
    assert any("tissue_hires_image.png" in m and "placeholder" in m and "lowres" in m
               for m in msgs)


def _grey(img):
    return img[..., :3].astype(float).mean(-1)


def _at(grey, rows, cols, r=1):
    H, W = grey.shape
    out = np.full(len(rows), 255.0)
    for i, (y, x) in enumerate(zip(np.round(rows).astype(int), np.round(cols).astype(int),
                                   strict=True)):
        if r <= y < H - r and r <= x < W - r:
            out[i] = grey[y - r:y + r + 1, x - r:x + r + 1].mean()
    return out


def test_spots_on_lowres_tissue(visium_read):
    a, _ = visium_read
    entry = a.uns["spatial"]["custom"]
    grey = _grey(entry["images"]["lowres"])
    f = entry["scalefactors"]["tissue_lowres_scalef"]
    x, y = (a.obsm["spatial"] * f).T
    c = 20
    background = np.median([grey[:c, :c].mean(), grey[:c, -c:].mean(),
                            grey[-c:, :c].mean(), grey[-c:, -c:].mean()])
    assert _at(grey, y, x).mean() < background - 15


def test_orientation_full_layout(visium_dir, tmp_path):
    """All 4,992 positions through the reader: in-tissue spots are darker than the off-tissue ones
    only with the right orientation (the tissue fills most of the frame, so 100 spots alone
    cannot tell a transpose apart)."""
    d = _copy_fixture(visium_dir, tmp_path / "full")
    pos = pd.read_csv(d / "spatial" / "tissue_positions_list.csv", header=None)
    truth = dict(zip(pos[0], pos[1], strict=True))
    pos[1] = 1  # the reader keeps in-tissue spots only: mark all, remember the truth
    pos.to_csv(d / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    n = len(pos)
    X = sp.random(n, 3, density=0.5, random_state=0, format="csr") * 10
    X.data = np.ceil(X.data)
    _write_10x_h5(d / "filtered_feature_bc_matrix.h5", X, list(pos[0]), ["E1", "E2", "AB1"],
                  ["G1", "G2", "CD3"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisiumWarning)
        a = read_visium(d)
    assert a.shape == (4992, 2)  # the antibody feature is dropped
    assert list(a.var_names) == ["G1", "G2"] and list(a.var["gene_ids"]) == ["E1", "E2"]
    inside = np.array([truth[b] == 1 for b in a.obs_names])
    assert inside.sum() == 4235
    assert set(a.obs["section"]) == {"full"}  # no library_ids attribute: the folder name
    entry = a.uns["spatial"]["full"]
    grey = _grey(entry["images"]["lowres"])
    x, y = (a.obsm["spatial"] * entry["scalefactors"]["tissue_lowres_scalef"]).T

    def contrast(rows, cols):
        v = _at(grey, rows, cols)
        return v[~inside].mean() - v[inside].mean()

    real = contrast(y, x)
    assert real > 20
    assert contrast(x, y) < real - 8  # transposed
    assert contrast(grey.shape[0] - 1 - y, x) < real - 8  # flipped


def test_v2_header_positions_same_anndata(visium_dir, visium_read, tmp_path):
    d = _copy_fixture(visium_dir, tmp_path / "v2")
    old = d / "spatial" / "tissue_positions_list.csv"
    body = old.read_text()
    (d / "spatial" / "tissue_positions.csv").write_text(
        "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" + body)
    old.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisiumWarning)
        b = read_visium(d)
    a, _ = visium_read
    assert b.uns["spatial"]["custom"]["metadata"]["positions_file"].endswith(
        "tissue_positions.csv")
    assert list(b.obs_names) == list(a.obs_names)
    assert list(b.var_names) == list(a.var_names)
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert np.array_equal(a.uns["spatial"]["custom"]["images"]["lowres"],
                          b.uns["spatial"]["custom"]["images"]["lowres"])


def test_outs_subfolder_and_library_id(visium_dir, tmp_path):
    _copy_fixture(visium_dir, tmp_path / "sample" / "outs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisiumWarning)
        a = read_visium(tmp_path / "sample", library_id="heart", images=False)
    assert a.n_obs == 100 and set(a.obs["section"]) == {"heart"}
    assert a.uns["spatial"]["heart"]["images"] == {}


def test_parquet_positions(visium_dir, tmp_path):
    d = _copy_fixture(visium_dir, tmp_path / "pq")
    (d / "spatial" / "tissue_positions_list.csv").unlink()
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (d / "spatial" / "tissue_positions.parquet").write_bytes(b"PAR1")
        with pytest.raises(InputError, match="tissue_positions.parquet: .*needs pyarrow"):
            read_visium(d)
        return
    pos = pd.read_csv(visium_dir / "spatial" / "tissue_positions_list.csv", header=None,
                      names=["barcode", "in_tissue", "array_row", "array_col",
                             "pxl_row_in_fullres", "pxl_col_in_fullres"])
    pos.to_parquet(d / "spatial" / "tissue_positions.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisiumWarning)
        assert read_visium(d).n_obs == 100


def test_fullres_image_link(visium_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisiumWarning)
        a = read_visium(visium_dir, fullres_image=visium_dir / "spatial" / "tissue_lowres_image.png")
    assert a.uns["spatial"]["custom"]["metadata"]["source_image_path"].endswith("lowres_image.png")
    with pytest.raises(InputError, match="nope.tif: full-resolution image not found"):
        read_visium(visium_dir, fullres_image=tmp_path / "nope.tif")


def test_truncated_h5(visium_dir, tmp_path):
    d = _copy_fixture(visium_dir, tmp_path / "trunc")
    h5 = d / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(InputError, match="filtered_feature_bc_matrix.h5: "):
        read_visium(d)


def test_positions_missing_column(visium_dir, tmp_path):
    d = _copy_fixture(visium_dir, tmp_path / "badpos")
    old = d / "spatial" / "tissue_positions_list.csv"
    pos = pd.read_csv(old, header=None)
    old.unlink()
    pos.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                   "pxl_col"]
    pos.to_csv(d / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(InputError, match=r"tissue_positions.csv: missing column\(s\) "
                                         r"pxl_col_in_fullres"):
        read_visium(d)


def test_barcodes_matching_no_position(visium_dir, tmp_path):
    d = _copy_fixture(visium_dir, tmp_path / "nomatch")
    pos = d / "spatial" / "tissue_positions_list.csv"
    pos.write_text(pos.read_text().replace("-1,", "-9,"))
    with pytest.raises(InputError, match="none of the 100 matrix barcodes"):
        read_visium(d)


def test_not_a_space_ranger_folder(tmp_path):
    with pytest.raises(InputError, match="not a Space Ranger folder"):
        read_visium(tmp_path)


def test_read_10x_h5_direct(visium_dir):
    X, bcs, var, attrs = read_10x_h5(visium_dir / "filtered_feature_bc_matrix.h5")
    assert X.shape == (100, 100) and len(bcs) == 100
    assert list(var.columns[:2]) == ["gene_ids", "feature_types"]
    assert attrs["software_version"] == "spaceranger-1.0.0"
    sf = json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())
    assert sf["tissue_hires_scalef"] == pytest.approx(0.150015)
