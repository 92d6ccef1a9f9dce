"""β-VAE on the PBC images: kNN accuracy of the latent means for the 8 classes, against PCA of
the raw pixels (same crops, same number of dimensions), measured in the same run.

Protocol: both embeddings are fitted without labels on all crops (the β-VAE trains on the images,
PCA on the pixels), then a k-nearest-neighbour classifier (k = 5) is scored by stratified 5-fold
cross-validation on each embedding; labels are only ever seen by the kNN. One JSON line per
figure:

- ``bvae_knn_pbc``: ``bvae_knn_acc`` vs ``pca_knn_acc`` (raw pixels) and ``pca_masked_knn_acc``
  (pixels × cell mask), ``ratio = bvae / pca``;
- ``bvae_recon_pbc``: masked MSE of the trained β-VAE against the untrained one and against the
  PCA reconstruction with the same number of components.

The default run uses 64 × 64 crops (not the model's 128 default) to stay within ~10 minutes on
2 CPU cores; ``--size 128`` runs the full-size model. ``--quick`` takes 10 cells per class at
32 px, 30 epochs, for a one-minute smoke run. Called by ``benchmarks/cells.py`` through :func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

DEFAULTS = dict(data=None, size=64, epochs=40, latent_dim=50, base_channels=16, beta=4.0,
                bg_weight=0.0, batch_size=32, per_class=None, k=5, folds=5, seed=0,
                threads=None, save_model=None)


OPTIONS = [  # (flag, type, help); dest is "bvae_<flag>" so callers' own flags never collide
    ("data", str, "PBC folder (default $STEXP_DATA/pbc-wbc)"),
    ("size", int, "crop size in px (64; the model default is 128)"),
    ("epochs", int, "β-VAE epochs (40)"),
    ("latent-dim", int, "latent size = PCA components (50)"),
    ("base-channels", int, "conv width (16)"),
    ("beta", float, "KL weight β (4)"),
    ("bg-weight", float, "background pixel weight (0)"),
    ("batch-size", int, "batch size (32)"),
    ("per-class", int, "cells per class (all 60)"),
    ("k", int, "neighbours (5)"),
    ("folds", int, "cross-validation folds (5)"),
    ("seed", int, "seed (0)"),
    ("threads", int, "torch threads (torch's default)"),
    ("save-model", str, "also save the trained model to this directory"),
]


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "bvae-") -> None:
    """Add this benchmark's flags (``--bvae-epochs`` ... when embedded in another script)."""
    for flag, typ, help_ in OPTIONS:
        dest = "bvae_" + flag.replace("-", "_")
        parser.add_argument(f"--{prefix}{flag}", dest=dest, metavar=flag.split("-")[0].upper(),
                            type=typ, default=None, help=help_)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p, prefix="")
    p.add_argument("--quick", action="store_true",
                   help="10 cells/class, 32 px, 30 epochs (about a minute)")
    return p


def _arg(args, name):
    v = getattr(args, "bvae_" + name, None) if args is not None else None
    return DEFAULTS[name] if v is None else v


def _knn_acc(X: np.ndarray, y: np.ndarray, k: int, folds: int, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = max(2, min(folds, int(np.bincount(np.unique(y, return_inverse=True)[1]).min())))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(k), X, y, cv=cv).mean())


def run(args: argparse.Namespace | None = None) -> list[dict]:
    """Run the benchmark, print one JSON line per figure and return them."""
    import pandas as pd
    import torch

    from napari_stexp.data.cells import CellCropDataset, crop_table
    from napari_stexp.datasets import data_path
    from napari_stexp.models.betavae import BVAEConfig, train_bvae

    quick = bool(getattr(args, "quick", False))
    size = 32 if quick else int(_arg(args, "size"))
    epochs = 30 if quick else int(_arg(args, "epochs"))
    per_class = 10 if quick else _arg(args, "per_class")
    latent = int(_arg(args, "latent_dim"))
    base = 8 if quick else int(_arg(args, "base_channels"))
    k, folds, seed = int(_arg(args, "k")), int(_arg(args, "folds")), int(_arg(args, "seed"))
    if _arg(args, "threads"):
        torch.set_num_threads(int(_arg(args, "threads")))
    folder = _arg(args, "data") or data_path("pbc-wbc")

    t0 = time.perf_counter()
    table = crop_table(folder)
    if per_class:
        table = table.groupby("label", group_keys=False).head(int(per_class))
    cells = CellCropDataset.from_table(pd.DataFrame(table).reset_index(drop=True), size=size)
    load_s = time.perf_counter() - t0
    y = cells.labels.astype(str)
    n = len(cells)

    config = BVAEConfig(latent_dim=latent, base_channels=base, image_size=size,
                        beta=float(_arg(args, "beta")), bg_weight=float(_arg(args, "bg_weight")),
                        epochs=epochs, batch_size=int(_arg(args, "batch_size")), seed=seed)
    untrained = train_bvae(cells, config=dataclasses.replace(config, epochs=0))
    err_untrained = float(untrained.reconstruction_error(cells).mean())
    t0 = time.perf_counter()
    model = train_bvae(cells, config=config)
    train_s = time.perf_counter() - t0
    if _arg(args, "save_model"):
        model.save(_arg(args, "save_model"))
    z = model.embed(cells)
    err_trained = float(model.reconstruction_error(cells).mean())

    from sklearn.decomposition import PCA

    dims = min(latent, n - 1)
    pixels = cells.images.reshape(n, -1)
    masked = (cells.images * cells.masks[..., None]).reshape(n, -1)
    t0 = time.perf_counter()
    pca = PCA(dims, random_state=seed).fit(pixels)
    p_raw = pca.transform(pixels)
    pca_s = time.perf_counter() - t0
    p_masked = PCA(dims, random_state=seed).fit_transform(masked)
    rec = pca.inverse_transform(p_raw).reshape(cells.images.shape)
    w = cells.masks[..., None]
    err_pca = float((((rec - cells.images) ** 2 * w).sum((1, 2, 3))
                     / (3 * cells.masks.sum((1, 2)))).mean())

    acc_bvae = _knn_acc(z, y, k, folds, seed)
    acc_pca = _knn_acc(p_raw, y, k, folds, seed)
    acc_pca_m = _knn_acc(p_masked, y, k, folds, seed)
    common = {"n_cells": n, "n_classes": len(set(y)), "image_size": size, "latent_dim": latent,
              "pca_dims": dims, "epochs": epochs, "beta": config.beta,
              "bg_weight": config.bg_weight, "base_channels": base, "seed": seed,
              "torch_threads": torch.get_num_threads(), "quick": quick}
    figures = [
        {"name": "bvae_knn_pbc", "bvae_knn_acc": round(acc_bvae, 4),
         "pca_knn_acc": round(acc_pca, 4), "pca_masked_knn_acc": round(acc_pca_m, 4),
         "ratio": round(acc_bvae / acc_pca, 4) if acc_pca else None,
         "chance": round(1 / len(set(y)), 4), "k": k, "folds": folds,
         "active_dims": model.latent_stats.get("active_dims"),
         "train_seconds": round(train_s, 1), "pca_seconds": round(pca_s, 2),
         "load_seconds": round(load_s, 1), **common},
        {"name": "bvae_recon_pbc", "masked_mse_trained": round(err_trained, 5),
         "masked_mse_untrained": round(err_untrained, 5), "masked_mse_pca": round(err_pca, 5),
         "ratio_untrained_over_trained": round(err_untrained / err_trained, 2), **common},
    ]
    for f in figures:
        print(json.dumps(f), flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
