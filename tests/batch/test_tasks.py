"""Batch prediction with the trained models (tiny ones, trained here): the distributed path
(a LocalCluster of 2 workers) gives the same numbers as the one-slide commands / functions,
each worker loads its model once, and the slide navigator opens the output folder. (The
in-process path ``local=True`` is checked against the distributed one in test_batch.py.)"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest

from napari_stexp.batch import engine as batch

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cluster():
    c = batch.local_cluster(2, silence_logs=50)
    yield c.scheduler_address
    c.close()


@pytest.fixture(scope="module")
def he_slides(tmp_path_factory):
    """A tiny trained mclSTExp model and three small H&E slides."""
    import torch

    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.io.wsi import write_pyramidal_tiff
    from napari_stexp.models.mclstexp import train_expression_model

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("he")
    s = make_synthetic_slide(n_rows=4, n_cols=4, n_genes=12, mpp=2.0)
    model = train_expression_model({"SYN1": s.adata}, images={"SYN1": s.pyramid},
                                   backbone="tinycnn", patch_size=96, input_size=32, epochs=2,
                                   batch_size=8, top_k=10, mode="cached", device="cpu",
                                   cache_dir=False, top_genes=12)
    model.save(d / "model")
    paths = []
    # three different small slides cut from the training image (small: quick tissue masks)
    for i, img in enumerate([s.image[:360, :360], s.image[140:, 140:], s.image[:360, 140:]]):
        paths.append(write_pyramidal_tiff(d / f"he{i}.tif", np.ascontiguousarray(img),
                                          mpp=s.mpp, compression="zlib", tile=256))
    return d / "model", paths


@pytest.fixture(scope="module")
def classifier(he_slides, tmp_path_factory):
    """A tiny trained batch-agnostic classifier (two synthetic sections, two patients)."""
    import warnings

    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.models.batch_agnostic import ClassifierConfig, train_classifier

    d = tmp_path_factory.mktemp("classifier")
    a = make_synthetic_slide(n_rows=4, n_cols=4, n_genes=12, mpp=2.0)
    b = make_synthetic_slide(n_rows=4, n_cols=4, n_genes=12, mpp=2.0, seed=1, section="SYN2",
                             patient="P2")
    cfg = ClassifierConfig.tiny(patch_size=96, epochs=1, classifier_epochs=10,
                                n_top_genes=12, device="cpu")
    cfg.gene.epochs = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = train_classifier({"SYN1": a.adata, "SYN2": b.adata}, cfg,
                                 images={"SYN1": a.pyramid, "SYN2": b.pyramid}, cache_dir=False)
    model.save(d / "model")
    return d / "model"


@pytest.fixture(scope="module")
def smears(tmp_path_factory):
    """A tiny trained β-VAE and three small smear images."""
    from napari_stexp.data.cells import CellCropDataset, synthetic_cell_images
    from napari_stexp.data.synthetic_smear import make_synthetic_smear
    from napari_stexp.io.wsi import write_pyramidal_tiff
    from napari_stexp.models.betavae import BVAEConfig, train_bvae

    d = tmp_path_factory.mktemp("smears")
    imgs, labs = synthetic_cell_images(n_per_class=6, n_classes=2, size=48)
    model = train_bvae(CellCropDataset.from_arrays(imgs, labs, size=32),
                       config=BVAEConfig.tiny(device="cpu", epochs=1))
    model.save(d / "model")
    paths = []
    for i in range(3):
        img, _, _ = make_synthetic_smear(shape=(256, 320), n_wbc=3, n_rbc=25, seed=10 + i)
        paths.append(write_pyramidal_tiff(d / f"smear{i}.tif", img, mpp=0.5,
                                          compression="zlib", tile=256))
    return d / "model", paths


def _read(path):
    import anndata

    return anndata.read_h5ad(path)


def _one_model_load_per_worker(res):
    pids = {r["pid"] for r in res.records}
    assert os.getpid() not in pids
    assert sum(not r["model_cached"] for r in res.records) == len(pids)


def test_predict_batch_equals_one_by_one(he_slides, cluster, tmp_path):
    from napari_stexp.commands import expression as cmd

    model_dir, paths = he_slides
    res = batch.run_batch("predict", paths, tmp_path / "dist", model_dir=str(model_dir),
                          scheduler=cluster)
    assert res.ok, res.failed
    _one_model_load_per_worker(res)
    for p in paths:
        one = tmp_path / f"{p.stem}.one.h5ad"  # the one-slide command
        parser = argparse.ArgumentParser()
        cmd.register(parser.add_subparsers())
        args = parser.parse_args(["expression", "predict", "--model", str(model_dir),
                                  "--image", str(p), "--out", str(one), "--device", "cpu",
                                  "--quiet"])
        assert args.func(args) == 0
        ref = _read(one)
        assert ref.n_obs >= 3
        a = _read(tmp_path / "dist" / f"{p.stem}.h5ad")
        assert list(a.obs_names) == list(ref.obs_names)
        assert list(a.var_names) == list(ref.var_names)
        np.testing.assert_allclose(a.X, ref.X, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.obsm["X_mclstexp"], ref.obsm["X_mclstexp"],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.obsm["spatial"], ref.obsm["spatial"])
    # different slides, different outputs
    a0, a1 = (_read(tmp_path / "dist" / f"{p.stem}.h5ad") for p in paths[:2])
    assert a0.n_obs != a1.n_obs or not np.allclose(a0.X, a1.X)


def test_classify_batch_equals_one_by_one(he_slides, classifier, cluster, tmp_path):
    from napari_stexp.commands import classify as cmd

    _, paths = he_slides
    res = batch.run_batch("classify", paths, tmp_path / "dist", model_dir=str(classifier),
                          scheduler=cluster)
    assert res.ok, res.failed
    _one_model_load_per_worker(res)
    for p in paths:
        one = tmp_path / f"{p.stem}.one.h5ad"  # `napari-stexp classify predict`
        parser = argparse.ArgumentParser()
        cmd.register(parser.add_subparsers())
        args = parser.parse_args(["classify", "predict", "--model", str(classifier), "--image",
                                  str(p), "--out", str(one), "--device", "cpu", "--quiet"])
        assert args.func(args) == 0
        ref = _read(one)
        a = _read(tmp_path / "dist" / f"{p.stem}.classes.h5ad")
        assert list(a.obs_names) == list(ref.obs_names) and a.n_obs >= 3
        assert list(a.obs["batch_agnostic_class"]) == list(ref.obs["batch_agnostic_class"])
        np.testing.assert_allclose(a.obsm["batch_agnostic_proba"],
                                   ref.obsm["batch_agnostic_proba"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.obsm["batch_agnostic_proba"].sum(1), 1.0, rtol=1e-5)


def test_embed_batch_equals_one_by_one(smears, cluster, tmp_path):
    from napari_stexp.commands import bvae as bcmd
    from napari_stexp.commands.segment import segment_to_folder

    model_dir, paths = smears
    res = batch.run_batch("embed", paths, tmp_path / "dist", model_dir=str(model_dir),
                          scheduler=cluster)
    assert res.ok, res.failed
    _one_model_load_per_worker(res)
    for p in paths:
        # one by one: `napari-stexp segment` then `napari-stexp bvae embed --labels`
        seg = tmp_path / "seg" / p.stem
        segment_to_folder(p, seg, method="classical", device="cpu")
        one = tmp_path / f"{p.stem}.one.h5ad"
        parser = argparse.ArgumentParser()
        bcmd.register(parser.add_subparsers())
        args = parser.parse_args(["bvae", "embed", "--model", str(model_dir), "--cells",
                                  str(p), "--labels", str(seg / "labels.tif"), "--out",
                                  str(one)])
        assert args.func(args) == 0
        ref = _read(one)
        a = _read(tmp_path / "dist" / f"{p.stem}.embeddings.h5ad")
        assert a.n_obs == ref.n_obs > 0
        assert list(a.obs["cell_id"]) == list(ref.obs["cell_id"])
        np.testing.assert_allclose(a.obsm["X_bvae"], ref.obsm["X_bvae"], rtol=1e-4, atol=1e-5)
        # each cell knows where it is on the slide
        assert a.obsm["spatial"].shape == (a.n_obs, 2)
        assert Path(a.uns["napari_stexp"]["cells"]).name == p.name


def test_navigator_opens_a_batch_output_folder(smears, he_slides, classifier, cluster,
                                               tmp_path):
    """segment + embed (smears), predict + classify (H&E) into one folder: the slide
    navigator's collection lists one slide per input, with its image, cells and results."""
    from napari_stexp.io.collection import SlideCollection

    out = tmp_path / "out"
    bvae_dir, smear_paths = smears
    mcl_dir, he_paths = he_slides
    for kind, paths, model in (("segment", smear_paths, None), ("embed", smear_paths, bvae_dir),
                               ("predict", he_paths[:1], mcl_dir),
                               ("classify", he_paths[:1], classifier)):
        res = batch.run_batch(kind, paths, out, model_dir=model and str(model),
                              scheduler=cluster)
        assert res.ok, res.failed
    coll = SlideCollection.from_paths(out, cache_dir=tmp_path / "cache")
    assert sorted(coll.names) == sorted([p.stem for p in smear_paths] + [he_paths[0].stem])
    table = coll.table().set_index("name")
    for p in smear_paths:
        assert table.loc[p.stem, ["image", "cells", "embeddings"]].all()
    assert table.loc[he_paths[0].stem, ["image", "predictions", "classes"]].all()
    smear = coll[smear_paths[0].stem]
    assert Path(smear.cells).name == f"{smear_paths[0].stem}.labels.ome.zarr"
    assert [Path(h).name for h in smear.h5ads] == [f"{smear_paths[0].stem}.cells.h5ad",
                                                   f"{smear_paths[0].stem}.embeddings.h5ad"]
    he = coll.load(he_paths[0].stem)  # predicted spots over their H&E
    assert Path(he.image.path).resolve() == he_paths[0].resolve()
    assert he.adata.n_obs == _read(out / f"{he_paths[0].stem}.h5ad").n_obs
    assert "predicted" in he.adata.layers
    # the classifier's table (same pseudo-spot grid) is merged into the slide by spot id
    assert he.adata.obs["batch_agnostic_class"].notna().all()
