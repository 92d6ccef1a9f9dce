"""h5ad reader: round trips of real sections, squidpy-style multi-library files, bad input."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_stexp.errors import InputError
from napari_stexp.io.h5ad import H5adWarning, read_st_h5ad
from napari_stexp.io.her2st import read_her2st
from napari_stexp.io.visium import read_visium


@pytest.fixture(scope="module")
def her2st_two(her2st_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_her2st(her2st_dir, ["A1", "C1"], images=True)


@pytest.fixture(scope="module")
def visium(visium_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_visium(visium_dir)


def _assert_same(a, b, sec):
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    assert (a.X != b.X).nnz == 0
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    for col in ("section", "patient", "label", "array_x", "array_y"):
        assert a.obs[col].astype(str).tolist() == b.obs[col].astype(str).tolist(), col
    ea, eb = a.uns["spatial"][sec], b.uns["spatial"][sec]
    assert ea["scalefactors"] == pytest.approx(eb["scalefactors"])
    for k, v in ea["metadata"].items():
        if isinstance(v, dict):
            assert dict(eb["metadata"][k]) == v, k
        elif isinstance(v, float):
            assert eb["metadata"][k] == pytest.approx(v), k
        else:
            assert np.array_equal(np.asarray(eb["metadata"][k]), np.asarray(v)), k
    assert set(ea["images"]) == set(eb["images"])
    for k in ea["images"]:
        assert np.array_equal(ea["images"][k], eb["images"][k])


def test_round_trip_her2st(her2st_two, tmp_path):
    a = her2st_two["A1"]
    path = tmp_path / "a1.h5ad"
    a.write_h5ad(path)
    out = read_st_h5ad(path)
    assert list(out) == ["A1"]
    _assert_same(a, out["A1"], "A1")
    assert out["A1"].obs["label"].value_counts()["invasive cancer"] == 282


def test_round_trip_visium(visium, tmp_path):
    path = tmp_path / "v.h5ad"
    visium.write_h5ad(path)
    out = read_st_h5ad(path)
    assert list(out) == ["custom"]
    _assert_same(visium, out["custom"], "custom")
    pd.testing.assert_frame_equal(visium.var, out["custom"].var)


def test_multi_section_file_is_split(her2st_two, tmp_path):
    both = ad.concat(her2st_two, join="inner", uns_merge="unique", index_unique="-")
    assert set(both.uns["spatial"]) == {"A1", "C1"}
    path = tmp_path / "both.h5ad"
    both.write_h5ad(path)
    out = read_st_h5ad(path)
    assert sorted(out) == ["A1", "C1"]
    assert out["A1"].n_obs == 346 and out["C1"].n_obs == 176
    assert out["A1"].obs_names[0] == her2st_two["A1"].obs_names[0] + "-A1"
    assert list(out["C1"].uns["spatial"]) == ["C1"]
    assert out["C1"].uns["spatial"]["C1"]["metadata"]["mpp_fullres"] == pytest.approx(
        her2st_two["C1"].uns["spatial"]["C1"]["metadata"]["mpp_fullres"])
    assert set(out["C1"].obs["patient"]) == {"C"}


def _squidpy_like(n=6, libs=("lib1", "lib2"), counts=True):
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(2.0, size=(n, 4)).astype(np.float32))
    obs = pd.DataFrame({"library_id": pd.Categorical([libs[i % len(libs)] for i in range(n)])},
                       index=[f"s{i}" for i in range(n)])
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list("ABCD")))
    a.obsm["spatial"] = rng.uniform(0, 100, size=(n, 2))
    a.uns["spatial"] = {lib: {"images": {"hires": np.full((8, 8, 3), 0.5, dtype=np.float32)},
                              "scalefactors": {"tissue_hires_scalef": 0.08,
                                               "spot_diameter_fullres": 10.0}}
                        for lib in libs}
    if counts:
        a.layers["counts"] = X.copy()
    return a


def test_squidpy_library_column(tmp_path):
    a = _squidpy_like()
    path = tmp_path / "sq.h5ad"
    a.write_h5ad(path)
    out = read_st_h5ad(path)
    assert sorted(out) == ["lib1", "lib2"]
    lib1 = out["lib1"]
    assert list(lib1.obs_names) == ["s0", "s2", "s4"]
    assert set(lib1.obs["patient"]) == {"lib1"}
    assert lib1.obs["label"].isna().all()
    assert lib1.uns["spatial"]["lib1"]["scalefactors"]["tissue_hires_scalef"] == 0.08
    assert np.allclose(lib1.obsm["spatial"], a.obsm["spatial"][[0, 2, 4]])


def test_single_library_under_other_name_and_stem(tmp_path):
    a = _squidpy_like(libs=("only",))
    del a.obs["library_id"]
    a.write_h5ad(tmp_path / "one.h5ad")
    assert list(read_st_h5ad(tmp_path / "one.h5ad")) == ["only"]
    del a.uns["spatial"]
    a.write_h5ad(tmp_path / "bare.h5ad")
    out = read_st_h5ad(tmp_path / "bare.h5ad")
    assert list(out) == ["bare"]
    assert set(out["bare"].obs["section"]) == {"bare"}


def test_several_libraries_without_column(tmp_path):
    a = _squidpy_like()
    del a.obs["library_id"]
    a.write_h5ad(tmp_path / "amb.h5ad")
    with pytest.raises(InputError, match=r"amb.h5ad: 2 libraries"):
        read_st_h5ad(tmp_path / "amb.h5ad")


def test_normalised_x_without_counts_warns(tmp_path):
    a = _squidpy_like(counts=False)
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    a.write_h5ad(tmp_path / "norm.h5ad")
    with pytest.warns(H5adWarning, match="looks normalised"):
        out = read_st_h5ad(tmp_path / "norm.h5ad")
    assert "counts" in out["lib1"].layers


def test_integer_x_without_counts_is_silent(tmp_path):
    a = _squidpy_like(counts=False)
    a.write_h5ad(tmp_path / "int.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("error", H5adWarning)
        out = read_st_h5ad(tmp_path / "int.h5ad")
    assert (out["lib2"].layers["counts"] != out["lib2"].X).nnz == 0


def test_no_coordinates(tmp_path):
    a = _squidpy_like()
    del a.obsm["spatial"]
    a.write_h5ad(tmp_path / "nocoord.h5ad")
    with pytest.raises(InputError, match=r"nocoord.h5ad: no spot coordinates"):
        read_st_h5ad(tmp_path / "nocoord.h5ad")


def test_nan_coordinates(tmp_path):
    a = _squidpy_like(libs=("x",))
    a.obsm["spatial"][1] = np.nan
    a.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(InputError, match="NaN"):
        read_st_h5ad(tmp_path / "nan.h5ad")


def test_truncated_and_garbage(her2st_two, tmp_path):
    path = tmp_path / "t.h5ad"
    her2st_two["C1"].write_h5ad(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t.h5ad: cannot read h5ad"):
        read_st_h5ad(path)
    (tmp_path / "g.h5ad").write_text("not hdf5")
    with pytest.raises(InputError, match=r"g.h5ad: cannot read h5ad"):
        read_st_h5ad(tmp_path / "g.h5ad")
    with pytest.raises(InputError, match="file not found"):
        read_st_h5ad(tmp_path / "missing.h5ad")
