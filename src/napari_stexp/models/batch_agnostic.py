"""ST-guided tissue classification with a batch-agnostic gene encoder.

After Nishimura, Bise & Kojima, "Towards Spatial Transcriptomics-guided Pathological Image
Recognition with Batch-Agnostic Encoder" (ISBI 2025). Three stages:

1. **Gene encoder** (:mod:`.gene_vae`): an scVI-style VAE on raw counts whose decoder is
   conditioned on the patient, so its posterior mean z is a batch-agnostic expression embedding
   (or a latent the user already has, e.g. ``obsm['X_scVI']``). It trains on every section with
   counts, images or not.
2. **Image encoder guided by expression**: a backbone (:func:`~.backbones.build_image_encoder`)
   with a trainable projection (:class:`~.heads.ProjectionHead`) is aligned to a trainable
   projection of z by a symmetric InfoNCE loss between image and gene embeddings of the same
   spot (CLIP-style), or by its BLEEP-style variant whose targets are the softmax of the
   averaged within-modality similarities (soft targets: spots whose images *and* expression
   look alike are not pushed apart). When spots have labels, a class-guided term treats the gene
   embeddings of same-class spots as positives too. ``cached`` mode freezes the backbone and
   trains on features computed once (:mod:`~napari_stexp.models.feature_cache`); ``finetune``
   trains the backbone too, on augmented patches.
3. **Classifier** on the (L2-normalised) image embedding: a linear layer trained with
   class-balanced cross-entropy, then temperature-scaled on a spatially blocked validation split
   so that its probabilities are calibrated.

Baselines use the same code: ``objective='supervised'`` trains the same image encoder and head
with cross-entropy only (no genes); ``gene.batch_conditioning=False`` gives the contrastive model
whose gene encoder is not batch-conditioned.

Torch is imported inside functions only.
"""

from __future__ import annotations

import math
import os
import platform
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._provenance import clean_provenance, run_signature, version
from ..data.patches import ConfigPatchSpec
from ..errors import InputError, StexpWarning
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from ..training.engine import discard_stale_checkpoint
from ._folder import section_source
from ._options import option
from .gene_vae import GeneVAEConfig, clean_labels

FORMAT = "napari-stexp/batch-agnostic-classifier"
FORMAT_VERSION = 2  # 2: the model-folder contract (digests, nested gene VAE); 1 opens
MODES = ("cached", "finetune")
LOSSES = ("infonce", "soft")
OBJECTIVES = ("contrastive", "supervised")
#: Name used for obs/obsm keys of predictions (``obs['batch_agnostic_class']`` ...).
PREFIX = "batch_agnostic"


class ClassifierWarning(StexpWarning):
    """Something was dropped or could not be done as asked (rare classes, no calibration...)."""


# ----------------------------------------------------------------------------- configuration


@dataclass
class ClassifierConfig:
    """Everything that defines a model and its training (saved in ``config.json``)."""

    # image encoder
    backbone: str = option("resnet18", help="image encoder: resnet18, densenet121, resnet50, tinycnn")
    weights: str | None = option(None, help="none (random init), imagenet (torchvision; online or cached) or a weights file")
    mode: str = option("cached", help="cached: frozen backbone, features cached (fast on a CPU); finetune: train the backbone too", choices=MODES)
    patch_size: int = option(224, help="patch px at the training µm/px", min=16, max=4096)
    input_size: int = option(224, help="network input px for a patch (smaller = faster)", min=16, max=1024)
    target_mpp: float | None = None  # filled from the training images when None
    augment: bool = True  # finetune mode: flips/rotations + colour jitter
    cache_views: int = 1  # cached mode: 1 or 8 (dihedral views as augmentation)
    # gene encoder
    gene_latent: str = "vae"  # 'vae' | 'obsm:<key>' (e.g. 'obsm:X_scVI')
    gene: GeneVAEConfig = field(default_factory=GeneVAEConfig)
    n_top_genes: int = option(1000, help="gene panel size (most variable genes)", min=10, max=100_000)
    gene_sections: str = option("all", help="sections that train the gene encoder: all with counts, or image sections only", choices=("all", "image"))
    # contrastive stage
    objective: str = option("contrastive", help="contrastive, or supervised (baseline: labels only, no genes)", choices=OBJECTIVES)
    loss: str = option("infonce", help="infonce: CLIP-style; soft: BLEEP-style soft targets", choices=LOSSES)
    temperature: float = option(0.1, help="contrastive temperature", min=1e-4)
    class_weight: float = option(0.5, help="weight of the class-guided term (0 = off)", min=0.0)
    projection_dim: int = 128
    dropout: float = 0.1
    epochs: int = option(30, help="image-encoder epochs", min=0, max=100_000, label="image epochs")
    batch_size: int = option(64, help="training batch", min=2, max=4096)
    lr: float = option(1e-3, help="learning rate", min=0.0)
    backbone_lr_scale: float = 0.1  # finetune: backbone lr = lr * this
    weight_decay: float = 1e-4
    # classifier + calibration
    classes: list[str] | None = None  # fixed class list (labels outside -> unlabelled)
    min_class_spots: int = option(3, help="drop classes with fewer labelled image spots", min=1)
    class_balance: bool = True
    classifier_epochs: int = 150
    classifier_lr: float = 1e-2
    val_fraction: float = option(0.2, help="spatially blocked validation share for calibration", min=0.0, max=0.9)
    val_block: int = 4  # block side in array units (ST: 4 units = 800 µm)
    # general
    seed: int = 0
    device: str = "auto"
    # slide geometry (filled from the training data)
    spot_pitch_um: float | None = None
    spot_diameter_um: float | None = None

    def validate(self) -> None:
        def bad(name, msg):
            raise InputError(name, msg)

        if self.mode not in MODES:
            bad("mode", f"unknown mode '{self.mode}' (choose from {', '.join(MODES)})")
        if self.loss not in LOSSES:
            bad("loss", f"unknown loss '{self.loss}' (choose from {', '.join(LOSSES)})")
        if self.objective not in OBJECTIVES:
            bad("objective", f"unknown objective '{self.objective}' "
                             f"(choose from {', '.join(OBJECTIVES)})")
        if not (self.gene_latent == "vae" or self.gene_latent.startswith("obsm:")):
            bad("gene_latent", f"must be 'vae' or 'obsm:<key>', got {self.gene_latent!r}")
        if self.gene_sections not in ("all", "image"):
            bad("gene_sections", "must be 'all' or 'image'")
        if self.cache_views not in (1, 2, 4, 8):
            bad("cache_views", "must be 1, 2, 4 or 8")
        for name in ("epochs", "classifier_epochs"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "patch_size", "input_size", "projection_dim"):
            if getattr(self, name) < 2:
                bad(name, f"must be >= 2, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 0.9:
            bad("val_fraction", f"must be in [0, 0.9), got {self.val_fraction}")
        if self.temperature <= 0:
            bad("temperature", "must be positive")
        if self.gene_latent == "vae":
            self.gene.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassifierConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if isinstance(kw.get("gene"), Mapping):
            gnames = {f.name for f in fields(GeneVAEConfig)}
            kw["gene"] = GeneVAEConfig(**{k: v for k, v in kw["gene"].items() if k in gnames})
        return cls(**kw)

    @classmethod
    def tiny(cls, **overrides: Any) -> ClassifierConfig:
        """A configuration that trains in seconds on CPU (tests, demos)."""
        cfg = cls(backbone="tinycnn", input_size=32, projection_dim=32, epochs=4,
                  batch_size=32, classifier_epochs=60, n_top_genes=200,
                  gene=GeneVAEConfig(n_latent=10, n_hidden=32, epochs=15, batch_size=64,
                                     lr=3e-3))
        for k, v in overrides.items():
            if k == "gene" and isinstance(v, Mapping):
                for gk, gv in v.items():
                    setattr(cfg.gene, gk, gv)
                continue
            if not hasattr(cfg, k):
                raise TypeError(f"unknown option {k!r}")
            setattr(cfg, k, v)
        return cfg


# ----------------------------------------------------------------------------- losses


def info_nce(img, gene, temperature: float):
    """Symmetric InfoNCE (CLIP): spot i's image and gene embeddings are the positive pair."""
    import torch
    import torch.nn.functional as F

    logits = img @ gene.T / temperature
    t = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t))


def soft_target_loss(img, gene, temperature: float):
    """BLEEP-style: targets = softmax of the mean within-modality similarity (detached), so
    spots that look alike in both modalities are not pushed apart as false negatives."""
    import torch
    import torch.nn.functional as F

    logits = img @ gene.T / temperature
    with torch.no_grad():
        targets = F.softmax((img @ img.T + gene @ gene.T) / 2.0 / temperature, dim=-1)
    li = -(targets * F.log_softmax(logits, dim=-1)).sum(1)
    lg = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return 0.5 * (li.mean() + lg.mean())


def class_guided_loss(img, gene, labels, temperature: float):
    """Supervised-contrastive term: gene embeddings of same-class spots are positives for an
    image (and vice versa). Spots without a label (−1) are left out. 0 if < 2 labelled."""
    import torch.nn.functional as F

    lab = labels >= 0
    if int(lab.sum()) < 2:
        return img.sum() * 0.0
    i, g, y = img[lab], gene[lab], labels[lab]
    pos = (y[:, None] == y[None, :]).float()
    logits = i @ g.T / temperature
    li = -(pos * F.log_softmax(logits, dim=1)).sum(1) / pos.sum(1)
    lg = -(pos * F.log_softmax(logits.T, dim=1)).sum(1) / pos.sum(1)
    return 0.5 * (li.mean() + lg.mean())


# ----------------------------------------------------------------------------- network


def _build_net(feat_dim: int, n_latent: int, n_classes: int, cfg: ClassifierConfig,
               encoder=None):
    import torch
    from torch import nn

    from .heads import ProjectionHead

    class BatchAgnosticNet(nn.Module):
        """Backbone (optional) + image projection, gene projection, linear classifier."""

        def __init__(self):
            super().__init__()
            self.image_encoder = encoder
            self.image_head = ProjectionHead(feat_dim, cfg.projection_dim, cfg.dropout)
            self.gene_head = (ProjectionHead(n_latent, cfg.projection_dim, cfg.dropout)
                              if n_latent > 0 else None)
            self.classifier = nn.Linear(cfg.projection_dim, max(n_classes, 1))
            self.register_buffer("feat_mean", torch.zeros(feat_dim))
            self.register_buffer("feat_std", torch.ones(feat_dim))
            self.register_buffer("z_mean", torch.zeros(max(n_latent, 1)))
            self.register_buffer("z_std", torch.ones(max(n_latent, 1)))
            self.register_buffer("calibration_temperature", torch.tensor(1.0))

        def embed_features(self, f):
            f = (f - self.feat_mean) / self.feat_std
            return torch.nn.functional.normalize(self.image_head(f), dim=-1)

        def embed_images(self, x):
            return self.embed_features(self.image_encoder(x))

        def embed_genes(self, z):
            z = (z - self.z_mean) / self.z_std
            return torch.nn.functional.normalize(self.gene_head(z), dim=-1)

        def class_logits(self, emb):
            return self.classifier(emb)

    return BatchAgnosticNet()


# ----------------------------------------------------------------------------- data helpers


def _image_of(adata, name: str):
    from ..io.st import section_image

    try:
        return section_image(adata)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"section {name}", f"cannot open the H&E image ({exc})") from exc


def spatial_block_split(xy: np.ndarray, groups: Sequence, labels: Sequence, fraction: float,
                        block: float, seed: int = 0) -> np.ndarray:
    """Boolean validation mask: whole spatial blocks (``block`` × ``block`` in the units of
    ``xy``, per group/section) go to validation until ``fraction`` of the labelled spots are in
    it. Blocks, not spots, because neighbouring spots are alike: a random split would make the
    validation look easier than a new section. Every class keeps at least one training spot."""
    xy = np.asarray(xy, np.float64)
    grp = np.asarray([str(g) for g in groups])
    lab = pd.Series(list(labels), dtype=object)
    has = lab.notna().to_numpy()
    val = np.zeros(len(xy), bool)
    if fraction <= 0 or has.sum() < 2:
        return val
    bx = np.floor(xy[:, 0] / block).astype(np.int64)
    by = np.floor(xy[:, 1] / block).astype(np.int64)
    keys = pd.Series([f"{g}|{a}|{b}" for g, a, b in zip(grp, bx, by, strict=True)])
    uniq = keys[has].unique()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    target = fraction * has.sum()
    n_val = 0
    for i in order:
        if n_val >= target:
            break
        m = (keys == uniq[i]).to_numpy()
        val |= m
        n_val += int((m & has).sum())
    # every class keeps a training spot
    for c in lab[has].unique():
        cm = (lab == c).to_numpy()
        if not (cm & ~val).any():
            val[cm] = False
    return val & has


# ----------------------------------------------------------------------------- the model


@dataclass
class BatchAgnosticClassifier(ConfigPatchSpec):
    """A trained classifier bundle: network, gene encoder, panel, categories, provenance."""

    net: Any
    config: ClassifierConfig
    classes: list[str]
    gene_model: Any = None  # FittedGeneVAE | ObsmLatent | None (supervised objective)
    genes: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    feature_dim: int = 0
    provenance: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    path: str | None = None

    # -- geometry: patch_spec from ConfigPatchSpec

    @property
    def method(self) -> str:
        return PREFIX

    def _device(self, device: Any = None):
        from ..training.device import get_device

        return get_device(device or self.config.device)

    # -- image side
    def section_patches(self, adata, name: str, image=None, *, cache_dir: Any = None,
                        progress: ProgressFn | None = None,
                        cancel: CancelFlag | None = None) -> np.ndarray:
        """uint8 patches of a section's spots at this model's geometry."""
        from ..data.patches import extract_patches, read_size_px
        from ..io.frame import spots_rc_px

        pyr = image if image is not None else _image_of(adata, name)
        if pyr is None:
            raise InputError(f"section {name}", "has no H&E image")
        spec = self.patch_spec
        return extract_patches(pyr, spots_rc_px(adata, pyr), read_size_px(pyr, spec),
                               spec.input_size, source=f"section {name}",
                               cache_dir=None if cache_dir is False else cache_dir,
                               progress=progress, cancel=cancel)

    def embed_patches(self, patches: np.ndarray, *, batch_size: int = 64, device: Any = None,
                      progress: ProgressFn | None = None,
                      cancel: CancelFlag | None = None) -> np.ndarray:
        """L2-normalised image embeddings ``(N, projection_dim)`` of uint8 patches."""
        import torch

        from ..data.patches import to_float_nchw

        dev = self._device(device)
        net = self.net.to(dev).eval()
        out = np.empty((len(patches), self.config.projection_dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(patches), batch_size):
                check_cancel(cancel, "image embedding")
                x = to_float_nchw(torch.from_numpy(np.ascontiguousarray(
                    patches[s:s + batch_size]))).to(dev)
                out[s:s + len(x)] = net.embed_images(x).float().cpu().numpy()
                report(progress, min(s + batch_size, len(patches)), len(patches),
                       "image embedding")
        return out

    def proba_from_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``(N, n_classes)`` from image embeddings."""
        import torch

        net = self.net.cpu().eval()
        with torch.inference_mode():
            logits = net.class_logits(torch.from_numpy(np.asarray(emb, np.float32)))
            t = float(net.calibration_temperature)
            return torch.softmax(logits / t, dim=1).numpy().astype(np.float32)

    def predict_patches(self, patches: np.ndarray, **kw: Any) -> dict[str, np.ndarray]:
        emb = self.embed_patches(patches, **kw)
        proba = self.proba_from_embeddings(emb)
        return {"embedding": emb, "proba": proba,
                "class": np.asarray(self.classes, dtype=object)[proba.argmax(1)],
                "confidence": proba.max(1)}

    def predict_sections(self, adatas: Mapping[str, Any], *, cache_dir: Any = None,
                         device: Any = None, progress: ProgressFn | None = None,
                         cancel: CancelFlag | None = None) -> dict[str, dict]:
        """Per section with an image: embeddings, probabilities, classes, confidence."""
        out = {}
        for name, adata in adatas.items():
            img = _image_of(adata, name)
            if img is None:
                continue
            p = self.section_patches(adata, name, img, cache_dir=cache_dir, progress=progress,
                                     cancel=cancel)
            out[name] = self.predict_patches(p, device=device, progress=progress, cancel=cancel)
        return out

    # -- gene side
    def gene_embed(self, adatas: Mapping[str, Any] | Any) -> np.ndarray:
        """Batch-agnostic gene latent (VAE posterior mean, or the user's obsm latent)."""
        if self.gene_model is None:
            raise InputError(f"model {self.path or 'in memory'}",
                             "was trained without a gene encoder (supervised baseline)")
        return self.gene_model.embed(adatas)

    def gene_proba(self, adatas: Mapping[str, Any] | Any) -> np.ndarray | None:
        """Class probabilities of the gene encoder's own (scANVI-style) head, or None."""
        gm = self.gene_model
        if gm is None or not getattr(gm, "classes", None) or \
                getattr(gm.module, "classifier", None) is None:
            return None
        proba = gm.predict_proba(adatas)
        # map the gene head's classes onto the model's class order
        out = np.zeros((len(proba), len(self.classes)), np.float32)
        for j, c in enumerate(gm.classes):
            if c in self.classes:
                out[:, self.classes.index(c)] = proba[:, j]
        s = out.sum(1, keepdims=True)
        s[s == 0] = 1.0
        return out / s

    def embed_genes_projected(self, z: np.ndarray) -> np.ndarray:
        import torch

        net = self.net.cpu().eval()
        if net.gene_head is None:
            raise InputError("model", "no gene projection (supervised baseline)")
        with torch.inference_mode():
            return net.embed_genes(torch.from_numpy(np.asarray(z, np.float32))).numpy()

    # -- persistence
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write MODEL_DIR atomically: ``config.json`` (config, panel, batches, classes,
        provenance, history), ``model.pt`` (network incl. backbone), the gene encoder (a
        nested gene-VAE model folder ``gene_encoder/``)."""
        from ._folder import write_model_folder

        gm = self.gene_model
        gene_meta: dict[str, Any] = {"kind": "none"}
        folders = {}
        if gm is not None and hasattr(gm, "save"):
            folders["gene_encoder"] = lambda p: gm.save(p, atomic=False)
            gene_meta = {"kind": "vae", "folder": "gene_encoder", "n_latent": gm.n_latent}
        elif gm is not None:
            gene_meta = gm.meta()
        out = write_model_folder(
            out_dir, format=FORMAT, version=FORMAT_VERSION, config=self.config.to_dict(),
            state_dicts={"model.pt": self.net.state_dict()}, folders=folders,
            panel={"genes": self.genes, "classes": self.classes},
            meta={"classes": self.classes, "genes": self.genes, "batches": self.batches,
                  "feature_dim": self.feature_dim, "gene_encoder": gene_meta,
                  "history": self.history},
            provenance=self.provenance)
        self.path = str(out)
        return out

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: Any = "cpu") -> BatchAgnosticClassifier:
        """Load a MODEL_DIR written by :meth:`save` (InputError for anything wrong)."""
        from ._folder import load_into, read_model_folder, str_list
        from .backbones import build_image_encoder
        from .gene_vae import FittedGeneVAE, ObsmLatent

        f = read_model_folder(model_dir, FORMAT)
        d, src = f.path, f.config_path
        f.file("model.pt")
        cfg = f.config(ClassifierConfig)
        meta = f.meta
        classes = f.panel("classes", str_list(meta.get("classes"), src, "classes"))
        genes = f.panel("genes", str_list(meta.get("genes", []), src, "genes"))
        batches = str_list(meta.get("batches", []), src, "batches")
        feature_dim = meta.get("feature_dim")
        if not isinstance(feature_dim, int) or isinstance(feature_dim, bool) or feature_dim < 1:
            raise InputError(src, f"feature_dim must be a positive integer, got {feature_dim!r}")
        gmeta = meta.get("gene_encoder", {"kind": "none"})
        if not isinstance(gmeta, dict):
            raise InputError(src, "'gene_encoder' must be a JSON object")
        gene_model: Any = None
        n_latent = 0
        if gmeta.get("kind") == "vae":
            sub = gmeta.get("folder", "gene_encoder")
            if not isinstance(sub, str) or Path(sub).name != sub:
                raise InputError(src, f"gene_encoder.folder must be a folder name, got {sub!r}")
            gene_model = FittedGeneVAE.from_folder(f.folder(sub, "gene-vae"))
            n_latent = gene_model.n_latent
        elif gmeta.get("kind") == "obsm":
            gene_model = ObsmLatent(str(gmeta["key"]), gmeta.get("n_latent"))
            n_latent = int(gmeta.get("n_latent") or 0)
        encoder, _ = build_image_encoder(cfg.backbone, None)  # weights come from model.pt
        net = _build_net(feature_dim, n_latent if cfg.objective == "contrastive" else 0,
                         len(classes), cfg, encoder)
        load_into(net, f.state("model.pt"), d / "model.pt")
        net.eval()
        return cls(net=net, config=cfg, classes=classes, gene_model=gene_model,
                   genes=genes, batches=batches, feature_dim=feature_dim,
                   provenance=meta.get("provenance") or {}, history=meta.get("history") or {},
                   path=str(d))


# ----------------------------------------------------------------------------- training


def _resolve_classes(labels_img: np.ndarray, cfg: ClassifierConfig, source: str) -> list[str]:
    vals = pd.Series([v for v in labels_img if v is not None], dtype=object)
    if cfg.classes:
        classes = [str(c) for c in cfg.classes]
        outside = vals[~vals.isin(classes)]
        if len(outside):
            desc = ", ".join(f"{k!r} ({v})" for k, v in outside.value_counts().items())
            warnings.warn(f"{source}: label(s) not among the classes {classes}: {desc}; "
                          "treated as unlabelled", ClassifierWarning, stacklevel=3)
        return classes
    counts = vals.value_counts()
    rare = counts[counts < cfg.min_class_spots]
    if len(rare):
        desc = ", ".join(f"{k!r} ({v})" for k, v in rare.items())
        warnings.warn(f"{source}: class(es) with fewer than {cfg.min_class_spots} labelled "
                      f"image spots dropped: {desc}", ClassifierWarning, stacklevel=3)
    return sorted(counts[counts >= cfg.min_class_spots].index.astype(str))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` on ``y`` (log-grid + refine)."""
    logits = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    if len(y) == 0:
        return 1.0

    def nll(t):
        z = logits / t
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        return float((lse - z[np.arange(len(y)), y]).mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    vals = [nll(t) for t in grid]
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    fine = np.exp(np.linspace(np.log(lo), np.log(hi), 41))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def train_classifier(
    adatas: Mapping[str, Any],
    config: ClassifierConfig | None = None,
    *,
    genes: Sequence[str] | None = None,
    gene_model: Any = None,
    images: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None | bool = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
    **overrides: Any,
) -> BatchAgnosticClassifier:
    """Train the three stages on ``adatas`` (``{section: AnnData}``) and return the model.

    Sections with an H&E image (``images[name]`` or :func:`~napari_stexp.io.st.section_image`)
    train the image side; every section with counts trains the gene encoder (``gene_sections``).
    Labels (``obs['label']``; NaN/``undetermined`` = none) are needed on at least some image
    spots: the classifier cannot be trained without them (:class:`InputError`). ``gene_model``
    reuses a fitted gene encoder (skips stage 1). ``cache_dir``: feature/patch cache (None =
    default, False = none). ``checkpoint_dir``: stage checkpoints (resume after a crash/cancel).
    Config fields can be overridden by keyword (``epochs=…``).
    """
    import torch

    from ..data.patches import PatchSpec
    from ..io.frame import array_grid, median_spot_geometry
    from ..io.spatial import validate_st_adata
    from ..training.distributed import all_gather_tensor, all_gather_with_grad
    from ..training.engine import TrainConfig, fit, seed_everything
    from .backbones import build_image_encoder
    from .encoders import apply_encoder_geometry
    from .feature_cache import backbone_signature, resolve_cache_dir
    from .gene_vae import ObsmLatent, fit_gene_vae

    t_start = time.perf_counter()
    cfg = ClassifierConfig.from_dict(asdict(config)) if config is not None else ClassifierConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(cfg, k, v)
    cfg.validate()
    if not adatas:
        raise InputError(None, "no training sections given")
    names = list(adatas)
    src = ", ".join(names)
    for n in names:  # NaN/inf coordinates, duplicate ids -> InputError naming the section
        validate_st_adata(adatas[n], f"section {n}")
    cdir = resolve_cache_dir(cache_dir)
    fcache = cdir if cdir is not None else False
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None

    # ---- which sections have images; labels on image spots
    imgs: dict[str, Any] = {}
    for n in names:
        img = (images or {}).get(n)
        if img is None:
            img = _image_of(adatas[n], n)
        if img is not None:
            imgs[n] = img
    img_names = [n for n in names if n in imgs]
    if not img_names:
        raise InputError(src, "no section has an H&E image: the image classifier needs images "
                              "(sections with counts only can still train the gene encoder, "
                              "see fit_gene_vae / 'classify train --gene-only')")
    labels_img = np.concatenate([clean_labels(adatas[n].obs["label"]) if "label" in adatas[n].obs
                                 else np.full(adatas[n].n_obs, None, dtype=object)
                                 for n in img_names])
    if not any(v is not None for v in labels_img):
        raise InputError(src, "no labelled spot on the sections with an H&E image "
                              f"({', '.join(img_names)}): the classifier needs at least some "
                              "labels (obs['label']); sections without labels can only train "
                              "the gene encoder")
    classes = _resolve_classes(labels_img, cfg, src)
    if len(classes) < 2:
        raise InputError(src, f"need at least 2 classes with labelled image spots, found "
                              f"{classes} (min_class_spots={cfg.min_class_spots})")
    cpos = {c: i for i, c in enumerate(classes)}
    y_img = np.array([cpos.get(v, -1) if v is not None else -1 for v in labels_img], np.int64)

    # ---- geometry
    from .mclstexp import section_frozen_features, target_mpp_of

    apply_encoder_geometry(cfg)  # a foundation model reads patches at its own µm/px
    if cfg.target_mpp is None:
        cfg.target_mpp = target_mpp_of(imgs)
    pitch, diam = median_spot_geometry([adatas[n] for n in img_names])
    cfg.spot_pitch_um = pitch or cfg.spot_pitch_um
    cfg.spot_diameter_um = diam or cfg.spot_diameter_um
    spec = PatchSpec(cfg.patch_size, cfg.input_size, cfg.target_mpp)
    stages = 3 if cfg.objective == "contrastive" else 2

    def stage_progress(k: int, what: str):
        def f(done, total, msg=""):
            report(progress, done, total, f"[{k}/{stages}] {what}: {msg}")
        return f

    # ---- stage 1: gene encoder
    gm = None
    z_img = None
    n_latent = 0
    gene_sec_names = names if cfg.gene_sections == "all" else img_names
    if cfg.objective == "contrastive":
        if gene_model is not None:
            gm = gene_model
        elif cfg.gene_latent.startswith("obsm:"):
            gm = ObsmLatent(cfg.gene_latent.split(":", 1)[1])
        else:
            vae_classes = classes if cfg.gene.classifier else None
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not among the classes.*")
                gm = fit_gene_vae({n: adatas[n] for n in gene_sec_names}, genes=genes,
                                  config=cfg.gene, n_top_genes=cfg.n_top_genes,
                                  classes=vae_classes,
                                  checkpoint_dir=(ckpt / "gene") if ckpt else None,
                                  progress=stage_progress(1, "gene encoder"), cancel=cancel)
        z_img = gm.embed({n: adatas[n] for n in img_names})
        n_latent = int(z_img.shape[1])
    check_cancel(cancel, "training")

    # ---- image data: features (cached) or patches (finetune)
    seed_everything(cfg.seed)
    torch.manual_seed(cfg.seed)
    encoder, feat_dim = build_image_encoder(cfg.backbone, cfg.weights)
    net = _build_net(feat_dim, n_latent, len(classes), cfg, encoder)
    dev = get_device_safe(cfg.device)
    bsig = backbone_signature(encoder, cfg.backbone, cfg.weights)
    feats = patches = None
    sp_prog = stage_progress(2, "image features")
    if cfg.mode == "cached":
        blocks = [section_frozen_features(encoder, bsig, adatas[n], n, imgs[n], spec,
                                          views=cfg.cache_views, cache_dir=fcache, device=dev,
                                          progress=sp_prog, cancel=cancel)
                  for n in img_names]
        feats = np.concatenate(blocks, axis=1)  # (views, N, D)
        net.feat_mean.copy_(torch.from_numpy(feats[0].mean(0)))
        net.feat_std.copy_(torch.from_numpy(feats[0].std(0) + 1e-6))
        for p in encoder.parameters():
            p.requires_grad_(False)
    else:
        from ..data.patches import extract_patches, read_size_px
        from ..io.frame import spots_rc_px

        pl = []
        for n in img_names:
            pyr = imgs[n]
            pl.append(extract_patches(pyr, spots_rc_px(adatas[n], pyr),
                                      read_size_px(pyr, spec), spec.input_size,
                                      source=f"section {n}", cache_dir=cdir, progress=sp_prog,
                                      cancel=cancel))
        patches = np.concatenate(pl)
    if z_img is not None:
        net.z_mean.copy_(torch.from_numpy(z_img.mean(0)))
        net.z_std.copy_(torch.from_numpy(z_img.std(0) + 1e-6))
    sections_img = np.concatenate([[n] * adatas[n].n_obs for n in img_names])
    xy_img = np.concatenate([array_grid(adatas[n]) for n in img_names]).astype(np.float64)
    N = len(y_img)

    # ---- validation split (spatial blocks) for calibration
    lab_str = np.array([classes[i] if i >= 0 else None for i in y_img], dtype=object)
    val = spatial_block_split(xy_img, sections_img, lab_str, cfg.val_fraction, cfg.val_block,
                              cfg.seed)
    if val.sum() < 10 and cfg.val_fraction > 0:
        warnings.warn(f"{src}: only {int(val.sum())} labelled spots for the validation split: "
                      "probabilities are not temperature-calibrated", ClassifierWarning,
                      stacklevel=2)
        val[:] = False
    y_train = y_img.copy()
    y_train[val] = -1  # validation labels are never trained on

    def image_input(idx, aug_gen, augment: bool):
        if feats is not None:
            if augment and feats.shape[0] > 1:
                view = np.random.default_rng(int(aug_gen.initial_seed()) % 2**31).integers(
                    0, feats.shape[0], len(idx))
            else:
                view = np.zeros(len(idx), np.int64)
            return {"features": torch.from_numpy(feats[view, idx])}
        from ..data.patches import augment_batch, to_float_nchw

        x = to_float_nchw(torch.from_numpy(patches[idx]))
        if augment and cfg.augment:
            x = augment_batch(x, aug_gen)
        return {"image": x}

    def embed_batch(model, b, d):
        if "features" in b:
            return model.embed_features(b["features"].to(d))
        if cfg.mode == "cached":
            model.image_encoder.eval()
        return model.embed_images(b["image"].to(d))

    # ---- stage 2: image encoder (contrastive, or supervised baseline)
    class_w = None
    if cfg.class_balance:
        cnt = np.bincount(y_train[y_train >= 0], minlength=len(classes)).astype(np.float64)
        w = np.where(cnt > 0, cnt.sum() / np.maximum(cnt, 1) / max((cnt > 0).sum(), 1), 0.0)
        class_w = torch.tensor(w, dtype=torch.float32)
    bs = int(min(cfg.batch_size, N))
    if cfg.objective == "supervised":
        train_idx = np.flatnonzero(y_train >= 0)
    else:
        train_idx = np.flatnonzero(~val)
    n_b = max(math.ceil(len(train_idx) / bs), 1)
    z_t = torch.from_numpy(z_img) if z_img is not None else None
    y_t = torch.from_numpy(y_train)

    def batches(epoch: int):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = train_idx[rng.permutation(len(train_idx))]
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            if len(idx) < 2:
                continue
            b = image_input(idx, gen, augment=True)
            b["label"] = y_t[idx]
            if z_t is not None:
                b["z"] = z_t[idx]
            yield b

    def step(model, b, d):
        img = embed_batch(model, b, d)
        y = b["label"].to(d)
        if cfg.objective == "supervised":
            lab = y >= 0
            return torch.nn.functional.cross_entropy(
                model.class_logits(img[lab]), y[lab],
                weight=None if class_w is None else class_w.to(d))
        g = model.embed_genes(b["z"].to(d))
        # under DDP: the global batch's embeddings (with autograd) and labels, so the
        # contrastive terms keep every negative; identities in one process
        img, g, y = all_gather_with_grad(img), all_gather_with_grad(g), all_gather_tensor(y)
        loss = (soft_target_loss(img, g, cfg.temperature) if cfg.loss == "soft"
                else info_nce(img, g, cfg.temperature))
        if cfg.class_weight > 0:
            loss = loss + cfg.class_weight * class_guided_loss(img, g, y, cfg.temperature)
        return loss

    # parameter groups: the classifier head trains in stage 3 (except in the supervised baseline)
    head_params = [p for n_, p in net.named_parameters()
                   if not n_.startswith("image_encoder.") and
                   (cfg.objective == "supervised" or not n_.startswith("classifier."))]
    groups = [{"params": head_params, "lr": cfg.lr}]
    if cfg.mode == "finetune":
        groups.append({"params": list(net.image_encoder.parameters()),
                       "lr": cfg.lr * cfg.backbone_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    tc = TrainConfig(epochs=int(cfg.epochs), lr=cfg.lr, weight_decay=cfg.weight_decay,
                     seed=cfg.seed, device=str(dev), amp=True)
    sig = _run_signature(cfg, names, N, classes)
    stage_dir = _stage_dir(ckpt, "image", sig)
    t_fit = time.perf_counter()
    hist2 = fit(net, batches, step, tc, optimizer=opt, checkpoint_dir=stage_dir,
                extra_state={"run": sig}, progress=stage_progress(stages - 1, cfg.objective),
                cancel=cancel, batches_per_epoch=n_b) if cfg.epochs > 0 else None
    check_cancel(cancel, "training")

    # ---- stage 3: classifier on frozen image embeddings, then temperature scaling
    net.eval()
    emb = _embed_all(net, N, lambda idx: image_input(idx, None, augment=False), embed_batch,
                     dev)
    lab_idx = np.flatnonzero(y_train >= 0)
    E = torch.from_numpy(emb)
    Y = torch.from_numpy(y_img)
    hist3 = None
    if cfg.objective == "contrastive":
        clf = net.classifier
        clf.reset_parameters()

        def cbatches(epoch: int):
            yield {"i": torch.from_numpy(lab_idx)}

        def cstep(model, b, d):
            i = b["i"]
            return torch.nn.functional.cross_entropy(
                clf(E[i].to(d)), Y[i].to(d), weight=None if class_w is None else class_w.to(d))

        copt = torch.optim.Adam(clf.parameters(), lr=cfg.classifier_lr, weight_decay=1e-4)
        hist3 = fit(clf, cbatches, cstep,
                    TrainConfig(epochs=int(cfg.classifier_epochs), seed=cfg.seed,
                                device=str(dev), amp=False),
                    optimizer=copt, checkpoint_dir=_stage_dir(ckpt, "classifier", sig),
                    extra_state={"run": sig}, progress=stage_progress(3, "classifier"),
                    cancel=cancel, batches_per_epoch=1)
    net.to("cpu").eval()
    with torch.no_grad():
        logits = net.class_logits(E).numpy()
    temperature = 1.0
    val_metrics: dict[str, Any] = {}
    if val.any():
        temperature = fit_temperature(logits[val], y_img[val])
        from .classification_metrics import classification_report

        def rep(t):
            z = logits[val] / t
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            r = classification_report([classes[i] for i in y_img[val]], p, classes)
            return r

        before, after = rep(1.0), rep(temperature)
        val_metrics = {"n": int(val.sum()), "accuracy": after["accuracy"],
                       "macro_f1": after["macro_f1"], "per_class_f1": after["per_class_f1"],
                       "ece_before_calibration": before["ece"], "ece": after["ece"],
                       "temperature": temperature}
    net.calibration_temperature.fill_(float(temperature))
    report(progress, 1, 1, "training done")

    prov = {
        "software": "napari-stexp", "version": version(), "torch": torch.__version__,
        "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seed": cfg.seed, "device": str(dev), "mode": cfg.mode, "objective": cfg.objective,
        "sections": names, "image_sections": img_names, "gene_sections": gene_sec_names,
        "n_image_spots": int(N), "n_labelled_image_spots": int((y_img >= 0).sum()),
        "n_validation_spots": int(val.sum()),
        "label_counts": {c: int((y_img == i).sum()) for i, c in enumerate(classes)},
        "data": {n: section_source(adatas[n]) for n in names},
        "validation": val_metrics,
        "seconds_total": time.perf_counter() - t_start,
        "seconds_image_training": time.perf_counter() - t_fit,
        "mpp_handling": ("patches cover patch_size × target_mpp µm, resampled to input_size px; "
                         "images with unknown µm/px are assumed at target_mpp"),
        "validation_split": f"spatial blocks of {cfg.val_block} array units, "
                            f"{cfg.val_fraction:.0%} of labelled image spots",
    }
    gene_hist = list(getattr(gm, "history", []) or [])
    history = {"gene": gene_hist, "image": hist2.epochs if hist2 else [],
               "classifier": hist3.epochs[-1:] if hist3 else []}
    return BatchAgnosticClassifier(
        net=net, config=cfg, classes=classes, gene_model=gm,
        genes=list(getattr(gm, "genes", []) or []),
        batches=list(getattr(gm, "batches", []) or []), feature_dim=int(feat_dim),
        provenance=prov, history=history)


def get_device_safe(device: Any):
    from ..training.device import get_device

    return get_device(device)


def _embed_all(net, n: int, get_input, embed_batch, dev, batch_size: int = 128) -> np.ndarray:
    import torch

    net.to(dev).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            idx = np.arange(s, min(s + batch_size, n))
            out.append(embed_batch(net, get_input(idx), dev).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.image_head.projection.out_features),
                                                    np.float32)


def _stage_dir(ckpt: Path | None, stage: str, sig: str) -> Path | None:
    """Per-stage checkpoint folder; a checkpoint of another run is discarded."""
    if ckpt is None:
        return None
    d = ckpt / stage
    discard_stale_checkpoint(d / "last.pt", sig)
    return d


def _run_signature(cfg: ClassifierConfig, sections: Sequence[str], n: int,
                   classes: Sequence[str]) -> str:
    d = asdict(cfg)
    d.pop("device", None)
    return run_signature({"cfg": d, "sections": list(sections), "n": int(n),
                          "classes": list(classes)})


# ----------------------------------------------------------------------------- evaluation


def evaluate_classifier(model: BatchAgnosticClassifier, adatas: Mapping[str, Any], *,
                        cache_dir: Any = None, device: Any = None,
                        progress: ProgressFn | None = None,
                        cancel: CancelFlag | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per (method, section): ``method, section, n_spots, accuracy, macro_f1``.

    Methods: ``batch_agnostic`` (the image classifier; sections with an image) and
    ``gene_latent`` (the gene encoder's own classifier head; any section with counts, when the
    model has one). Only spots labelled with one of the model's classes count; other labels are
    reported in a warning and left out. The second value holds per-class F1 and ECE.
    """
    from .classification_metrics import classification_report

    rows, details = [], {}
    for name, adata in adatas.items():
        labels = clean_labels(adata.obs["label"]) if "label" in adata.obs else \
            np.full(adata.n_obs, None, dtype=object)
        has = np.array([v is not None for v in labels])
        known = np.array([v in model.classes for v in labels])
        if not has.any():
            warnings.warn(f"section {name}: no labelled spots; nothing to evaluate",
                          ClassifierWarning, stacklevel=2)
            continue
        if (has & ~known).any():
            vc = pd.Series(labels[has & ~known]).value_counts()
            desc = ", ".join(f"{k!r} ({v})" for k, v in vc.items())
            warnings.warn(f"section {name}: label(s) the model does not know left out: {desc} "
                          f"(model classes: {', '.join(model.classes)})", ClassifierWarning,
                          stacklevel=2)
        m = has & known
        if not m.any():
            continue
        probas: dict[str, np.ndarray] = {}
        img = _image_of(adata, name)
        if img is not None:
            p = model.section_patches(adata, name, img, cache_dir=cache_dir, progress=progress,
                                      cancel=cancel)
            probas[PREFIX] = model.proba_from_embeddings(
                model.embed_patches(p, device=device, cancel=cancel))
        gp = None
        if model.gene_model is not None:
            try:
                gp = model.gene_proba({name: adata})
            except InputError as exc:  # e.g. the section lacks the panel genes
                warnings.warn(f"section {name}: gene_latent not evaluated ({exc})",
                              ClassifierWarning, stacklevel=2)
        if gp is not None:
            probas["gene_latent"] = gp
        for method, proba in probas.items():
            r = classification_report(list(labels[m]), proba[m], model.classes)
            rows.append({"method": method, "section": name, "n_spots": int(m.sum()),
                         "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]})
            details[f"{method}/{name}"] = {"per_class_f1": r["per_class_f1"], "ece": r["ece"],
                                           "support": r["support"]}
    cols = ["method", "section", "n_spots", "accuracy", "macro_f1"]
    return pd.DataFrame(rows, columns=cols), details


# ----------------------------------------------------------------------------- embedding


def embed_sections(model: BatchAgnosticClassifier, adatas: Mapping[str, Any], *,
                   cache_dir: Any = None, device: Any = None,
                   progress: ProgressFn | None = None, cancel: CancelFlag | None = None):
    """One AnnData (spots of all sections, counts kept) with ``obsm['X_gene_latent']`` (all
    spots), ``obsm['X_image']`` (NaN rows for sections without an image, see
    ``obs['has_image']``), and the image classifier's output where images exist."""
    import anndata as ad

    from ..io.spatial import counts_matrix

    parts = []
    for name, adata in adatas.items():
        check_cancel(cancel, "embedding")
        ids = adata.obs_names.astype(str)
        index = ids if len(adatas) == 1 else pd.Index([f"{name}_{i}" for i in ids])
        a = ad.AnnData(X=counts_matrix(adata).copy(), obs=pd.DataFrame(index=index))
        a.var_names = adata.var_names
        a.obs["spot_id"] = np.asarray(ids)
        a.obs["section"] = name
        a.obs["patient"] = (adata.obs["patient"].astype(str).to_numpy() if "patient" in adata.obs
                            else name)
        lab = clean_labels(adata.obs["label"]) if "label" in adata.obs else \
            np.full(adata.n_obs, None, dtype=object)
        a.obs["label"] = pd.Categorical([v if v is not None else np.nan for v in lab])
        a.obsm["spatial"] = np.asarray(adata.obsm["spatial"], np.float64)
        if model.gene_model is not None:
            a.obsm["X_gene_latent"] = model.gene_embed({name: adata}).astype(np.float32)
        D = model.config.projection_dim
        Xi = np.full((adata.n_obs, D), np.nan, np.float32)
        a.obs["has_image"] = False
        img = _image_of(adata, name)
        k = len(model.classes)
        proba = np.full((adata.n_obs, k), np.nan, np.float32)
        if img is not None:
            p = model.section_patches(adata, name, img, cache_dir=cache_dir, progress=progress,
                                      cancel=cancel)
            res = model.predict_patches(p, device=device, progress=progress, cancel=cancel)
            Xi, proba = res["embedding"], res["proba"]
            a.obs["has_image"] = True
        a.obsm["X_image"] = Xi
        a.obsm[f"{PREFIX}_proba"] = proba
        cls = [model.classes[i] if np.isfinite(r).all() else np.nan
               for i, r in zip(np.nan_to_num(proba).argmax(1), proba, strict=True)]
        a.obs[f"{PREFIX}_class"] = pd.Categorical(cls, categories=model.classes)
        parts.append(a)
    if not parts:
        raise InputError(None, "no sections to embed")
    out = ad.concat(parts, join="inner", merge="same")
    out.obs_names_make_unique()
    for col in ("section", "patient"):
        out.obs[col] = pd.Categorical(out.obs[col].astype(str))
    out.obs[f"{PREFIX}_class"] = pd.Categorical(out.obs[f"{PREFIX}_class"].astype(object),
                                                categories=model.classes)
    out.uns[f"{PREFIX}_classes"] = list(model.classes)
    out.uns["napari_stexp"] = provenance_uns(model, "embed")
    return out


def provenance_uns(model: BatchAgnosticClassifier, kind: str) -> dict:
    c = model.config
    return clean_provenance({"kind": f"batch_agnostic_{kind}", "model": model.path or "in memory",
                   "backbone": c.backbone, "weights": str(c.weights), "mode": c.mode,
                   "objective": c.objective, "loss": c.loss, "seed": c.seed,
                   "gene_latent": c.gene_latent,
                   "batch_conditioning": bool(c.gene.batch_conditioning),
                   "n_latent": int(c.gene.n_latent), "classes": list(model.classes),
                   "version": model.provenance.get("version", version()),
                   "calibration_temperature": float(model.net.calibration_temperature),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


# Whole-slide classification: napari_stexp.analysis.slide_classify.classify_slide (the slide-grid
# pipeline lives in the analysis tier; models do not import it). Results are written with
# napari_stexp.io.export.write_h5ad.
