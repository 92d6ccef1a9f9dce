"""The latent explorer: layer links (no Qt) and the dock widget driven like a user (Qt, Xvfb).

Run the GUI tests with ``xvfb-run -a pytest -m gui tests/widgets/test_explorer_widget.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_stexp.analysis.selection import UNSELECTED
from napari_stexp.errors import InputError
from napari_stexp.session import EmbeddingRef, Session
from napari_stexp.viewer import layer_links as LL
from napari_stexp.widgets._scatter_canvas import (
    continuous_colors,
    group_colors,
    rasterize,
)

# Scatter coordinates (emb_0, emb_1) of each layer's rows: the lasso box [-0.5, 1.5]^2 holds
# rows 0, 1, 3, 4 of "slide A", row 3 of "slide B", labels 1 and 2 of "cells", shape 0.
A_EMB = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
B_EMB = [(5, 5), (6, 5), (5, 6), (1.1, 0.1)]
C_EMB = [(0.2, 0.2), (0.8, 1.2), (3, 3), (4, 4)]  # labels 1..4
S_EMB = [(0.5, 0.5), (7, 7), (8, 8)]
LASSO = np.array([(-0.5, -0.5), (1.5, -0.5), (1.5, 1.5), (-0.5, 1.5)])


def _features(emb, **extra):
    emb = np.asarray(emb, np.float32)
    df = pd.DataFrame({"emb_0": emb[:, 0], "emb_1": emb[:, 1]})
    for k, v in extra.items():
        df[k] = v
    return df


def _layers():
    from napari.layers import Labels, Points, Shapes

    a = Points(np.array([[10, 10], [10, 20], [10, 30], [20, 10], [20, 20], [20, 30]], float),
               name="slide A", size=5,
               features=_features(A_EMB, spot_id=[f"a{i}" for i in range(6)],
                                  score=np.linspace(0, 1, 6),
                                  kind=pd.Categorical(list("xxyyyz"))))
    b = Points(np.array([[1, 1], [2, 2], [3, 3], [4, 4]], float), name="slide B", size=3,
               features=_features(B_EMB, spot_id=[f"b{i}" for i in range(4)],
                                  score=[0.5, 0.1, 0.2, 0.9], kind=pd.Categorical(list("xyzz"))))
    img = np.zeros((8, 8), np.int32)
    img[0:2, 0:2], img[0:2, 4:6], img[4:6, 0:2], img[4:6, 4:6] = 1, 2, 3, 4
    c = Labels(img, name="cells", features=_features(C_EMB, label=[1, 2, 3, 4]))
    rects = [np.array([[0, 0], [0, 2], [2, 2], [2, 0]], float) + 3 * k for k in range(3)]
    s = Shapes(rects, shape_type="rectangle", name="boxes", edge_width=1,
               features=_features(S_EMB))
    return a, b, c, s


# -- no Qt: dispatch table and sources ---------------------------------------------------------

def test_dispatch_table_covers_points_labels_shapes():
    a, _, c, s = _layers()
    assert [LL.link_for(x).kind for x in (a, c, s)] == ["points", "labels", "shapes"]
    assert LL.n_items(a) == 6 and LL.n_items(c) == 4 and LL.n_items(s) == 3


def test_points_highlight_then_clear_restores_the_layer_look():
    a, *_ = _layers()
    before_c, before_w = a.border_color.copy(), a.border_width.copy()
    colors = group_colors(2)
    codes = np.array([1, 0, 2, 0, 0, 1], np.int16)
    assert LL.apply_highlight(a, codes, colors)
    np.testing.assert_allclose(a.border_color[[0, 5]], np.repeat(colors[[1]], 2, axis=0))
    np.testing.assert_allclose(a.border_color[2], colors[2])
    np.testing.assert_allclose(a.border_color[[1, 3, 4]], before_c[[1, 3, 4]])
    assert (a.border_width[[0, 2, 5]] >= LL.POINTS_BORDER).all()
    np.testing.assert_allclose(a.border_width[[1, 3, 4]], before_w[[1, 3, 4]])
    LL.apply_highlight(a, np.zeros(6, np.int16), colors)  # nothing selected: restore
    np.testing.assert_allclose(a.border_color, before_c)
    np.testing.assert_allclose(a.border_width, before_w)


def test_labels_and_shapes_highlight_and_selection_reading():
    from napari.utils.colormaps import DirectLabelColormap

    _, _, c, s = _layers()
    colors = group_colors(1)
    LL.apply_highlight(c, np.array([1, 0, 0, 1], np.int16), colors)
    assert isinstance(c.colormap, DirectLabelColormap)
    np.testing.assert_allclose(c.colormap.map(np.array([1, 4])), np.repeat(colors[[1]], 2, 0))
    np.testing.assert_allclose(c.colormap.map(np.array([2]))[0], LL.DIM_LABEL, atol=1e-6)
    LL.apply_highlight(c, None, colors)
    assert not isinstance(c.colormap, DirectLabelColormap)  # the original colormap is back
    c.selected_label = 3
    assert LL.link_for(c).read_selection(c).tolist() == [2]  # label 3 is features row 2
    LL.apply_highlight(s, np.array([0, 1, 0], np.int16), colors)
    np.testing.assert_allclose(s.edge_color[1], colors[1])
    assert s.edge_width[1] > s.edge_width[0]
    s.selected_data = {0, 2}
    assert LL.link_for(s).read_selection(s).tolist() == [0, 2]


def test_hidden_layers_are_highlighted_when_shown():
    a, *_ = _layers()
    a.visible = False
    colors = group_colors(1)
    assert not LL.apply_highlight(a, np.array([1, 0, 0, 0, 0, 0], np.int16), colors)
    assert LL.is_highlight_pending(a)
    assert not np.allclose(a.border_color[0], colors[1])
    a.visible = True
    assert not LL.is_highlight_pending(a)
    np.testing.assert_allclose(a.border_color[0], colors[1])


def test_sources_span_several_slides_and_check_lengths():
    a, b, c, s = _layers()
    sess = Session()
    sess.add_embedding(EmbeddingRef(name="vae", layer="slide A", data=np.zeros((6, 3))))
    sess.add_embedding(EmbeddingRef(name="bad", layer="slide A", data=np.zeros((5, 3))))
    layers = [a, b, c, s]
    src = LL.discover_sources(layers, sess)
    assert {"session:vae", "session:bad", "features:emb_|2", "columns:slide A"} <= set(src)
    emb = LL.resolve_source("features:emb_|2", layers, sess)
    assert emb.links.layer_names == ("slide A", "slide B", "cells", "boxes")
    assert emb.n == 6 + 4 + 4 + 3
    np.testing.assert_array_equal(emb.data[6:10], np.asarray(B_EMB, np.float32))
    with pytest.raises(InputError, match="5 rows but layer 'slide A' has 6"):
        LL.resolve_source("session:bad", layers, sess)


def test_obsm_source_links_sections_by_spot_id():
    import anndata as ad
    from napari.layers import Points

    adata = ad.AnnData(np.ones((5, 2), np.float32))
    adata.obs_names = [f"o{i}" for i in range(5)]
    adata.obs["section"] = ["S1", "S1", "S2", "S2", "S2"]
    adata.obsm["X_vae"] = np.arange(10, dtype=np.float32).reshape(5, 2)
    p1 = Points(np.zeros((2, 2)), name="S1 spots", metadata={"section": "S1"},
                features=pd.DataFrame({"spot_id": ["o1", "o0"]}))
    p2 = Points(np.zeros((3, 2)), name="S2 spots", metadata={"section": "S2"},
                features=pd.DataFrame({"spot_id": ["o2", "o3", "o4"]}))
    sess = Session()
    sess.add_adata("all", adata)
    emb = LL.resolve_source("obsm:all:X_vae", [p1, p2], sess)
    assert emb.links.layer_names == ("S1 spots", "S2 spots")
    assert emb.links.layer_codes.tolist() == [0, 0, 1, 1, 1]
    assert emb.links.rows.tolist() == [1, 0, 0, 1, 2]  # o0 is row 1 of "S1 spots"


def test_colour_mapping_helpers():
    m = continuous_colors(np.array([0.0, 5.0, 10.0, np.nan]), "gray", (0.0, 10.0))
    np.testing.assert_allclose(m.colors[[0, 2], 0], [0.0, 1.0], atol=1e-6)
    assert m.n_missing == 1 and m.mode == "continuous"
    idx = rasterize(np.array([[0.5, 0.5], [0.5, 0.5], [3.5, 1.5]], np.float32),
                    np.ones(3, bool), (0, 0, 4, 2), (2, 4), size=1)
    assert idx[0, 0] == 1 and idx[1, 3] == 2 and (idx >= 0).sum() == 2  # later point on top


# -- the dock widget (Qt under Xvfb) -----------------------------------------------------------

@pytest.fixture
def explorer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    from napari_stexp.widgets.explorer import ExplorerWidget

    viewer = make_napari_viewer()
    for layer in _layers():
        viewer.add_layer(layer)
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="explorer")
    notes: list = []
    notification_manager.notification_ready.connect(notes.append)
    widget.notes = notes
    yield viewer, widget
    notification_manager.notification_ready.disconnect(notes.append)
    widget.cleanup()


def _show_dims(widget, key="features:emb_|2"):
    widget.set_source(key)
    widget.set_method("dims", (0, 1))
    widget.compute(block=True)
    assert widget.projection is not None


def _messages(widget, severity=None):
    return [str(n.message) for n in widget.notes
            if severity is None or str(n.severity).lower().endswith(severity)]


def test_lasso_marks_exactly_the_rows_inside_in_every_linked_layer(explorer):
    viewer, w = explorer
    _show_dims(w)
    a, b, c, s = (viewer.layers[n] for n in ("slide A", "slide B", "cells", "boxes"))
    # the handler the mouse calls at the end of a lasso drag, in scatter coordinates
    assert w.select_polygon(LASSO) == 4 + 1 + 2 + 1
    g = "group 1"
    assert a.features["selection"].tolist() == [g, g, UNSELECTED, g, g, UNSELECTED]
    assert b.features["selection"].tolist() == [UNSELECTED] * 3 + [g]
    assert c.features["selection"].tolist() == [g, g, UNSELECTED, UNSELECTED]
    assert s.features["selection"].tolist() == [g, UNSELECTED, UNSELECTED]
    red = group_colors(1)[1]
    np.testing.assert_allclose(a.border_color[[0, 1, 3, 4]], np.tile(red, (4, 1)))
    assert (a.border_width[[0, 1, 3, 4]] > 0.2).all() and (a.border_width[[2, 5]] < 0.2).all()
    np.testing.assert_allclose(b.border_color[3], red)
    np.testing.assert_allclose(c.colormap.map(np.array([1, 2])), np.tile(red, (2, 1)))
    np.testing.assert_allclose(s.edge_color[0], red)
    # the scatter knows the same rows
    assert w.group_indices(g).tolist() == [0, 1, 3, 4, 9, 10, 11, 14]
    # a second group from a rectangle; Shift-style "add" keeps the first group intact
    w.add_group("far")
    assert w.select_rectangle((4.5, 4.5), (6.5, 6.5), mode="add") == 3
    assert b.features["selection"].tolist() == ["far", "far", "far", g]
    assert list(b.features["selection"].cat.categories) == [UNSELECTED, g, "far"]
    # another column name (shared through the session): a fresh, empty selection
    w.column_edit.setText("cohort")
    w._on_column_edited()
    assert w.session.selection_column == "cohort" and not w.codes.any()
    w.group_combo.setCurrentText(g)
    assert w.select_polygon(LASSO) == 8
    assert a.features["cohort"].tolist() == [g, g, UNSELECTED, g, g, UNSELECTED]
    assert b.features["selection"].tolist() == ["far", "far", "far", g]  # the old column stays


def test_mouse_drag_on_the_canvas_runs_the_same_lasso(explorer):
    viewer, w = explorer
    _show_dims(w)
    tr = w.scatter.view.scene.node_transform(w.scatter.canvas.scene)
    pix = [tr.map(p)[:2] for p in LASSO]

    class Ev:  # the attributes vispy mouse events carry
        def __init__(self, pos, dragging=False):
            self.pos, self.button, self.is_dragging, self.modifiers = pos, 1, dragging, ()

    w.set_tool("lasso")
    assert not w.scatter.view.camera.interactive  # dragging draws, it does not pan
    w.scatter._on_press(Ev(pix[0]))
    for p in pix[1:]:
        w.scatter._on_move(Ev(p, dragging=True))
    w.scatter._on_release(Ev(pix[-1]))
    assert w.group_indices("group 1").tolist() == [0, 1, 3, 4, 9, 10, 11, 14]


def test_selecting_in_the_slide_rings_the_points_in_the_scatter(explorer):
    viewer, w = explorer
    _show_dims(w)
    viewer.layers["slide B"].selected_data = {0, 2}
    assert w.slide_indices.tolist() == [6, 8]
    assert w.scatter.overlays["slide"][0].tolist() == [6, 8]
    viewer.layers["cells"].selected_label = 4  # a picked label (picker tool / click)
    assert w.slide_indices.tolist() == [6, 8, 13]
    viewer.layers["boxes"].selected_data = {2}
    assert w.slide_indices.tolist() == [6, 8, 13, 16]
    # and the slide selection can become a group
    assert w.add_slide_selection() == 4
    assert viewer.layers["slide B"].features["selection"].tolist()[:3] == \
        ["group 1", UNSELECTED, "group 1"]


def test_colour_by_switches_continuous_and_categorical_without_reprojecting(explorer,
                                                                            monkeypatch):
    import napari_stexp.widgets.explorer as E

    calls = []
    real = E.project
    monkeypatch.setattr(E, "project", lambda *a, **k: calls.append(1) or real(*a, **k))
    viewer, w = explorer
    w.set_source("features:emb_|2")
    w.set_method("pca")
    w.compute(block=True)
    w.set_colour_by("feature · score")
    m = w.mapping
    assert m.mode == "continuous" and m.colormap == "viridis"
    assert w.legend_entries == [] and w.cmap_combo.isVisibleTo(w)
    w.set_colormap("magma")
    assert w.mapping.colormap == "magma"
    w.set_contrast(0.0, 0.5)
    assert w.mapping.clim == (0.0, 0.5)
    np.testing.assert_allclose(w.scatter.colors[5, :3], w.mapping.colors[5, :3])  # score 1.0
    w.set_colour_by("feature · kind")
    assert w.mapping.mode == "categorical"
    # kind exists in slides A and B only: cells and boxes are counted as missing
    assert dict(w.legend_entries) == {"x": 3, "y": 4, "z": 3, "missing": 7}
    assert not w.cmap_combo.isVisibleTo(w) and w.legend.isVisibleTo(w)
    w.set_colour_by("dim · emb_1")
    assert w.mapping.mode == "continuous"
    assert len(calls) == 1  # colours never recompute the projection


def test_export_writes_the_groups(explorer, tmp_path):
    viewer, w = explorer
    _show_dims(w)
    w.select_polygon(LASSO)
    w.add_group("far")
    w.select_rectangle((4.5, 4.5), (6.5, 6.5))
    back = pd.read_csv(w.export_csv(tmp_path / "groups.csv"))
    assert len(back) == 8 + 3
    assert set(back.loc[back["group"] == "far", "id"]) == {"b0", "b1", "b2"}
    assert back.loc[back["layer"] == "cells", "id"].astype(int).tolist() == [1, 2]
    only = pd.read_csv(w.export_csv(tmp_path / "far.csv", groups=["far"]))
    assert only["group"].unique().tolist() == ["far"] and len(only) == 3


def test_export_h5ad_on_the_synthetic_slide(make_napari_viewer, tmp_path):
    import anndata as ad

    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.io.layers import spots_layer
    from napari_stexp.session import get_session
    from napari_stexp.widgets._common import add_layer_tuples
    from napari_stexp.widgets.explorer import ExplorerWidget

    viewer = make_napari_viewer()
    slide = make_synthetic_slide(6, 6, n_genes=8)
    data, attrs, kind = spots_layer(slide.adata)
    attrs["metadata"]["adata"] = slide.adata
    spots = add_layer_tuples(viewer, [(data, attrs, kind)])[0]
    adata = slide.adata
    rng = np.random.default_rng(0)
    get_session(viewer).add_embedding(EmbeddingRef(
        name="toy", layer=spots.name, data=rng.normal(size=(len(spots.data), 4))))
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_source("session:toy")
    w.set_method("dims", (0, 1))
    w.compute(block=True)
    n = w.select_rectangle((0, 0), (5, 5))
    expected = (w.projection.coords[:, 0] >= 0) & (w.projection.coords[:, 1] >= 0)
    assert n == expected.sum() > 0
    w.set_colour_by("gene · GENE001")  # genes come from the AnnData behind the layer
    assert w.mapping.mode == "continuous" and np.isfinite(w._values).all()
    out = w.export_h5ad(tmp_path / "sel.h5ad")
    back = ad.read_h5ad(out[0])
    assert (back.obs["selection"] == "group 1").to_numpy().tolist() == expected.tolist()
    assert list(back.obs_names) == list(adata.obs_names)
    w.cleanup()


def test_mismatched_lengths_notify_and_change_nothing(explorer):
    viewer, w = explorer
    get_session = __import__("napari_stexp.session", fromlist=["get_session"]).get_session
    get_session(viewer).add_embedding(EmbeddingRef(name="short", layer="slide A",
                                                   data=np.zeros((5, 2))))
    w.refresh_sources()
    w.set_source("session:short")
    w.compute(block=True)
    assert w.projection is None
    assert any("5 rows but layer 'slide A' has 6" in m for m in _messages(w, "error"))
    # a layer that changes size after the scatter was built: the lasso refuses to write
    _show_dims(w)
    a = viewer.layers["slide A"]
    a.add(np.array([[50.0, 50.0]]))
    assert w.select_polygon(LASSO) == 0
    assert any("now has 7 items" in m for m in _messages(w, "error"))
    for name in ("slide A", "slide B", "cells", "boxes"):
        assert "selection" not in viewer.layers[name].features  # nothing was written


def test_nan_rows_are_missing_never_selected_and_empty_selection_is_a_message(explorer):
    viewer, w = explorer
    a = viewer.layers["slide A"]
    f = a.features
    f.loc[1, "emb_0"] = np.nan
    a.features = f
    _show_dims(w)
    assert w.projection.n_missing == 1 and "1 missing" in w.info_label.text()
    assert w.select_polygon(LASSO) == 7  # row 1 of slide A has no place in the scatter
    assert a.features["selection"].tolist()[:2] == ["group 1", UNSELECTED]
    assert len(a.features) == 6  # kept, not dropped
    before = a.features["selection"].tolist()
    assert w.select_polygon([(100, 100), (101, 100), (101, 101)]) == 0
    assert any("empty lasso" in m for m in _messages(w))
    assert a.features["selection"].tolist() == before


def test_hover_names_the_item(explorer):
    viewer, w = explorer
    _show_dims(w)
    tr = w.scatter.view.scene.node_transform(w.scatter.canvas.scene)
    pos = tr.map((5, 6))[:2]  # slide B row 2
    assert w.scatter.pick(pos) == 8
    w._on_hover(8)
    assert "slide B row 2" in w.hover_label.text() and "spot_id b2" in w.hover_label.text()


def test_projection_runs_in_a_worker(explorer, qtbot):
    viewer, w = explorer
    w.set_source("features:emb_|2")
    w.set_method("pca")
    worker = w.compute()
    assert worker is not None
    qtbot.waitUntil(lambda: w.projection is not None and w._worker is None, timeout=20_000)
    assert len(w.projection) == 17 and w.compute_btn.isEnabled()
    frame = w.scatter.draw_now()
    assert frame.shape[2] == 4 and frame[..., :3].std() > 0  # points were drawn


def test_gl_renderer_draws_points_and_rings(qtbot):
    """The GPU path (chosen automatically on hardware OpenGL) draws the same scene."""
    from qtpy.QtWidgets import QWidget

    from napari_stexp.widgets._scatter_canvas import ScatterCanvas

    host = QWidget()
    qtbot.addWidget(host)
    sc = ScatterCanvas(parent=host, renderer="gl")
    host.resize(200, 200)
    host.show()
    xy = np.array([[0, 0], [1, 1], [np.nan, np.nan], [0.5, 0.2]], np.float32)
    colors = np.tile([1.0, 1.0, 1.0, 1.0], (4, 1)).astype(np.float32)
    sc.set_points(xy, colors)
    sc.set_point_size(8)
    before = sc.draw_now()
    assert sc.renderer == "gl"
    lit = before[..., :3].astype(int).sum(-1) > 600  # white pixels: the points
    assert 3 * 20 < lit.sum() < 3 * 120  # three visible discs of ~50 px, the NaN row unseen
    sc.set_overlay("groups", [0], group_colors(1)[1:2])
    after = sc.draw_now()
    yellow = (after[..., 0] > 200) & (after[..., 1] > 180) & (after[..., 2] < 80)
    assert yellow.sum() > 10  # a ring around point 0
    sc.close()


def test_auto_renderer_picks_gl_on_hardware_and_raster_on_software(qtbot, monkeypatch):
    from qtpy.QtWidgets import QWidget

    from napari_stexp.widgets import _scatter_canvas as SC

    host = QWidget()
    qtbot.addWidget(host)
    host.show()
    xy = np.array([[0, 0], [1, 1]], np.float32)
    for name, expected in (("llvmpipe (LLVM 15.0.6, 256 bits)", "raster"),
                           ("NVIDIA GeForce RTX 3060/PCIe/SSE2", "gl")):
        sc = SC.ScatterCanvas(parent=host, renderer="auto")
        sc.set_points(xy, np.ones((2, 4), np.float32))
        monkeypatch.setattr(SC, "_query_gl_renderer", lambda _n=name: _n)
        frame = sc.draw_now()
        assert sc.renderer == expected and sc.gl_renderer_name == name
        assert frame[..., :3].max() == 255  # white points drawn either way
        sc.close()


def test_works_through_the_viewer_proxy_napari_gives_plugins(make_napari_viewer):
    """npe2 hands widgets a PublicOnlyProxy viewer: every attribute is a fresh proxy object."""
    from napari.utils._proxies import PublicOnlyProxy

    from napari_stexp.widgets.explorer import ExplorerWidget

    viewer = make_napari_viewer()
    for layer in _layers():
        viewer.add_layer(layer)
    w = ExplorerWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(w)
    _show_dims(w)
    a, b = viewer.layers["slide A"], viewer.layers["slide B"]
    before = a.border_color.copy()
    b.visible = False
    assert w.select_polygon(LASSO) == 8
    red = group_colors(1)[1]
    np.testing.assert_allclose(a.border_color[0], red)
    assert LL.is_highlight_pending(b)  # hidden: highlighted when shown
    b.visible = True
    np.testing.assert_allclose(b.border_color[3], red)
    w.clear_group("group 1")  # nothing selected any more: the layer's own look comes back
    np.testing.assert_allclose(a.border_color, before)
    viewer.layers["slide A"].selected_data = {2}
    assert w.slide_indices.tolist() == [2]
    w.cleanup()
