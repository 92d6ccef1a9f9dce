"""Whole-slide prediction on files: a damaged image gives one InputError naming the file (the
decode runs in a background thread while the tissue mask is computed; its error must surface)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expression_helpers import MPP, synthetic_pair, untrained_expression_model
from napari_stexp.errors import InputError


@pytest.fixture(scope="module")
def untrained():
    return untrained_expression_model(n=8, n_genes=12)


def _write_jpeg(pyr, path):
    from PIL import Image

    Image.fromarray(np.asarray(pyr.levels[0])).save(path, quality=90, dpi=(
        25400 / MPP, 25400 / MPP))
    return path


def test_slide_prediction_from_a_jpeg_file(untrained, tmp_path):
    from napari_stexp.analysis.slide_predict import predict_slide
    from napari_stexp.io.wsi import open_image

    model, pyr = untrained
    path = _write_jpeg(pyr, tmp_path / "slide.jpg")
    ad = predict_slide(model, open_image(path), device="cpu", batch_size=16)
    assert ad.n_obs > 10 and np.isfinite(ad.X).all()
    assert ad.uns["napari_stexp"]["slide"] == str(path)


def test_truncated_jpeg_is_one_input_error_naming_the_file(untrained, tmp_path):
    from napari_stexp.analysis.slide_predict import predict_slide
    from napari_stexp.io.wsi import open_image

    model, pyr = untrained
    path = _write_jpeg(pyr, tmp_path / "slide.jpg")
    raw = bytearray(path.read_bytes())
    start = len(raw) // 3
    raw[start:start + 4096] = bytes(4096)  # zeros over the entropy-coded data
    raw = raw[: len(raw) * 2 // 3]  # and cut off the end
    bad = tmp_path / "damaged.jpg"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputError) as info:
        predict_slide(model, open_image(bad), device="cpu", batch_size=16)
    assert "damaged.jpg" in str(info.value)


def test_an_error_while_decoding_in_the_background_surfaces(untrained, monkeypatch):
    """The whole-image decode runs in a thread beside the tissue mask: its InputError (a file
    that opens but cannot be decoded) is raised by predict_slide, not lost in the thread."""
    from napari_stexp.analysis import slide_grid as sg
    from napari_stexp.analysis import slide_predict as sp

    model, pyr = untrained

    def broken(pyramid, read_px, out_size):
        raise InputError("slide.jpg", "cannot decode JPEG image; the file is corrupt")

    monkeypatch.setattr(sg, "_warm_level", broken)
    with pytest.raises(InputError, match="slide.jpg: cannot decode"):
        sp.predict_slide(model, pyr, device="cpu", batch_size=16)
    box = sg._Background(lambda: 41 + 1)
    assert box.result() == 42


def test_slide_prediction_with_spatial_context_tta_and_smoothing(tmp_path):
    """A model trained with the spatial options (neighbours' features, smoothing, 8-view
    test-time augmentation) predicts a slide over its pseudo-spot grid exactly as it predicts
    the same patches with the same grid directly (streamed features, one pass at the end)."""
    from napari_stexp.analysis.slide_predict import predict_slide
    from napari_stexp.data.patches import extract_patches
    from napari_stexp.models.mclstexp import grid_coordinates, train_expression_model

    adatas, images = synthetic_pair(n=8, n_genes=12)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_expression_model(
            {"TRAIN": adatas["TRAIN"]}, images={"TRAIN": images["TRAIN"]}, epochs=1,
            backbone="tinycnn", input_size=32, mode="cached", batch_size=16, cache_dir=False,
            device="cpu", context_neighbours="concat", smooth_neighbours=0.5, tta_views=8)
        pyr = images["TEST"]
        ad = predict_slide(model, pyr, device="cpu", batch_size=16, tile=300)
        prov = ad.uns["napari_stexp"]
        xy = ad.obsm["spatial"]
        p = extract_patches(pyr, xy[:, ::-1], prov["read_px"], model.config.input_size)
        grid = grid_coordinates(ad.obs[["array_x", "array_y"]].to_numpy(), "square")
        direct = model.predict_patches(p, grid=grid, device="cpu")
    finally:
        torch.set_num_threads(old)
    np.testing.assert_allclose(ad.layers["predicted"], direct["predicted"], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(ad.obsm["X_mclstexp"], direct["embeddings"], rtol=1e-4,
                               atol=1e-5)
    # the options act: without the grid the model refuses, and smoothing changes the values
    with pytest.raises(InputError, match="spatial context"):
        model.predict_patches(p, device="cpu")
    raw = model.predict_embeddings(direct["embeddings"])[0]
    assert not np.allclose(raw, direct["predicted"])
