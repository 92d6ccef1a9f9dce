"""Evaluation of expression prediction: per-gene PCC (axis, constant genes), HEG, MSE/MAE,
ridge/mean baselines, CV folds and a tiny leave-one-section-out run with no leak."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr

from napari_stexp.errors import InputError
from napari_stexp.evaluation.regression import (
    REPORT_COLUMNS,
    cv_folds,
    gene_pcc,
    heg_indices,
    regression_metrics,
    ridge_predict,
)


def test_gene_pcc_is_per_gene_across_spots():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(40, 6))
    pred = true * np.array([1, -1, 0.5, 2, 1, 1]) + rng.normal(0, 0.5, (40, 6))
    r = gene_pcc(pred, true)
    ref = [pearsonr(pred[:, g], true[:, g])[0] for g in range(6)]
    np.testing.assert_allclose(r, ref, rtol=1e-10)
    assert r[1] < -0.8 and r[0] > 0.8
    # a per-gene scale/shift of the prediction does not change per-gene PCC …
    np.testing.assert_allclose(gene_pcc(pred * 3 + 7, true), r, rtol=1e-10)
    # … but correlating along the wrong axis (per spot) would give other numbers
    wrong = [pearsonr(pred[i], true[i])[0] for i in range(40)]
    assert not np.isclose(np.mean(wrong), np.mean(r), atol=1e-3)


def test_constant_genes_are_handled_and_documented():
    true = np.array([[1.0, 5.0, 0.0], [2.0, 5.0, 1.0], [3.0, 5.0, 2.0]])
    pred = np.array([[1.0, 1.0, 4.0], [2.0, 2.0, 4.0], [3.0, 3.0, 4.0]])
    r = gene_pcc(pred, true)
    assert r[0] == pytest.approx(1.0)
    assert np.isnan(r[1])  # measured constant: undefined, left out of the means
    assert r[2] == 0.0  # prediction constant, measurement varies: 0
    m = regression_metrics(pred, true)
    assert m["pcc_acg"] == pytest.approx(0.5) and m["n_genes_pcc"] == 2
    # a constant predictor (training mean) reports NaN PCC
    m0 = regression_metrics(np.ones_like(true), true, pcc=False)
    assert np.isnan(m0["pcc_acg"]) and np.isfinite(m0["mse"])


def test_heg_are_the_highest_mean_measured_genes_and_errors_are_exact():
    rng = np.random.default_rng(1)
    true = rng.random((30, 80)) + np.linspace(0, 5, 80)  # gene means increase with index
    idx = heg_indices(true, 50)
    assert set(idx) == set(range(30, 80))
    pred = true.copy()
    pred[:, :30] = rng.random((30, 30))  # the 30 low genes predicted by noise
    m = regression_metrics(pred, true)
    assert m["pcc_heg"] == pytest.approx(1.0)
    assert m["pcc_acg"] < 0.7
    diff = pred - true
    assert m["mse"] == pytest.approx(np.mean(diff**2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(diff)))
    assert m["n_spots"] == 30


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 10))
    W = rng.normal(size=(10, 4))
    Y = X @ W + 0.01 * rng.normal(size=(200, 4))
    Xt = rng.normal(size=(50, 10))
    p = ridge_predict(X, Y, Xt)
    assert gene_pcc(p, Xt @ W).min() > 0.99


def test_cv_folds_by_section_and_patient():
    class A:
        def __init__(self, p):
            self.obs = pd.DataFrame({"patient": [p] * 3})
            self.n_obs = 3

    ad = {"B4": A("B"), "C2": A("C"), "C3": A("C")}
    f = cv_folds(ad, "section")
    assert f == [(["C2", "C3"], ["B4"]), (["B4", "C3"], ["C2"]), (["B4", "C2"], ["C3"])]
    assert cv_folds(ad, "patient") == [(["C2", "C3"], ["B4"]), (["B4"], ["C2", "C3"])]
    with pytest.raises(InputError, match="at least 2 patients"):
        cv_folds({"C2": A("C"), "C3": A("C")}, "patient")
    with pytest.raises(InputError, match="unknown grouping"):
        cv_folds(ad, "slide")
    for train, test in f:
        assert not set(train) & set(test)


def test_leave_one_section_out_reports_model_and_baselines_without_leak(monkeypatch):
    from expression_helpers import synthetic_pair
    from napari_stexp.evaluation import regression
    from napari_stexp.evaluation.regression import cross_validate

    torch.set_num_threads(1)
    adatas, images = synthetic_pair(n=10, n_genes=12)
    seen = []
    real_eval = regression.evaluate_model

    def spy(model, ads, **kw):
        seen.append((model.reference.section_names, list(ads)))
        return real_eval(model, ads, **kw)

    monkeypatch.setattr(regression, "evaluate_model", spy)
    res = cross_validate(adatas, by="section", mode="cached", backbone="tinycnn", epochs=3,
                         patch_size=64, input_size=24, batch_size=32, top_k=20,
                         cache_dir=False, device="cpu", top_genes=8, images=images)
    t = res.table
    assert list(t.columns) == REPORT_COLUMNS
    assert sorted(zip(t["method"], t["section"], strict=True)) == sorted(
        (m, s) for m in ("mclstexp", "ridge", "pca_ridge", "train_mean")
        for s in ("TRAIN", "TEST"))
    assert t.loc[t.method == "train_mean", "pcc_acg"].isna().all()
    assert t.loc[t.method != "train_mean", ["pcc_acg", "mse", "mae"]].notna().all().all()
    assert (t.loc[t.section == "TEST", "n_spots"] == adatas["TEST"].n_obs).all()
    # the references of each fold never include its test section
    assert len(seen) == 2
    for refs, test in seen:
        assert not set(refs) & set(test)
