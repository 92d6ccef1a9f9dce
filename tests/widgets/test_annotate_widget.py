"""Annotate widget: draw a region, name it, apply -> the spots' labels the classifier uses
(issue 17 item 12)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def slide():
    from napari_stexp.data.synthetic_slide import make_synthetic_slide

    return make_synthetic_slide(6, 6, mpp=1.4, seed=1)


def _spots_layer(viewer, adata):
    from napari_stexp.io.layers import spots_layer
    from napari_stexp.widgets._common import add_layer_tuples

    data, attrs, kind = spots_layer(adata)
    attrs["metadata"]["adata"] = adata
    attrs["scale"] = (2.0, 2.0)  # the layer frame differs from the world: regions follow
    (layer,) = add_layer_tuples(viewer, [(data, attrs, kind)])
    return layer


def test_draw_name_apply_and_pick(make_napari_viewer, slide):
    from napari_stexp.viewer.palettes import LABEL_COLORS
    from napari_stexp.widgets.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    adata = slide.adata.copy()
    points = _spots_layer(viewer, adata)
    w = AnnotateWidget(viewer)
    assert w.spots_combo.currentText() == points.name
    w.class_edit.setText("invasive cancer")
    shapes = w.new_regions_layer()
    assert w.regions_combo.currentText() == shapes.name
    world = points.data * 2.0  # world coordinates of the spots
    lo, hi = world.min(0), world.max(0)
    mid = (lo[1] + hi[1]) / 2
    shapes.add_polygons([np.array([[lo[0] - 1, lo[1] - 1], [lo[0] - 1, mid],
                                   [hi[0] + 1, mid], [hi[0] + 1, lo[1] - 1]])])
    assert shapes.features["class"].tolist() == ["invasive cancer"]  # the typed class
    counts = w.apply_regions()
    left = world[:, 1] < mid
    assert counts == {"invasive cancer": int(left.sum())}
    assert (adata.obs["label"].astype(str).to_numpy()[left] == "invasive cancer").all()
    assert adata.obs["label"][~left].isna().all()
    # the layer shows the labels in the fixed palette
    assert set(points.features["label"].astype(str)) == {"invasive cancer", "unknown"}
    i = int(np.flatnonzero(left)[0])
    r, g, b = (points.face_color[i][:3] * 255).round().astype(int)
    assert f"#{r:02x}{g:02x}{b:02x}" == LABEL_COLORS["invasive cancer"]
    # picking spots adds another class
    w.class_edit.setText("adipose tissue")
    picked = set(np.flatnonzero(~left)[:3].tolist())
    points.selected_data = picked
    counts = w.label_picked_spots()
    assert counts["adipose tissue"] == 3 and counts["invasive cancer"] == int(left.sum())
    # renaming a drawn region
    shapes.selected_data = {0}
    assert w.name_selected_regions() == 1
    assert shapes.features["class"].tolist() == ["adipose tissue"]


def test_errors_are_notifications(make_napari_viewer, monkeypatch):
    import napari_stexp.widgets.annotate as mod

    errors = []
    monkeypatch.setattr(mod, "notify_error", lambda e: errors.append(str(e)))
    w = mod.AnnotateWidget(make_napari_viewer())
    assert w.apply_regions() is None and w.label_picked_spots() is None
    assert w.name_selected_regions() == 0
    assert len(errors) == 3


def test_widget_docks_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-stexp", "Annotate regions")
    assert widget.__class__.__name__ == "AnnotateWidget"
