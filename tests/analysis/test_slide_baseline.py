"""Whole-slide prediction can carry the baseline's prediction (ridge / pca_ridge on the same
frozen features) as a layer beside the model's, for when the report says it is the better
predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expression_helpers import synthetic_pair
from napari_stexp.errors import InputError


@pytest.fixture(scope="module")
def cached_model():
    """A cached-mode model (its frozen training features feed the baselines)."""
    from napari_stexp.models.mclstexp import train_expression_model

    torch.set_num_threads(1)
    adatas, images = synthetic_pair(n=8, n_genes=12)
    model = train_expression_model({"TRAIN": adatas["TRAIN"]}, mode="cached", epochs=1,
                                   images={"TRAIN": images["TRAIN"]}, backbone="tinycnn",
                                   input_size=32, cache_dir=False, device="cpu")
    return model, adatas, images


@pytest.mark.parametrize("baseline", ["ridge", "pca_ridge"])
def test_baseline_layer_beside_the_model(cached_model, baseline):
    from napari_stexp.analysis.slide_predict import predict_slide

    model, adatas, images = cached_model
    ad = predict_slide(model, images["TEST"], device="cpu", batch_size=16, baseline=baseline)
    base = ad.layers[f"baseline_{baseline}"]
    assert base.shape == ad.X.shape and np.isfinite(base).all()
    assert not np.allclose(base, ad.layers["predicted"])
    assert ad.uns["napari_stexp"]["baseline"] == baseline
    plain = predict_slide(model, images["TEST"], device="cpu", batch_size=16)
    np.testing.assert_allclose(plain.layers["predicted"], ad.layers["predicted"], atol=1e-5)
    assert not any(k.startswith("baseline_") for k in plain.layers)


def test_baseline_needs_a_cached_model(cached_model):
    from napari_stexp.analysis.slide_predict import predict_slide

    model, _, images = cached_model
    with pytest.raises(InputError, match="unknown baseline"):
        predict_slide(model, images["TEST"], device="cpu", baseline="lasso")
