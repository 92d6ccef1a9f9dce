"""Linked views at scale (issue 17, "Linked views at scale"): a selection change redraws only
the selected points, in the scatter (an overlay, no re-upload of every point's colour, no
re-rasterising of every point) and in napari (a big Points layer is highlighted by a small
overlay layer of the selected rows; its own colour arrays are not rebuilt).

GUI tests: run under ``xvfb-run -a``. The threshold for "big" is lowered so the layers stay tiny.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_stexp.analysis.selection import UNSELECTED
from napari_stexp.viewer import layer_links as LL
from napari_stexp.widgets import _scatter_canvas as SC

# scatter coordinates of the 8 rows of the one Points layer; the lasso holds rows 0, 1, 3, 4
EMB = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (5, 5), (6, 6)]
LASSO = np.array([(-0.5, -0.5), (1.5, -0.5), (1.5, 1.5), (-0.5, 1.5)])
INSIDE = [0, 1, 3, 4]


def _points():
    from napari.layers import Points

    emb = np.asarray(EMB, np.float32)
    f = pd.DataFrame({"emb_0": emb[:, 0], "emb_1": emb[:, 1],
                      "kind": pd.Categorical(list("xxyyzzxy"))})
    xy = np.array([[10 * i, 5 * (i % 3)] for i in range(len(EMB))], float)
    return Points(xy, name="spots", size=np.arange(1, 9, dtype=float), features=f,
                  border_color="blue", border_width=0.05, scale=(2.0, 2.0))


@pytest.fixture
def big(make_napari_viewer, monkeypatch):
    """A viewer with one Points layer treated as big (overlay highlight), the explorer docked,
    the GL renderer forced (its buffers are what a GPU user pays for)."""
    from napari_stexp.widgets.explorer import ExplorerWidget

    monkeypatch.setattr(LL, "OVERLAY_MIN_POINTS", 4, raising=False)
    monkeypatch.setenv("NAPARI_STEXP_SCATTER_RENDERER", "gl")
    viewer = make_napari_viewer()
    layer = viewer.add_layer(_points())
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="explorer")
    w.set_source("features:emb_|2")
    w.set_method("dims", (0, 1))
    w.compute(block=True)
    w.scatter.draw_now()
    yield viewer, w, layer
    w.cleanup()


def _count_calls(monkeypatch, obj, name):
    calls = []
    orig = getattr(obj, name)

    def counted(*a, **k):
        calls.append(a)
        return orig(*a, **k)

    monkeypatch.setattr(obj, name, counted)
    return calls


def _base_uploads(w, monkeypatch) -> list:
    """Every call that would re-upload the positions or colours of all scatter points."""
    base = w.scatter._gl_nodes["base"]
    calls: list = []
    for name in ("set_colors", "set_data"):
        calls.append(_count_calls(monkeypatch, base, name))
    return calls


@pytest.mark.gui
def test_big_points_layer_highlighted_by_an_overlay_of_exactly_the_selected_rows(big):
    viewer, w, layer = big
    before_c = np.array(layer.border_color)
    before_w = np.array(layer.border_width)
    assert w.select_polygon(LASSO) == 4
    # the data bus: the categorical column, all rows
    g = "group 1"
    col = layer.features["selection"]
    assert isinstance(col.dtype, pd.CategoricalDtype)
    assert list(col.cat.categories) == [UNSELECTED, g]
    assert col.tolist() == [g if i in INSIDE else UNSELECTED for i in range(len(EMB))]
    # the overlay: exactly the selected rows, same sizes and transform, group-coloured borders
    ov = LL.highlight_overlay(layer)
    assert ov is not None and ov in viewer.layers
    assert viewer.layers.index(ov) == viewer.layers.index(layer) + 1
    np.testing.assert_allclose(ov.data, layer.data[INSIDE])
    np.testing.assert_allclose(ov.size, layer.size[INSIDE])
    np.testing.assert_allclose(ov.scale, layer.scale)
    red = SC.group_colors(1)[1]
    np.testing.assert_allclose(ov.border_color, np.tile(red, (4, 1)))
    # the big layer's own look is untouched (no rebuild of 1e6 border colours)
    np.testing.assert_allclose(layer.border_color, before_c)
    np.testing.assert_allclose(layer.border_width, before_w)
    # the overlay is neither a source nor linked
    assert ov not in LL.linkable_layers(viewer.layers)
    assert not any(ov.name in v for v in w.sources.values())
    # a second group, added: the overlay follows with both colours
    w.add_group("far")
    assert w.select_rectangle((4.5, 4.5), (6.5, 6.5), mode="add") == 2
    ov = LL.highlight_overlay(layer)
    np.testing.assert_allclose(ov.data, layer.data[INSIDE + [6, 7]])
    np.testing.assert_allclose(ov.border_color[4:], np.tile(SC.group_colors(2)[2], (2, 1)))
    assert layer.features["selection"].tolist()[6:] == ["far", "far"]
    # clearing every group empties the overlay (kept: adding a layer costs more than this)
    w.clear_group("far")
    w.clear_group(g)
    assert len(LL.highlight_overlay(layer).data) == 0
    assert sum(LL.is_overlay(x) for x in viewer.layers) == 1
    assert w.select_polygon(LASSO) == 4  # reused, not added again
    assert sum(LL.is_overlay(x) for x in viewer.layers) == 1
    np.testing.assert_allclose(LL.highlight_overlay(layer).data, layer.data[INSIDE])


@pytest.mark.gui
def test_a_selection_does_not_reupload_the_colours_of_every_point(big, monkeypatch):
    viewer, w, layer = big
    uploads = _base_uploads(w, monkeypatch)
    for key in ("selection groups", "feature · kind"):
        w.set_colour_by(key)
        for calls in uploads:
            calls.clear()
        assert w.select_polygon(LASSO) == 4
        assert w.scatter.overlays["groups"][0].tolist() == INSIDE  # exactly the selection
        w.scatter.draw_now()
        assert uploads == [[], []]  # only the small overlay was uploaded
        # coloured by group: the selected points in their group colour, no ring
        assert ("groups" in w.scatter.ringless) == (key == "selection groups")
    # the legend still counts the groups
    w.set_colour_by("selection groups")
    assert dict(w.legend_entries) == {UNSELECTED: 4, "group 1": 4}


@pytest.mark.gui
def test_selection_from_the_slide_reaches_the_scatter_overlay_only(big, monkeypatch):
    viewer, w, layer = big
    uploads = _base_uploads(w, monkeypatch)
    layer.selected_data = {2, 7}
    assert w.scatter.overlays["slide"][0].tolist() == [2, 7]
    w.scatter.draw_now()
    assert uploads == [[], []]
    assert w.add_slide_selection() == 2
    assert layer.features["selection"].tolist() == \
        ["group 1" if i in (2, 7) else UNSELECTED for i in range(len(EMB))]
    np.testing.assert_allclose(LL.highlight_overlay(layer).data, layer.data[[2, 7]])


@pytest.mark.gui
def test_raster_renderer_does_not_rerasterise_every_point_on_a_selection(qtbot, monkeypatch):
    """Software GL: the frame of all points is cached; a selection rasterises its points only."""
    from qtpy.QtWidgets import QWidget

    host = QWidget()
    qtbot.addWidget(host)
    sc = SC.ScatterCanvas(parent=host, renderer="raster")
    host.resize(200, 200)
    host.show()
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(500, 2)).astype(np.float32)
    sc.set_points(xy, np.tile([0.2, 0.4, 0.9, 1.0], (500, 1)))
    before = sc.draw_now()
    calls = []
    orig = SC.rasterize

    def counted(pts, valid, rect, shape, size, indices=None):
        calls.append(None if indices is None else len(indices))
        return orig(pts, valid, rect, shape, size, indices)

    monkeypatch.setattr(SC, "rasterize", counted)
    sel = np.flatnonzero(xy[:, 0] > 1.0)
    sc.set_overlay("groups", sel, SC.group_colors(1)[1])
    after = sc.draw_now()
    assert calls and None not in calls  # the overlay's points only, never all of them
    yellow = (after[..., 0] > 200) & (after[..., 1] > 180) & (after[..., 2] < 80)
    assert yellow.sum() > 10 and not ((before[..., 0] > 200) & (before[..., 2] < 80)).any()
    sc.set_overlay("groups", [], SC.group_colors(1)[1])
    np.testing.assert_array_equal(sc.draw_now(), before)  # removed: the cached frame again
    sc.close()
