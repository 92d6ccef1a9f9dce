"""Helpers shared by the expression tests: synthetic slide pairs that follow one expression law."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from napari_stexp.data.synthetic_slide import make_synthetic_slide

#: Small, fast synthetic slides: 2.8 µm/px puts a 14 × 14 spot grid on a ~1070 px image.
MPP = 2.8


def same_law(target, source, seed: int = 0):
    """``target``'s AnnData with counts re-simulated from ``source``'s gene weights.

    ``make_synthetic_slide`` draws new gene weights per seed, so two slides with different seeds
    follow different image→expression laws; a model trained on one can only be tested on the
    other if both follow the same law. Per-gene baselines are estimated from ``source``.
    """
    rng = np.random.default_rng(seed)
    F = target.features
    Z = ((F - F.mean()) / F.std(ddof=0).replace(0, 1)).to_numpy(np.float32)
    c = source.adata.layers["counts"]
    c = c.toarray() if sp.issparse(c) else np.asarray(c)
    prop_s = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    base = np.log(prop_s.mean(axis=0) + 1e-6)
    log_rate = base + Z @ source.gene_weights
    prop = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    prop /= prop.sum(axis=1, keepdims=True)
    lib = 3000.0 * np.exp(rng.normal(0, 0.3, len(Z)))
    mu = prop * lib[:, None]
    counts = rng.poisson(rng.gamma(10.0, mu / 10.0)).astype(np.float32)
    adata = target.adata.copy()
    adata.X = sp.csr_matrix(counts)
    adata.layers["counts"] = adata.X.copy()
    return adata


def synthetic_pair(n: int = 14, n_genes: int = 30, seeds=(1, 2), names=("TRAIN", "TEST")):
    """Two synthetic sections (different images) with one expression law: ``(adatas, images)``."""
    a = make_synthetic_slide(n, n, n_genes=n_genes, seed=seeds[0], mpp=MPP, section=names[0],
                             patient="P1")
    b = make_synthetic_slide(n, n, n_genes=n_genes, seed=seeds[1], mpp=MPP, section=names[1],
                             patient="P2")
    adatas = {names[0]: a.adata, names[1]: same_law(b, a, seed=seeds[1])}
    images = {names[0]: a.pyramid, names[1]: b.pyramid}
    return adatas, images


def untrained_expression_model(n: int = 8, n_genes: int = 12):
    """``(model, test pyramid)``: an mclSTExp model with 0 epochs on a tiny synthetic pair (the
    whole-slide writers' tests need a model, not a trained one)."""
    import torch

    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = synthetic_pair(n=n, n_genes=n_genes)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_expression_model({"TRAIN": adatas["TRAIN"]}, images={
            "TRAIN": images["TRAIN"]}, epochs=0, backbone="tinycnn", input_size=32,
            cache_dir=False, device="cpu"), images["TEST"]
    finally:
        torch.set_num_threads(old)
