"""``napari-stexp classify``: train / evaluate / embed / predict (tiny) and their error messages."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_stexp import cli

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

MODULE = "napari_stexp.commands.classify"


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    """Make sure the classify group is registered (the lead adds it to COMMAND_MODULES)."""
    if MODULE not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, MODULE])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two sections of two patients (same H&E, the second with a planted expression shift),
    written as .h5ad, and the slide image as a pyramidal TIFF with its µm/px."""
    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.io.wsi import write_pyramidal_tiff

    d = tmp_path_factory.mktemp("classify_cli")
    slide = make_synthetic_slide(12, 12, mpp=1.4, seed=0)
    a1 = slide.adata.copy()
    a2 = slide.adata.copy()
    rng = np.random.default_rng(1)
    shift = np.exp(rng.normal(0, 0.8, a2.n_vars))
    X = rng.poisson(a2.layers["counts"].toarray() * shift).astype(np.float32)
    a2.X = sp.csr_matrix(X)
    a2.layers["counts"] = a2.X.copy()
    a2.obs["section"] = pd.Categorical(["SYN2"] * a2.n_obs)
    a2.obs["patient"] = pd.Categorical(["P2"] * a2.n_obs)
    a2.uns["spatial"] = {"SYN2": a2.uns["spatial"]["SYN1"]}
    paths = {"SYN1": d / "syn1.h5ad", "SYN2": d / "syn2.h5ad"}
    a1.write_h5ad(paths["SYN1"])
    a2.write_h5ad(paths["SYN2"])
    nolab = a1.copy()
    nolab.obs["label"] = pd.Categorical([np.nan] * nolab.n_obs)
    nolab.write_h5ad(d / "nolabels.h5ad")
    tif = write_pyramidal_tiff(d / "slide.tif", slide.image, mpp=slide.mpp, compression="zlib")
    return {"dir": d, "paths": paths, "slide": slide, "tif": tif, "nolab": d / "nolabels.h5ad"}


@pytest.fixture(scope="module")
def model_dir(data):
    out = data["dir"] / "model"
    rc = _main_registered(["classify", "train", "--data", str(data["paths"]["SYN1"]),
                           str(data["paths"]["SYN2"]), "--out", str(out), "--tiny",
                           "--gene-epochs", "8", "--epochs", "2", "--latent-dim", "12",
                           "--no-cache", "--quiet"])
    assert rc == 0
    return out


def _main_registered(argv):
    """``cli.main`` with the classify group registered (module-scoped fixtures cannot use
    monkeypatch)."""
    old = cli.COMMAND_MODULES
    if MODULE not in old:
        cli.COMMAND_MODULES = [*old, MODULE]
    try:
        return cli.main(argv)
    finally:
        cli.COMMAND_MODULES = old


def test_train_writes_model_dir(model_dir, capsys):
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["format"] == "napari-stexp/batch-agnostic-classifier"
    assert meta["classes"] == ["adipose tissue", "connective tissue", "invasive cancer"]
    assert meta["batches"] == ["P1", "P2"]
    assert meta["config"]["gene"]["n_latent"] == 12
    assert meta["config"]["gene"]["batch_conditioning"] is True
    assert meta["config"]["backbone"] == "tinycnn"
    assert meta["provenance"]["image_sections"] == ["SYN1", "SYN2"]
    assert (model_dir / "model.pt").is_file() and (model_dir / "gene_encoder").is_dir()
    assert not (model_dir.parent / "model.ckpt").exists()  # checkpoints removed after success


def test_evaluate_report_columns(model_dir, data, tmp_path, capsys):
    out = tmp_path / "report.csv"
    det = tmp_path / "details.json"
    rc = cli.main(["classify", "evaluate", "--model", str(model_dir), "--data",
                   str(data["paths"]["SYN1"]), str(data["paths"]["SYN2"]), "--out", str(out),
                   "--details", str(det), "--no-cache", "--quiet"])
    assert rc == 0
    rep = pd.read_csv(out)
    assert list(rep.columns) == ["method", "section", "n_spots", "accuracy", "macro_f1"]
    assert set(zip(rep["method"], rep["section"], strict=True)) == {
        ("batch_agnostic", "SYN1"), ("batch_agnostic", "SYN2"),
        ("gene_latent", "SYN1"), ("gene_latent", "SYN2")}
    n = data["slide"].adata.n_obs
    assert (rep["n_spots"] == n).all()
    assert rep["accuracy"].between(0, 1).all() and rep["macro_f1"].between(0, 1).all()
    # same H&E for both sections -> the image classifier gives identical numbers
    img = rep[rep["method"] == "batch_agnostic"]
    assert img["accuracy"].nunique() == 1
    details = json.loads(det.read_text())
    assert "per_class_f1" in details["batch_agnostic/SYN1"]


def test_embed_writes_latents(model_dir, data, tmp_path):
    import anndata as ad

    out = tmp_path / "emb.h5ad"
    rc = cli.main(["classify", "embed", "--model", str(model_dir), "--data",
                   str(data["paths"]["SYN1"]), str(data["paths"]["SYN2"]), "--out", str(out),
                   "--no-cache", "--quiet"])
    assert rc == 0
    emb = ad.read_h5ad(out)
    n = data["slide"].adata.n_obs
    assert emb.n_obs == 2 * n
    assert emb.obsm["X_gene_latent"].shape == (2 * n, 12)
    assert emb.obsm["X_image"].shape[0] == 2 * n and np.isfinite(emb.obsm["X_image"]).all()
    assert set(emb.obs["patient"]) == {"P1", "P2"}
    assert set(emb.obs["label"].dropna()) == {"adipose tissue", "connective tissue",
                                              "invasive cancer"}
    assert list(emb.uns["batch_agnostic_classes"]) == ["adipose tissue", "connective tissue",
                                                       "invasive cancer"]


def test_predict_slide(model_dir, data, tmp_path):
    import anndata as ad

    out = tmp_path / "classes.h5ad"
    rc = cli.main(["classify", "predict", "--model", str(model_dir), "--image",
                   str(data["tif"]), "--out", str(out), "--quiet"])
    assert rc == 0
    res = ad.read_h5ad(out)
    classes = list(res.uns["batch_agnostic_classes"])
    assert classes == ["adipose tissue", "connective tissue", "invasive cancer"]
    assert res.n_obs > 50
    assert set(res.obs["batch_agnostic_class"].astype(str)) <= set(classes)
    p = res.obsm["batch_agnostic_proba"]
    assert p.shape == (res.n_obs, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert res.uns["napari_stexp"]["mpp_known"]  # µm/px read from the TIFF
    assert res.uns["napari_stexp"]["kind"] == "batch_agnostic_slide"


def test_cli_errors(data, tmp_path, capsys):
    rc = cli.main(["classify", "train", "--data", str(data["nolab"]), "--out",
                   str(tmp_path / "m"), "--tiny", "--quiet", "--no-cache"])
    err = capsys.readouterr().err
    assert rc == 2 and "no labelled spot" in err and "needs at least some labels" in err
    assert not (tmp_path / "m").exists()
    bad = data["slide"].adata.copy()
    bad.obsm["spatial"] = bad.obsm["spatial"].copy()
    bad.obsm["spatial"][0] = np.nan
    bad.write_h5ad(tmp_path / "nan.h5ad")
    rc = cli.main(["classify", "train", "--data", str(tmp_path / "nan.h5ad"), "--out",
                   str(tmp_path / "m"), "--tiny", "--quiet"])
    assert rc == 2 and "NaN" in capsys.readouterr().err
    rc = cli.main(["classify", "evaluate", "--model", str(tmp_path / "missing"), "--data",
                   str(data["paths"]["SYN1"]), "--out", str(tmp_path / "r.csv")])
    assert rc == 2 and "model folder not found" in capsys.readouterr().err
    rc = cli.main(["classify", "train", "--data", str(data["paths"]["SYN1"]), "--sections",
                   "NOPE", "--out", str(tmp_path / "m"), "--tiny", "--quiet"])
    assert rc == 2 and "unknown section" in capsys.readouterr().err


@pytest.mark.realdata
def test_her2st_unlabelled_image_section_is_a_clear_error(her2st_dir, tmp_path, capsys):
    """B4 has an H&E image but no labels: classify train refuses with a clear message."""
    rc = cli.main(["classify", "train", "--data", str(her2st_dir), "--sections", "B4",
                   "--out", str(tmp_path / "m"), "--tiny", "--quiet", "--no-cache"])
    err = capsys.readouterr().err
    assert rc == 2 and "B4" in err and "no labelled spot" in err
