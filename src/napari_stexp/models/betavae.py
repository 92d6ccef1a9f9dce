"""The multimodal β-VAE for white blood cells (after Mert, Sadafi, Salehi, Navab & Marr, MICCAI
2024 workshop): an image β-VAE on single-cell crops, a gene VAE on single-cell expression with a
latent of the same size, and an alignment of the two latent spaces over the cell classes both
modalities share, so a cell image can be decoded to an expected expression profile.

- :class:`ImageBetaVAE`: conv encoder/decoder for 3 × S × S crops (S = 128 by default). Loss =
  reconstruction inside the cell's soft mask (Gaussian, pixel noise ``recon_sigma``; pixel weight
  ``bg_weight + (1 - bg_weight) · mask``, so with ``bg_weight = 0`` the background does not count
  at all) + β · KL (β = 4 by default).
  The decoder also predicts the cell mask (``mask_weight`` · BCE) so decoded cells can be shown on
  a clean background; an optional head reconstructs Mask R-CNN RoI features.
- :class:`GeneVAE`: MLP VAE on log-normalised expression with a Gaussian likelihood (learned
  per-gene variance): the right choice for log data without raw counts (e.g. pbmc68k-reduced).
- :func:`train_bvae` trains both through the shared engine (device, seeds, atomic checkpoints,
  resume, cancel, progress), then fits the alignment
  (:mod:`napari_stexp.models.alignment`) and returns a :class:`BVAEModel`, which saves/loads
  as ``config.json`` + ``weights.pt`` and embeds cells as latent means.

This module imports torch at the top; nothing imported at plugin start imports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, report

FORMAT = "napari-stexp/bvae"  # before the model-folder contract: "napari-stexp.bvae"
FORMAT_VERSION = 2  # 2: the model-folder contract (digests of every file); 1 opens
GENE_LABEL_KEYS = ("label", "cell_type", "celltype", "bulk_labels", "louvain", "leiden")


# --------------------------------------------------------------------------- config


@dataclass
class BVAEConfig:
    """Every parameter of a β-VAE run (saved with the model)."""

    latent_dim: int = 50
    base_channels: int = 32
    image_size: int = 128
    beta: float = 4.0
    recon_sigma: float = 0.1  # Gaussian pixel noise σ: reconstruction = Σ w (x̂ − x)² / 2σ²
    bg_weight: float = 0.0
    mask_weight: float = 0.1  # BCE of the predicted cell mask (0 = no mask head loss)
    roi_dim: int = 0  # >0: reconstruct Mask R-CNN RoI features of this size
    roi_weight: float = 1.0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    augment: bool = True  # random flips / 90° rotations (cells have no orientation)
    seed: int = 0
    device: str = "auto"
    # gene VAE
    gene_hidden: tuple[int, ...] = (256, 128)
    gene_beta: float = 1.0
    gene_epochs: int = 60
    gene_batch_size: int = 64
    gene_lr: float = 1e-3
    gene_label_key: str | None = None
    # alignment
    align_ridge: float = 0.1
    align_shrinkage: float = 0.1

    @classmethod
    def tiny(cls, **overrides) -> BVAEConfig:
        """A seconds-scale configuration for tests and demos (32 px crops, 8-d latent)."""
        base = dict(latent_dim=8, base_channels=8, image_size=32, epochs=2, batch_size=16,
                    gene_hidden=(32,), gene_epochs=3, gene_batch_size=64)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gene_hidden"] = list(self.gene_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BVAEConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "gene_hidden" in kw:
            kw["gene_hidden"] = tuple(int(v) for v in kw["gene_hidden"])
        return cls(**kw)

    def check(self) -> None:
        s = self.image_size
        if s < 16 or s & (s - 1):
            raise InputError("config", f"image_size must be a power of two >= 16, got {s}")
        if self.latent_dim < 1 or self.base_channels < 1:
            raise InputError("config", "latent_dim and base_channels must be >= 1")
        if self.beta < 0 or not 0 <= self.bg_weight <= 1:
            raise InputError("config", "beta must be >= 0 and bg_weight in [0, 1]")


# --------------------------------------------------------------------------- networks


class ImageBetaVAE(nn.Module):
    """Conv β-VAE for 3 × S × S crops: stride-2 convs down to 4 × 4, a linear layer to
    (μ, log σ²), and the mirror image up to RGB (sigmoid) + a mask logit channel."""

    def __init__(self, latent_dim: int = 50, base_channels: int = 32, image_size: int = 128,
                 roi_dim: int = 0):
        super().__init__()
        self.latent_dim, self.image_size, self.roi_dim = latent_dim, image_size, roi_dim
        n_down = int(round(math.log2(image_size / 4)))
        chans = [min(base_channels * 2 ** i, base_channels * 8) for i in range(n_down)]
        enc, c_in = [], 3
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, 2, 1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)]
            c_in = c
        self.encoder = nn.Sequential(*enc)
        self._top = (chans[-1], 4, 4)
        flat = chans[-1] * 16
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)
        self.fc_dec = nn.Linear(latent_dim, flat)
        dec = []
        rev = chans[::-1]
        last = max(base_channels // 2, 4)  # the full-resolution stage is the costly one
        for i, c in enumerate(rev):
            c_out = rev[i + 1] if i + 1 < len(rev) else last
            dec += [nn.ConvTranspose2d(c, c_out, 4, 2, 1), nn.BatchNorm2d(c_out),
                    nn.LeakyReLU(0.2)]
        self.decoder = nn.Sequential(*dec)
        self.to_rgb = nn.Conv2d(last, 3, 3, 1, 1)
        self.to_mask = nn.Conv2d(last, 1, 3, 1, 1)
        if roi_dim:
            self.roi_head = nn.Sequential(nn.Linear(latent_dim, 256), nn.LeakyReLU(0.2),
                                          nn.Linear(256, roi_dim))
            self.register_buffer("roi_mean", torch.zeros(roi_dim))
            self.register_buffer("roi_std", torch.ones(roi_dim))
        else:
            self.roi_head = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.fc_dec(z).view(-1, *self._top)
        h = self.decoder(F.leaky_relu(h, 0.2))
        out = {"recon": torch.sigmoid(self.to_rgb(h)), "mask_logit": self.to_mask(h)}
        if self.roi_head is not None:
            out["roi"] = self.roi_head(z)
        return out

    def forward(self, x: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        out = self.decode(z)
        out.update(mu=mu, logvar=logvar, z=z)
        return out


class GeneVAE(nn.Module):
    """MLP VAE on log-normalised expression; Gaussian likelihood with a learned per-gene
    log-variance (log data, no counts -> no NB/ZINB)."""

    def __init__(self, n_genes: int, latent_dim: int = 50, hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        self.n_genes, self.latent_dim = n_genes, latent_dim
        layers, d = [], n_genes
        for h in hidden:
            layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.LeakyReLU(0.2)]
            d = h
        self.encoder = nn.Sequential(*layers)
        self.fc_mu, self.fc_logvar = nn.Linear(d, latent_dim), nn.Linear(d, latent_dim)
        layers, d = [], latent_dim
        for h in hidden[::-1]:
            layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.LeakyReLU(0.2)]
            d = h
        layers.append(nn.Linear(d, n_genes))
        self.decoder = nn.Sequential(*layers)
        self.gene_logvar = nn.Parameter(torch.zeros(n_genes))
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("gene_scale", torch.ones(n_genes))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder((x - self.gene_mean) / self.gene_scale)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Expected log-normalised expression."""
        return self.decoder(z) * self.gene_scale + self.gene_mean

    def forward(self, x: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return {"recon": self.decode(z), "mu": mu, "logvar": logvar, "z": z}


# --------------------------------------------------------------------------- losses


def pixel_weights(mask: torch.Tensor, bg_weight: float) -> torch.Tensor:
    """Per-pixel loss weight: 1 on the cell, ``bg_weight`` on the background."""
    return bg_weight + (1.0 - bg_weight) * mask


def masked_recon_loss(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                      bg_weight: float = 0.0) -> torch.Tensor:
    """Per-sample Σ w · (x̂ − x)² over pixels and channels (Gaussian log-likelihood up to a
    constant), ``w`` from :func:`pixel_weights`. Shape (N,)."""
    w = pixel_weights(mask, bg_weight)
    return (w * (recon - x) ** 2).flatten(1).sum(1)


def masked_mse(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error inside the (soft) mask, per sample: the reconstruction metric."""
    w = mask.expand_as(x)
    return (w * (recon - x) ** 2).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-6)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) per sample and latent dim, shape (N, d)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def bvae_loss(out: dict, x: torch.Tensor, mask: torch.Tensor, *, beta: float = 4.0,
              bg_weight: float = 0.0, recon_sigma: float = 0.1, mask_weight: float = 0.0,
              roi: torch.Tensor | None = None, roi_weight: float = 1.0, roi_mean=None,
              roi_std=None) -> dict[str, torch.Tensor]:
    """β-VAE loss terms, batch means: ``total = recon + β·kl (+ mask + roi)`` with
    ``recon`` the masked Gaussian negative log-likelihood (pixel noise ``recon_sigma``, up to a
    constant)."""
    scale = 1.0 / (2.0 * recon_sigma ** 2)
    recon = scale * masked_recon_loss(out["recon"], x, mask, bg_weight).mean()
    kl = kl_divergence(out["mu"], out["logvar"]).sum(1).mean()
    total = recon + beta * kl
    terms = {"recon": recon, "kl": kl}
    if mask_weight > 0 and "mask_logit" in out:
        bce = F.binary_cross_entropy_with_logits(out["mask_logit"], mask, reduction="none")
        m = mask.clamp(1e-6, 1 - 1e-6)  # minus the soft target's entropy: 0 when perfect
        bce = bce + m * torch.log(m) + (1 - m) * torch.log1p(-m)
        terms["mask"] = bce.flatten(1).sum(1).mean()
        total = total + mask_weight * terms["mask"]
    if roi is not None and out.get("roi") is not None:
        target = roi if roi_mean is None else (roi - roi_mean) / roi_std
        terms["roi"] = ((out["roi"] - target) ** 2).sum(1).mean()
        total = total + roi_weight * terms["roi"]
    terms["total"] = total
    return terms


def gene_loss(out: dict, x: torch.Tensor, gene_logvar: torch.Tensor, beta: float = 1.0
              ) -> dict[str, torch.Tensor]:
    """Gaussian NLL (per-gene variance) + β·KL, batch means."""
    lv = gene_logvar.clamp(-8.0, 4.0)
    nll = 0.5 * ((x - out["recon"]) ** 2 / lv.exp() + lv + math.log(2 * math.pi))
    nll = nll.sum(1).mean()
    kl = kl_divergence(out["mu"], out["logvar"]).sum(1).mean()
    return {"nll": nll, "kl": kl, "total": nll + beta * kl}


# --------------------------------------------------------------------------- expression data


def expression_matrix(adata, source: Any = None) -> tuple[np.ndarray, list[str]]:
    """Log-normalised dense expression and gene names from an AnnData.

    Order of preference: ``layers['counts']`` (normalised + log1p here), ``raw.X`` (used as is
    when it is log data, normalised when it holds counts), ``X`` (same rule). A z-scored ``X``
    with no ``raw`` is refused: a Gaussian on log expression needs log expression.
    """
    import scipy.sparse as sp

    from ..data.genes import expression_transform

    def dense(m):
        return np.asarray(m.toarray() if sp.issparse(m) else m, np.float32)

    def countlike(m):
        v = m.data if sp.issparse(m) else np.asarray(m)
        v = np.asarray(v).ravel()[:200_000]
        return v.size > 0 and v.min() >= 0 and np.allclose(v, np.round(v)) and v.max() > 1

    if "counts" in adata.layers:
        return expression_transform(adata.layers["counts"], library="all"), [str(g) for g in adata.var_names]
    if adata.raw is not None:
        X = adata.raw.X
        names = [str(g) for g in adata.raw.var_names]
    else:
        X, names = adata.X, [str(g) for g in adata.var_names]
    if countlike(X):
        return expression_transform(X, library="all"), names
    Xd = dense(X)
    if Xd.min() < -1e-6:
        raise InputError(source, "expression has negative values (scaled?) and no raw counts "
                                 "or raw log data: give log-normalised expression")
    return Xd, names


def gene_labels(adata, key: str | None = None, source: Any = None) -> tuple[np.ndarray, str]:
    """Cell-type labels of an expression AnnData (``key`` or the first of GENE_LABEL_KEYS)."""
    if key is None:
        key = next((k for k in GENE_LABEL_KEYS if k in adata.obs.columns), None)
        if key is None:
            raise InputError(source, "no cell-type column in obs (expected one of "
                                     f"{', '.join(GENE_LABEL_KEYS)}; set gene_label_key)")
    elif key not in adata.obs.columns:
        raise InputError(source, f"obs has no column {key!r} (columns: "
                                 f"{', '.join(map(str, adata.obs.columns))})")
    return adata.obs[key].astype(str).to_numpy(), key


def read_genes(genes) -> tuple[Any, str]:
    """AnnData or an .h5ad path -> (AnnData, source name)."""
    if isinstance(genes, str | os.PathLike):
        p = Path(genes)
        if not p.is_file():
            raise InputError(p, "expression file not found")
        import anndata

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return anndata.read_h5ad(p), str(p)
        except Exception as exc:
            raise InputError(p, f"cannot read h5ad ({type(exc).__name__}: {exc})") from exc
    return genes, "expression"


# --------------------------------------------------------------------------- the model


@dataclass
class BVAEModel:
    """A trained β-VAE (+ optional gene VAE and alignment): embed, decode, save, load."""

    config: BVAEConfig
    image_vae: ImageBetaVAE
    gene_vae: GeneVAE | None = None
    genes: list[str] | None = None
    gene_label_key: str | None = None
    alignment: Any = None  # models.alignment.LatentAlignment
    class_map: list[tuple[str, str]] | None = None
    classes: list[str] = field(default_factory=list)
    latent_stats: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    # --- helpers
    @property
    def device(self) -> torch.device:
        return next(self.image_vae.parameters()).device

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    @property
    def has_expression(self) -> bool:
        return self.gene_vae is not None and self.alignment is not None

    def _cells(self, cells):
        from ..data.cells import CellCropDataset, load_cells

        if isinstance(cells, CellCropDataset):
            return cells.resized(self.config.image_size)
        return load_cells(cells, size=self.config.image_size)

    # --- image side
    @torch.no_grad()
    def encode(self, cells, batch_size: int = 64, cancel: CancelFlag | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and log-variances (N, d) of ``cells`` (dataset or path)."""
        from ..progress import check_cancel

        ds = self._cells(cells)
        x, _ = ds.tensors()
        self.image_vae.eval()
        mus, lvs = [], []
        for i in range(0, len(ds), batch_size):
            check_cancel(cancel, "embedding")
            mu, lv = self.image_vae.encode(x[i:i + batch_size].to(self.device))
            mus.append(mu.cpu().numpy())
            lvs.append(lv.cpu().numpy())
        return np.concatenate(mus).astype(np.float32), np.concatenate(lvs).astype(np.float32)

    def embed(self, cells, batch_size: int = 64, cancel: CancelFlag | None = None) -> np.ndarray:
        """Latent means (N, latent_dim): the cells' embedding."""
        return self.encode(cells, batch_size, cancel)[0]

    @torch.no_grad()
    def decode(self, z: np.ndarray, batch_size: int = 64, composite: bool = True
               ) -> np.ndarray:
        """Latent vectors (N, d) -> images (N, S, S, 3) float32 in [0, 1]. With ``composite``
        the decoded cell (predicted mask) is laid on the training crops' background colour,
        which hides the unconstrained background when ``bg_weight`` is 0."""
        z = np.atleast_2d(np.asarray(z, np.float32))
        if z.shape[1] != self.latent_dim:
            raise InputError("latent", f"expected {self.latent_dim} dims, got {z.shape[1]}")
        self.image_vae.eval()
        bg = torch.tensor(self.latent_stats.get("background", [0.9, 0.85, 0.8]),
                          dtype=torch.float32).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(z), batch_size):
            d = self.image_vae.decode(torch.from_numpy(z[i:i + batch_size]).to(self.device))
            rgb = d["recon"].cpu()
            if composite and self.config.mask_weight > 0:
                m = torch.sigmoid(d["mask_logit"]).cpu()
                m = torch.clamp((m - 0.2) / 0.6, 0, 1)
                rgb = rgb * m + bg * (1 - m)
            out.append(rgb.permute(0, 2, 3, 1).numpy())
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def decode_masks(self, z: np.ndarray) -> np.ndarray:
        """Predicted cell masks (N, S, S) in [0, 1] for latent vectors."""
        z = np.atleast_2d(np.asarray(z, np.float32))
        self.image_vae.eval()
        d = self.image_vae.decode(torch.from_numpy(z).to(self.device))
        return torch.sigmoid(d["mask_logit"])[:, 0].cpu().numpy()

    @torch.no_grad()
    def reconstruction_error(self, cells, batch_size: int = 64) -> np.ndarray:
        """Masked MSE per cell of the mean reconstruction (decode(μ))."""
        ds = self._cells(cells)
        x, m = ds.tensors()
        self.image_vae.eval()
        errs = []
        for i in range(0, len(ds), batch_size):
            xb, mb = x[i:i + batch_size].to(self.device), m[i:i + batch_size].to(self.device)
            out = self.image_vae(xb, sample=False)
            errs.append(masked_mse(out["recon"], xb, mb).cpu().numpy())
        return np.concatenate(errs)

    def latent_sigma(self, kind: str = "posterior") -> np.ndarray:
        """Traversal scale per dim: the training posterior spread (``sqrt(Var μ + E σ²)``,
        the aggregate posterior) or 1 for the prior."""
        if kind == "prior" or "std" not in self.latent_stats:
            return np.ones(self.latent_dim, np.float32)
        return np.asarray(self.latent_stats["std"], np.float32)

    # --- expression side
    def check_genes(self, names, source: Any = "expression") -> np.ndarray:
        """Index that reorders ``names`` to the model's genes; ``InputError`` if they differ."""
        if self.genes is None:
            raise InputError(source, "this model has no gene VAE (train with --genes)")
        names = [str(g) for g in names]
        pos = {g: i for i, g in enumerate(names)}
        missing = [g for g in self.genes if g not in pos]
        extra = len(set(names) - set(self.genes))
        if missing or extra:
            raise InputError(source, f"expression has different genes than the model: "
                                     f"{len(missing)} of the model's {len(self.genes)} genes "
                                     f"missing (e.g. {', '.join(missing[:5]) or '-'}), "
                                     f"{extra} extra")
        return np.array([pos[g] for g in self.genes])

    @torch.no_grad()
    def embed_genes(self, genes, batch_size: int = 256) -> np.ndarray:
        """Gene-VAE latent means (N, d) of an expression AnnData with the model's genes."""
        adata, src = read_genes(genes)
        X, names = expression_matrix(adata, src)
        X = X[:, self.check_genes(names, src)]
        self.gene_vae.eval()
        out = []
        dev = next(self.gene_vae.parameters()).device
        for i in range(0, len(X), batch_size):
            out.append(self.gene_vae.encode(torch.from_numpy(X[i:i + batch_size]).to(dev))[0]
                       .cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def decode_genes(self, z_gene: np.ndarray) -> np.ndarray:
        """Gene-latent vectors -> expected log-normalised expression (N, G), clipped at 0
        (log1p expression is never negative; the Gaussian decoder's mean can dip below)."""
        if self.gene_vae is None:
            raise InputError("model", "this model has no gene VAE (train with --genes)")
        self.gene_vae.eval()
        dev = next(self.gene_vae.parameters()).device
        z = torch.from_numpy(np.atleast_2d(np.asarray(z_gene, np.float32))).to(dev)
        return self.gene_vae.decode(z).clamp_min(0.0).cpu().numpy().astype(np.float32)

    def expression_from_latent(self, z_image: np.ndarray):
        """Image-latent vectors -> expected expression (DataFrame rows × genes) through the
        alignment and the gene decoder."""
        import pandas as pd

        if not self.has_expression:
            raise InputError("model", "this model has no aligned gene VAE (train with --genes "
                                      "and --class-map)")
        expr = self.decode_genes(self.alignment.transform(np.atleast_2d(z_image)))
        return pd.DataFrame(expr, columns=self.genes)

    def embed_adata(self, cells, *, model_dir: Any = None, source: Any = None,
                    expression: bool = False, obs_names=None, provenance: dict | None = None):
        """The embedding AnnData (``bvae embed`` and the batch embed task): latent means in
        ``obsm['X_bvae']`` (and ``X_bvae_gene`` for aligned models), ``obs`` cell_id / path
        (``source`` for a table without paths) / label, expected expression in ``X`` with
        ``expression``, provenance in ``uns['napari_stexp']`` (plus ``provenance``)."""
        import sys

        import anndata
        import pandas as pd

        from .. import __version__

        z = self.embed(cells)
        names = obs_names if obs_names is not None else [f"cell{i}" for i in range(len(cells))]
        obs = pd.DataFrame(index=pd.Index(list(names)))
        obs["cell_id"] = cells.ids
        obs["path"] = (cells.table["path"].astype(str).to_numpy()
                       if "path" in cells.table.columns else str(source))
        labels = cells.labels
        if any(v is not None for v in labels):
            obs["label"] = pd.Categorical([v if v is not None else "unknown" for v in labels])
        X = np.zeros((len(cells), 0), np.float32)
        var = None
        if expression:
            expr = self.expression_from_latent(z)
            X, var = expr.to_numpy(np.float32), pd.DataFrame(index=pd.Index(self.genes))
        adata = anndata.AnnData(X=X, obs=obs, var=var)
        adata.obsm["X_bvae"] = z
        if self.alignment is not None:
            adata.obsm["X_bvae_gene"] = self.alignment.transform(z)
        adata.uns["napari_stexp"] = {
            **(provenance or {}), "model": "bvae", "model_dir": str(model_dir),
            "version": __version__,
            "command": " ".join(["napari-stexp", *sys.argv[1:]]) if sys.argv else "",
            "parameters": json.dumps(self.config.to_dict()), "seed": self.config.seed,
            "cells": str(source), "skipped_cells": len(cells.skipped),
        }
        return adata

    def predict_expression(self, cells):
        """Cells (dataset or path) -> expected expression profiles (DataFrame cells × genes)."""
        ds = self._cells(cells)
        df = self.expression_from_latent(self.embed(ds))
        df.index = ds.ids
        return df

    def align(self, cells, genes, class_map) -> Any:
        """(Re)fit the image→gene latent alignment with this model's VAEs (see
        :func:`napari_stexp.models.alignment.fit_alignment`)."""
        from .alignment import fit_alignment, read_class_map

        adata, src = read_genes(genes)
        X, names = expression_matrix(adata, src)
        X = X[:, self.check_genes(names, src)]
        g_labels, key = gene_labels(adata, self.gene_label_key or self.config.gene_label_key,
                                    src)
        cmap = read_class_map(class_map)
        ds = self._cells(cells)
        z_gene = self._gene_means(X)
        self.alignment = fit_alignment(self.embed(ds), ds.labels, z_gene, g_labels, cmap,
                                       ridge=self.config.align_ridge,
                                       shrinkage=self.config.align_shrinkage)
        self.class_map = [tuple(r) for r in cmap[["image_class", "gene_class"]].to_numpy()]
        self.gene_label_key = key
        return self.alignment

    def fit_genes(self, genes, class_map=None, cells=None, *,
                  checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
                  progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                  ) -> BVAEModel:
        """Train the gene VAE on ``genes`` (AnnData / .h5ad, log data) and, with ``class_map``
        and the labelled image ``cells``, align the latents: adds the expression side to an
        image-only model. The class map is checked before training."""
        from .alignment import check_class_map, fit_alignment, read_class_map

        adata, src = read_genes(genes)
        X, names = expression_matrix(adata, src)
        cmap = g_labels = key = ds = None
        if class_map is not None:
            if cells is None:
                raise InputError("class map", "aligning needs the labelled image cells")
            ds = self._cells(cells)
            g_labels, key = gene_labels(adata, self.config.gene_label_key, src)
            cmap = read_class_map(class_map)
            check_class_map(cmap, ds.classes, sorted(set(g_labels)))
        else:
            try:
                g_labels, key = gene_labels(adata, self.config.gene_label_key, src)
            except InputError:
                key = None
        gene_vae, hist = train_gene_vae(X, self.config, checkpoint_dir=checkpoint_dir,
                                        resume=resume, progress=progress, cancel=cancel)
        self.gene_vae, self.genes, self.gene_label_key = gene_vae, list(names), key
        self.history["gene"] = hist
        self.alignment = self.class_map = None
        if cmap is not None:
            self.alignment = fit_alignment(self.embed(ds), ds.labels, self._gene_means(X),
                                           g_labels, cmap, ridge=self.config.align_ridge,
                                           shrinkage=self.config.align_shrinkage)
            self.class_map = [tuple(r) for r in cmap[["image_class", "gene_class"]].to_numpy()]
        self.provenance.update(genes=str(genes) if isinstance(genes, str | os.PathLike)
                               else "AnnData", n_expression_cells=int(len(X)))
        return self

    @torch.no_grad()
    def _gene_means(self, X: np.ndarray) -> np.ndarray:
        self.gene_vae.eval()
        dev = next(self.gene_vae.parameters()).device
        return self.gene_vae.encode(torch.from_numpy(X).to(dev))[0].cpu().numpy()

    # --- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the model folder atomically: ``weights.pt`` (image and gene VAE tensors) and
        ``config.json`` (records the weights' sha256, so a stale pair is detected at load)."""
        from ._folder import write_model_folder

        state = {"image": self.image_vae.state_dict()}
        if self.gene_vae is not None:
            state["gene"] = self.gene_vae.state_dict()
        panel = {"classes": self.classes}
        if self.genes is not None:
            panel["genes"] = self.genes
        return write_model_folder(
            directory, format=FORMAT, version=FORMAT_VERSION, config=self.config.to_dict(),
            state_dicts={"weights.pt": state}, panel=panel,
            meta={"genes": self.genes, "gene_label_key": self.gene_label_key,
                  "n_genes": None if self.genes is None else len(self.genes),
                  "alignment": None if self.alignment is None else self.alignment.to_dict(),
                  "class_map": self.class_map, "classes": self.classes,
                  "latent_stats": self.latent_stats, "history": self.history},
            provenance=self.provenance)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu") -> BVAEModel:
        """Read a model directory written by :meth:`save`."""
        from ..training.device import get_device
        from ._folder import load_into, read_model_folder, str_list
        from .alignment import LatentAlignment

        d = Path(directory)
        if d.is_dir() and not ((d / "config.json").is_file() and (d / "weights.pt").is_file()):
            raise InputError(d, "not a β-VAE model directory (config.json and weights.pt needed)")
        f = read_model_folder(d, FORMAT)
        meta, src = f.meta, f.config_path
        w_path = f.file("weights.pt")
        state = f.state("weights.pt")  # tensors only: a pickle with code is refused here
        if f.legacy and meta.get("weights_sha256"):  # the one digest of the old layout
            from .._provenance import sha256_file

            if meta["weights_sha256"] != sha256_file(w_path):
                raise InputError(w_path, "weights do not match config.json (written by "
                                         "another run?)")
        config = f.config(BVAEConfig)
        config.check()
        genes = meta.get("genes")
        if genes is not None:
            genes = f.panel("genes", str_list(genes, src, "genes"))
        classes = f.panel("classes", str_list(meta.get("classes") or [], src, "classes"))
        dev = get_device(device)
        if not isinstance(state.get("image"), dict):
            raise InputError(w_path, "weights do not match config.json (no image β-VAE)")
        image_vae = ImageBetaVAE(config.latent_dim, config.base_channels, config.image_size,
                                 config.roi_dim)
        load_into(image_vae, state["image"], w_path)
        gene_vae = None
        if "gene" in state and genes:
            gene_vae = GeneVAE(len(genes), config.latent_dim, config.gene_hidden)
            load_into(gene_vae, state["gene"], w_path)
            gene_vae.to(dev).eval()
        image_vae.to(dev).eval()
        return cls(config=config, image_vae=image_vae, gene_vae=gene_vae, genes=genes,
                   gene_label_key=meta.get("gene_label_key"),
                   alignment=(LatentAlignment.from_dict(meta["alignment"])
                              if meta.get("alignment") else None),
                   class_map=[tuple(r) for r in meta["class_map"]] if meta.get("class_map")
                   else None,
                   classes=classes,
                   latent_stats=meta.get("latent_stats") or {},
                   history=meta.get("history") or {}, provenance=meta.get("provenance") or {})


# --------------------------------------------------------------------------- training


def _augment(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 90° rotation (per batch) and horizontal flips (per sample)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    if k:
        x, m = torch.rot90(x, k, (2, 3)), torch.rot90(m, k, (2, 3))
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    if flip.any():
        x, m = x.clone(), m.clone()
        x[flip], m[flip] = x[flip].flip(3), m[flip].flip(3)
    return x, m


def _stage_progress(progress: ProgressFn | None, offset: int, total: int, label: str):
    if progress is None:
        return None

    def _p(done, _tot, msg=""):
        report(progress, offset + done, total, f"{label}: {msg}")

    return _p


def _prepare_checkpoints(ckpt_dir: Path | None, signature: str, resume: bool) -> None:
    """Drop a checkpoint that belongs to another configuration (or when not resuming)."""
    if ckpt_dir is not None:
        from ..training.engine import discard_stale_checkpoint

        discard_stale_checkpoint(ckpt_dir / "last.pt", signature, key="bvae_signature",
                                 resume=resume)


def _signature(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def train_image_vae(cells, config: BVAEConfig, *, checkpoint_dir: str | os.PathLike | None = None,
                    resume: bool = True, progress: ProgressFn | None = None,
                    cancel: CancelFlag | None = None) -> tuple[ImageBetaVAE, list[dict]]:
    """Train the image β-VAE on a :class:`CellCropDataset` (already at ``image_size``)."""
    from ..training.engine import TrainConfig, fit, seed_everything

    seed_everything(config.seed)
    model = ImageBetaVAE(config.latent_dim, config.base_channels, config.image_size,
                         config.roi_dim)
    x_all, m_all = cells.tensors()
    roi_all = None
    if config.roi_dim:
        if cells.roi_features is None:
            raise InputError("cells", "roi_dim is set but the cells carry no RoI features")
        if cells.roi_features.shape[1] != config.roi_dim:
            raise InputError("cells", f"RoI features have {cells.roi_features.shape[1]} dims, "
                                      f"config says {config.roi_dim}")
        roi_all = torch.from_numpy(cells.roi_features)
        model.roi_mean.copy_(roi_all.mean(0))
        model.roi_std.copy_(roi_all.std(0).clamp_min(1e-6))
    n, bs = len(cells), max(1, min(config.batch_size, len(cells)))
    n_batches = max(1, n // bs)  # drop the last partial batch (BatchNorm needs > 1 item)
    if n_batches * bs < n and n < 2 * bs:
        n_batches = 1

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        perm = torch.randperm(n, generator=gen)
        for b in range(n_batches):
            idx = perm[b * bs:(b + 1) * bs]
            xb, mb = x_all[idx], m_all[idx]
            if config.augment:
                xb, mb = _augment(xb, mb, gen)
            yield (xb, mb, None if roi_all is None else roi_all[idx])

    terms_log: dict[str, list[float]] = {}

    def step(model, batch, device):
        xb, mb, rb = batch
        xb, mb = xb.to(device), mb.to(device)
        out = model(xb)
        terms = bvae_loss(out, xb, mb, beta=config.beta, bg_weight=config.bg_weight,
                          recon_sigma=config.recon_sigma, mask_weight=config.mask_weight,
                          roi=None if rb is None else rb.to(device), roi_weight=config.roi_weight,
                          roi_mean=getattr(model, "roi_mean", None),
                          roi_std=getattr(model, "roi_std", None))
        for k, v in terms.items():
            terms_log.setdefault(k, []).append(float(v.detach()))
        return terms["total"]

    def on_epoch_end(epoch, record):
        extra = {k: float(np.mean(v)) for k, v in terms_log.items()}
        terms_log.clear()
        return extra

    sig = _signature("image", config.to_dict(), len(cells), cells.ids[:5])
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    _prepare_checkpoints(ckpt, sig, resume)
    hist = fit(model, batches, step,
               TrainConfig(epochs=config.epochs, lr=config.lr, weight_decay=0.0,
                           seed=config.seed, device=config.device),
               checkpoint_dir=ckpt, resume=resume, extra_state={"bvae_signature": sig},
               progress=progress, cancel=cancel, batches_per_epoch=n_batches,
               on_epoch_end=on_epoch_end)
    model.eval()
    return model, hist.epochs


def train_gene_vae(X: np.ndarray, config: BVAEConfig, *,
                   checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
                   progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                   ) -> tuple[GeneVAE, list[dict]]:
    """Train the gene VAE on log-normalised expression ``X`` (cells × genes)."""
    from ..training.engine import TrainConfig, fit, seed_everything

    seed_everything(config.seed + 1)
    X = np.ascontiguousarray(X, np.float32)
    model = GeneVAE(X.shape[1], config.latent_dim, config.gene_hidden)
    model.gene_mean.copy_(torch.from_numpy(X.mean(0)))
    model.gene_scale.copy_(torch.from_numpy(X.std(0)).clamp_min(0.1))
    with torch.no_grad():
        model.gene_logvar.copy_(torch.log(torch.from_numpy(X.var(0)).clamp_min(1e-2)))
    xt = torch.from_numpy(X)
    n, bs = len(X), max(2, min(config.gene_batch_size, len(X)))
    n_batches = max(1, math.ceil(n / bs))

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(config.seed * 1000 + 7 + epoch)
        perm = torch.randperm(n, generator=gen)
        for b in range(n_batches):
            yield (xt[perm[b * bs:(b + 1) * bs]],)

    def step(model, batch, device):
        xb = batch[0].to(device)
        return gene_loss(model(xb), xb, model.gene_logvar, config.gene_beta)["total"]

    sig = _signature("gene", config.to_dict(), X.shape)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    _prepare_checkpoints(ckpt, sig, resume)
    hist = fit(model, batches, step,
               TrainConfig(epochs=config.gene_epochs, lr=config.gene_lr, weight_decay=0.0,
                           seed=config.seed + 1, device=config.device),
               checkpoint_dir=ckpt, resume=resume, extra_state={"bvae_signature": sig},
               progress=progress, cancel=cancel, batches_per_epoch=n_batches)
    model.eval()
    return model, hist.epochs


@torch.no_grad()
def latent_statistics(model: ImageBetaVAE, cells, batch_size: int = 64) -> dict:
    """Aggregate-posterior statistics of the training cells: mean, std = sqrt(Var μ + E σ²),
    mean KL per dim (active dims carry information), and the crops' background colour."""
    x, m = cells.tensors()
    dev = next(model.parameters()).device
    model.eval()
    mus, lvs = [], []
    for i in range(0, len(cells), batch_size):
        mu, lv = model.encode(x[i:i + batch_size].to(dev))
        mus.append(mu.cpu())
        lvs.append(lv.cpu())
    mu, lv = torch.cat(mus), torch.cat(lvs)
    std = torch.sqrt(mu.var(0, unbiased=False) + lv.exp().mean(0))
    kl = kl_divergence(mu, lv).mean(0)
    bg_w = (1 - m).sum((0, 2, 3)).clamp_min(1e-6)
    bg = ((1 - m) * x).sum((0, 2, 3)) / bg_w
    return {"mean": mu.mean(0).tolist(), "std": std.tolist(), "kl_per_dim": kl.tolist(),
            "active_dims": int((kl > 0.01).sum()), "background": bg.tolist()}


def train_bvae(cells, genes=None, class_map=None, config: BVAEConfig | None = None,
               out_dir: str | os.PathLike | None = None, *, resume: bool = True,
               checkpoint_dir: str | os.PathLike | None = None,
               progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
               ) -> BVAEModel:
    """See :func:`_train_bvae`; with ``out_dir`` the folder is claimed for the whole run (a
    second training into it, in another process, is refused with an InputError)."""
    from ._folder import check_model_out

    if out_dir is None:
        return _train_bvae(cells, genes, class_map, config, None, resume=resume,
                           checkpoint_dir=checkpoint_dir, progress=progress, cancel=cancel)
    from ..io._atomic import target_lock

    check_model_out(out_dir)
    with target_lock(out_dir, wait=False):
        return _train_bvae(cells, genes, class_map, config, out_dir, resume=resume,
                           checkpoint_dir=checkpoint_dir, progress=progress, cancel=cancel)


def _train_bvae(cells, genes=None, class_map=None, config: BVAEConfig | None = None,
                out_dir: str | os.PathLike | None = None, *, resume: bool = True,
                checkpoint_dir: str | os.PathLike | None = None,
                progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                ) -> BVAEModel:
    """Train the image β-VAE on ``cells`` (a :class:`CellCropDataset` or a path for
    :func:`~napari_stexp.data.cells.load_cells`); with ``genes`` (AnnData / .h5ad) also the gene
    VAE, and with ``class_map`` (CSV / DataFrame / dict image_class → gene_class) the alignment.

    The class map is checked against both label sets *before* any training. With ``out_dir``
    the engine checkpoints to ``checkpoint_dir`` (default: the sibling ``OUT_DIR.ckpt``,
    resumable after a kill, removed after the model folder is written atomically) and the
    model is saved there; the model folder never holds checkpoints or a half-written state.
    """
    from .. import __version__
    from ..data.cells import CellCropDataset, load_cells
    from .alignment import check_class_map, read_class_map

    config = config or BVAEConfig()
    config.check()
    if isinstance(cells, CellCropDataset):
        source = "cells"
        ds = cells.resized(config.image_size)
    else:
        source = str(cells)
        ds = load_cells(cells, size=config.image_size, cancel=cancel)
    if len(ds) < 2:
        raise InputError(source, "need at least 2 cells to train")
    cmap = adata = X = None
    if class_map is not None and genes is None:
        raise InputError("class map", "a class map needs expression data (--genes)")
    if genes is not None:  # check expression and class map before any training
        adata, gsrc = read_genes(genes)
        X, _ = expression_matrix(adata, gsrc)
        if class_map is not None:
            g_labels, _ = gene_labels(adata, config.gene_label_key, gsrc)
            cmap = read_class_map(class_map)
            check_class_map(cmap, ds.classes, sorted(set(g_labels)))

    out = Path(out_dir) if out_dir else None
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else (
        checkpoint_sibling(out) if out else None)
    bs = max(1, min(config.batch_size, len(ds)))
    img_total = config.epochs * max(1, len(ds) // bs)
    gene_total = 0 if X is None else config.gene_epochs * math.ceil(
        len(X) / max(2, min(config.gene_batch_size, len(X))))
    total = img_total + gene_total
    image_vae, img_hist = train_image_vae(
        ds, config, checkpoint_dir=None if ckpt_root is None else ckpt_root / "image",
        resume=resume, progress=_stage_progress(progress, 0, total, "image β-VAE"),
        cancel=cancel)
    stats = latent_statistics(image_vae, ds)
    model = BVAEModel(config=config, image_vae=image_vae, classes=ds.classes,
                      latent_stats=stats, history={"image": img_hist})
    model.provenance = {}
    if X is not None:
        model.fit_genes(adata, class_map=cmap, cells=ds if cmap is not None else None,
                        checkpoint_dir=None if ckpt_root is None else ckpt_root / "gene",
                        resume=resume, cancel=cancel,
                        progress=_stage_progress(progress, img_total, total, "gene VAE"))
    model.provenance.update({
        "model": "bvae", "napari_stexp_version": __version__, "seed": config.seed,
        "cells": source, "n_cells": len(ds), "skipped_cells": len(ds.skipped),
        "genes": None if genes is None else (str(genes) if isinstance(genes, str | os.PathLike)
                                             else "AnnData"),
        "n_expression_cells": None if X is None else int(len(X)),
        "torch_version": torch.__version__, "device": str(model.device),
    })
    report(progress, total, total, "done")
    if out is not None:
        model.save(out)
        if checkpoint_dir is None:
            remove_checkpoints(out)
    return model


def checkpoint_sibling(out_dir: str | os.PathLike) -> Path:
    """Where a training into ``out_dir`` keeps its resumable checkpoints: ``OUT_DIR.ckpt``
    beside it (as ``expression train`` does), never inside the model folder."""
    out = Path(out_dir)
    return out.with_name(out.name + ".ckpt")


def remove_checkpoints(out_dir: str | os.PathLike) -> None:
    """Delete the resumable checkpoints of a finished run into ``out_dir`` (the sibling
    ``OUT_DIR.ckpt``; also a ``checkpoints/`` folder left inside by older versions)."""
    shutil.rmtree(checkpoint_sibling(out_dir), ignore_errors=True)
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)
