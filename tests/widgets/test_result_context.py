"""Each result is shown with its own slide, and µm/px can be set and is said when unknown
(issue 17.6)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest


def _pred(name, adata, genes):
    from napari_stexp.io.spatial import spots_rc_um
    from napari_stexp.widgets.expression import SectionPrediction

    n = adata.n_obs
    rng = np.random.default_rng(0)
    return SectionPrediction(name=name, coords_um=spots_rc_um(adata), size_um=50.0, genes=genes,
                             predicted=rng.random((n, len(genes))), confidence=rng.random(n),
                             embeddings=rng.random((n, 4)), obs_names=list(adata.obs_names),
                             measured=rng.random((n, len(genes))))


@pytest.mark.gui
def test_each_prediction_is_shown_over_its_own_slide(make_napari_viewer):
    from expression_helpers import synthetic_pair
    from napari_stexp.io.layers import image_layer, spots_layer
    from napari_stexp.widgets._common import add_layer_tuples
    from napari_stexp.widgets.expression import ExpressionWidget

    adatas, images = synthetic_pair(n=6, n_genes=5, names=("B4", "C5"))
    viewer = make_napari_viewer()
    for i, sec in enumerate(("B4", "C5")):  # as the loader adds them: the first one visible
        img = image_layer(images[sec], f"{sec} H&E", visible=i == 0)
        img[1]["metadata"]["section"] = sec
        add_layer_tuples(viewer, [img, spots_layer(adatas[sec], section=sec, visible=i == 0)])
    w = ExpressionWidget(viewer)
    genes = list(adatas["B4"].var_names)
    w.model = types.SimpleNamespace(genes=genes)
    L = viewer.layers

    w._on_predicted([_pred("C5", adatas["C5"], genes)])
    assert L["C5 H&E"].visible and not L["B4 H&E"].visible
    assert L["C5 predicted"].visible and L["C5 measured"].visible
    # the C5 maps lie on C5's image (same µm frame)
    ext = np.array(L["C5 H&E"].level_shapes[0][:2]) * np.array(L["C5 H&E"].scale[:2])
    assert (L["C5 predicted"].data >= 0).all() and (L["C5 predicted"].data <= ext).all()

    w._on_predicted([_pred("B4", adatas["B4"], genes)])
    assert L["B4 H&E"].visible and not L["C5 H&E"].visible
    assert L["B4 predicted"].visible and not L["C5 predicted"].visible
    w.show_gene(genes[1], section="C5")
    assert L["C5 H&E"].visible and L["C5 predicted"].visible and not L["B4 predicted"].visible


def _png(tmp_path):
    from PIL import Image

    path = tmp_path / "slide.png"
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(path)
    return path


@pytest.mark.gui
def test_loader_mpp_field_and_unknown_said(make_napari_viewer, qtbot, tmp_path):
    from napari_stexp.widgets.loader import LoaderWidget

    path = _png(tmp_path)
    viewer = make_napari_viewer()
    w = LoaderWidget(viewer)
    w.open(str(path))
    qtbot.waitUntil(lambda: w._worker is None, timeout=30_000)
    assert "µm/px unknown" in w.status.text()
    viewer.layers.clear()
    w.mpp_spin.setValue(0.5)
    w.open(str(path))
    qtbot.waitUntil(lambda: w._worker is None, timeout=30_000)
    assert "unknown" not in w.status.text()
    layer = viewer.layers[-1]
    assert tuple(layer.scale[-2:]) == (0.5, 0.5) and layer.metadata["mpp"] == 0.5


def test_info_mpp_flag(tmp_path, capsys):
    from napari_stexp import cli

    path = _png(tmp_path)
    assert cli.main(["info", str(path), "--json", "--mpp", "0.25"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"][0]["mpp"] == 0.25
    with pytest.raises(SystemExit) as e:
        cli.main(["info", str(path), "--mpp", "-1"])
    assert e.value.code == 2 and "--mpp: must be > 0" in capsys.readouterr().err
