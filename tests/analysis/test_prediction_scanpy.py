"""Our prediction/classification .h5ad plot with ``scanpy.pl.spatial`` (issue 17 item 11):
the slide at a hires scale is in ``uns['spatial'][lib]``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from expression_helpers import untrained_expression_model


@pytest.fixture(scope="module")
def untrained():
    return untrained_expression_model()


def test_hires_image_for_a_pyramid():
    from napari_stexp.data.synthetic_slide import pyramid_from_array
    from napari_stexp.io.hires import hires_image_for

    img = np.random.default_rng(0).integers(0, 255, (3000, 2400, 3), dtype=np.uint8)
    pyr = pyramid_from_array(img, 0.5)
    hires, f = hires_image_for(pyr, max_size=1000)
    assert hires.dtype == np.uint8 and hires.ndim == 3 and max(hires.shape[:2]) <= 1000
    assert hires.shape[0] == pytest.approx(3000 * f, abs=1.0)
    assert hires.shape[1] == pytest.approx(2400 * f, abs=1.0)


def test_sc_pl_spatial_works_on_a_slide_prediction(untrained, tmp_path):
    import anndata as ad
    import matplotlib.pyplot as plt
    import scanpy as sc

    from napari_stexp.analysis.slide_predict import predict_slide
    from napari_stexp.io.export import write_h5ad

    model, pyr = untrained
    pred = predict_slide(model, pyr, name="TEST", device="cpu", batch_size=16)
    path = write_h5ad(pred, tmp_path / "pred.h5ad")
    back = ad.read_h5ad(path)
    entry = back.uns["spatial"]["TEST"]
    assert entry["images"]["hires"].ndim == 3
    f = entry["scalefactors"]["tissue_hires_scalef"]
    assert 0 < f <= 1 and entry["scalefactors"]["spot_diameter_fullres"] > 0
    # spots land on the hires image
    xy = back.obsm["spatial"] * f
    h, w = entry["images"]["hires"].shape[:2]
    assert (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
    sc.pl.spatial(back, color=str(back.var_names[0]), library_id="TEST", show=False)
    plt.close("all")


def test_sc_pl_spatial_works_on_a_slide_classification(tmp_path):
    import anndata as ad
    import matplotlib.pyplot as plt
    import scanpy as sc

    from napari_stexp.analysis.slide_classify import classify_slide
    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.io.export import write_h5ad
    from napari_stexp.models.batch_agnostic import PREFIX, ClassifierConfig, train_classifier

    slide = make_synthetic_slide(8, 8, mpp=1.4, seed=0)
    torch.set_num_threads(1)
    model = train_classifier({"SYN1": slide.adata}, ClassifierConfig.tiny(),
                             images={"SYN1": slide.pyramid}, cache_dir=False)
    res = classify_slide(model, slide.pyramid, name="SYN1")
    back = ad.read_h5ad(write_h5ad(res, tmp_path / "classes.h5ad"))
    assert "hires" in back.uns["spatial"]["SYN1"]["images"]
    sc.pl.spatial(back, color=f"{PREFIX}_class", library_id="SYN1", show=False)
    plt.close("all")
