"""One fixed palette for classes, legends and overlays on the canvas (issue 17 item 10)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _hex(rgba) -> str:
    r, g, b = (np.asarray(rgba)[:3] * 255).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def _spots(labels):
    import anndata as ad
    import scipy.sparse as sp

    n = len(labels)
    a = ad.AnnData(X=sp.csr_matrix(np.arange(1, 2 * n + 1, dtype=np.float32).reshape(n, 2)),
                   obs=pd.DataFrame({"section": ["S"] * n,
                                     "label": pd.Categorical(labels)},
                                    index=[f"s{i}" for i in range(n)]))
    a.obsm["spatial"] = np.c_[np.arange(n) * 10.0, np.zeros(n)]
    return a


def test_a_label_has_one_colour_in_loader_classifier_and_explorer():
    from napari_stexp.io.layers import spots_layer
    from napari_stexp.viewer.palettes import LABEL_COLORS
    from napari_stexp.widgets._scatter_canvas import categorical_colors
    from napari_stexp.widgets.classify import class_colors

    want = LABEL_COLORS["invasive cancer"]
    for others in (["adipose tissue"], ["breast glands", "connective tissue", "cancer in situ"]):
        labels = [*others, "invasive cancer"]
        _, attrs, _ = spots_layer(_spots(labels), color_by="label")
        assert attrs["face_color_cycle"]["invasive cancer"] == want  # loader
        assert _hex(class_colors(labels)["invasive cancer"]) == want  # classifier
        leg = {name: rgba for name, rgba, _ in categorical_colors(pd.Categorical(labels)).legend}
        assert _hex(leg["invasive cancer"]) == want  # explorer
    # unknown names: stable whatever the order they are listed in
    a = class_colors(["x", "y", "invasive cancer"])
    b = class_colors(["invasive cancer", "y", "x"])
    assert all(np.allclose(a[k], b[k]) for k in a)
    assert len({_hex(v) for v in a.values()}) == 3


def test_voc_box_classes_have_fixed_colours():
    from napari_stexp.io.layers import boxes_layer
    from napari_stexp.viewer.palettes import BOX_COLORS

    for names in (["WBC", "RBC"], ["RBC", "RBC", "Platelets", "WBC"]):
        boxes = pd.DataFrame({"name": names, "xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5})
        _, attrs, _ = boxes_layer(boxes)
        assert [c for c in attrs["edge_color"]] == [BOX_COLORS[n] for n in names]



@pytest.mark.gui
def test_traversal_step_slider_has_its_own_axis(make_napari_viewer):
    from types import SimpleNamespace

    from napari_stexp.widgets._common import add_layer_tuples
    from napari_stexp.widgets.bvae import traversal_layer_tuple

    viewer = make_napari_viewer()
    crops = np.zeros((480, 16, 16, 3), np.uint8)
    add_layer_tuples(viewer, [(crops, {"name": "bvae crops", "rgb": True}, "image")])
    trav = SimpleNamespace(images=np.zeros((4, 9, 16, 16, 3), np.uint8), dims=np.arange(4),
                           values=np.linspace(-2, 2, 9), scores=np.zeros(4))
    add_layer_tuples(viewer, [traversal_layer_tuple(trav)])
    n_steps = [int(round(r.stop)) for r in viewer.dims.range]
    assert n_steps[0] == 3 and n_steps[1] == 8  # latent dims, steps: not 479
    assert n_steps[2] == 479  # the crop slider keeps its own axis


@pytest.mark.gui
def test_class_of_the_current_crop_is_shown(make_napari_viewer):
    from napari_stexp.viewer.palettes import _overlay, link_crop_class
    from napari_stexp.widgets._common import add_layer_tuples

    viewer = make_napari_viewer()
    table = pd.DataFrame({"label": ["neutrophil", "lymphocyte", None]})
    (layer,) = add_layer_tuples(viewer, [(np.zeros((3, 8, 8, 3), np.uint8),
                                          {"name": "crops", "rgb": True,
                                           "metadata": {"table": table}}, "image")])
    link_crop_class(viewer, layer)
    text = _overlay(viewer, "text")
    start = int(viewer.dims.current_step[0])  # napari opens stacks at the middle
    assert text.visible and text.text == f"crop {start + 1}/3: " + ["neutrophil", "lymphocyte",
                                                                     "no label"][start]
    viewer.dims.set_current_step(0, 0)
    assert text.text == "crop 1/3: neutrophil"
    viewer.dims.set_current_step(0, 1)
    assert text.text == "crop 2/3: lymphocyte"
    viewer.dims.set_current_step(0, 2)
    assert text.text == "crop 3/3: no label"


@pytest.mark.gui
def test_scale_bar_and_legend_on_by_default(make_napari_viewer):
    from napari_stexp.io.layers import spots_layer
    from napari_stexp.viewer.palettes import _overlay
    from napari_stexp.widgets._common import add_layer_tuples

    viewer = make_napari_viewer()
    a = _spots(["invasive cancer", "adipose tissue", "invasive cancer"])
    a.uns["spatial"] = {"S": {"images": {}, "scalefactors": {"spot_diameter_fullres": 5.0},
                              "metadata": {"mpp_fullres": 0.5}}}
    (layer,) = add_layer_tuples(viewer, [spots_layer(a, color_by="label")])
    bar = _overlay(viewer, "scale_bar")
    assert bar.visible
    assert str(layer.units[0]) in ("micrometer", "um", "µm")
    text = _overlay(viewer, "text")
    assert text.visible and "invasive cancer (2)" in text.text and "adipose tissue" in text.text
    # a numeric colour gets napari's colour bar
    (counts,) = add_layer_tuples(viewer, [spots_layer(a, color_by="total_counts",
                                                      name="counts")])
    assert counts._overlays["face_colorbar"].visible
    assert "total_counts" in text.text


@pytest.mark.gui
def test_no_scale_bar_when_mpp_unknown(make_napari_viewer):
    from napari_stexp.viewer.palettes import _overlay
    from napari_stexp.widgets._common import add_layer_tuples

    viewer = make_napari_viewer()
    add_layer_tuples(viewer, [(np.zeros((8, 8)), {"name": "x", "metadata": {"mpp": None}},
                               "image")])
    assert not _overlay(viewer, "scale_bar").visible
