"""SlideCollection: cheap listing (her2st, Visium, batch output folders), one-slide loading,
feature resolution and the on-disk thumbnail cache."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_stexp.analysis.features import gene_expression, resolve_feature
from napari_stexp.errors import InputError
from napari_stexp.io.collection import (
    FLAGS,
    SlideCollection,
    h5ad_metadata,
    thumbnail_key,
)
from napari_stexp.io.export import write_h5ad, write_ome_zarr
from napari_stexp.io.spatial import build_st_adata
from napari_stexp.io.wsi import write_pyramidal_tiff

HER2ST_IMAGE = {"A1", "B4", "C2", "C3", "C4", "C5"}
HER2ST_LABELS = {"A1", "B1", "C1", "D1", "E1", "F1"}
HER2ST_ALL = ["A1", "B1", "B4", "C1", "C2", "C3", "C4", "C5", "D1", "E1", "F1"]


def st_adata(section: str, n: int = 30, genes=("G0", "G1", "G2", "ERBB2"), seed: int = 0,
             labels: bool = False, patient: str = "P1"):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n, len(genes))).astype(np.float32)
    xy = np.stack([np.arange(n) % 6 * 40.0 + 20, np.arange(n) // 6 * 40.0 + 20], 1)
    lab = [("tumour" if i % 2 else "stroma") for i in range(n)] if labels else None
    return build_st_adata(sp.csr_matrix(counts), [f"{section}_{i}" for i in range(n)],
                          list(genes), xy, section=section, patient=patient, labels=lab,
                          spot_diameter_fullres=20.0, mpp_fullres=0.5)


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    """A batch output folder: per-slide h5ad (with results), OME-Zarr images and cell masks."""
    root = tmp_path_factory.mktemp("batch")
    a = st_adata("s1", seed=1)
    a.layers["predicted"] = np.asarray(a.X.toarray()) * 0.5 + 1.0
    a.obs["mclstexp_class"] = pd.Categorical(["tumour", "normal"] * (a.n_obs // 2))
    a.obsm["X_bvae"] = np.random.default_rng(0).normal(size=(a.n_obs, 4)).astype(np.float32)
    write_h5ad(a, root / "s1.h5ad")
    write_ome_zarr(root / "s1.ome.zarr", np.full((300, 280, 3), 200, np.uint8), axes="yxc",
                   scale_um=(0.5, 0.5), chunks=128)
    b = st_adata("s2", seed=2, labels=True, patient="P2")
    write_h5ad(b, root / "s2.h5ad")
    cells = np.zeros((300, 280), np.int32)
    cells[10:40, 10:40] = 1
    cells[100:150, 60:90] = 2
    write_ome_zarr(root / "s2_cells.ome.zarr", cells, kind="labels", scale_um=(0.5, 0.5),
                   chunks=128)
    write_pyramidal_tiff(root / "s3.tif", np.full((600, 500, 3), 180, np.uint8), tile=128,
                         mpp=0.5)
    (root / "notes.txt").write_text("not a slide")
    (root / ".s4.h5ad.tmp-abc.h5ad").write_bytes(b"half-written")
    return root


# ----------------------------------------------------------------------------- her2st


def test_her2st_listing_flags(her2st_dir, monkeypatch, tmp_path):
    import napari_stexp.io.her2st as her2st
    import napari_stexp.io.wsi as wsi

    def boom(*a, **k):
        raise AssertionError("listing must not read counts or open images")

    monkeypatch.setattr(her2st, "read_counts_tsv", boom)
    monkeypatch.setattr(wsi, "open_image", boom)
    coll = SlideCollection.from_paths(her2st_dir, cache_dir=tmp_path)
    assert coll.names == HER2ST_ALL
    t = coll.table().set_index("name")
    assert set(t.index[t["image"]]) == HER2ST_IMAGE
    assert set(t.index[t["labels"]]) == HER2ST_LABELS
    assert t["expression"].all()
    for flag in ("predictions", "classes", "cells", "embeddings"):
        assert not t[flag].any(), flag
    assert t.loc["C3", "patient"] == "C" and t.loc["F1", "patient"] == "F"
    assert coll["E1"].info["n_spots"] == 587
    assert coll["B4"].info["image_size"] == (9923, 9272)


def test_her2st_load_one_section(her2st_dir, tmp_path):
    coll = SlideCollection.from_paths(her2st_dir, cache_dir=tmp_path)
    d = coll.load("C1")
    assert d.image is None and d.adata.n_obs == 176
    kinds = [t[1]["metadata"]["kind"] for t in d.layers()]
    assert kinds == ["spots"]
    assert coll.read_adata("C1") is d.adata  # LRU cache
    d4 = coll.load("B4")
    assert d4.image is not None and d4.image.width == 9272 and d4.image.multiscale
    tuples = d4.layers()
    assert [t[1]["metadata"]["kind"] for t in tuples] == ["image", "spots"]
    assert all(t[1]["metadata"]["section"] == "B4" for t in tuples)
    assert tuples[0][1]["cache"] is False
    # spots fall inside the image in the shared µm frame
    img_h = d4.image.height * d4.image.mpp
    assert tuples[1][0][:, 0].max() < img_h


def test_visium_listing(visium_dir, tmp_path):
    coll = SlideCollection.from_paths(visium_dir, cache_dir=tmp_path)
    assert len(coll) == 1
    item = coll[0]
    assert item.kind == "visium" and item.has("expression") and item.has("image")
    assert item.info["n_spots"] == 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = coll.load(0)
    assert d.adata.n_obs == 100 and d.image is not None


# ----------------------------------------------------------------------------- batch folders


def test_batch_folder_listing(batch_dir, tmp_path, monkeypatch):
    import anndata

    def boom(*a, **k):
        raise AssertionError("listing must not load an AnnData")

    monkeypatch.setattr(anndata, "read_h5ad", boom)
    coll = SlideCollection.from_paths(batch_dir, cache_dir=tmp_path)
    assert coll.names == ["s1", "s2", "s3"]
    t = coll.table().set_index("name")
    assert t.loc["s1", list(FLAGS)].to_dict() == {
        "image": True, "expression": True, "labels": False, "predictions": True,
        "classes": True, "cells": False, "embeddings": True}
    assert t.loc["s2", list(FLAGS)].to_dict() == {
        "image": False, "expression": True, "labels": True, "predictions": False,
        "classes": False, "cells": True, "embeddings": False}
    assert t.loc["s3", list(FLAGS)].to_dict() == {**dict.fromkeys(FLAGS, False), "image": True}
    assert coll["s2"].patient == "P2" and coll["s1"].batch == batch_dir.name
    assert coll["s1"].info["embeddings"] == ["X_bvae"]


def test_batch_folder_load(batch_dir, tmp_path):
    coll = SlideCollection.from_paths(batch_dir, cache_dir=tmp_path)
    d1 = coll.load("s1")
    assert d1.adata.n_obs == 30 and d1.image.shape[:2] == (300, 280)
    assert d1.image.mpp == pytest.approx(0.5)
    assert [t[2] for t in d1.layers()] == ["image", "points"]
    d2 = coll.load("s2")
    kinds = {t[1]["metadata"]["kind"]: t[2] for t in d2.layers()}
    assert kinds == {"cells": "labels", "spots": "points"}
    cells = np.asarray(d2.cells.levels[0])
    assert set(np.unique(cells)) == {0, 1, 2}
    d3 = coll.load("s3")
    assert d3.adata is None and d3.image.shape[:2] == (600, 500)
    assert [t[1]["metadata"]["kind"] for t in d3.layers()] == ["image"]


def test_result_tables_merge_by_name(tmp_path):
    """``S.h5ad`` + ``S_predicted.h5ad`` (another gene set) = one slide with predictions."""
    a = st_adata("t1", seed=3)
    write_h5ad(a, tmp_path / "t1.h5ad")
    import anndata as ad

    pred = ad.AnnData(X=np.arange(a.n_obs * 2, dtype=np.float32).reshape(-1, 2),
                      obs=pd.DataFrame(index=a.obs_names[::-1].copy()),
                      var=pd.DataFrame(index=["GATA3", "ERBB2"]))
    pred.uns["napari_stexp"] = {"task": "predict", "model": "mclstexp"}
    write_h5ad(pred, tmp_path / "t1_predicted.h5ad")
    coll = SlideCollection.from_paths(tmp_path, cache_dir=tmp_path / "cache")
    assert coll.names == ["t1"]
    assert coll[0].has("predictions") and coll[0].has("expression")
    adata = coll.read_adata(0)
    vals, spec = resolve_feature(adata, "GATA3 (predicted)")
    # rows were reversed in the prediction file: merge is by spot id, not position
    expected = pred[adata.obs_names].X[:, 0]
    np.testing.assert_allclose(vals, expected)
    assert spec == {"type": "predicted", "gene": "GATA3"}


def test_multi_section_h5ad(tmp_path):
    import anndata as ad

    a, b = st_adata("m1", labels=True), st_adata("m2", seed=5)
    both = ad.concat([a, b], uns_merge="unique")
    both.uns["spatial"] = {**a.uns["spatial"], **b.uns["spatial"]}
    write_h5ad(both, tmp_path / "two.h5ad")
    meta = h5ad_metadata(tmp_path / "two.h5ad")
    assert meta["sections"] == ["m1", "m2"]
    coll = SlideCollection.from_paths(tmp_path / "two.h5ad", cache_dir=tmp_path / "c")
    assert coll.names == ["m1", "m2"]
    assert coll["m1"].has("labels") and not coll["m2"].has("labels")
    assert coll.read_adata("m2").n_obs == 30
    assert set(coll.read_adata("m2").obs["section"].astype(str)) == {"m2"}


def test_several_paths_and_name_clashes(batch_dir, her2st_dir, tmp_path):
    coll = SlideCollection.from_paths([her2st_dir, batch_dir], cache_dir=tmp_path)
    assert len(coll) == 11 + 3
    assert len(set(coll.names)) == len(coll)


def test_bad_paths(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        SlideCollection.from_paths(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no slides found"):
        SlideCollection.from_paths(tmp_path / "empty")


# ----------------------------------------------------------------------------- features


def test_resolve_feature():
    a = st_adata("f1", seed=7, labels=True)
    a.obsm["X_bvae"] = np.arange(a.n_obs * 3, dtype=np.float32).reshape(-1, 3)
    X = a.layers["counts"].toarray()
    want = np.log1p(X[:, 3] / X.sum(1) * 1e4)
    vals, spec = resolve_feature(a, "ERBB2")
    np.testing.assert_allclose(vals, want, rtol=1e-5)
    assert spec == {"type": "gene", "transform": "log1p"}
    raw, _ = resolve_feature(a, "ERBB2", {"type": "gene", "transform": "raw"})
    np.testing.assert_allclose(raw, X[:, 3])
    np.testing.assert_allclose(gene_expression(a, "G0"), np.log1p(X[:, 0] / X.sum(1) * 1e4),
                               rtol=1e-5)
    for name in ("X_bvae_2", "bvae_2", "X_bvae[2]"):
        vals, spec = resolve_feature(a, name)
        np.testing.assert_allclose(vals, a.obsm["X_bvae"][:, 2])
        assert spec["key"] == "X_bvae" and spec["dim"] == 2
    assert list(resolve_feature(a, "label")[0][:2]) == ["stroma", "tumour"]
    assert resolve_feature(a, "NOPE") is None
    assert resolve_feature(a, "X_bvae_9") is None
    assert resolve_feature(a, "G0 (predicted)") is None  # no predictions in this slide


# ----------------------------------------------------------------------------- thumbnails


def test_thumbnail_coarsest_level_and_disk_cache(batch_dir, tmp_path, monkeypatch):
    import napari_stexp.io.collection as collection
    import napari_stexp.io.wsi as wsi

    big = tmp_path / "slides"
    big.mkdir()
    write_pyramidal_tiff(big / "big.tif", np.full((2048, 2048, 3), 90, np.uint8), tile=256,
                         mpp=0.25)
    opened = []
    real_open = wsi.open_image

    def spy(path):
        pyr = real_open(path)
        opened.append(pyr)
        return pyr

    monkeypatch.setattr(wsi, "open_image", spy)
    cache = tmp_path / "cache"
    coll = SlideCollection.from_paths(big, cache_dir=cache)
    th = coll.thumbnail(0, max_size=64)
    assert th.shape[2] == 3 and max(th.shape[:2]) == 64
    assert th.mean() == pytest.approx(90, abs=3)
    reads = [a.reads for a in opened[0].metadata["_tile_arrays"]]
    assert reads[0] == 0 and sum(reads) > 0  # level 0 never touched
    files = list(cache.glob("*.png"))
    assert len(files) == 1
    # second call comes from the disk cache
    monkeypatch.setattr(collection, "_make_thumbnail",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    np.testing.assert_array_equal(coll.thumbnail(0, max_size=64), th)
    # a changed file (mtime) gets a new key
    key = thumbnail_key(coll[0], 64)
    st = os.stat(big / "big.tif")
    os.utime(big / "big.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert thumbnail_key(coll[0], 64) != key


def test_thumbnail_spot_map_without_image(batch_dir, tmp_path):
    coll = SlideCollection.from_paths(batch_dir, cache_dir=tmp_path)
    th = coll.thumbnail("s2", max_size=96)  # no image: the spot positions are drawn
    assert max(th.shape[:2]) <= 96
    dots = (th[..., 0] < 200).sum()
    assert dots > 30  # 30 spots drawn as discs
    assert th[0, 0].tolist() == [245, 245, 245]


def test_her2st_thumbnails(her2st_dir, tmp_path):
    coll = SlideCollection.from_paths(her2st_dir, cache_dir=tmp_path)
    img = coll.thumbnail("C2", max_size=48)  # H&E: pink/purple, not the spot drawing
    spots = coll.thumbnail("D1", max_size=48)
    assert max(img.shape[:2]) == 48 and max(spots.shape[:2]) <= 48
    assert img[..., 0].mean() > 150 and (spots == [120, 60, 140]).all(-1).sum() > 50
