"""The classifier's confidence threshold shows on the canvas (issue 17.4): napari 0.9.2 ignores
``Points.shown`` with every dimension displayed, so the below-threshold points are faded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui


def _prediction(n_side=14):
    from napari_stexp.widgets.classify import ClassPrediction

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:n_side, 0:n_side]
    coords = np.c_[yy.ravel(), xx.ravel()].astype(float) * 100.0
    n = len(coords)
    logits = rng.normal(0, 1.5, (n, 3))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return ClassPrediction(name="S", coords_um=coords, size_um=80.0,
                           classes=["a", "b", "c"], proba=proba,
                           source=np.array(["image"] * n), obs_names=[str(i) for i in range(n)],
                           extra=pd.DataFrame(index=range(n)))


def test_threshold_changes_the_pixels(make_napari_viewer, qtbot):
    from napari_stexp.widgets._common import add_layer_tuples
    from napari_stexp.widgets.classify import apply_threshold, class_layer_tuples

    viewer = make_napari_viewer(show=True)
    pred = _prediction()
    layers = add_layer_tuples(viewer, class_layer_tuples(pred, 0.0))
    viewer.reset_view()
    qtbot.wait(50)
    before = viewer.screenshot(canvas_only=True, flash=False)
    hidden = apply_threshold(layers, 0.6)
    assert 0 < hidden < len(pred.proba)
    qtbot.wait(50)
    after = viewer.screenshot(canvas_only=True, flash=False)
    changed = np.any(before != after, axis=-1).mean()
    assert changed > 0.01, f"only {changed:.4f} of the pixels changed"
    apply_threshold(layers, 0.0)
    qtbot.wait(50)
    back = viewer.screenshot(canvas_only=True, flash=False)
    np.testing.assert_array_equal(back, before)
