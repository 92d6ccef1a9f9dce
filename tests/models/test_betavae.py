"""β-VAE model, losses, cell crop dataset and persistence (tiny configs, one torch thread)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from napari_stexp.data.cells import (  # noqa: E402
    CellCropDataset,
    load_cells,
    synthetic_cell_images,
)
from napari_stexp.errors import CancelledError, InputError  # noqa: E402
from napari_stexp.models.betavae import (  # noqa: E402
    BVAEConfig,
    BVAEModel,
    GeneVAE,
    ImageBetaVAE,
    bvae_loss,
    masked_recon_loss,
    train_bvae,
    train_gene_vae,
)


def pbc_table(pbc_dir, per_class: int = 3) -> pd.DataFrame:
    """A few real PBC crops per class (paths into the shared data, nothing copied)."""
    t = pd.read_csv(pbc_dir / "labels.csv")
    t = t.groupby("label", group_keys=False).head(per_class)
    return pd.DataFrame({"path": [str(pbc_dir / p) for p in t["image_path"]],
                         "label": t["label"].to_numpy()})


@pytest.fixture(scope="module")
def synth_cells():
    imgs, labels = synthetic_cell_images(6, 3, size=48, seed=1)
    return CellCropDataset.from_arrays(imgs, labels, size=32)


# --------------------------------------------------------------------------- losses


def test_masked_loss_ignores_background_and_counts_foreground():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    recon = torch.rand(2, 3, 16, 16, generator=g)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1.0
    base = masked_recon_loss(recon, x, mask, bg_weight=0.0)
    x_bg = x.clone()
    x_bg[:, :, :4] = torch.rand(2, 3, 4, 16, generator=g)  # background rows only
    recon_bg = recon.clone()
    recon_bg[:, :, 12:] = 0.0
    assert torch.allclose(masked_recon_loss(recon_bg, x_bg, mask, 0.0), base)
    x_fg = x.clone()
    x_fg[:, :, 6:10, 6:10] += 0.5
    assert (masked_recon_loss(recon, x_fg, mask, 0.0) - base).abs().min() > 0.1
    # a small background weight makes the background count, a little
    with_bg = masked_recon_loss(recon, x_bg, mask, 0.05)
    assert not torch.allclose(with_bg, masked_recon_loss(recon, x, mask, 0.05))


def test_full_loss_ignores_target_background_through_the_model():
    model = ImageBetaVAE(latent_dim=4, base_channels=4, image_size=16).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 5:11, 5:11] = 1.0
    with torch.no_grad():
        out = model(x, sample=False)
        a = bvae_loss(out, x, mask, beta=4.0, bg_weight=0.0)["total"]
        x2 = x.clone()
        x2[:, :, :3] = 0.0
        b = bvae_loss(out, x2, mask, beta=4.0, bg_weight=0.0)["total"]
        x3 = x.clone()
        x3[:, :, 7:9, 7:9] = 1.0 - x3[:, :, 7:9, 7:9]
        c = bvae_loss(out, x3, mask, beta=4.0, bg_weight=0.0)["total"]
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    assert abs(float(c) - float(a)) > 1e-3


def test_kl_term_scales_with_beta():
    model = ImageBetaVAE(latent_dim=6, base_channels=4, image_size=16).double().eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)).double()
    mask = torch.ones(3, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, sample=False)
        t1 = bvae_loss(out, x, mask, beta=1.0)
        t4 = bvae_loss(out, x, mask, beta=4.0)
        t0 = bvae_loss(out, x, mask, beta=0.0)
    kl = float(t1["kl"])
    assert kl > 0
    assert float(t4["total"] - t1["total"]) == pytest.approx(3 * kl, rel=1e-4)
    assert float(t0["total"]) == pytest.approx(float(t0["recon"]), rel=1e-6)


# --------------------------------------------------------------------------- learning


def test_learning_on_real_pbc_crops_improves_masked_reconstruction(pbc_dir):
    cells = CellCropDataset.from_table(pbc_table(pbc_dir, 3), size=32)
    assert len(cells) == 24 and len(cells.classes) == 8
    untrained = train_bvae(cells, config=BVAEConfig.tiny(epochs=0, beta=1.0))
    err0 = float(untrained.reconstruction_error(cells).mean())
    model = train_bvae(cells, config=BVAEConfig.tiny(epochs=40, beta=1.0, batch_size=8))
    err1 = float(model.reconstruction_error(cells).mean())
    losses = [e["loss"] for e in model.history["image"]]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    assert err1 < 0.5 * err0, (err0, err1)


def test_gene_vae_learns_pbmc_expression(pbmc_path):
    import anndata

    from napari_stexp.models.betavae import expression_matrix

    ad = anndata.read_h5ad(pbmc_path)
    X, names = expression_matrix(ad)
    assert X.shape == (700, 765) and names[0] == "HES4" and X.min() >= 0
    X = X[:200, :120]
    cfg = BVAEConfig.tiny(gene_epochs=25, gene_hidden=(64,), latent_dim=8)
    gene, hist = train_gene_vae(X, cfg)
    assert isinstance(gene, GeneVAE)
    assert hist[-1]["loss"] < hist[0]["loss"] - 5
    with torch.no_grad():
        mu, _ = gene.encode(torch.from_numpy(X))
        rec = gene.decode(mu).numpy()
    mse_model = float(((rec - X) ** 2).mean())
    mse_mean = float(((X - X.mean(0)) ** 2).mean())
    assert mse_model < 0.9 * mse_mean


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, synth_cells):
    model = train_bvae(synth_cells, config=BVAEConfig.tiny(epochs=2), out_dir=tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file()
    assert (tmp_path / "m" / "weights.pt").is_file()
    # issue 16: checkpoints live beside the folder while training, never inside it
    assert not (tmp_path / "m" / "checkpoints").exists()
    assert not (tmp_path / "m.ckpt").exists()
    again = BVAEModel.load(tmp_path / "m")
    z1, z2 = model.embed(synth_cells), again.embed(synth_cells)
    assert z1.shape == (len(synth_cells), 8)
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_allclose(again.latent_sigma(), model.latent_sigma())
    # tampered weights are caught
    (tmp_path / "m" / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="weights"):
        BVAEModel.load(tmp_path / "m")
    with pytest.raises(InputError, match="not a β-VAE model directory"):
        BVAEModel.load(tmp_path)


def test_training_resumes_from_checkpoint(tmp_path, synth_cells):
    cfg = BVAEConfig.tiny(epochs=2)
    train_bvae(synth_cells, config=cfg, out_dir=tmp_path / "m")
    cfg3 = BVAEConfig.tiny(epochs=3)
    # a different config (epochs) is another signature: no resume, trains 3 fresh epochs
    m3 = train_bvae(synth_cells, config=cfg3, out_dir=tmp_path / "m")
    assert [e["epoch"] for e in m3.history["image"]] == [0, 1, 2]


def test_cancel_stops_training(synth_cells):
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError):
        train_bvae(synth_cells, config=BVAEConfig.tiny(epochs=3), cancel=ev)


def test_progress_reports_reach_total(synth_cells):
    seen = []
    train_bvae(synth_cells, config=BVAEConfig.tiny(epochs=2),
               progress=lambda d, t, m: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(d <= t for d, t in seen)


def test_roi_feature_head(synth_cells):
    rng = np.random.default_rng(0)
    cells = CellCropDataset(synth_cells.images, synth_cells.masks, synth_cells.table.copy(),
                            roi_features=rng.normal(size=(len(synth_cells), 5)))
    model = train_bvae(cells, config=BVAEConfig.tiny(epochs=2, roi_dim=5))
    assert "roi" in model.history["image"][-1]
    assert model.image_vae.roi_head is not None
    with pytest.raises(InputError, match="RoI"):
        train_bvae(synth_cells, config=BVAEConfig.tiny(epochs=1, roi_dim=5))


def test_config_rejects_bad_sizes():
    with pytest.raises(InputError, match="power of two"):
        BVAEConfig(image_size=100).check()


# --------------------------------------------------------------------------- cell crops


def test_crop_dataset_masks_the_centre_cell(synth_cells):
    ds = synth_cells
    assert ds.images.shape == (18, 32, 32, 3) and ds.masks.shape == (18, 32, 32)
    assert 0.0 <= ds.masks.min() and ds.masks.max() <= 1.0
    centre = ds.masks[:, 14:18, 14:18].mean()
    corners = ds.masks[:, :3, :3].mean()
    assert centre > 0.95 and corners < 0.05
    # soft: some values strictly between 0 and 1 (dilated + blurred edge)
    assert ((ds.masks > 0.05) & (ds.masks < 0.95)).any()
    # bigger class -> bigger mask (class2 cells have the largest cytoplasm)
    area = {c: ds.masks[ds.labels == c].mean() for c in ds.classes}
    assert area["class0"] < area["class1"] < area["class2"]


def test_real_pbc_masks_cover_the_cell(pbc_dir):
    ds = CellCropDataset.from_table(pbc_table(pbc_dir, 2), size=64)
    assert len(ds) == 16 and not ds.skipped
    assert (ds.masks[:, 30:34, 30:34].mean(axis=(1, 2)) > 0.5).all()  # cells are centred
    frac = (ds.masks > 0.5).mean(axis=(1, 2))
    assert (frac > 0.005).all() and (frac < 0.6).all()


def test_grey_and_rgba_inputs():
    imgs, labels = synthetic_cell_images(1, 1, size=48, seed=3)
    rgb = imgs[0]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
    a = CellCropDataset.from_arrays([rgb], size=32)
    b = CellCropDataset.from_arrays([rgba], size=32)
    np.testing.assert_array_equal(a.images, b.images)  # alpha dropped
    grey = rgb.mean(-1).astype(np.uint8)
    with pytest.warns(UserWarning, match="grey image converted to RGB"):
        c = CellCropDataset.from_arrays([grey], size=32)
    assert c.images.shape == (1, 32, 32, 3)
    assert np.allclose(c.images[..., 0], c.images[..., 1])
    assert c.masks[0, 16, 16] > 0.9 and c.masks[0, 0, 0] < 0.05  # found by darkness


def test_crop_with_no_cell_is_skipped_and_counted(tmp_path):
    from PIL import Image

    imgs, labels = synthetic_cell_images(2, 1, size=48, seed=4)
    empty = np.full((48, 48, 3), (240, 225, 205), np.uint8)  # background only
    paths = []
    for i, im in enumerate([*imgs, empty]):
        p = tmp_path / f"c{i}.png"
        Image.fromarray(im).save(p)
        paths.append(str(p))
    table = pd.DataFrame({"path": paths, "label": ["a", "a", "a"]})
    with pytest.warns(UserWarning, match="skipped 1 of 3 crops"):
        ds = CellCropDataset.from_table(table, size=32)
    assert len(ds) == 2 and ds.skipped == [(paths[2], "no cell found")]
    with pytest.raises(InputError, match="no cell found"):
        CellCropDataset.from_table(table, size=32, on_empty="error")
    with pytest.raises(InputError, match="c2.png"):  # a single crop given on its own
        load_cells(paths[2], size=32)
    with pytest.raises(InputError, match="no cell found in the crop"):
        CellCropDataset.from_table(table.iloc[2:], size=32)


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    table = pd.DataFrame({"path": [str(bad)], "label": ["x"]})
    with pytest.raises(InputError, match="broken.jpg"):
        CellCropDataset.from_table(table)
    with pytest.raises(InputError, match="missing.png"):
        CellCropDataset.from_table(pd.DataFrame({"path": [str(tmp_path / "missing.png")]}))


def test_crops_from_segmentation():
    imgs, _ = synthetic_cell_images(1, 1, size=48, seed=5)
    smear = np.full((100, 140, 3), (240, 225, 205), np.uint8)
    labels = np.zeros((100, 140), np.int32)
    smear[10:58, 10:58] = imgs[0]
    smear[40:88, 80:128] = imgs[0]
    yy, xx = np.mgrid[:100, :140]
    labels[np.hypot(yy - 34, xx - 34) < 12] = 1
    labels[np.hypot(yy - 64, xx - 104) < 12] = 2
    feats = pd.DataFrame({"label": [2, 1], "class": ["b", "a"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no skip / grey warnings expected
        ds = CellCropDataset.from_segmentation(smear, labels, feats, size=32)
    assert len(ds) == 2
    assert ds.table["label_id"].tolist() == [2, 1]  # features order kept
    assert ds.labels.tolist() == ["b", "a"]
    for m in ds.masks:
        assert m[16, 16] > 0.9 and m[0, 0] < 0.05
    with pytest.raises(InputError, match="does not match"):
        CellCropDataset.from_segmentation(smear, labels[:50], size=32)


def test_folder_reader_uses_labels_csv(bccd_dir):
    from napari_stexp.data.cells import crop_table

    t = crop_table(bccd_dir)
    assert len(t) == 283
    assert set(t["label"]) == {"neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"}
    assert all(p.endswith(".jpg") for p in t["path"])
