"""A batch-agnostic gene encoder: an scVI-style variational autoencoder on raw ST counts.

Why: spots of different patients differ by technical and patient effects ("batches") that are
not tissue biology. Following scVI (Lopez et al. 2018), the *decoder* p(x | z, batch) gets the
batch (one-hot patient), so the batch effect is explained there and the latent z is free of it;
the *encoder* q(z | x) does not see the batch by default, so sections of patients never seen in
training can be embedded. The likelihood is negative binomial with the spot's library size
(observed log-library, or a learned one with a per-batch prior) and a gene-wise dispersion.
Optionally (scANVI-style, Xu et al. 2021) a classifier on z uses the labels of the spots that
have one, so the latent also keeps tissue classes apart. The posterior mean of z is the
batch-agnostic gene embedding.

Users who already have a latent (e.g. ``obsm['X_scVI']`` from scvi-tools) can use
:class:`ObsmLatent` instead: it has the same ``embed`` interface.

Torch is imported inside functions (never at plugin start-up).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.genes import expression_transform
from ..errors import InputError, StexpWarning
from ..io.spatial import counts_matrix
from ..progress import CancelFlag, ProgressFn, check_cancel
from ._options import option

#: Label values that mean "no label".
MISSING_LABELS = frozenset({"", "nan", "none", "na", "unknown", "undetermined"})


FORMAT = "napari-stexp/gene-vae"
FORMAT_VERSION = 2  # 2: the model-folder contract; 1 = gene_vae.pt {state_dict, meta}


class GeneVAEWarning(StexpWarning):
    """A gene-encoder input was repaired or a setting had no effect (e.g. a single batch)."""


# ----------------------------------------------------------------------------- config


@dataclass
class GeneVAEConfig:
    """Parameters of the gene encoder (all recorded in the model folder)."""

    n_latent: int = option(16, help="gene latent size", min=2, max=256, label="latent size")
    n_hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.1
    batch_conditioning: bool = option(True, help="condition the gene decoder on the patient (the batch-agnostic part; off = baseline)", label="condition the gene decoder on the patient")
    encode_batch: bool = False  # encoder sees it too (unseen batches then get a zero vector)
    library: str = "observed"  # "observed" log-library or "learned" (scVI's library encoder)
    dispersion: str = "gene"  # "gene" or "gene-batch"
    classifier: bool = True  # scANVI-style head on z, used when labels exist
    classifier_weight: float = 10.0
    kl_warmup: float = 0.3  # fraction of the epochs over which the KL weight rises 0 -> 1
    epochs: int = option(100, help="gene VAE epochs", min=1, max=100_000, label="gene epochs")
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        if not 2 <= int(self.n_latent) <= 256:
            raise InputError("gene VAE", f"n_latent must be in 2..256, got {self.n_latent}")
        if self.library not in ("observed", "learned"):
            raise InputError("gene VAE", f"library must be 'observed' or 'learned', "
                                         f"got {self.library!r}")
        if self.dispersion not in ("gene", "gene-batch"):
            raise InputError("gene VAE", f"dispersion must be 'gene' or 'gene-batch', "
                                         f"got {self.dispersion!r}")
        if int(self.epochs) < 1 or int(self.batch_size) < 2:
            raise InputError("gene VAE", "epochs must be >= 1 and batch_size >= 2")


# ----------------------------------------------------------------------------- inputs


@dataclass
class GeneInputs:
    """What the gene encoder trains on: raw counts over the panel, batch and label codes."""

    counts: np.ndarray  # (n, G) float32 raw counts
    batch: np.ndarray  # (n,) int64 codes into ``batches`` (-1 = unseen batch)
    labels: np.ndarray  # (n,) int64 codes into ``classes`` (-1 = no label)
    genes: list[str]
    batches: list[str]
    classes: list[str]
    obs: pd.DataFrame  # section, patient, label (strings) per row, index = spot ids


def clean_labels(values: Any) -> np.ndarray:
    """Labels as an object array of strings, with NaN/``undetermined``/``unknown`` -> None."""
    out = []
    for v in pd.Series(list(values), dtype=object):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
            continue
        s = str(v).strip()
        out.append(None if s.lower() in MISSING_LABELS else s)
    return np.array(out, dtype=object)


def _as_sections(adatas: Any) -> dict[str, Any]:
    if isinstance(adatas, Mapping):
        return {str(k): v for k, v in adatas.items()}
    if isinstance(adatas, list | tuple):
        out = {}
        for i, a in enumerate(adatas):
            name = str(a.obs["section"].iloc[0]) if "section" in a.obs and a.n_obs else str(i)
            out[name if name not in out else f"{name}_{i}"] = a
        return out
    name = str(adatas.obs["section"].iloc[0]) if "section" in adatas.obs and adatas.n_obs \
        else "section"
    return {name: adatas}


def panel_counts(adata, genes: Sequence[str], source: Any = None,
                 max_missing: float = 0.5) -> np.ndarray:
    """Raw counts of ``adata`` over ``genes`` (dense float32), missing genes filled with zeros.

    A few missing genes are filled with zeros (warning); more than ``max_missing`` of the panel
    missing is an :class:`InputError` (the section does not share the model's genes).
    """
    src = source if source is not None else "AnnData"
    X = counts_matrix(adata)
    var = pd.Index(adata.var_names.astype(str))
    if var.has_duplicates:
        var = pd.Index(_dedupe(list(var)))
    pos = var.get_indexer(list(genes))
    missing = int((pos < 0).sum())
    if missing:
        if missing > max_missing * len(genes):
            raise InputError(src, f"{missing} of the {len(genes)} panel genes are missing "
                                  f"(e.g. {', '.join(g for g, p in zip(genes, pos, strict=True) if p < 0)[:80]}); "
                                  "the section does not share the model's genes")
        warnings.warn(f"{src}: {missing} of {len(genes)} panel genes missing; filled with zeros",
                      GeneVAEWarning, stacklevel=3)
    take = np.where(pos < 0, 0, pos)
    Xs = X[:, take]
    D = Xs.toarray() if sp.issparse(Xs) else np.asarray(Xs)
    D = D.astype(np.float32, copy=True)
    if missing:
        D[:, pos < 0] = 0.0
    if not np.isfinite(D).all():
        raise InputError(src, "counts contain NaN or infinite values")
    if (D < 0).any():
        raise InputError(src, "counts contain negative values (the gene encoder needs raw "
                              "counts in layers['counts'] or X)")
    return D


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}-{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def select_genes(adatas: Any, n_top: int = 1000, min_spots: int = 10) -> list[str]:
    """A batch-aware panel of highly variable genes shared by every section.

    Genes present in all sections and detected in at least ``min_spots`` spots of each are
    ranked, per section, by the variance of their log-normalised expression; the panel is the
    ``n_top`` genes with the best mean rank over sections (so a gene that only varies between
    patients does not win on one patient's shift alone).
    """
    secs = _as_sections(adatas)
    if not secs:
        raise InputError(None, "no sections to choose genes from")
    common = None
    for a in secs.values():
        names = pd.Index(a.var_names.astype(str))
        common = names if common is None else common.intersection(names, sort=False)
    common = pd.Index([g for g in common if not pd.isna(g)]).drop_duplicates()
    if len(common) == 0:
        raise InputError(", ".join(secs), "the sections share no genes")
    ranks = []
    ok = np.ones(len(common), bool)
    for a in secs.values():
        X = counts_matrix(a[:, common])
        det = np.asarray((X > 0).sum(axis=0)).ravel()
        ok &= det >= min(min_spots, max(a.n_obs // 10, 1))
        L = expression_transform(X, library="panel")  # library over the shared genes
        var = L.var(axis=0)
        ranks.append(pd.Series(var).rank(ascending=False).to_numpy())
    score = np.mean(ranks, axis=0)
    score[~ok] = np.inf
    order = np.argsort(score, kind="stable")
    n = min(int(n_top), int(ok.sum()) or len(common))
    return [str(common[i]) for i in order[:n]]


def gene_inputs(adatas: Any, genes: Sequence[str], *, batches: Sequence[str] | None = None,
                classes: Sequence[str] | None = None, batch_key: str = "patient",
                label_key: str = "label") -> GeneInputs:
    """Stack sections into :class:`GeneInputs` over ``genes``.

    ``batches``/``classes`` fix the category order (a trained model's); when None they are the
    sorted values found. Labels outside a fixed ``classes`` become "no label" (warning).
    """
    secs = _as_sections(adatas)
    mats, obs_parts = [], []
    for name, a in secs.items():
        mats.append(panel_counts(a, genes, source=name))
        o = pd.DataFrame(index=a.obs_names.astype(str))
        o["section"] = (a.obs["section"].astype(str).to_numpy() if "section" in a.obs
                        else np.full(a.n_obs, name))
        if batch_key in a.obs:
            o["patient"] = a.obs[batch_key].astype(str).to_numpy()
        else:
            o["patient"] = o["section"]
        o["label"] = (clean_labels(a.obs[label_key]) if label_key in a.obs
                      else np.full(a.n_obs, None, dtype=object))
        obs_parts.append(o)
    counts = np.vstack(mats) if mats else np.zeros((0, len(genes)), np.float32)
    obs = pd.concat(obs_parts) if obs_parts else pd.DataFrame(columns=["section", "patient",
                                                                       "label"])
    if batches is None:
        batches = sorted(pd.unique(obs["patient"]).tolist())
    bpos = {b: i for i, b in enumerate(batches)}
    batch = np.array([bpos.get(b, -1) for b in obs["patient"]], dtype=np.int64)
    labs = obs["label"].to_numpy(dtype=object)
    if classes is None:
        classes = sorted({v for v in labs if v is not None})
    cpos = {c: i for i, c in enumerate(classes)}
    unknown = pd.Series([v for v in labs if v is not None and v not in cpos], dtype=object)
    if len(unknown):
        vc = unknown.value_counts()
        desc = ", ".join(f"{k!r} ({v})" for k, v in vc.items())
        warnings.warn(f"{', '.join(secs)}: label(s) not among the classes "
                      f"{list(classes)}: {desc}; treated as unlabelled", GeneVAEWarning,
                      stacklevel=2)
    labels = np.array([cpos.get(v, -1) if v is not None else -1 for v in labs], dtype=np.int64)
    return GeneInputs(counts=counts, batch=batch, labels=labels, genes=list(genes),
                      batches=list(batches), classes=list(classes), obs=obs)


# ----------------------------------------------------------------------------- the module


def _build_module(n_genes: int, n_batches: int, n_classes: int, cfg: GeneVAEConfig,
                  lib_mean: np.ndarray, lib_var: np.ndarray):
    import torch
    from torch import nn

    class _Layers(nn.Module):
        """MLP whose every layer also receives the batch one-hot (scVI's covariate injection)."""

        def __init__(self, n_in: int, n_cov: int, n_hidden: int, n_layers: int, dropout: float):
            super().__init__()
            self.n_cov = n_cov
            dims = [n_in] + [n_hidden] * n_layers
            self.layers = nn.ModuleList()
            for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
                self.layers.append(nn.Sequential(
                    nn.Linear(d_in + n_cov, d_out), nn.BatchNorm1d(d_out, momentum=0.01,
                                                                   eps=1e-3),
                    nn.ReLU(), nn.Dropout(dropout)))

        def forward(self, x, cov=None):
            for layer in self.layers:
                if self.n_cov:
                    x = torch.cat([x, cov], dim=1)
                x = layer(x)
            return x

    class GeneVAEModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.n_genes, self.n_batches, self.n_classes = n_genes, n_batches, n_classes
            self.cond = bool(cfg.batch_conditioning and n_batches > 1)
            self.enc_cond = bool(cfg.encode_batch and n_batches > 1)
            self.learned_library = cfg.library == "learned"
            n_dec_cov = n_batches if self.cond else 0
            n_enc_cov = n_batches if self.enc_cond else 0
            self.encoder = _Layers(n_genes, n_enc_cov, cfg.n_hidden, cfg.n_layers, cfg.dropout)
            self.z_mean = nn.Linear(cfg.n_hidden, cfg.n_latent)
            self.z_logvar = nn.Linear(cfg.n_hidden, cfg.n_latent)
            if self.learned_library:
                self.l_encoder = _Layers(n_genes, n_enc_cov, cfg.n_hidden, 1, cfg.dropout)
                self.l_mean = nn.Linear(cfg.n_hidden, 1)
                self.l_logvar = nn.Linear(cfg.n_hidden, 1)
            self.decoder = _Layers(cfg.n_latent, n_dec_cov, cfg.n_hidden, cfg.n_layers, 0.0)
            self.scale = nn.Linear(cfg.n_hidden, n_genes)
            n_disp = n_batches if (cfg.dispersion == "gene-batch" and self.cond) else 1
            self.log_theta = nn.Parameter(torch.zeros(n_disp, n_genes))
            self.classifier = (nn.Sequential(nn.Linear(cfg.n_latent, cfg.n_hidden), nn.ReLU(),
                                             nn.Dropout(cfg.dropout),
                                             nn.Linear(cfg.n_hidden, n_classes))
                               if (cfg.classifier and n_classes > 1) else None)
            self.register_buffer("lib_mean", torch.as_tensor(lib_mean, dtype=torch.float32))
            self.register_buffer("lib_var", torch.as_tensor(lib_var, dtype=torch.float32))
            self.kl_weight = 1.0

        def _onehot(self, b):
            b = b.clamp(min=0)
            oh = torch.nn.functional.one_hot(b, self.n_batches).float()
            return oh

        def encode(self, x, b):
            """Posterior mean and variance of z (and of the log-library when learned)."""
            xl = torch.log1p(x)
            cov = None
            if self.enc_cond:
                cov = self._onehot(b) * (b >= 0).float().unsqueeze(1)  # unseen batch -> zeros
            h = self.encoder(xl, cov)
            qm = self.z_mean(h)
            qv = torch.exp(self.z_logvar(h).clamp(-15, 15)) + 1e-4
            lib = None
            if self.learned_library:
                hl = self.l_encoder(xl, cov)
                lib = (self.l_mean(hl), torch.exp(self.l_logvar(hl).clamp(-15, 15)) + 1e-4)
            return qm, qv, lib

        def decode(self, z, b, log_lib):
            cov = self._onehot(b) if self.cond else None
            h = self.decoder(z, cov)
            rho = torch.softmax(self.scale(h), dim=-1)
            mu = torch.exp(log_lib) * rho
            if self.log_theta.shape[0] > 1:
                theta = torch.exp(self.log_theta[b.clamp(min=0)])
            else:
                theta = torch.exp(self.log_theta[0]).expand_as(mu)
            return mu, theta

        def loss(self, x, b, y):
            qm, qv, lib = self.encode(x, b)
            z = qm + torch.sqrt(qv) * torch.randn_like(qm)
            kl = 0.5 * (qv + qm ** 2 - 1.0 - torch.log(qv)).sum(dim=1)
            if lib is None:
                log_lib = torch.log(x.sum(dim=1, keepdim=True).clamp(min=1.0))
            else:
                lm, lv = lib
                log_lib = lm + torch.sqrt(lv) * torch.randn_like(lm)
                bb = b.clamp(min=0)
                pm = self.lib_mean[bb].unsqueeze(1)
                pv = self.lib_var[bb].unsqueeze(1)
                kl = kl + (0.5 * (torch.log(pv / lv) + (lv + (lm - pm) ** 2) / pv - 1.0)).sum(1)
            mu, theta = self.decode(z, b, log_lib)
            recon = -nb_log_prob(x, mu, theta).sum(dim=1)
            loss = (recon + self.kl_weight * kl).mean()
            parts = {"recon": recon.mean().detach(), "kl": kl.mean().detach()}
            if self.classifier is not None and y is not None:
                lab = y >= 0
                if lab.any():
                    ce = torch.nn.functional.cross_entropy(self.classifier(z[lab]), y[lab])
                    loss = loss + cfg.classifier_weight * ce
                    parts["ce"] = ce.detach()
            self.last_parts = parts
            return loss

    return GeneVAEModule()


def nb_log_prob(x, mu, theta, eps: float = 1e-8):
    """Log-density of the negative binomial with mean ``mu`` and inverse dispersion ``theta``."""
    import torch

    log_theta_mu = torch.log(theta + mu + eps)
    return (theta * (torch.log(theta + eps) - log_theta_mu)
            + x * (torch.log(mu + eps) - log_theta_mu)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0))


# ----------------------------------------------------------------------------- fitted model


@dataclass
class FittedGeneVAE:
    """A trained gene encoder with its panel and categories; ``embed`` gives posterior means."""

    module: Any
    config: GeneVAEConfig
    genes: list[str]
    batches: list[str]
    classes: list[str]
    history: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def n_latent(self) -> int:
        return int(self.config.n_latent)

    def _tensors(self, adatas: Any, batch_key: str = "patient") -> GeneInputs:
        with warnings.catch_warnings():  # labels play no part in embedding
            warnings.filterwarnings("ignore", message=".*not among the classes.*")
            return gene_inputs(adatas, self.genes, batches=self.batches, classes=self.classes,
                               batch_key=batch_key)

    def _run(self, inputs: GeneInputs, what: str, batch_size: int = 512,
             progress: ProgressFn | None = None, cancel: CancelFlag | None = None):
        import torch

        from ..training.device import get_device

        if self.config.encode_batch and (inputs.batch < 0).any():
            unseen = sorted(set(inputs.obs["patient"][inputs.batch < 0]))
            warnings.warn(f"patient(s) {', '.join(unseen)} not seen in training: the encoder is "
                          "batch-conditioned, so they are embedded with a zero batch vector",
                          GeneVAEWarning, stacklevel=3)
        dev = get_device(self.config.device)
        mod = self.module.to(dev).eval()
        out_z, out_p = [], []
        n = len(inputs.counts)
        with torch.no_grad():
            for i in range(0, n, batch_size):
                check_cancel(cancel, "gene embedding")
                x = torch.as_tensor(inputs.counts[i:i + batch_size], device=dev)
                b = torch.as_tensor(inputs.batch[i:i + batch_size], device=dev)
                qm, _, _ = mod.encode(x, b)
                out_z.append(qm.cpu().numpy())
                if what == "proba" and mod.classifier is not None:
                    out_p.append(torch.softmax(mod.classifier(qm), dim=1).cpu().numpy())
                if progress is not None:
                    progress(min(i + batch_size, n), n, "gene embedding")
        z = np.vstack(out_z) if out_z else np.zeros((0, self.n_latent), np.float32)
        p = np.vstack(out_p) if out_p else None
        return z.astype(np.float32), p

    def embed(self, adatas: Any, *, progress: ProgressFn | None = None,
              cancel: CancelFlag | None = None) -> np.ndarray:
        """Posterior mean of z for every spot (sections stacked in the given order)."""
        z, _ = self._run(self._tensors(adatas), "z", progress=progress, cancel=cancel)
        return z

    def embed_counts(self, counts: np.ndarray, batch: Sequence[str] | None = None) -> np.ndarray:
        """Posterior mean of z for a raw count matrix already over ``self.genes``."""
        counts = np.asarray(counts, np.float32)
        if counts.ndim != 2 or counts.shape[1] != len(self.genes):
            raise InputError("counts", f"expected (n, {len(self.genes)}) counts over the "
                                       f"model's panel, got {counts.shape}")
        pos = {b: i for i, b in enumerate(self.batches)}
        codes = (np.full(len(counts), -1, np.int64) if batch is None
                 else np.array([pos.get(str(b), -1) for b in batch], np.int64))
        inputs = GeneInputs(counts=counts, batch=codes, labels=np.full(len(counts), -1),
                            genes=self.genes, batches=self.batches, classes=self.classes,
                            obs=pd.DataFrame({"patient": [str(b) for b in batch]}
                                             if batch is not None else
                                             {"patient": ["?"] * len(counts)}))
        return self._run(inputs, "z")[0]

    def predict_proba(self, adatas: Any) -> np.ndarray:
        """Class probabilities of the scANVI-style head (needs ``classifier`` and labels)."""
        if self.module.classifier is None:
            raise InputError("gene VAE", "this gene encoder has no classifier head (it was "
                                         "trained without labels or with classifier=False)")
        return self._run(self._tensors(adatas), "proba")[1]

    # -- persistence
    def save(self, directory: str | os.PathLike, *, atomic: bool = True) -> Path:
        """Write a gene-VAE model folder: ``config.json`` (panel, batches, classes, history,
        provenance) and ``gene_vae.pt`` (tensors). ``atomic=False`` inside an outer atomic
        write (the classifier's nested ``gene_encoder/``)."""
        from ._folder import write_model_folder

        meta = self.meta()
        config = meta.pop("config")
        meta.pop("provenance")
        return write_model_folder(directory, format=FORMAT, version=FORMAT_VERSION,
                                  config=config,
                                  state_dicts={"gene_vae.pt": self.module.state_dict()},
                                  panel={"genes": self.genes, "classes": self.classes},
                                  meta=meta, provenance=self.provenance, atomic=atomic)

    def meta(self) -> dict:
        return {"kind": "gene_vae", "config": asdict(self.config), "genes": self.genes,
                "batches": self.batches, "classes": self.classes, "history": self.history,
                "provenance": self.provenance}

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu") -> FittedGeneVAE:
        from ._folder import read_model_folder

        return cls.from_folder(read_model_folder(directory, FORMAT))

    @classmethod
    def from_folder(cls, f) -> FittedGeneVAE:
        """From a validated :class:`~napari_stexp.models._folder.ModelFolder` (also a legacy
        folder: ``gene_vae.pt`` holding ``{state_dict, meta}``)."""
        from ._folder import load_into, str_list

        meta = f.meta
        src = f.config_path if not f.legacy else f.path / "gene_vae.pt"
        cfg = f.config(GeneVAEConfig)
        genes = f.panel("genes", str_list(meta.get("genes"), src, "genes"), src)
        batches = str_list(meta.get("batches"), src, "batches")
        classes = f.panel("classes", str_list(meta.get("classes", []), src, "classes"), src)
        sd = f.legacy_state if f.legacy_state is not None else f.state("gene_vae.pt")
        w = f.path / "gene_vae.pt"
        if "lib_mean" not in sd or "lib_var" not in sd:
            raise InputError(w, "weights do not match config.json (no library statistics)")
        module = _build_module(len(genes), len(batches), len(classes), cfg,
                               sd["lib_mean"].cpu().numpy(), sd["lib_var"].cpu().numpy())
        load_into(module, sd, w)
        module.eval()
        return cls(module=module, config=cfg, genes=genes, batches=batches, classes=classes,
                   history=list(meta.get("history") or []),
                   provenance=dict(meta.get("provenance") or {}))


# ----------------------------------------------------------------------------- training


def fit_gene_vae(adatas: Any, genes: Sequence[str] | None = None,
                 config: GeneVAEConfig | None = None, *, n_top_genes: int = 1000,
                 classes: Sequence[str] | None = None, batch_key: str = "patient",
                 checkpoint_dir: str | os.PathLike | None = None,
                 progress: ProgressFn | None = None,
                 cancel: CancelFlag | None = None) -> FittedGeneVAE:
    """Train the gene encoder on the raw counts of ``adatas`` (AnnData, list or dict).

    ``genes`` is the panel (default: :func:`select_genes` with ``n_top_genes``). The batch is
    ``obs[batch_key]`` (the patient). Labels (``obs['label']``) feed the classifier head where
    present; sections without labels train unsupervised. A single batch makes the conditioning
    a no-op (warning). Training goes through the shared engine (seeds, checkpoints, resume,
    cancel, progress).
    """
    import torch

    from ..training.engine import TrainConfig, discard_stale_checkpoint, fit, seed_everything

    cfg = config or GeneVAEConfig()
    cfg.validate()
    secs = _as_sections(adatas)
    if not secs:
        raise InputError(None, "no sections to train the gene encoder on")
    if genes is None:
        genes = select_genes(secs, n_top_genes)
    inputs = gene_inputs(secs, genes, classes=classes, batch_key=batch_key)
    n = len(inputs.counts)
    if n < 4:
        raise InputError(", ".join(secs), f"only {n} spot(s): too few to train the gene encoder")
    lib = inputs.counts.sum(axis=1)
    if (lib <= 0).all():
        raise InputError(", ".join(secs), "every spot has zero counts over the gene panel")
    if len(inputs.batches) < 2 and cfg.batch_conditioning:
        warnings.warn(f"{', '.join(secs)}: only one batch ({inputs.batches[0]!r}); batch "
                      "conditioning is a no-op", GeneVAEWarning, stacklevel=2)
    n_lab = int((inputs.labels >= 0).sum())
    if cfg.classifier and n_lab == 0:
        warnings.warn("no labelled spots: the gene encoder trains without its classifier head",
                      GeneVAEWarning, stacklevel=2)
    use_classes = inputs.classes if (cfg.classifier and n_lab > 0 and len(inputs.classes) > 1) \
        else []
    if not use_classes:
        inputs.labels[:] = -1
    # per-batch prior of the log-library (scVI)
    loglib = np.log(np.maximum(lib, 1.0))
    nb = max(len(inputs.batches), 1)
    lib_mean = np.array([loglib[inputs.batch == i].mean() if (inputs.batch == i).any()
                         else loglib.mean() for i in range(nb)], np.float32)
    lib_var = np.array([max(loglib[inputs.batch == i].var(), 1e-2) if (inputs.batch == i).sum()
                        > 1 else 1.0 for i in range(nb)], np.float32)
    seed_everything(cfg.seed)
    module = _build_module(len(genes), nb, len(use_classes), cfg, lib_mean, lib_var)

    X = torch.as_tensor(inputs.counts)
    B = torch.as_tensor(inputs.batch)
    Y = torch.as_tensor(inputs.labels)
    bs = min(int(cfg.batch_size), n)
    n_batches = max(n // bs, 1)
    warm = max(cfg.kl_warmup * cfg.epochs, 1e-9)

    def batches(epoch: int):
        module.kl_weight = float(min(1.0, (epoch + 1) / warm)) if cfg.kl_warmup > 0 else 1.0
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(n, generator=g)
        for i in range(n_batches):  # drop the ragged last batch (BatchNorm needs > 1 row)
            idx = perm[i * bs:(i + 1) * bs] if i < n_batches - 1 else perm[i * bs:]
            if len(idx) < 2:
                continue
            yield X[idx], B[idx], Y[idx]

    def step(model, batch, device):
        x, b, y = (t.to(device) for t in batch)
        return model.loss(x, b, y)

    sig = _run_signature(cfg, genes, inputs)
    if checkpoint_dir is not None:  # a checkpoint of another run (data, panel, config) is stale
        discard_stale_checkpoint(Path(checkpoint_dir) / "last.pt", sig)
    t0 = time.time()
    hist = fit(module, batches, step,
               TrainConfig(epochs=int(cfg.epochs), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           seed=cfg.seed, device=cfg.device, amp=False, grad_clip=None),
               checkpoint_dir=checkpoint_dir, extra_state={"run": sig}, progress=progress,
               cancel=cancel, batches_per_epoch=n_batches)
    module.eval()
    check_cancel(cancel, "gene encoder training")
    prov = {"n_spots": n, "n_labelled": n_lab, "sections": list(secs),
            "train_seconds": round(time.time() - t0, 2)}
    return FittedGeneVAE(module=module.cpu(), config=cfg, genes=list(genes),
                         batches=list(inputs.batches), classes=list(use_classes),
                         history=hist.epochs, provenance=prov)


def _run_signature(cfg: GeneVAEConfig, genes: Sequence[str], inputs: GeneInputs) -> str:
    from .._provenance import run_signature

    d = asdict(cfg)
    d.pop("device", None)
    return run_signature({"cfg": d, "genes": list(genes), "batches": inputs.batches,
                          "classes": inputs.classes}, inputs.counts.sum(axis=1), inputs.batch,
                         inputs.labels)


# ----------------------------------------------------------------------------- existing latent


@dataclass
class ObsmLatent:
    """Use a latent the user already has (e.g. ``obsm['X_scVI']``) as the gene embedding."""

    key: str = "X_scVI"
    n_latent: int | None = None

    def embed(self, adatas: Any, **_: Any) -> np.ndarray:
        out = []
        for name, a in _as_sections(adatas).items():
            if self.key not in a.obsm:
                raise InputError(name, f"obsm[{self.key!r}] not found (available: "
                                       f"{', '.join(a.obsm.keys()) or 'none'})")
            z = np.asarray(a.obsm[self.key], dtype=np.float32)
            if z.ndim != 2 or z.shape[0] != a.n_obs:
                raise InputError(name, f"obsm[{self.key!r}] must be (n_spots, d), got {z.shape}")
            if self.n_latent is not None and z.shape[1] != self.n_latent:
                raise InputError(name, f"obsm[{self.key!r}] has {z.shape[1]} dimensions, the "
                                       f"model was trained with {self.n_latent}")
            if not np.isfinite(z).all():
                raise InputError(name, f"obsm[{self.key!r}] has NaN/inf values")
            out.append(z)
        z = np.vstack(out)
        if self.n_latent is None:
            self.n_latent = int(z.shape[1])
        return z

    def meta(self) -> dict:
        return {"kind": "obsm", "key": self.key, "n_latent": self.n_latent}
