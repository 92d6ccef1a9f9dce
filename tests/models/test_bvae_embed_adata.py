"""One β-VAE embedding AnnData builder (BVAEModel.embed_adata) for `bvae embed` and the batch
embed task: the same cells give the same table through both."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_and_cells(tmp_path_factory):
    from napari_stexp.data.cells import CellCropDataset, synthetic_cell_images
    from napari_stexp.models.betavae import BVAEConfig, train_bvae

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imgs, labels = synthetic_cell_images(3, 2, size=48, seed=1)
        cells = CellCropDataset.from_arrays(imgs, labels, size=32)
        out = tmp_path_factory.mktemp("bvae") / "m"
        model = train_bvae(cells, config=BVAEConfig.tiny(epochs=1, image_size=32), out_dir=out)
    finally:
        torch.set_num_threads(old)
    return model, cells, out, imgs


def test_embed_adata_without_a_path_column(model_and_cells):
    """Cells cut from a segmented image have no file per cell: the source stands in (the
    command's own copy of this builder used to fail with a KeyError)."""
    import dataclasses

    model, cells, out, _ = model_and_cells
    cells = dataclasses.replace(cells, table=cells.table.drop(columns="path"))
    ad = model.embed_adata(cells, model_dir=out, source="slide.png")
    assert ad.obsm["X_bvae"].shape == (len(cells), model.config.latent_dim)
    assert set(ad.obs["path"]) == {"slide.png"} and list(ad.obs["cell_id"]) == list(cells.ids)
    prov = ad.uns["napari_stexp"]
    assert prov["model"] == "bvae" and prov["cells"] == "slide.png"
    assert prov["skipped_cells"] == len(cells.skipped)


def test_command_and_batch_task_build_the_same_table(model_and_cells, tmp_path):
    import anndata

    from napari_stexp.batch.tasks import embed_cells_adata
    from napari_stexp.commands import bvae as bcmd
    from napari_stexp.data.cells import load_cells

    model, _, out, imgs = model_and_cells
    crops = tmp_path / "crops"
    crops.mkdir()
    from PIL import Image

    for i, img in enumerate(imgs[:4]):
        Image.fromarray(np.asarray(img)).save(crops / f"c{i}.png")
    one = tmp_path / "one.h5ad"
    parser = argparse.ArgumentParser()
    bcmd.register(parser.add_subparsers())
    args = parser.parse_args(["bvae", "embed", "--model", str(out), "--cells", str(crops),
                              "--out", str(one)])
    assert args.func(args) == 0
    ref = anndata.read_h5ad(one)
    loaded = load_cells(crops, size=model.config.image_size)
    batch = embed_cells_adata(model, loaded, model_dir=str(out), source=crops)
    assert list(batch.obs.columns) == list(ref.obs.columns)
    assert list(batch.obs["path"]) == list(ref.obs["path"])
    np.testing.assert_allclose(batch.obsm["X_bvae"], ref.obsm["X_bvae"], rtol=1e-4, atol=1e-5)
    assert batch.uns["napari_stexp"]["batch"] and batch.uns["napari_stexp"]["task"]
    assert set(ref.uns["napari_stexp"]) <= set(batch.uns["napari_stexp"])
