"""β-VAE dock widget driven as a user would (napari viewer under Xvfb: ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from napari_stexp.data.cells import CellCropDataset, synthetic_cell_images  # noqa: E402
from napari_stexp.models.betavae import BVAEConfig, train_bvae  # noqa: E402

PBMC_MAP = {"class0": "CD14+ Monocyte", "class1": "CD19+ B", "class2": "CD56+ NK"}


@pytest.fixture(scope="module")
def cells():
    imgs, labels = synthetic_cell_images(5, 3, size=48, seed=7)
    return CellCropDataset.from_arrays(imgs, labels, size=32)


@pytest.fixture(scope="module")
def aligned_model(cells, pbmc_path):
    import warnings

    import anndata

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad = anndata.read_h5ad(pbmc_path)
    ad = ad[ad.obs["bulk_labels"].isin(list(PBMC_MAP.values())).to_numpy()].copy()
    genes = ad.raw.to_adata()[:, :120].copy()
    genes.obs = ad.obs.copy()
    return train_bvae(cells, genes=genes, class_map=PBMC_MAP,
                      config=BVAEConfig.tiny(epochs=2, gene_epochs=2))


def _table_rows(table) -> list[tuple[str, ...]]:
    return [tuple(table.item(r, c).text() for c in range(table.columnCount()))
            for r in range(table.rowCount())]


def test_traversal_browser_follows_the_sliders(make_napari_viewer, aligned_model, cells):
    from napari_stexp.session import get_session
    from napari_stexp.widgets.bvae import POINTS_LAYER, TRAVERSAL_LAYER, BVAEWidget

    viewer = make_napari_viewer()
    w = BVAEWidget(viewer)
    w.set_model(aligned_model)
    z = w.embed_cells(cells)
    # latents in the session and in the points layer features
    ref = get_session(viewer).embeddings["bvae"]
    assert ref.layer == POINTS_LAYER and ref.source == "bvae"
    np.testing.assert_array_equal(ref.data, z)
    feats = viewer.layers[POINTS_LAYER].features
    assert [f"bvae_{i}" for i in range(8)] == [c for c in feats.columns if c.startswith("bvae_")]
    np.testing.assert_allclose(feats["bvae_3"].to_numpy(), z[:, 3])
    assert feats["label"].tolist() == list(cells.labels)

    w.steps.setValue(5)
    w.top_dims.setValue(4)
    trav = w.traverse(index=2, sync=True)
    layer = viewer.layers[TRAVERSAL_LAYER]
    assert layer.data.shape == (4, 5, 1, 32, 32, 3) and layer.rgb  # own step axis
    assert viewer.dims.axis_labels[:2] == ("latent dim", "step")
    assert w.current_point() == (0, 2)
    before = _table_rows(w.expr_table)
    assert len(before) == 10 and all(r[0] in aligned_model.genes for r in before)
    # at the cell's own latent (centre step) every change is 0
    assert all(abs(float(r[2])) < 1e-3 for r in before)

    viewer.dims.set_current_step(1, 0)  # move the step slider to -3 σ
    after = _table_rows(w.expr_table)
    assert after != before
    assert max(abs(float(r[2])) for r in after) > 1e-4
    assert "-3.00 σ" in w.step_label.text()
    viewer.dims.set_current_step(0, 3)  # and the dim slider to the 4th-ranked dim
    assert f"dim {int(trav.dims[3])}" in w.step_label.text()
    assert _table_rows(w.expr_table) != after


def test_trajectory_panel_and_labels_embedding(make_napari_viewer, qtbot, aligned_model,
                                               cells):
    from napari_stexp.session import get_session
    from napari_stexp.widgets.bvae import TRAJECTORY_LAYER, BVAEWidget

    viewer = make_napari_viewer()
    w = BVAEWidget(viewer)
    w.set_model(aligned_model)
    # cells from a Labels layer + image: latents join the Labels features by label id
    imgs, _ = synthetic_cell_images(1, 1, size=48, seed=8)
    smear = np.full((60, 120, 3), (240, 225, 205), np.uint8)
    smear[6:54, 6:54] = imgs[0]
    smear[6:54, 66:114] = imgs[0]
    labels = np.zeros((60, 120), np.int32)
    yy, xx = np.mgrid[:60, :120]
    labels[np.hypot(yy - 30, xx - 30) < 10] = 4
    labels[np.hypot(yy - 30, xx - 90) < 10] = 9
    viewer.add_image(smear, name="smear", rgb=True)
    lab_layer = viewer.add_labels(labels, name="cells",
                                  features=pd.DataFrame({"label": [4, 9], "area": [1.0, 2.0]}))
    # as a user does it: choose the Labels layer and its image, click Embed (worker)
    w.source_combo.setCurrentText("labels: cells")
    w.image_combo.setCurrentText("smear")
    assert w.embed() is not None
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    feats = viewer.layers["cells"].features
    assert feats["label"].tolist() == [4, 9] and feats["area"].tolist() == [1.0, 2.0]
    seg = CellCropDataset.from_segmentation(smear, labels, lab_layer.features, size=32)
    z = aligned_model.embed(seg)
    np.testing.assert_allclose(feats["bvae_0"].to_numpy(), z[:, 0], rtol=1e-5, atol=1e-6)
    assert get_session(viewer).embeddings["bvae"].layer == "cells"

    w.embed_cells(cells)
    w.cell_a.setValue(0)
    w.cell_b.setValue(len(cells) - 1)
    w.traj_steps.setValue(6)
    traj = w.run_trajectory(sync=True)
    assert viewer.layers[TRAJECTORY_LAYER].data.shape == (6, 32, 32, 3)
    assert w.traj_table.rowCount() == 6 and w.traj_table.columnCount() == 10
    assert traj.expression.shape == (6, 120)


def test_training_in_a_worker(make_napari_viewer, qtbot, pbc_dir, tmp_path):
    from napari_stexp.widgets.bvae import BVAEWidget

    t = pd.read_csv(pbc_dir / "labels.csv").groupby("label", group_keys=False).head(1)
    table = pd.DataFrame({"path": [str(pbc_dir / p) for p in t["image_path"]],
                          "label": t["label"].to_numpy()})
    csv = tmp_path / "cells.csv"
    table.to_csv(csv, index=False)
    viewer = make_napari_viewer()
    w = BVAEWidget(viewer)
    w.cells_edit.setText(str(csv))
    w.model_edit.setText(str(tmp_path / "model"))
    w.tiny.setChecked(True)
    w.epochs.setValue(1)
    worker = w.train()
    qtbot.waitUntil(lambda: w.model is not None, timeout=120_000)
    qtbot.waitUntil(lambda: w._worker is None, timeout=10_000)
    assert worker is not None
    assert (tmp_path / "model" / "config.json").is_file()
    assert w.progress_bar.value() == w.progress_bar.maximum() > 0
    assert "model ready" in w.status.text()
    # bad input is a notification, not a crash
    w.cells_edit.setText(str(tmp_path / "nowhere"))
    w.model = None
    w.train()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert w.model is None and "failed" in w.status.text()
