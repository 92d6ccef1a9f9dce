"""Classification metrics: accuracy, macro-F1, per-class F1 and calibration (ECE).

They live with the models, not in ``evaluation/``, because the classifier's own fit uses them
(temperature calibration is chosen and reported on its validation spots), and models sit below
evaluation; :mod:`napari_stexp.evaluation.classification` re-exports them beside the evaluation
protocols.

Macro-F1 averages the F1 of every class that occurs in the truth or in the predictions
(scikit-learn's default label set), so a class the model invents for a section costs it, and a
class it never predicts scores 0. The expected calibration error bins the top-class confidence
into equal-width bins and averages |accuracy − confidence| weighted by bin size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(y_true: Sequence, y_pred: Sequence,
                           classes: Sequence[str] | None = None) -> dict[str, Any]:
    """``accuracy``, ``macro_f1``, ``per_class_f1`` ({class: F1}), ``support`` and ``n``.

    Inputs are class names (or codes); ``classes`` fixes the order of ``per_class_f1`` (classes
    absent from both truth and predictions are left out of the macro average).
    """
    from sklearn.metrics import f1_score

    yt = np.asarray([str(v) for v in y_true], dtype=object)
    yp = np.asarray([str(v) for v in y_pred], dtype=object)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} items, y_pred {len(yp)}")
    if len(yt) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "per_class_f1": {},
                "support": {}, "n": 0}
    present = sorted(set(yt) | set(yp))
    order = [str(c) for c in classes] if classes is not None else present
    order = order + [c for c in present if c not in order]
    used = [c for c in order if c in present]
    f1 = f1_score(yt, yp, labels=used, average=None, zero_division=0)
    per = dict(zip(used, (float(v) for v in f1), strict=True))
    return {"accuracy": float((yt == yp).mean()),
            "macro_f1": float(np.mean(f1)) if len(f1) else float("nan"),
            "per_class_f1": per,
            "support": {c: int((yt == c).sum()) for c in used},
            "n": int(len(yt))}


def expected_calibration_error(proba: np.ndarray, y_true: Sequence[int],
                               n_bins: int = 10) -> float:
    """ECE of the top-class confidence (``proba`` rows sum to 1, ``y_true`` class indices)."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"proba {p.shape} and y_true {y.shape} do not match")
    if len(y) == 0:
        return float("nan")
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_report(y_true: Sequence[str], proba: np.ndarray,
                          classes: Sequence[str], n_bins: int = 10) -> dict[str, Any]:
    """Metrics from probabilities: the argmax class and, for labels in ``classes``, the ECE.

    Truth labels outside ``classes`` count as errors for accuracy/F1 (the model cannot name
    them) and are left out of the ECE.
    """
    classes = [str(c) for c in classes]
    p = np.asarray(proba, dtype=np.float64)
    pred = [classes[i] for i in p.argmax(axis=1)] if len(p) else []
    out = classification_metrics(y_true, pred, classes)
    pos = {c: i for i, c in enumerate(classes)}
    codes = np.array([pos.get(str(v), -1) for v in y_true], np.int64)
    known = codes >= 0
    out["ece"] = expected_calibration_error(p[known], codes[known], n_bins) if known.any() \
        else float("nan")
    return out
