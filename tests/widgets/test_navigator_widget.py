"""GUI: the slide navigator on the real her2st folder (and a small synthetic batch folder),
driven as a user would: list, click/keys through sections, colour by a gene, grid view."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pandas as pd
import pytest

from napari_stexp.analysis.features import gene_expression
from napari_stexp.io.collection import SlideCollection

HER2ST_IMAGE = {"A1", "B4", "C2", "C3", "C4", "C5"}
HER2ST_LABELS = {"A1", "B1", "C1", "D1", "E1", "F1"}


@pytest.fixture(scope="module")
def her2st_coll(her2st_dir, tmp_path_factory):
    """One collection for the module: its AnnData cache saves re-reading counts."""
    return SlideCollection.from_paths(her2st_dir, cache_dir=tmp_path_factory.mktemp("thumbs"))


@pytest.fixture
def widget(make_napari_viewer, her2st_coll, tmp_path):
    from napari_stexp.widgets.navigator import NavigatorWidget

    her2st_coll._adata_cache_size = 16
    viewer = make_napari_viewer()
    w = NavigatorWidget(viewer, cache_dir=str(tmp_path), thumbnails=False)
    w.set_collection(her2st_coll, show_first=False)
    return viewer, w


def _wait_current(qtbot, w, name):
    qtbot.waitUntil(lambda: w.nav.current == name and w._worker is None, timeout=60_000)


def _sections_shown(viewer) -> set:
    return {ly.metadata.get("section") for ly in viewer.layers if ly.visible}


def _row(w, name):
    for r in range(w.table.rowCount()):
        if w.table.item(r, 0).text() == name:
            return [w.table.item(r, c).text() for c in range(3)]
    raise AssertionError(name)


def test_lists_all_sections_with_flags(widget):
    viewer, w = widget
    assert w.table.rowCount() == 11
    names = [w.table.item(r, 0).text() for r in range(11)]
    assert names == ["A1", "B1", "B4", "C1", "C2", "C3", "C4", "C5", "D1", "E1", "F1"]
    for name in names:
        _, patient, avail = _row(w, name)
        flags = avail.split(" · ")
        assert patient == name[0]
        assert ("img" in flags) == (name in HER2ST_IMAGE), name
        assert ("lbl" in flags) == (name in HER2ST_LABELS), name
        assert "expr" in flags
        assert not {"pred", "cls", "cells", "emb"} & set(flags)
    assert len(viewer.layers) == 0  # listing opens nothing


def test_next_previous_show_exactly_one_section(qtbot, widget):
    from napari.utils.key_bindings import KeyBinding

    from napari_stexp.session import get_session

    viewer, w = widget
    w.go(0)
    _wait_current(qtbot, w, "A1")
    assert {ly.name for ly in viewer.layers} == {"A1 H&E", "A1 spots"}
    pyr = weakref.ref(w.nav._data.image)
    w.next_btn.click()
    _wait_current(qtbot, w, "B1")  # B1 has no H&E
    # A1's image layer stays hidden and empty until the next H&E (removing it here crashes
    # vispy/Mesa in a real window, issue 17.1: tests/viewer/test_navigator_window.py)
    assert [ly.name for ly in viewer.layers if ly.visible] == ["B1 spots"]
    assert [ly.metadata.get("kind") for ly in viewer.layers] in (["spots"], ["parked", "spots"])
    gc.collect()
    assert pyr() is None  # A1's pyramid released, not just hidden
    assert get_session(viewer).current_slide == "B1"
    assert w.table.selectedItems()[0].text() == "B1"
    # another widget's result for B1: must be hidden (kept), not removed
    other = viewer.add_points(w.nav.spots_layer().data, name="B1 ERBB2 (predicted)",
                              metadata={"section": "B1", "kind": "predicted", "gene": "ERBB2"})
    viewer.keymap[KeyBinding.from_str("PageDown")](viewer)  # next: B4
    _wait_current(qtbot, w, "B4")
    assert {ly.name for ly in viewer.layers if ly.visible} == {"B4 H&E", "B4 spots"}
    assert _sections_shown(viewer) == {"B4"}
    assert other in viewer.layers and not other.visible
    assert [ly.metadata["section"] for ly in viewer.layers if ly is not other] == ["B4", "B4"]
    assert w.nav.missing == ["ERBB2 (predicted)"]  # B4 has no prediction: said, not invented
    assert "ERBB2 (predicted)" in w.status.text()
    viewer.keymap[KeyBinding.from_str("PageUp")](viewer)
    _wait_current(qtbot, w, "B1")
    assert _sections_shown(viewer) == {"B1"}
    assert other.visible  # B1's own overlay is back
    assert not any(ly.metadata.get("kind") == "image" for ly in viewer.layers)
    w.prev_btn.click()
    w.prev_btn.click()  # two quick presses: A1, then wraps to F1; only the last is shown
    _wait_current(qtbot, w, "F1")
    assert _sections_shown(viewer) == {"F1"}


def test_gene_overlay_keeps_name_and_limits(qtbot, widget, her2st_coll):
    from napari_stexp.viewer.navigator import face_color_column

    viewer, w = widget
    w.go(8)
    _wait_current(qtbot, w, "D1")
    w.color_edit.setText("ERBB2")
    w.color_btn.click()
    layer = w.nav.spots_layer()
    d1 = her2st_coll.read_adata("D1")
    np.testing.assert_allclose(layer.features["ERBB2"], gene_expression(d1, "ERBB2"),
                               rtol=1e-5)
    assert face_color_column(layer) == "ERBB2"
    layer.face_colormap = "magma"
    layer.face_contrast_limits = (0.5, 3.0)
    for expected in ("E1", "F1"):
        w.next_btn.click()
        _wait_current(qtbot, w, expected)
        sp = w.nav.spots_layer()
        assert sp.name == f"{expected} spots"
        assert face_color_column(sp) == "ERBB2"
        ad = her2st_coll.read_adata(expected)
        np.testing.assert_allclose(sp.features["ERBB2"], gene_expression(ad, "ERBB2"),
                                   rtol=1e-5)
        assert sp.face_colormap.name == "magma"
        assert tuple(sp.face_contrast_limits) == (0.5, 3.0)
        # the colours are that map: a spot at or above 3.0 is magma's top colour
        hi = np.flatnonzero(sp.features["ERBB2"].to_numpy() >= 3.0)
        if hi.size:
            np.testing.assert_allclose(sp.face_color[hi[0]],
                                       sp.face_colormap.map(np.array([1.0]))[0], atol=1e-3)
    # unlocked: each slide autoscaled
    w.lock_box.setChecked(False)
    w.prev_btn.click()
    _wait_current(qtbot, w, "E1")
    vals = w.nav.spots_layer().features["ERBB2"]
    np.testing.assert_allclose(w.nav.spots_layer().face_contrast_limits,
                               (vals.min(), vals.max()), rtol=1e-5)


def test_other_widgets_overlay_in_step(qtbot, widget):
    """A predicted-gene layer made by another widget: the next slide shows its own (matched on
    metadata, not on the name) with the same colour limits, or the navigator says it lacks it."""
    viewer, w = widget
    nav = w.nav
    b1_xy = nav.collection.load("B1", image=False).layers()[0][0]
    nav.show("C1")
    c1_xy = nav.spots_layer().data
    mine = viewer.add_points(
        c1_xy, name="my odd name", features=pd.DataFrame({"ERBB2": np.linspace(0, 1, 176)}),
        face_color="ERBB2", metadata={"section": "C1", "kind": "predicted", "gene": "ERBB2"})
    mine.face_colormap = "plasma"
    mine.face_contrast_limits = (0.2, 0.7)
    theirs = viewer.add_points(
        b1_xy, name="B1 ERBB2 (predicted)", visible=False,
        features=pd.DataFrame({"ERBB2": np.linspace(0, 1, len(b1_xy))}), face_color="ERBB2",
        metadata={"section": "B1", "kind": "predicted", "gene": "ERBB2"})
    nav.show("B1")
    assert theirs.visible and not mine.visible
    assert theirs.face_colormap.name == "plasma"
    assert tuple(theirs.face_contrast_limits) == (0.2, 0.7)
    nav.show("D1")  # no prediction for D1: reported, nothing invented from measured counts
    assert nav.missing == ["ERBB2 (predicted)"]
    assert {ly.name for ly in viewer.layers if ly.visible} == {"D1 spots"}
    assert not any(ly.metadata.get("section") == "D1" and ly.metadata.get("kind") ==
                   "predicted" for ly in viewer.layers)


def test_grid_view_shows_requested_number(qtbot, widget):
    viewer, w = widget
    grid = viewer.canvas.grid
    w.nav.show("C1")
    w.nav.color_by("ERBB2", colormap="magma", contrast_limits=(0.0, 2.5))
    w.grid_n.setValue(3)
    w.grid_btn.setChecked(True)  # reads C1 (shown), C2 (H&E), C3 (H&E) in a worker
    qtbot.waitUntil(lambda: grid.enabled and w.nav.grid is not None, timeout=60_000)
    assert w.nav.grid == ["C1", "C2", "C3"]
    positions: dict[str, set] = {}
    for i, ly in enumerate(viewer.layers):
        if ly.visible:
            positions.setdefault(ly.metadata.get("section"), set()).add(
                grid.position(i, viewer.layers))
    assert set(positions) == {"C1", "C2", "C3"}
    cells = [next(iter(p)) for p in positions.values()]
    assert all(len(p) == 1 for p in positions.values()) and len(set(cells)) == 3
    rows, cols = grid.actual_shape(viewer.layers)
    assert rows * cols >= 3
    assert {ly.name for ly in viewer.layers if ly.visible and ly.metadata["kind"] == "image"} \
        == {"C2 H&E", "C3 H&E"}
    for sec in ("C1", "C2", "C3"):  # the same overlay on every slide
        sp = w.nav.spots_layer(sec)
        assert "ERBB2" in sp.features and sp.face_colormap.name == "magma"
        assert tuple(sp.face_contrast_limits) == (0.0, 2.5)
    # back to one slide: the others are gone
    w.grid_btn.setChecked(False)
    assert not grid.enabled
    assert _sections_shown(viewer) == {"C1"}
    assert {ly.metadata.get("section") for ly in viewer.layers
            if ly.metadata.get("kind") != "parked"} == {"C1"}  # parked: see issue 17.1


def test_camera_keeps_position_for_same_size_sections(qtbot, widget):
    viewer, w = widget
    cam = viewer.scene.camera
    w.nav.camera = "keep"
    w.nav.show("C2")
    cam.center = (0.0, 2000.0, 3000.0)
    cam.zoom = 0.5
    w.nav.show("C3")  # serial section, same size: same physical view
    assert cam.center[-2:] == pytest.approx((2000.0, 3000.0))
    assert cam.zoom == pytest.approx(0.5)
    w.nav.show("F1")  # different size: fitted
    assert cam.zoom != pytest.approx(0.5)
    w.camera_box.setCurrentIndex(1)  # "Fit each slide"
    assert w.nav.camera == "fit"
    w.nav.show("D1")
    z_fit, c_fit = cam.zoom, cam.center
    cam.zoom = 0.5
    w.nav.show("E1")
    w.nav.show("D1")
    assert cam.zoom == pytest.approx(z_fit, rel=1e-6)
    assert cam.center == pytest.approx(c_fit)


def test_follows_session_current_slide(qtbot, widget):
    from napari_stexp.session import get_session

    viewer, w = widget
    w.nav.show("E1")
    get_session(viewer).current_slide = "D1"  # e.g. the latent scatter chose a D1 spot
    assert w.nav.current == "D1"
    assert _sections_shown(viewer) == {"D1"}
    assert w.table.selectedItems()[0].text() == "D1"
    assert "D1" in get_session(viewer).adatas


# ----------------------------------------------------------------------------- batch output


def st_adata(section: str, n: int = 30, seed: int = 0):
    import scipy.sparse as sp

    from napari_stexp.io.spatial import build_st_adata

    genes = ["G0", "G1", "ERBB2"]
    counts = np.random.default_rng(seed).poisson(3.0, size=(n, len(genes))).astype(np.float32)
    xy = np.stack([np.arange(n) % 6 * 40.0 + 20, np.arange(n) // 6 * 40.0 + 20], 1)
    return build_st_adata(sp.csr_matrix(counts), [f"{section}_{i}" for i in range(n)], genes,
                          xy, section=section, patient="P", spot_diameter_fullres=20.0,
                          mpp_fullres=0.5)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    from napari_stexp.io.export import write_h5ad

    root = tmp_path_factory.mktemp("results")
    for k, sec in enumerate(("r1", "r2")):
        a = st_adata(sec, seed=k)
        a.layers["predicted"] = np.asarray(a.X.toarray()) * (k + 1)
        a.obs["model_class"] = pd.Categorical((["tumour", "normal", "stroma"] * 20)[:a.n_obs])
        write_h5ad(a, root / f"{sec}.h5ad")
    return root


def test_batch_results_rebuilt_on_next_slide(qtbot, make_napari_viewer, results_dir, tmp_path):
    """Overlays shaped like the expression widget's (predicted + measured ``mclstexp_gene``
    layers coloured by ``value``) and a segmentation tied to the image by ``source_image``."""
    from napari_stexp.widgets.navigator import NavigatorWidget, face_color_column

    viewer = make_napari_viewer()
    w = NavigatorWidget(viewer, cache_dir=str(tmp_path), thumbnails=False)
    w.set_collection(SlideCollection.from_paths(results_dir, cache_dir=tmp_path),
                     show_first=False)
    nav = w.nav
    nav.show("r1")
    spots = nav.spots_layer()
    a1 = nav.collection.read_adata("r1")
    gi = list(a1.var_names).index("ERBB2")
    for what, vals, shift in (("predicted", a1.layers["predicted"][:, gi], 0.0),
                              ("measured", a1.X.toarray()[:, gi], 500.0)):
        viewer.add_points(spots.data, name=f"r1 {what}", size=spots.size,
                          translate=(0.0, shift), features=pd.DataFrame({"value": vals}),
                          face_color="value", face_colormap="inferno",
                          face_contrast_limits=(1.0, 4.0),
                          metadata={"section": "r1", "kind": "mclstexp_gene", "gene": "ERBB2",
                                    "what": what})
    viewer.add_labels(np.zeros((40, 40), np.int32), name="r1 spots cells",
                      metadata={"kind": "cells", "source_image": "r1 spots"})
    nav.color_by("model_class")
    colours = dict(zip(spots.features["model_class"].astype(str), map(tuple, spots.face_color),
                       strict=False))
    nav.show("r2")
    made = [ly for ly in viewer.layers if ly.metadata.get("section") == "r2"
            and ly.metadata.get("kind") == "mclstexp_gene"]
    assert [ly.name for ly in made] == ["r2 predicted"]  # rebuilt from layers['predicted']
    a2 = nav.collection.read_adata("r2")
    np.testing.assert_allclose(made[0].features["value"],
                               a2.layers["predicted"][:, list(a2.var_names).index("ERBB2")])
    assert made[0].metadata["what"] == "predicted" and made[0].metadata["gene"] == "ERBB2"
    assert made[0].face_colormap.name == "inferno"
    assert tuple(made[0].face_contrast_limits) == (1.0, 4.0)
    assert nav.missing == ["measured"]  # measured with an unknown normalisation: not invented
    assert not viewer.layers["r1 spots cells"].visible  # r1's segmentation hidden, kept
    sp2 = nav.spots_layer()
    assert face_color_column(sp2) == "model_class"
    for cls, col in zip(sp2.features["model_class"].astype(str), sp2.face_color, strict=False):
        np.testing.assert_allclose(col, colours[cls])  # same class, same colour
    assert len({tuple(c) for c in colours.values()}) == 3  # and the classes are told apart


def test_open_folder_in_worker_shows_first(qtbot, make_napari_viewer, results_dir, tmp_path):
    from napari_stexp.widgets.navigator import NavigatorWidget

    viewer = make_napari_viewer()
    w = NavigatorWidget(viewer, cache_dir=str(tmp_path), thumbnails=True)
    worker = w.open(str(results_dir))
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    _wait_current(qtbot, w, "r1")
    assert w.table.rowCount() == 2
    assert _row(w, "r2")[2] == "expr · pred · cls"
    assert {ly.name for ly in viewer.layers} == {"r1 spots"}
    qtbot.waitUntil(lambda: not w.table.item(1, 0).icon().isNull(), timeout=60_000)
    assert len(list(tmp_path.glob("*.png"))) == 2  # thumbnails cached on disk


def test_bad_folder_notifies(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from napari_stexp.widgets.navigator import NavigatorWidget

    viewer = make_napari_viewer()
    w = NavigatorWidget(viewer, cache_dir=str(tmp_path), thumbnails=False)
    shown = []
    monkeypatch.setattr("napari_stexp.widgets.navigator.notify_error",
                        lambda e: shown.append(str(e)))
    (tmp_path / "empty").mkdir()
    w.open(str(tmp_path / "empty"))
    qtbot.waitUntil(lambda: bool(shown) and w._worker is None, timeout=60_000)
    assert shown and "no slides found" in shown[0] and "empty" in shown[0]
    assert len(viewer.layers) == 0 and w.table.rowCount() == 0


def test_from_viewer_reuses_loaded_layers(qtbot, make_napari_viewer, her2st_dir, tmp_path):
    """Sections loaded by 'Open data' (loader layers): listed, switched by hiding, never
    duplicated or removed."""
    from napari_stexp.io.open import open_path
    from napari_stexp.session import get_session
    from napari_stexp.widgets._common import add_layer_tuples
    from napari_stexp.widgets.navigator import NavigatorWidget

    viewer = make_napari_viewer()
    opened = open_path(her2st_dir, sections=["A1", "C1"])
    loaded = add_layer_tuples(viewer, opened.layers(max_visible=2))
    sess = get_session(viewer)
    for sec, ad in opened.adatas.items():
        sess.add_adata(sec, ad)
    sess.images = dict(opened.images)
    w = NavigatorWidget(viewer, cache_dir=str(tmp_path), thumbnails=False)
    w.use_loaded(show_first=False)
    assert w.nav.collection.names == ["A1", "C1"]
    assert w.nav.collection["A1"].has("image") and w.nav.collection["C1"].has("labels")
    w.nav.show("C1")
    assert list(viewer.layers) == loaded  # nothing added, nothing removed
    assert _sections_shown(viewer) == {"C1"}
    w.nav.color_by("ERBB2")
    w.nav.show("A1")
    assert _sections_shown(viewer) == {"A1"} and list(viewer.layers) == loaded
    a1 = viewer.layers["A1 spots"]
    assert "ERBB2" in a1.features
    assert tuple(a1.face_contrast_limits) == tuple(viewer.layers["C1 spots"].face_contrast_limits)


def test_works_through_napari_plugin_proxy(qtbot, make_napari_viewer, results_dir, tmp_path):
    """napari hands dock widgets a PublicOnlyProxy of the viewer: same session, no errors."""
    import warnings

    from napari.utils._proxies import PublicOnlyProxy

    from napari_stexp.session import get_session
    from napari_stexp.widgets.navigator import NavigatorWidget

    viewer = make_napari_viewer()
    w = NavigatorWidget(PublicOnlyProxy(viewer), cache_dir=str(tmp_path), thumbnails=False)
    w.set_collection(SlideCollection.from_paths(results_dir, cache_dir=tmp_path),
                     show_first=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no private access through the proxy
        w.nav.show("r1")
        w.nav.color_by("model_class")
        w.nav.next()
        w.nav.show_grid(2)
        w.nav.leave_grid()
    assert get_session(viewer).current_slide == "r2"
    assert _sections_shown(viewer) == {"r2"}

