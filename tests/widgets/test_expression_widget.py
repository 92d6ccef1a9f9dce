"""Expression widget: train on a synthetic sample (tiny), predict a section, choose a gene and
check the gene layers (values, shared contrast limits, PCC, embeddings in the session)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def pair():
    from expression_helpers import synthetic_pair

    return synthetic_pair(n=10, n_genes=12)


def test_widget_trains_predicts_and_shows_a_gene(make_napari_viewer, wait_worker, pair):
    from napari_stexp.evaluation.regression import gene_pcc
    from napari_stexp.session import get_session
    from napari_stexp.widgets.expression import EMBED_PREFIX, ExpressionWidget

    torch.set_num_threads(1)
    adatas, images = pair
    viewer = make_napari_viewer()
    session = get_session(viewer)
    for name in ("TRAIN", "TEST"):
        session.add_adata(name, adatas[name])
    session.images = dict(images)
    w = ExpressionWidget(viewer)
    assert [w.sections.item(i).text() for i in range(w.sections.count())] == ["TRAIN", "TEST"]
    w.set_checked(["TRAIN"])
    worker = w.train(mode="cached", backbone="tinycnn", epochs=15, input_size=32,
                     patch_size=64, batch_size=32, top_k=20, device="cpu", cache_dir=False)
    wait_worker(worker)
    assert w.model is not None and len(w.model.history) == 15
    assert session.models["mclstexp"] is w.model

    worker = w.predict("TEST")
    wait_worker(worker)
    pred = w.predictions["TEST"]
    assert not pred.in_reference
    layers = w.show_gene("gene003")  # search is case-insensitive
    assert w.gene_box.text() == "GENE003"
    p_layer, m_layer = viewer.layers["TEST predicted"], viewer.layers["TEST measured"]
    assert layers == [p_layer, m_layer]
    gi = w.model.genes.index("GENE003")
    np.testing.assert_allclose(p_layer.features["value"], pred.predicted[:, gi])
    np.testing.assert_allclose(m_layer.features["value"], pred.measured[:, gi])
    # one colour scale for both layers, spanning predicted and measured values
    assert tuple(p_layer.face_contrast_limits) == tuple(m_layer.face_contrast_limits)
    lo, hi = p_layer.face_contrast_limits
    both = np.concatenate([pred.predicted[:, gi], pred.measured[:, gi]])
    assert lo == pytest.approx(both.min()) and hi == pytest.approx(both.max())
    # measured beside predicted, predicted on the section's spots (µm frame)
    assert m_layer.translate[1] > np.ptp(p_layer.data[:, 1])
    np.testing.assert_allclose(p_layer.data, adatas["TEST"].obsm["spatial"][:, ::-1] * 2.8)
    # the PCC shown is the gene's PCC on this section
    r = gene_pcc(pred.predicted, pred.measured)[gi]
    assert w.pcc_label.text() == f"PCC: {r:.3f}"
    # colours follow the values (highest value -> brightest viridis colour)
    v = p_layer.features["value"].to_numpy()
    fc = p_layer.face_color
    assert fc[np.argmax(v)][1] > fc[np.argmin(v)][1]
    # confidence layer with embeddings as features, and the embedding in the session
    c_layer = viewer.layers["TEST mclSTExp"]
    assert f"{EMBED_PREFIX}0" in c_layer.features
    ref = session.embeddings["mclstexp TEST"]
    assert ref.layer == "TEST mclSTExp" and ref.source == "mclstexp"
    assert ref.data.shape == (adatas["TEST"].n_obs, 256)

    # another gene updates the same layers in place
    n_layers = len(viewer.layers)
    w.show_gene("GENE005")
    assert len(viewer.layers) == n_layers
    np.testing.assert_allclose(viewer.layers["TEST predicted"].features["value"],
                               pred.predicted[:, w.model.genes.index("GENE005")])
    # unknown gene: a notification, no crash, layers unchanged
    assert w.show_gene("NOPE") == []


def test_widget_predicts_an_h_and_e_only_slide(make_napari_viewer, wait_worker, pair):
    from napari_stexp.io.layers import image_layer
    from napari_stexp.models.mclstexp import train_expression_model
    from napari_stexp.widgets._common import add_layer_tuples
    from napari_stexp.widgets.expression import SLIDE_PREFIX, ExpressionWidget

    torch.set_num_threads(1)
    adatas, images = pair
    model = train_expression_model({"TRAIN": adatas["TRAIN"]}, images=images, mode="cached",
                                   epochs=2, backbone="tinycnn", patch_size=64, input_size=32,
                                   batch_size=32, top_k=20, cache_dir=False, device="cpu")
    viewer = make_napari_viewer()
    add_layer_tuples(viewer, [image_layer(images["TEST"], "slide H&E")])
    w = ExpressionWidget(viewer)
    w.set_model(model)
    assert w.target.findText(SLIDE_PREFIX + "slide H&E") >= 0
    worker = w.predict(SLIDE_PREFIX + "slide H&E")
    wait_worker(worker)
    pred = w.predictions["slide H&E"]
    assert pred.measured is None and pred.adata is not None
    w.show_gene("GENE001")
    assert "slide H&E measured" not in viewer.layers
    lay = viewer.layers["slide H&E predicted"]
    assert len(lay.data) == pred.adata.n_obs
    assert w.pcc_label.text() == "PCC: –"
    # pseudo-spots lie on the slide (µm frame of the image layer)
    h, w_ = images["TEST"].shape[:2]
    assert (lay.data[:, 0] < h * 2.8).all() and (lay.data[:, 1] < w_ * 2.8).all()


def test_widget_smoothing_option_reaches_the_model(make_napari_viewer, wait_worker, pair):
    """The smoothing box trains a model with the option, and the section it predicts is
    smoothed over the spot grid (the option's own output, not the raw retrieval)."""
    from napari_stexp.session import get_session
    from napari_stexp.widgets.expression import ExpressionWidget

    torch.set_num_threads(1)
    adatas, images = pair
    viewer = make_napari_viewer()
    session = get_session(viewer)
    for name in ("TRAIN", "TEST"):
        session.add_adata(name, adatas[name])
    session.images = dict(images)
    w = ExpressionWidget(viewer)
    w.set_checked(["TRAIN"])
    w.smooth.setValue(0.5)
    worker = w.train(mode="cached", backbone="tinycnn", epochs=2, input_size=32,
                     patch_size=64, batch_size=32, top_k=20, device="cpu", cache_dir=False)
    wait_worker(worker)
    assert w.model is not None and w.model.config.smooth_neighbours == 0.5
    worker = w.predict("TEST")
    wait_worker(worker)
    got = w.predictions["TEST"].predicted
    raw = w.model.predict_sections({"TEST": adatas["TEST"]}, images, device="cpu")["TEST"]
    np.testing.assert_allclose(got, raw["predicted"], rtol=1e-4, atol=1e-5)
    unsmoothed = w.model.predict_embeddings(raw["embeddings"])[0]
    assert not np.allclose(got, unsmoothed)
