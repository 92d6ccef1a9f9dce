"""Annotation loop: named regions -> obs['label'] -> the classifier trains and is evaluated on
them (issue 17 item 12)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stexp.errors import InputError


@pytest.fixture(scope="module")
def slide():
    from napari_stexp.data.synthetic_slide import make_synthetic_slide

    return make_synthetic_slide(8, 8, mpp=1.4, seed=0)


def _halves(adata):
    from napari_stexp.io.spatial import spots_rc_um

    rc = spots_rc_um(adata)
    (r0, c0), (r1, c1) = rc.min(0) - 1, rc.max(0) + 1
    mid = (c0 + c1) / 2
    left = np.array([[r0, c0], [r0, mid], [r1, mid], [r1, c0]])
    right = np.array([[r0, mid], [r0, c1], [r1, c1], [r1, mid]])
    return rc, left, right, mid


def test_labels_from_polygons_and_picks(slide):
    from napari_stexp.analysis.annotations import labels_from_annotations, labels_from_selection

    a = slide.adata.copy()
    rc, left, right, mid = _halves(a)
    counts = labels_from_annotations(a, [left, right], ["tumour", "stroma"])
    lab = a.obs["label"].astype(str).to_numpy()
    assert (lab[rc[:, 1] < mid - 1e-6] == "tumour").all()
    assert (lab[rc[:, 1] > mid + 1e-6] == "stroma").all()
    assert sum(counts.values()) == a.n_obs
    # a small region drawn later wins; spots outside every region are unlabelled
    small = np.array([[rc[0, 0] - 1, rc[0, 1] - 1], [rc[0, 0] - 1, rc[0, 1] + 1],
                      [rc[0, 0] + 1, rc[0, 1] + 1], [rc[0, 0] + 1, rc[0, 1] - 1]])
    labels_from_annotations(a, [small], "immune")
    assert a.obs["label"].iloc[0] == "immune" and a.obs["label"].isna().sum() == a.n_obs - 1
    labels_from_selection(a, [1, 2], "tumour")
    assert list(a.obs["label"].iloc[:3]) == ["immune", "tumour", "tumour"]
    with pytest.raises(InputError, match="class name"):
        labels_from_annotations(a, [left, right], ["x"])
    with pytest.raises(InputError, match="3"):
        labels_from_annotations(a, [left[:2]], "x")


def test_classifier_trains_and_is_evaluated_on_annotated_labels(slide):
    import torch

    from napari_stexp.analysis.annotations import labels_from_annotations
    from napari_stexp.models.batch_agnostic import (
        ClassifierConfig,
        evaluate_classifier,
        train_classifier,
    )

    torch.set_num_threads(1)
    a = slide.adata.copy()
    a.obs["label"] = np.nan  # no pathologist labels: annotate instead
    _, left, right, _ = _halves(a)
    labels_from_annotations(a, [left, right], ["region A", "region B"])
    model = train_classifier({"SYN1": a}, ClassifierConfig.tiny(),
                             images={"SYN1": slide.pyramid}, cache_dir=False)
    assert sorted(model.classes) == ["region A", "region B"]
    table, _ = evaluate_classifier(model, {"SYN1": a})
    row = table[table["method"] == "batch_agnostic"].iloc[0]
    assert row["n_spots"] == a.n_obs
    assert 0.0 <= row["accuracy"] <= 1.0
