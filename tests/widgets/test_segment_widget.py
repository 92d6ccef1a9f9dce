"""GUI: the segment dock widget on a synthetic smear layer, driven as a user would."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stexp.data.synthetic_smear import make_synthetic_smear


@pytest.fixture(scope="module")
def smear():
    return make_synthetic_smear((384, 512), n_wbc=4, n_rbc=40, seed=3)


def _run(qtbot, widget):
    """Click 'Segment' and wait until the worker's finished handler ran (it clears _worker;
    waiting on the signal itself could miss a worker that fails at once)."""
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    qtbot.wait(50)


def test_segment_widget_adds_cells_layer(make_napari_viewer, qtbot, smear):
    from napari_stexp.widgets.segment import SegmentWidget

    image, labels, table = smear
    viewer = make_napari_viewer()
    viewer.add_image(image, name="smear", rgb=True, scale=(0.5, 0.5), translate=(10.0, 20.0))
    w = SegmentWidget(viewer)
    assert w.image_combo.currentText() == "smear"
    assert w.method_combo.currentText() == "classical"
    w.tile_spin.setValue(200)  # tiled, with per-tile progress
    _run(qtbot, w)
    assert "smear cells" in viewer.layers
    cells = viewer.layers["smear cells"]
    assert cells.__class__.__name__ == "Labels"
    assert cells.data.shape == labels.shape
    np.testing.assert_allclose(cells.scale, (0.5, 0.5))
    np.testing.assert_allclose(cells.translate, (10.0, 20.0))
    f = cells.features
    assert len(f) == int(cells.data.max()) == len(table)
    assert f["label"].tolist() == list(range(1, len(f) + 1))
    assert {"y", "x", "area", "score"} <= set(f.columns)
    assert w.progress_bar.value() == w.progress_bar.maximum()
    # cells overlay the true cells (same pixel frame as the image)
    for r in table.itertuples():
        assert cells.data[int(r.y), int(r.x)] > 0
    # running again replaces the layer's data instead of adding a second one
    _run(qtbot, w)
    assert [ly.name for ly in viewer.layers].count("smear cells") == 1


def test_segment_widget_multiscale_layer(make_napari_viewer, qtbot, smear):
    from napari_stexp.widgets.segment import SegmentWidget

    image, labels, table = smear
    viewer = make_napari_viewer()
    viewer.add_image([image, image[::2, ::2]], name="pyr", rgb=True, multiscale=True)
    w = SegmentWidget(viewer)
    _run(qtbot, w)
    cells = viewer.layers["pyr cells"]
    assert cells.data.shape == labels.shape  # level 0, full resolution
    assert len(cells.features) == len(table)


def test_segment_widget_errors_are_notifications(make_napari_viewer, qtbot, monkeypatch):
    from napari_stexp.widgets import segment as seg_widget

    errors = []
    monkeypatch.setattr(seg_widget, "notify_error", lambda e: errors.append(str(e)))
    viewer = make_napari_viewer()
    w = seg_widget.SegmentWidget(viewer)
    assert w.run() is None and errors and "choose an image layer" in errors[-1]
    viewer.add_image(np.zeros((4, 30, 40), np.uint8), name="stack")  # 3-D: not a 2-D image
    w.reset_choices()
    w.image_combo.setCurrentText("stack")
    errors.clear()
    _run(qtbot, w)
    assert errors and "expected a 2-D grey" in errors[-1]
    assert "stack cells" not in viewer.layers
    assert w.run_btn.isEnabled()


def test_segment_widget_cancel(make_napari_viewer, qtbot, smear):
    from napari_stexp.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(smear[0], name="smear", rgb=True)
    w = SegmentWidget(viewer)
    w.tile_spin.setValue(64)
    worker = w.run()
    assert worker is not None
    w.cancel()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    qtbot.wait(50)
    assert "smear cells" not in viewer.layers
    assert w.status.text() == "cancelled"


def test_widget_docks_from_the_manifest(make_napari_viewer):
    from napari_stexp.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="img", rgb=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-stexp", "Segment cells")
    assert isinstance(widget, SegmentWidget)
    assert widget.image_combo.currentText() == "img"


def test_cells_layer_tuple_gui_free(smear):
    from napari_stexp.segmentation import segment
    from napari_stexp.widgets.segment import cells_layer_tuple

    res = segment(smear[0])
    data, attrs, kind = cells_layer_tuple("img", res, scale=(2.0, 2.0), translate=(0, 0))
    assert kind == "labels" and attrs["name"] == "img cells"
    assert len(attrs["features"]) == res.n_objects and attrs["scale"] == (2.0, 2.0)
    assert attrs["metadata"]["kind"] == "cells"
