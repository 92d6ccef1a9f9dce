"""HEST's probe (pca_ridge) beside ridge, the protocol of every report row (unseen patient vs
held-out section of a training patient, the patient-level figure first) and the plain verdict
when the model does not beat the baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_stexp.evaluation import regression as R


def _linear(n=300, d=600, g=20, seed=0, rank=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, rank))
    x = z @ rng.normal(size=(rank, d)) + 0.1 * rng.normal(size=(n, d))
    y = z @ rng.normal(size=(rank, g)) + 0.1 * rng.normal(size=(n, g))
    return x.astype(np.float32), y.astype(np.float32)


def test_pca_ridge_learns_low_rank_signal_and_caps_components():
    x, y = _linear()
    groups = np.repeat(["A", "B", "C"], 100)
    p = R.pca_ridge_predict(x[:200], y[:200], x[200:], groups=groups[:200])
    assert p.shape == (100, y.shape[1]) and p.dtype == np.float32
    r = R.gene_pcc(p, y[200:])
    assert np.nanmean(r) > 0.9
    # fewer spots than 256 components: capped at n - 1, still a prediction
    p = R.pca_ridge_predict(x[:40], y[:40], x[40:60])
    assert p.shape == (20, y.shape[1]) and np.isfinite(p).all()


def test_pca_ridge_picks_a_strong_alpha_on_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 50)).astype(np.float32)
    y = rng.normal(size=(200, 5)).astype(np.float32)
    p = R.pca_ridge_predict(x[:150], y[:150], x[150:])
    # pure noise: inner CV chooses heavy shrinkage → predictions near the training mean
    assert np.abs(p - y[:150].mean(0)).max() < 0.2


def test_protocol_labels():
    assert R.section_protocol("C", ["B", "C"]) == R.SEEN
    assert R.section_protocol("D", ["B", "C"]) == R.UNSEEN
    assert R.section_protocol(None, ["B"]) == "unknown"
    assert R.section_protocol("C", []) == "unknown"


def _table(model, ridge, pca, proto=R.UNSEEN, extra=True):
    rows = [{"method": m, "section": "S1", "n_spots": 10, "pcc_acg": a, "pcc_heg": h,
             "mse": 1.0, "mae": 1.0, "protocol": proto}
            for m, (a, h) in (("mclstexp", model), ("ridge", ridge), ("pca_ridge", pca))]
    if extra:  # an optimistic, section-level row that must not decide the verdict
        rows.append({"method": "mclstexp", "section": "S2", "n_spots": 10, "pcc_acg": 0.9,
                     "pcc_heg": 0.9, "mse": 1.0, "mae": 1.0, "protocol": R.SEEN})
    return pd.DataFrame(rows, columns=R.REPORT_COLUMNS)


def test_summary_puts_the_patient_level_protocol_first():
    t = _table((0.1, 0.1), (0.2, 0.2), (0.15, 0.15))
    t = pd.concat([t.iloc[[3]], t.iloc[:3]])  # section-level row first in the input
    s = R.summarise(t)
    assert s.index[0][0] == R.UNSEEN and s.index[-1][0] == R.SEEN


def test_verdict_says_plainly_when_the_model_loses():
    v = R.baseline_verdict(_table((0.148, 0.127), (0.158, 0.138), (0.150, 0.140)))
    assert v["beats"] is False and v["protocol"] == R.UNSEEN
    assert v["best_baseline"] == "ridge" and "does NOT beat" in v["text"]
    assert "--baseline ridge" in v["text"]
    v = R.baseline_verdict(_table((0.2, 0.2), (0.158, 0.138), (0.150, 0.140)))
    assert v["beats"] is True and "beats the baselines" in v["text"]
    # better on ACG only is not enough
    assert R.baseline_verdict(_table((0.2, 0.1), (0.158, 0.138), (0.15, 0.14)))["beats"] is False
    # ridge with the model's own options (smoothing) is the like-for-like baseline when present
    t = _table((0.195, 0.146), (0.184, 0.111), (0.184, 0.111))
    opt = t.iloc[[1]].assign(method="ridge+options", pcc_acg=0.2005, pcc_heg=0.123)
    v = R.baseline_verdict(pd.concat([t, opt], ignore_index=True))
    assert v["beats"] is False and v["best_baseline"] == "ridge+options"
    assert "not available" in v["text"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_evaluate_model_reports_pca_ridge_and_protocol():
    torch = pytest.importorskip("torch")
    from expression_helpers import synthetic_pair
    from napari_stexp.models.mclstexp import train_expression_model

    torch.set_num_threads(1)
    adatas, images = synthetic_pair(n=10, n_genes=12)
    m = train_expression_model({"TRAIN": adatas["TRAIN"]}, images=images, mode="cached",
                               backbone="tinycnn", epochs=1, patch_size=64, input_size=24,
                               batch_size=32, top_k=20, cache_dir=False, device="cpu")
    assert m.provenance["train_patients"] == [str(adatas["TRAIN"].obs["patient"].iloc[0])]
    res = R.evaluate_model(m, {"TEST": adatas["TEST"]}, images=images, cache_dir=False,
                           device="cpu")
    t = res.table
    assert list(t["method"]) == ["mclstexp", "ridge", "pca_ridge", "train_mean"]
    same = adatas["TEST"].obs["patient"].iloc[0] == adatas["TRAIN"].obs["patient"].iloc[0]
    assert (t["protocol"] == (R.SEEN if same else R.UNSEEN)).all()
    assert np.isfinite(t.loc[t.method == "pca_ridge", ["pcc_acg", "mse"]]).all().all()
    assert "pca_ridge" in res.predictions
    # the widget's per-section prediction says the same protocol (Qt-free job function)
    from napari_stexp.widgets.expression import predict_for_sections

    pred = predict_for_sections(m, {"TEST": adatas["TEST"]}, images, device="cpu")[0]
    assert pred.protocol == (R.SEEN if same else R.UNSEEN)
