"""``napari-stexp expression``: real her2st sections with images end to end (tiny settings),
slide prediction to .h5ad, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from napari_stexp import cli
from napari_stexp.evaluation.regression import REPORT_COLUMNS

MODULE = "napari_stexp.commands.expression"
FAST = ["--tiny", "--epochs", "1", "--mode", "cached", "--input-size", "32", "--quiet"]


@pytest.fixture(autouse=True)
def _cli(monkeypatch):
    if MODULE not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, MODULE])
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.mark.realdata
def test_her2st_train_evaluate_and_cross_validate(her2st_dir, tmp_path, cache, capsys):
    model_dir = tmp_path / "model"
    rc = cli.main(["expression", "train", "--data", str(her2st_dir), "--sections", "B4", "C2",
                   "--out", str(model_dir), "--cache-dir", cache, *FAST])
    assert rc == 0
    genes = (model_dir / "genes.txt").read_text().split()
    panel = np.load(her2st_dir / "her_hvg_cut_1000.npy", allow_pickle=False)
    # the her2st 785-gene panel by default, + the breast markers it lacks (issue 17.5)
    assert genes[:len(panel)] == [str(g) for g in panel] and "ERBB2" in genes[len(panel):]
    assert not (tmp_path / "model.ckpt").exists()  # checkpoints removed after success

    report = tmp_path / "report.csv"
    rc = cli.main(["expression", "evaluate", "--model", str(model_dir), "--data",
                   str(her2st_dir), "--sections", "C3", "--out", str(report), "--cache-dir",
                   cache, "--quiet"])
    assert rc == 0
    t = pd.read_csv(report)
    assert list(t.columns) == REPORT_COLUMNS
    assert list(t["method"]) == ["mclstexp", "ridge", "pca_ridge", "train_mean"]
    assert (t["protocol"] == "held-out section of a training patient").all()  # C3: patient C
    assert (t["section"] == "C3").all() and (t["n_spots"] == 180).all()
    assert t.loc[t.method != "train_mean", ["pcc_acg", "pcc_heg"]].abs().le(1).all().all()
    assert t[["mse", "mae"]].gt(0).all().all()
    assert t.loc[t.method == "train_mean", "pcc_acg"].isna().all()

    cv = tmp_path / "cv.csv"
    rc = cli.main(["expression", "cross-validate", "--data", str(her2st_dir), "--sections",
                   "B4", "C2", "--by", "patient", "--out", str(cv), "--cache-dir", cache,
                   "--top-genes", "100", *FAST])
    assert rc == 0
    c = pd.read_csv(cv)
    assert list(c.columns) == REPORT_COLUMNS
    assert sorted(set(c["section"])) == ["B4", "C2"] and len(c) == 8
    assert (c["protocol"] == "unseen patient").all()  # by patient: B4 (B) vs C2 (C)
    assert dict(zip(c.loc[c.method == "mclstexp", "section"],
                    c.loc[c.method == "mclstexp", "n_spots"], strict=True)) == {"B4": 283,
                                                                                 "C2": 187}
    out = capsys.readouterr().out
    assert "mean over sections" in out


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    from expression_helpers import synthetic_pair
    from napari_stexp.models.mclstexp import train_expression_model

    torch.set_num_threads(1)
    adatas, images = synthetic_pair(n=10, n_genes=12)
    m = train_expression_model({"TRAIN": adatas["TRAIN"]}, images=images, mode="cached",
                               epochs=2, backbone="tinycnn", patch_size=64, input_size=32,
                               batch_size=32, top_k=20, cache_dir=False, device="cpu")
    d = tmp_path_factory.mktemp("synth") / "model"
    m.save(d)
    return d, images["TEST"]


def test_predict_writes_an_h5ad_with_predictions(tmp_path, synthetic_model):
    import anndata as ad
    from PIL import Image

    model_dir, pyr = synthetic_model
    png = tmp_path / "slide.png"
    Image.fromarray(np.asarray(pyr.levels[0])).save(png)
    out = tmp_path / "pred.h5ad"
    rc = cli.main(["expression", "predict", "--model", str(model_dir), "--image", str(png),
                   "--out", str(out), "--device", "cpu", "--quiet"])
    assert rc == 0
    a = ad.read_h5ad(out)
    assert a.n_vars == 12 and a.n_obs > 20
    assert a.layers["predicted"].shape == a.shape and np.isfinite(a.layers["predicted"]).all()
    assert a.obsm["X_mclstexp"].shape == (a.n_obs, 256)
    assert "confidence" in a.obs
    prov = a.uns["napari_stexp"]
    assert "assumed equal to the training" in prov["mpp_handling"]  # PNG has no µm/px
    assert prov["model"] == str(model_dir)


def test_bad_input_gives_one_line_errors(tmp_path, synthetic_model, capsys, stexp_data):
    from PIL import Image

    model_dir, _ = synthetic_model
    small = tmp_path / "small.png"
    Image.fromarray(np.full((20, 30, 3), 180, np.uint8)).save(small)
    rc = cli.main(["expression", "predict", "--model", str(model_dir), "--image", str(small),
                   "--out", str(tmp_path / "p.h5ad"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "smaller than one patch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.h5ad").exists()
    # a model trained on another gene panel
    rc = cli.main(["expression", "evaluate", "--model", str(model_dir), "--data",
                   str(stexp_data / "her2st"), "--sections", "C3", "--out",
                   str(tmp_path / "r.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "panel genes" in err and str(model_dir) in err
    assert not (tmp_path / "r.csv").exists()
    # not a model folder
    rc = cli.main(["expression", "evaluate", "--model", str(tmp_path), "--data",
                   str(stexp_data / "her2st"), "--out", str(tmp_path / "r.csv"), "--quiet"])
    assert rc == 2 and "config.json is missing" in capsys.readouterr().err
    # a section without an image, asked for explicitly
    rc = cli.main(["expression", "train", "--data", str(stexp_data / "her2st"), "--sections",
                   "B1", "--out", str(tmp_path / "m"), *FAST])
    assert rc == 2 and "no H&E image" in capsys.readouterr().err
