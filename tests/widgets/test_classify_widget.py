"""GUI: the classifier dock widget trains on the sample slide, classifies it (patch grid) and a
section (spots), thresholds uncertain patches and registers embeddings in the session."""

from __future__ import annotations

import numpy as np

CLASSES = ["adipose tissue", "connective tissue", "invasive cancer"]


def test_classify_sample_slide(make_napari_viewer, wait_worker):
    import torch

    from napari_stexp.session import get_session
    from napari_stexp.widgets.classify import (
        CLASS_COLUMN,
        SLIDE_PREFIX,
        ClassifyWidget,
        class_colors,
    )

    torch.set_num_threads(1)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stexp", "synthetic_slide")
    image_name = viewer.layers[0].name
    w = ClassifyWidget(viewer)
    assert w.classify() is None  # no model yet: an error notification, no crash
    assert "SYN1" in w.available_sections()
    w.set_checked(["SYN1"])
    w.quick.setChecked(True)
    wait_worker(w.train())
    assert w.model is not None and w.model.classes == CLASSES
    assert "invasive cancer" in w.legend.text()

    # whole slide: patch grid over tissue
    wait_worker(w.classify(SLIDE_PREFIX + image_name))
    cls_layer = viewer.layers[f"{image_name} classes"]
    conf_layer = viewer.layers[f"{image_name} confidence"]
    feats = cls_layer.features
    n = len(cls_layer.data)
    assert n > 50 and len(feats) == n and len(conf_layer.data) == n
    assert set(feats[CLASS_COLUMN].astype(str)) <= set(CLASSES)
    proba = feats[[f"proba: {c}" for c in CLASSES]].to_numpy()
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(feats["confidence"], proba.max(1), atol=1e-6)
    colors = class_colors(CLASSES)
    want = np.stack([colors[c] for c in feats[CLASS_COLUMN].astype(str)])
    np.testing.assert_allclose(cls_layer.face_color, want, atol=1e-6)
    # points sit on the slide (same µm frame as the image layer)
    img = viewer.layers[image_name]
    extent = np.array(img.data[0].shape[:2]) * np.array(img.scale)
    assert (cls_layer.data >= 0).all() and (cls_layer.data <= extent).all()

    # threshold hides low-confidence patches in both layers
    t = float(np.median(feats["confidence"]))
    hidden = w.set_threshold(t)
    expect = feats["confidence"].to_numpy() < t
    assert hidden == int(expect.sum()) and 0 < hidden < n
    np.testing.assert_array_equal(cls_layer.shown, ~expect)
    np.testing.assert_array_equal(conf_layer.shown, ~expect)
    np.testing.assert_array_equal(cls_layer.features["shown"].to_numpy(bool), ~expect)
    w.set_threshold(0.0)
    assert cls_layer.shown.all()

    # session: the image embedding, rows = layer rows
    sess = get_session(viewer)
    ref = sess.embeddings[f"{image_name} image embedding"]
    assert ref.source == "classifier:image" and ref.layer == cls_layer.name
    assert ref.data.shape == (n, w.model.config.projection_dim)

    # a section (spots): classes + gene latent, colourable by patient
    wait_worker(w.classify("SYN1"))
    sec = viewer.layers["SYN1 classes"]
    assert "patient" in sec.features and set(sec.features["patient"].astype(str)) == {"P1"}
    gref = sess.embeddings["SYN1 gene latent"]
    assert gref.source == "classifier:gene" and gref.data.shape[0] == len(sec.data)
    assert any(c.startswith("gene_") for c in sec.features.columns)
    acc = (sec.features[CLASS_COLUMN].astype(str) == sec.features["label"].astype(str)).mean()
    assert acc > 0.5
