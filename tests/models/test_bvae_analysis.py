"""Alignment, traversals, trajectories, expression decoding and the ``bvae`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from napari_stexp.analysis.trajectory import gp_path, latent_trajectory  # noqa: E402
from napari_stexp.analysis.traversal import latent_traversal  # noqa: E402
from napari_stexp.data.cells import CellCropDataset, synthetic_cell_images  # noqa: E402
from napari_stexp.errors import InputError  # noqa: E402
from napari_stexp.models.alignment import (  # noqa: E402
    LatentAlignment,
    class_mean_distances,
    fit_alignment,
    read_class_map,
)
from napari_stexp.models.betavae import BVAEConfig, BVAEModel, train_bvae  # noqa: E402

PBMC_MAP = {"class0": "CD14+ Monocyte", "class1": "CD19+ B", "class2": "CD56+ NK"}


@pytest.fixture(scope="module")
def synth_cells():
    imgs, labels = synthetic_cell_images(6, 3, size=48, seed=2)
    return CellCropDataset.from_arrays(imgs, labels, size=32)


@pytest.fixture(scope="module")
def small_pbmc(pbmc_path):
    import warnings

    import anndata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad = anndata.read_h5ad(pbmc_path)
    keep = ad.obs["bulk_labels"].isin(list(PBMC_MAP.values())).to_numpy()
    ad = ad[keep, :].copy()
    raw = ad.raw.to_adata()[:, :150].copy()  # 150 genes keep the gene VAE tiny
    raw.obs = ad.obs.copy()
    return raw


@pytest.fixture(scope="module")
def aligned_model(synth_cells, small_pbmc, tmp_path_factory):
    out = tmp_path_factory.mktemp("bvae") / "model"
    torch.set_num_threads(1)
    model = train_bvae(synth_cells, genes=small_pbmc, class_map=PBMC_MAP,
                       config=BVAEConfig.tiny(epochs=3, gene_epochs=3), out_dir=out)
    return model, out


# --------------------------------------------------------------------------- alignment


def test_alignment_moves_class_means_together():
    rng = np.random.default_rng(0)
    d, k, n = 8, 4, 60
    means_img = rng.normal(0, 2, (k, d))
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    means_gene = means_img @ Q.T * 1.5 + rng.normal(0, 1, d)  # rotated, scaled, shifted
    zi = np.concatenate([m + rng.normal(0, 0.5, (n, d)) for m in means_img])
    zg = np.concatenate([m + rng.normal(0, 0.7, (n, d)) for m in means_gene])
    li = np.repeat([f"img{i}" for i in range(k)], n)
    lg = np.repeat([f"gene{i}" for i in range(k)], n)
    cmap = {f"img{i}": f"gene{i}" for i in range(k)}
    before = class_mean_distances(zi, li, zg, lg, cmap)
    al = fit_alignment(zi, li, zg, lg, cmap, ridge=0.01)
    after = class_mean_distances(al.transform(zi), li, zg, lg, cmap)
    assert np.mean(list(after.values())) < 0.1 * np.mean(list(before.values()))
    assert al.metrics["mean_distance_after"] < 0.1 * al.metrics["mean_distance_before"]
    # held-out cells of a class land nearest their own gene class mean
    new = means_img[2] + rng.normal(0, 0.5, (20, d))
    dist = np.linalg.norm(al.transform(new)[:, None] - means_gene[None], axis=2)
    assert (dist.argmin(1) == 2).mean() > 0.9
    # covariance is re-coloured: within-class spread moves towards the gene side's
    spread = np.std(al.transform(zi[li == "img0"]), axis=0).mean()
    assert abs(spread - 0.7) < abs(0.5 - 0.7)
    # round trip through json
    again = LatentAlignment.from_dict(json.loads(json.dumps(al.to_dict())))
    np.testing.assert_allclose(again.transform(zi[:5]), al.transform(zi[:5]), rtol=1e-5)


def test_class_map_with_unknown_class_lists_known_ones():
    zi, zg = np.zeros((4, 3)), np.zeros((4, 3))
    with pytest.raises(InputError, match=r"unknown image classes \['neutrophil'\].*known: "
                                         r"\['lymphocyte', 'monocyte'\]"):
        fit_alignment(zi, ["monocyte", "monocyte", "lymphocyte", "lymphocyte"], zg,
                      ["Mono", "Mono", "T", "T"], {"neutrophil": "Mono"})
    with pytest.raises(InputError, match=r"unknown gene classes \['B cell'\]"):
        fit_alignment(zi, ["monocyte", "monocyte", "lymphocyte", "lymphocyte"], zg,
                      ["Mono", "Mono", "T", "T"], {"monocyte": "B cell"})


def test_class_map_csv(tmp_path):
    p = tmp_path / "map.csv"
    p.write_text("image_class,gene_class\nmonocyte,CD14+ Monocyte\n"
                 "lymphocyte, CD4+/CD45RO+ Memory\nlymphocyte,CD19+ B\n")
    df = read_class_map(p)
    assert df.shape == (3, 2)
    assert df["gene_class"].tolist()[1] == "CD4+/CD45RO+ Memory"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,gene\nmonocyte,CD14+ Monocyte\n")
    with pytest.raises(InputError, match="image_class,gene_class"):
        read_class_map(bad)


def test_train_rejects_unknown_classes_before_training(synth_cells, small_pbmc):
    with pytest.raises(InputError, match=r"unknown image classes \['neutrophil'\]"):
        train_bvae(synth_cells, genes=small_pbmc, class_map={"neutrophil": "CD14+ Monocyte"},
                   config=BVAEConfig.tiny(epochs=50))
    with pytest.raises(InputError, match="needs expression data"):
        train_bvae(synth_cells, class_map=PBMC_MAP, config=BVAEConfig.tiny())


def test_aligned_model_decodes_images_to_expression(aligned_model, synth_cells, small_pbmc):
    model, out = aligned_model
    assert model.has_expression and len(model.genes) == 150
    expr = model.predict_expression(synth_cells)
    assert expr.shape == (len(synth_cells), 150)
    assert list(expr.columns) == list(small_pbmc.var_names)
    assert np.isfinite(expr.to_numpy()).all()
    m = model.alignment.metrics
    assert m["mean_distance_after"] < m["mean_distance_before"]
    loaded = BVAEModel.load(out)
    np.testing.assert_allclose(loaded.predict_expression(synth_cells).to_numpy(),
                               expr.to_numpy(), rtol=1e-5, atol=1e-5)


def test_expression_with_different_genes_is_refused(aligned_model, small_pbmc):
    model, _ = aligned_model
    z = model.embed_genes(small_pbmc)
    assert z.shape == (small_pbmc.n_obs, model.latent_dim)
    other = small_pbmc[:, :100].copy()
    with pytest.raises(InputError, match="different genes than the model"):
        model.embed_genes(other)
    # same genes in another order are fine (reordered, same latents)
    shuffled = small_pbmc[:, ::-1].copy()
    np.testing.assert_allclose(model.embed_genes(shuffled), z, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="different genes"):
        model.align(None, other, PBMC_MAP)


# --------------------------------------------------------------------------- traversal


def test_traversal_shape_and_ignored_dim_ranks_last(synth_cells):
    model = train_bvae(synth_cells, config=BVAEConfig.tiny(epochs=1))
    with torch.no_grad():
        model.image_vae.fc_dec.weight[:, 5] = 0.0  # the decoder ignores latent dim 5
    trav = latent_traversal(model, synth_cells, index=3, n_steps=5, span=3.0)
    d = model.latent_dim
    assert trav.images.shape == (d, 5, 32, 32, 3)
    assert trav.latents.shape == (d, 5, d)
    assert int(trav.ranking[-1]) == 5 and trav.all_scores[5] == pytest.approx(0.0, abs=1e-7)
    assert (np.delete(trav.all_scores, 5) > 1e-5).all()
    assert list(trav.dims) == list(trav.ranking)  # rank order by default
    assert np.all(np.diff(trav.scores) <= 1e-12)
    # each row varies only its own dim, symmetric around the cell's latent mean
    row = trav.latents[0]
    j = int(trav.dims[0])
    np.testing.assert_allclose(row[:, j] - trav.z0[j],
                               np.linspace(-3, 3, 5) * trav.sigma[j], rtol=1e-5, atol=1e-6)
    assert np.allclose(np.delete(row, j, axis=1), np.delete(trav.z0, j)[None])
    top = latent_traversal(model, synth_cells, index=3, n_steps=3, top=2, sigma="prior")
    assert top.images.shape == (2, 3, 32, 32, 3) and np.allclose(top.sigma, 1.0)
    grid = top.grid(gap=2)
    assert grid.shape == (2 * 34 - 2, 3 * 34 - 2, 3) and grid.dtype == np.uint8


# --------------------------------------------------------------------------- trajectory


def test_linear_trajectory_ends_on_the_two_cells(aligned_model, synth_cells):
    model, _ = aligned_model
    z = model.embed(synth_cells)
    traj = latent_trajectory(model, synth_cells, synth_cells, start_index=0, end_index=17,
                             n_steps=6)
    np.testing.assert_allclose(traj.latents[0], z[0], atol=1e-5)
    np.testing.assert_allclose(traj.latents[-1], z[17], atol=1e-5)
    np.testing.assert_allclose(traj.images[0], model.decode(z[:1])[0], atol=1e-5)
    assert traj.images.shape == (6, 32, 32, 3)
    assert traj.expression.shape == (6, 150) and traj.expression.index.name == "step"
    assert len(traj.top_genes(5)) == 5


def test_gp_path_is_pinned_and_follows_the_data():
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 1, 200)
    bend = np.stack([t, 0.8 * np.sin(np.pi * t)], 1)  # data lie on an arc from (0,0) to (1,0)
    ref = bend + rng.normal(0, 0.03, bend.shape)
    a, b = np.zeros(2), np.array([1.0, 0.0])
    ts = np.linspace(0, 1, 11)
    path = gp_path(a, b, ts, ref, n_neighbours=200, length_scale=0.3, noise=0.05)
    np.testing.assert_allclose(path[0], a, atol=1e-3)
    np.testing.assert_allclose(path[-1], b, atol=1e-3)
    line = np.stack([ts, np.zeros_like(ts)], 1)

    def to_data(p):
        return np.linalg.norm(p[:, None] - ref[None], axis=2).min(1).mean()

    assert to_data(path) < 0.3 * to_data(line)
    assert abs(path[5, 1] - 0.8) < 0.15


def test_trajectory_gp_needs_reference(aligned_model):
    model, _ = aligned_model
    z = np.zeros(model.latent_dim, np.float32)
    with pytest.raises(InputError, match="reference"):
        latent_trajectory(model, z, z + 1, method="gp")


# --------------------------------------------------------------------------- CLI


@pytest.fixture(autouse=False)
def cli_main(monkeypatch):
    """``napari_stexp.cli.main`` with the bvae command registered (the lead lists it in
    COMMAND_MODULES; this keeps the tests independent of that edit)."""
    from napari_stexp import cli

    if "napari_stexp.commands.bvae" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES",
                            [*cli.COMMAND_MODULES, "napari_stexp.commands.bvae"])
    return cli.main


def _pbc_table(pbc_dir, tmp_path, per_class=2):
    t = pd.read_csv(pbc_dir / "labels.csv").groupby("label", group_keys=False).head(per_class)
    table = pd.DataFrame({"path": [str(pbc_dir / p) for p in t["image_path"]],
                          "label": t["label"].to_numpy()})
    p = tmp_path / "cells.csv"
    table.to_csv(p, index=False)
    return p, table


def test_cli_train_embed_traverse_on_real_pbc(pbc_dir, tmp_path, capsys, cli_main):
    import anndata
    import tifffile

    main = cli_main

    cells, table = _pbc_table(pbc_dir, tmp_path)
    model_dir = tmp_path / "model"
    rc = main(["bvae", "train", "--cells", str(cells), "--out", str(model_dir), "--tiny",
               "--epochs", "2", "--latent-dim", "6", "--seed", "3"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["cells"] == 16 and summary["aligned"] is False
    assert (model_dir / "config.json").is_file() and (model_dir / "weights.pt").is_file()

    emb = tmp_path / "emb.h5ad"
    assert main(["bvae", "embed", "--model", str(model_dir), "--cells", str(cells),
                 "--out", str(emb)]) == 0
    ad = anndata.read_h5ad(emb)
    assert ad.obsm["X_bvae"].shape == (16, 6)
    assert list(ad.obs["label"].astype(str)) == list(table["label"])
    prov = ad.uns["napari_stexp"]
    assert prov["model"] == "bvae" and int(prov["seed"]) == 3
    assert json.loads(prov["parameters"])["latent_dim"] == 6
    model = BVAEModel.load(model_dir)
    np.testing.assert_allclose(ad.obsm["X_bvae"], model.embed(str(cells)), rtol=1e-5)

    grid = tmp_path / "grid.tif"
    ranking = tmp_path / "rank.csv"
    assert main(["bvae", "traverse", "--model", str(model_dir), "--cell", table["path"][0],
                 "--out", str(grid), "--steps", "5", "--ranking", str(ranking)]) == 0
    img = tifffile.imread(grid)
    assert img.shape == (6 * 34 - 2, 5 * 34 - 2, 3) and img.dtype == np.uint8
    with tifffile.TiffFile(grid) as tf:
        meta = json.loads(tf.pages[0].description)
    rank = pd.read_csv(ranking)
    assert meta["dims"] == rank["dim"].tolist() and rank["rank"].tolist() == list(range(1, 7))
    assert np.all(np.diff(meta["scores"]) <= 1e-9)


def test_cli_train_with_genes_and_bad_class_map(pbc_dir, pbmc_path, tmp_path, capsys,
                                                cli_main):
    main = cli_main

    cells, _ = _pbc_table(pbc_dir, tmp_path, per_class=2)
    bad = tmp_path / "bad_map.csv"
    bad.write_text("image_class,gene_class\nmyeloblast,CD14+ Monocyte\n")
    rc = main(["bvae", "train", "--cells", str(cells), "--genes", str(pbmc_path),
               "--class-map", str(bad), "--out", str(tmp_path / "m"), "--tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown image classes ['myeloblast']" in err and "monocyte" in err
    assert not (tmp_path / "m" / "config.json").exists()
    good = tmp_path / "map.csv"
    good.write_text("image_class,gene_class\nmonocyte,CD14+ Monocyte\n"
                    "lymphocyte,CD4+/CD45RO+ Memory\nlymphocyte,CD8+ Cytotoxic T\n")
    rc = main(["bvae", "train", "--cells", str(cells), "--genes", str(pbmc_path),
               "--class-map", str(good), "--out", str(tmp_path / "m"), "--tiny",
               "--epochs", "1", "--gene-epochs", "1"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["aligned"] is True
    emb = tmp_path / "emb.h5ad"
    assert main(["bvae", "embed", "--model", str(tmp_path / "m"), "--cells", str(cells),
                 "--out", str(emb), "--expression"]) == 0
    import anndata

    ad = anndata.read_h5ad(emb)
    assert ad.shape == (16, 765) and "X_bvae_gene" in ad.obsm


def test_cli_traverse_on_a_crop_without_cell(tmp_path, aligned_model, capsys, cli_main):
    from PIL import Image

    main = cli_main

    _, model_dir = aligned_model
    empty = tmp_path / "empty.png"
    Image.fromarray(np.full((60, 60, 3), (240, 225, 205), np.uint8)).save(empty)
    rc = main(["bvae", "traverse", "--model", str(model_dir), "--cell", str(empty),
               "--out", str(tmp_path / "g.tif")])
    assert rc == 2 and "empty.png" in capsys.readouterr().err
    assert not (tmp_path / "g.tif").exists()
