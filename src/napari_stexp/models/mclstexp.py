"""mclSTExp: spatial gene-expression prediction from H&E by contrastive learning and retrieval
(Min et al., Briefings in Bioinformatics 2024; retrieval as in BLEEP, Xie et al. 2023).

- **Image encoder**: a backbone (DenseNet-121 by default, :mod:`.backbones`) → global average
  pooling (1024-d) → :class:`~.heads.ProjectionHead` → 256-d.
- **Spot encoder**: the spot's normalised expression (``log1p`` of counts per 1e4 over the gene
  panel) plus learned x and y position embeddings indexed by the integer array coordinates
  (tables sized to the training data's largest coordinate + a margin, not 65,536 rows), then a
  2-layer pre-LayerNorm Transformer (8 heads × 64, GELU feed-forward of the panel's width, as the
  reference) whose sequence is the set of spots of the batch, then a projection head → 256-d.
- **Loss**: symmetric cross-entropy over the batch similarity matrix (spots × images) with
  identity targets; ``logits = spot @ image.T / temperature`` (temperature 1 on unnormalised
  embeddings by default, as the reference). Options: L2-normalised embeddings and/or a learned
  temperature (CLIP-style, initialised at ``init_temperature``).
- **Prediction by retrieval**: embed the query patch; take the ``top_k`` (200) reference spots by
  cosine similarity; weight them by ``1 / d²`` with ``d`` the Euclidean distance between the
  *unnormalised* embeddings (the published code uses the L1 norm here: ``distance='l1'``);
  prediction = weighted mean of their measured (normalised) expression. Confidence = mean cosine
  similarity of the top-k. References are the training spots only: a test section is never
  among them.

Training runs through the shared engine (:func:`napari_stexp.training.engine.fit`) in two modes:
``finetune`` (the whole network on augmented patches, as the paper) and ``cached`` (frozen
backbone; features computed once and cached on disk, see
:mod:`napari_stexp.models.feature_cache`; only the heads and the spot encoder train).

This module imports torch at the top; nothing imported at plugin start imports it.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._provenance import run_signature, version
from ..data.patches import ConfigPatchSpec
from ..errors import InputError
from ..io.frame import (
    array_grid,
    median_spot_geometry,
    mpp_of,
    neighbour_graph,
    neighbour_mean,
    section_grid,
    spots_rc_px,
)
from ..io.frame import (
    grid_coordinates as grid_coordinates,  # re-exported: the grid functions' old home
)
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from ..training.engine import discard_stale_checkpoint
from ._folder import section_source
from .heads import ProjectionHead
from .mclstexp_config import (  # noqa: F401 - re-exported: the config's home is torch-free
    CONTEXT_MODES,
    CPU_AUTO_DEFAULTS,
    MODES,
    PRESETS,
    MclstexpConfig,
    resolve_mode,
)

FORMAT = "napari-stexp/mclstexp"
FORMAT_VERSION = 2  # 2: the model-folder contract (digests); 1 still opens

# ----------------------------------------------------------------------------- network


class Attention(nn.Module):
    """Multi-head self-attention over the set of spots (``heads × dim_head`` inner width)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(LN(x))`` then ``x + FF(LN(x))`` (GELU feed-forward)."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(ff_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class MclstexpNet(nn.Module):
    """Image encoder + projection, spot encoder + projection, contrastive loss."""

    def __init__(self, n_genes: int, cfg: MclstexpConfig, *, load_weights: bool = True):
        super().__init__()
        from .backbones import build_image_encoder

        self.n_genes = int(n_genes)
        encoder, dim = build_image_encoder(cfg.backbone, cfg.weights if load_weights else None,
                                           memory_efficient=cfg.memory_efficient)
        self.image_encoder = encoder
        self.feature_dim = dim
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        self.context = str(cfg.context_neighbours)
        head_in = dim * (2 if self.context == "concat" else 1)
        self.image_projection = ProjectionHead(head_in, cfg.projection_dim, cfg.dropout)
        self.x_embed = nn.Embedding(int(cfg.pos_size_x), self.n_genes)
        self.y_embed = nn.Embedding(int(cfg.pos_size_y), self.n_genes)
        ff = int(cfg.ff_dim or self.n_genes)
        self.spot_encoder = nn.Sequential(*[
            TransformerBlock(self.n_genes, cfg.heads, cfg.dim_head, ff, cfg.dropout)
            for _ in range(cfg.depth)])
        self.spot_projection = ProjectionHead(self.n_genes, cfg.projection_dim, cfg.dropout)
        self.normalize_embeddings = bool(cfg.normalize_embeddings)
        self.temperature = float(cfg.temperature)
        self.learn_temperature = bool(cfg.learn_temperature)
        init = math.log(1.0 / (cfg.init_temperature if cfg.learn_temperature
                               else cfg.temperature))
        self.logit_scale = nn.Parameter(torch.tensor(float(init)),
                                        requires_grad=self.learn_temperature)

    # image side
    def image_features(self, x):
        return self.image_encoder(x)

    def embed_features(self, feats, context=None):
        """Image embeddings of backbone features. ``context``: the neighbours' mean features
        (spatial-context option; None = the spot's own features, as for a lone spot)."""
        z = (feats - self.feat_mean) / self.feat_std
        if self.context != "none":
            c = z if context is None else (context - self.feat_mean) / self.feat_std
            z = torch.cat([z, c], dim=-1) if self.context == "concat" else (z + c) / 2.0
        return self.image_projection(z)

    def embed_images(self, x):
        return self.embed_features(self.image_features(x))

    # spot side
    def embed_spots(self, expression, positions):
        px = positions[:, 0].long().clamp(0, self.x_embed.num_embeddings - 1)
        py = positions[:, 1].long().clamp(0, self.y_embed.num_embeddings - 1)
        h = expression + self.x_embed(px) + self.y_embed(py)
        h = self.spot_encoder(h.unsqueeze(0)).squeeze(0)
        return self.spot_projection(h)

    # loss
    def logits(self, image_emb, spot_emb):
        if self.normalize_embeddings:
            image_emb = F.normalize(image_emb, dim=-1)
            spot_emb = F.normalize(spot_emb, dim=-1)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return spot_emb @ image_emb.T * scale

    def loss(self, image_emb, spot_emb):
        """Symmetric cross-entropy with identity targets (spot i ↔ image i)."""
        return contrastive_loss(self.logits(image_emb.float(), spot_emb.float()))


def contrastive_loss(logits):
    """``(CE(logits, I) + CE(logits.T, I)) / 2`` for a square similarity matrix."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2.0


def position_table_sizes(positions: np.ndarray, margin: int = 8) -> tuple[int, int]:
    """Rows of the x and y position tables: the data's largest coordinate + 1 + ``margin``."""
    p = np.asarray(positions)
    if p.size == 0:
        return margin + 1, margin + 1
    if (p < 0).any():
        raise InputError("positions", "array coordinates must be non-negative")
    return int(p[:, 0].max()) + 1 + int(margin), int(p[:, 1].max()) + 1 + int(margin)


# ----------------------------------------------------------------------------- spatial context


# grid_coordinates, section_grid, neighbour_graph and neighbour_mean live in io/frame (the slide
# frame) and are imported at the top of this module.


def smooth_predictions(pred: np.ndarray, grid_or_graph: Any, weight: float, *,
                       radius: float = 1.5) -> np.ndarray:
    """``(1 - weight) · own + weight · neighbours' mean`` over the spot graph (the
    ``smooth_neighbours`` option; a lone spot is unchanged, a constant map too)."""
    p = np.asarray(pred, np.float32)
    if weight <= 0:
        return p
    return ((1.0 - weight) * p + weight * neighbour_mean(p, grid_or_graph, radius)
            ).astype(np.float32)


# ----------------------------------------------------------------------------- retrieval


def retrieve(query: np.ndarray, ref_embeddings: np.ndarray, ref_expression: np.ndarray, *,
             top_k: int = 200, distance: str = "euclidean", chunk: int = 256,
             eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """BLEEP/mclSTExp retrieval: ``(predictions (n, G), confidence (n,))``.

    Neighbours: top-``k`` reference embeddings by cosine similarity. Weights: ``1 / d²`` with
    ``d`` the Euclidean (or L1) distance between unnormalised embeddings, normalised to sum 1.
    Confidence: mean cosine similarity of the neighbours.
    """
    q = torch.as_tensor(np.asarray(query, np.float32))
    R = torch.as_tensor(np.asarray(ref_embeddings, np.float32))
    E = torch.as_tensor(np.asarray(ref_expression, np.float32))
    if R.shape[0] == 0:
        raise InputError("reference", "no reference spots to retrieve from")
    if R.shape[0] != E.shape[0]:
        raise InputError("reference", f"{R.shape[0]} embeddings but {E.shape[0]} expression rows")
    k = int(min(max(top_k, 1), R.shape[0]))
    Rn = F.normalize(R, dim=1)
    preds = np.empty((q.shape[0], E.shape[1]), np.float32)
    conf = np.empty(q.shape[0], np.float32)
    with torch.inference_mode():
        for s in range(0, q.shape[0], chunk):
            qc = q[s:s + chunk]
            sim = F.normalize(qc, dim=1) @ Rn.T
            top_sim, idx = sim.topk(k, dim=1)
            diff = R[idx] - qc[:, None, :]
            d = diff.abs().sum(-1) if distance == "l1" else diff.norm(dim=-1)
            w = 1.0 / (d * d).clamp_min(eps)
            w = w / w.sum(dim=1, keepdim=True)
            W = torch.zeros(qc.shape[0], R.shape[0]).scatter_(1, idx, w)
            preds[s:s + chunk] = (W @ E).numpy()
            conf[s:s + chunk] = top_sim.mean(dim=1).numpy()
    return preds, conf


# ----------------------------------------------------------------------------- model bundle


@dataclass
class Reference:
    """The retrieval reference: training spots' embeddings and measured expression."""

    embeddings: np.ndarray  # (n, projection_dim)
    expression: np.ndarray  # (n, G) normalised targets
    sections: np.ndarray  # (n,) section names
    obs_names: np.ndarray  # (n,)
    positions: np.ndarray  # (n, 2)
    frozen_features: np.ndarray | None = None  # (n, D) frozen-backbone features (ridge baseline)
    grid: np.ndarray | None = None  # (n, 2) spot centres in spot pitches (spatial context)

    @property
    def section_names(self) -> list[str]:
        return list(dict.fromkeys(str(s) for s in self.sections))


@dataclass
class ExpressionModel(ConfigPatchSpec):
    """A trained mclSTExp model with its gene panel, reference and provenance (GUI-free)."""

    net: MclstexpNet
    config: MclstexpConfig
    genes: list[str]
    reference: Reference
    provenance: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    path: str | None = None

    # -- geometry: patch_spec from ConfigPatchSpec

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else "mclstexp"

    # -- inference
    def embed_patches(self, patches: np.ndarray, *, batch_size: int = 64, device: Any = "cpu",
                      progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                      grid: np.ndarray | None = None) -> np.ndarray:
        """Image embeddings ``(N, projection_dim)`` of uint8 patches ``(N, S, S, 3)``.

        With the spatial-context or test-time-augmentation options, the backbone features of
        all patches are computed first (``tta_views`` views) and :meth:`embed_features` combines
        them; ``grid`` (spot centres in pitches, see :func:`section_grid`) is then required for
        the context."""
        from ..data.patches import to_float_nchw

        if self.config.context_neighbours != "none" or self.config.tta_views > 1:
            self._need_grid(grid, len(patches))
            from .feature_cache import compute_features

            feats = compute_features(self.net.image_encoder, patches, batch_size=batch_size,
                                     device=_device(device), views=self.config.tta_views,
                                     channels_last=bool(self.config.channels_last),
                                     progress=progress, cancel=cancel)
            return self.embed_features(feats, grid)
        dev = _device(device)
        net = self.net.to(dev).eval()
        cl = bool(self.config.channels_last)
        if cl:
            net.image_encoder.to(memory_format=torch.channels_last)
        out = np.empty((len(patches), self.config.projection_dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(patches), batch_size):
                check_cancel(cancel, "prediction")
                x = to_float_nchw(torch.from_numpy(np.ascontiguousarray(
                    patches[s:s + batch_size]))).to(dev)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.bfloat16,
                                    enabled=bool(self.config.bf16 and dev.type == "cpu")):
                    out[s:s + len(x)] = net.embed_images(x).float().cpu().numpy()
                report(progress, min(s + batch_size, len(patches)), len(patches), "embedding")
        return out

    def _need_grid(self, grid: np.ndarray | None, n: int) -> None:
        """InputError if the context option needs ``grid`` and it is missing or mis-shaped."""
        if grid is None and self.config.context_neighbours != "none":
            raise InputError(f"model {self.path or 'in memory'}",
                             "this model uses spatial context: pass the spots' grid "
                             "coordinates (grid=section_grid(adata) or the pseudo-spot grid)")
        if grid is not None and np.shape(grid) != (n, 2):
            raise InputError("grid", f"shape {np.shape(grid)}, expected ({n}, 2)")

    def embed_features(self, features: np.ndarray, grid: np.ndarray | None = None,
                       *, chunk: int = 1024) -> np.ndarray:
        """Image embeddings from backbone features ``(N, D)`` or ``(views, N, D)`` (the mean
        over views: test-time augmentation). With the spatial-context option each spot's
        features are combined with its neighbours' mean over ``grid`` (spot pitches;
        neighbours within ``context_radius``)."""
        f = np.asarray(features, np.float32)
        if f.ndim == 2:
            f = f[None]
        n = f.shape[1]
        use_ctx = self.config.context_neighbours != "none"
        self._need_grid(grid, n)
        if use_ctx:
            graph = neighbour_graph(grid, self.config.context_radius)
        net = self.net.to("cpu").eval()
        out = np.zeros((n, self.config.projection_dim), np.float32)
        with torch.inference_mode():
            for v in range(f.shape[0]):
                ctx = neighbour_mean(f[v], graph) if use_ctx else None
                for s in range(0, n, chunk):
                    x = torch.from_numpy(np.ascontiguousarray(f[v, s:s + chunk]))
                    c = None if ctx is None else torch.from_numpy(ctx[s:s + chunk])
                    out[s:s + chunk] += net.embed_features(x, c).float().numpy()
        return out / f.shape[0]

    def predict_embeddings(self, embeddings: np.ndarray, top_k: int | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Retrieval from this model's reference: ``(predictions, confidence)``."""
        return retrieve(embeddings, self.reference.embeddings, self.reference.expression,
                        top_k=top_k or self.config.top_k, distance=self.config.distance)

    def smooth(self, predicted: np.ndarray, grid: np.ndarray | None) -> np.ndarray:
        """The ``smooth_neighbours`` option over the spots' ``grid`` (no-op when off)."""
        w = float(self.config.smooth_neighbours)
        if w <= 0:
            return predicted
        if grid is None:
            raise InputError(f"model {self.path or 'in memory'}",
                             "this model smooths predictions over the spot grid: pass the "
                             "spots' grid coordinates")
        return smooth_predictions(predicted, grid, w, radius=self.config.context_radius)

    def predict_features(self, features: np.ndarray, grid: np.ndarray | None = None
                         ) -> dict[str, np.ndarray]:
        """Predict from backbone features ``(N, D)`` or ``(views, N, D)`` of all spots of one
        section or slide (``grid``: their centres in spot pitches; needed by the context and
        smoothing options). The whole-slide predictor can stream backbone features
        (``net.image_features``) and call this once at the end."""
        emb = self.embed_features(features, grid)
        pred, conf = self.predict_embeddings(emb)
        return {"predicted": self.smooth(pred, grid), "confidence": conf, "embeddings": emb}

    def predict_patches(self, patches: np.ndarray, grid: np.ndarray | None = None,
                        **kw) -> dict[str, np.ndarray]:
        """Predict from uint8 patches (``grid``: see :meth:`predict_features`)."""
        emb = self.embed_patches(patches, grid=grid, **kw)
        pred, conf = self.predict_embeddings(emb)
        return {"predicted": self.smooth(pred, grid), "confidence": conf, "embeddings": emb}

    def section_patches(self, adata, name: str, image=None, *, cache_dir=None,
                        progress: ProgressFn | None = None, cancel: CancelFlag | None = None
                        ) -> np.ndarray:
        """Patches of a section at this model's geometry (image from ``section_image``)."""
        from ..data.patches import extract_patches, open_section_image, read_size_px

        pyr = image if image is not None else open_section_image(adata, name)
        spec = self.patch_spec
        return extract_patches(pyr, spots_rc_px(adata, pyr), read_size_px(pyr, spec),
                               spec.input_size, source=f"section {name}", cache_dir=cache_dir,
                               progress=progress, cancel=cancel)

    def predict_sections(self, adatas: Mapping[str, Any], images: Mapping[str, Any] | None = None,
                         *, batch_size: int = 64, device: Any = "auto",
                         cache_dir: str | os.PathLike | None = None,
                         progress: ProgressFn | None = None, cancel: CancelFlag | None = None
                         ) -> dict[str, dict[str, np.ndarray]]:
        """Predict every spot of each section from its H&E alone."""
        out = {}
        for name, adata in adatas.items():
            patches = self.section_patches(adata, name, (images or {}).get(name),
                                           cache_dir=cache_dir, progress=progress, cancel=cancel)
            grid = section_grid(adata) if self.config.uses_grid else None
            out[name] = self.predict_patches(patches, grid=grid, batch_size=batch_size,
                                             device=device, progress=progress, cancel=cancel)
        return out

    def embed_spots(self, expression: np.ndarray, positions: np.ndarray, *,
                    chunk: int | None = None, device: Any = "cpu") -> np.ndarray:
        """Spot-encoder embeddings; the Transformer sees sets of ``chunk`` (batch size) spots."""
        return _embed_spots(self.net, expression, positions,
                            chunk or self.config.batch_size, _device(device))

    def check_genes(self, adatas: Mapping[str, Any]) -> None:
        """InputError naming this model folder when a section lacks panel genes."""
        from ..data.genes import check_panel

        check_panel(adatas, self.genes, source=f"model {self.path or 'in memory'}")

    def check_no_leak(self, sections: Sequence[str]) -> None:
        """InputError if a test section is among the retrieval references (a leak)."""
        refs = set(self.reference.section_names)
        leak = [s for s in sections if s in refs]
        if leak:
            raise InputError(f"model {self.path or 'in memory'}",
                             f"section(s) {', '.join(leak)} are in the model's retrieval "
                             "reference (used for training); evaluate on held-out sections")

    # -- persistence
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``config.json``, ``genes.txt``, ``model.pt``, ``reference.npz`` atomically
        (a model folder, :mod:`napari_stexp.models._folder`)."""
        from ._folder import write_model_folder

        ref = self.reference
        arrays = {"embeddings": ref.embeddings.astype(np.float32),
                  "expression": ref.expression.astype(np.float32),
                  "sections": np.asarray(ref.sections, dtype=str),
                  "obs_names": np.asarray(ref.obs_names, dtype=str),
                  "positions": np.asarray(ref.positions, dtype=np.int64)}
        if ref.frozen_features is not None:
            arrays["frozen_features"] = ref.frozen_features.astype(np.float32)
        if ref.grid is not None:
            arrays["grid"] = np.asarray(ref.grid, np.float64)
        out = write_model_folder(
            out_dir, format=FORMAT, version=FORMAT_VERSION, config=asdict(self.config),
            state_dicts={"model.pt": self.net.state_dict()},
            extra_files={"genes.txt": "\n".join(self.genes) + "\n"},
            arrays={"reference.npz": arrays}, panel={"genes": self.genes},
            meta={"n_genes": len(self.genes), "genes_file": "genes.txt",
                  "normalisation": {"kind": "library_size_log1p", "target_sum":
                                    self.config.target_sum, "library": "sum over panel genes"},
                  "reference": {"n_spots": int(len(ref.embeddings)),
                                "sections": ref.section_names},
                  "history": self.history},
            provenance=self.provenance)
        self.path = str(out)
        return out

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: Any = "cpu") -> ExpressionModel:
        """Load a MODEL_DIR written by :meth:`save` (clear InputError for anything wrong)."""
        from ._folder import load_into, read_model_folder

        f = read_model_folder(model_dir, FORMAT)
        d = f.path
        for name in ("genes.txt", "model.pt", "reference.npz"):
            f.file(name)
        cfg = f.config(MclstexpConfig)
        genes = f.panel("genes", f.lines("genes.txt"), d / "genes.txt")
        n_genes = f.meta.get("n_genes", len(genes))
        if not isinstance(n_genes, int) or len(genes) != n_genes:
            raise InputError(d / "genes.txt", f"{len(genes)} genes, config.json says "
                                              f"{n_genes!r}")
        net = MclstexpNet(len(genes), cfg, load_weights=False)
        load_into(net, f.state("model.pt"), d / "model.pt")
        z = f.arrays("reference.npz", ("embeddings", "expression", "sections", "obs_names",
                                       "positions"))
        ref = Reference(z["embeddings"], z["expression"], z["sections"], z["obs_names"],
                        z["positions"], z.get("frozen_features"), z.get("grid"))
        if ref.expression.ndim != 2 or ref.expression.shape[1] != len(genes) \
                or len(ref.embeddings) != len(ref.expression):
            raise InputError(d / "reference.npz", "reference does not match the gene panel")
        net.to(_device(device)).eval()
        return cls(net=net, config=cfg, genes=genes, reference=ref,
                   provenance=f.meta.get("provenance") or {},
                   history=f.meta.get("history") or [], path=str(d))

    def frozen_encoder(self):
        """The frozen backbone the ridge baseline uses: this model's encoder in cached mode, the
        re-built initial encoder (same seed/weights; checked by digest) in finetune mode."""
        from .backbones import build_image_encoder, module_digest

        if self.config.mode == "cached":
            return self.net.image_encoder
        want = self.provenance.get("initial_backbone_digest")
        torch.manual_seed(self.config.seed)
        enc, _ = build_image_encoder(self.config.backbone, self.config.weights,
                                     memory_efficient=self.config.memory_efficient)
        if want and module_digest(enc) != want:
            return None
        return enc


# ----------------------------------------------------------------------------- training


def _device(device: Any):
    from ..training.device import get_device

    if isinstance(device, torch.device):
        return device
    return get_device(device)


def _embed_spots(net: MclstexpNet, expression: np.ndarray, positions: np.ndarray,
                 chunk: int, device) -> np.ndarray:
    net = net.to(device).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(expression), chunk):
            e = torch.from_numpy(np.ascontiguousarray(expression[s:s + chunk], np.float32))
            p = torch.from_numpy(np.ascontiguousarray(positions[s:s + chunk], np.int64))
            out.append(net.embed_spots(e.to(device), p.to(device)).float().cpu().numpy())
    if not out:
        return np.empty((0, net.spot_projection.projection.out_features), np.float32)
    return np.concatenate(out)


def target_mpp_of(images: Mapping[str, Any]) -> float | None:
    """Training µm/px: the median of the sections' image µm/px (None if none is known)."""
    vals = [m for p in images.values() if (m := mpp_of(p)) is not None]
    return float(np.median(vals)) if vals else None


def patient_of(adata) -> str | None:
    """A section's patient (``obs['patient']``), or None when not recorded."""
    if "patient" in adata.obs and adata.n_obs:
        return str(adata.obs["patient"].iloc[0])
    return None


def section_frozen_features(encoder, backbone_sig: dict, adata, name: str, image, spec, *,
                            views: int = 1, cache_dir: Any = None, batch_size: int = 64,
                            device: Any = "cpu", channels_last: bool = False,
                            patches: np.ndarray | None = None,
                            progress: ProgressFn | None = None, cancel: CancelFlag | None = None
                            ) -> np.ndarray:
    """Frozen-backbone features ``(views, n, D)`` of a section's spots, cached on disk."""
    from ..data.patches import check_geometry, extract_patches, read_size_px
    from .feature_cache import (
        cache_key,
        cached_features,
        compute_features,
        data_signature,
    )

    centres = spots_rc_px(adata, image)
    read_px = read_size_px(image, spec)
    check_geometry(image, centres, read_px, f"section {name}")
    box: dict[str, np.ndarray] = {} if patches is None else {"p": patches}
    pcache = None if cache_dir is False else cache_dir

    def get_patches():
        if "p" not in box:
            box["p"] = extract_patches(image, centres, read_px, spec.input_size,
                                       source=f"section {name}", cache_dir=pcache,
                                       progress=progress, cancel=cancel)
        return box["p"]

    def compute():
        return compute_features(encoder, get_patches(), batch_size=batch_size, device=device,
                                views=views, channels_last=channels_last, progress=progress,
                                cancel=cancel)

    if cache_dir is False:
        return compute()
    dsig = data_signature(image, centres, read_px, spec.input_size, patches=get_patches)
    key = cache_key(dsig, backbone_sig, views)
    feats, _ = cached_features(key, compute, cache_dir=cache_dir, progress=progress,
                               meta={"data": dsig, "backbone": backbone_sig, "views": views,
                                     "section": name})
    return feats


def make_optimizer(net: nn.Module, cfg: MclstexpConfig, device):
    """Adam (lr, weight decay of the config) over the trainable parameters; the fused kernel
    where available (on CPU it is ~8× faster than the per-tensor loop)."""
    params = [p for p in net.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


_LATER_DEFAULTS = {"context_neighbours": "none", "context_radius": 1.5, "smooth_neighbours": 0.0,
                   "tta_views": 1}


def _run_signature(cfg: MclstexpConfig, genes: Sequence[str], sections: Sequence[str],
                   n_spots: int) -> str:
    d = asdict(cfg)
    d.pop("epochs", None)
    d.pop("device", None)
    for k, v in _LATER_DEFAULTS.items():  # options added later: at their defaults, the
        if d.get(k) == v:  # signature of an existing run is unchanged (it still resumes)
            d.pop(k)
    return run_signature({"cfg": d, "genes": list(genes), "sections": list(sections),
                          "n": int(n_spots)})


def train_expression_model(
    adatas: Mapping[str, Any],
    config: MclstexpConfig | None = None,
    *,
    genes: Sequence[str] | None = None,
    top_genes: int | None = None,
    images: Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None | bool = None,
    frozen_features: bool = True,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
    **overrides: Any,
) -> ExpressionModel:
    """Train mclSTExp on ST sections (each with an H&E image) and return the model bundle.

    ``config`` fields can be overridden by keyword (``epochs=…``, ``mode='cached'`` …).
    ``genes`` (a list) or ``top_genes`` (top-N variable genes) choose the panel. ``images``
    maps section → :class:`ImagePyramid` (default: :func:`napari_stexp.io.st.section_image`).
    ``cache_dir``: feature/patch cache folder (None = default, False = no disk cache).
    ``checkpoint_dir``: per-epoch atomic checkpoints; training resumes from them when the run
    (config, panel, sections) is the same. ``epochs=0`` gives the untrained model.
    ``frozen_features``: in finetune mode also keep the initial backbone's features of the
    training spots (the ridge baseline of ``evaluate``; cached mode always has them).
    """
    from ..data.genes import panel_targets, resolve_panel
    from ..data.patches import (
        PatchSpec,
        SpotPatchDataset,
        open_section_image,
    )
    from ..training.distributed import all_gather_tensor, all_gather_with_grad
    from ..training.engine import TrainConfig, fit, seed_everything
    from .backbones import module_digest
    from .encoders import apply_encoder_geometry
    from .feature_cache import backbone_signature, resolve_cache_dir

    t_start = time.perf_counter()
    cfg = MclstexpConfig(**asdict(config)) if config is not None else MclstexpConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(cfg, k, v)
    cfg.validate()
    if cfg.context_neighbours != "none" and cfg.mode != "cached" and cfg.epochs > 0:
        raise InputError("context_neighbours", "spatial context trains in mode 'cached' only "
                                               "(the neighbours' features come from the frozen "
                                               "backbone)")
    cdir = resolve_cache_dir(cache_dir)
    fcache = cdir if cdir is not None else False
    if not adatas:
        raise InputError(None, "no training sections given")
    names = list(adatas)
    panel = resolve_panel(adatas, genes=genes, top_genes=top_genes)

    # images, geometry (µm/px handling: see data/patches.py)
    imgs = {n: (images or {}).get(n) or open_section_image(adatas[n], n) for n in names}
    apply_encoder_geometry(cfg)  # a foundation model reads patches at its own µm/px
    if cfg.target_mpp is None:
        cfg.target_mpp = target_mpp_of(imgs)
    pitch, diam = median_spot_geometry(adatas)
    cfg.spot_pitch_um = pitch or cfg.spot_pitch_um
    cfg.spot_diameter_um = diam or cfg.spot_diameter_um
    spec = PatchSpec(cfg.patch_size, cfg.input_size, cfg.target_mpp)

    expression = np.concatenate([panel_targets(adatas[n], panel, cfg.target_sum,
                                               source=f"section {n}", library="panel")
                                 for n in names])
    positions = np.concatenate([array_grid(adatas[n]) for n in names])
    sections = np.concatenate([[n] * adatas[n].n_obs for n in names]).astype(object)
    obs_names = np.concatenate([np.asarray(adatas[n].obs_names, dtype=object) for n in names])
    grid = np.concatenate([section_grid(adatas[n]) for n in names])
    cfg.pos_size_x, cfg.pos_size_y = position_table_sizes(positions, cfg.pos_margin)

    seed_everything(cfg.seed)
    torch.manual_seed(cfg.seed)  # the backbone's random init is a function of the seed alone
    net = MclstexpNet(len(panel), cfg)
    initial_digest = module_digest(net.image_encoder)
    device = _device(cfg.device)
    bsig = backbone_signature(net.image_encoder, cfg.backbone, cfg.weights)

    # data: features (cached mode) or patches (finetune mode)
    feats = patches = context = None
    notes: dict[str, Any] = {}
    if cfg.mode == "cached":
        blocks = []
        for n in names:
            blocks.append(section_frozen_features(
                net.image_encoder, bsig, adatas[n], n, imgs[n], spec, views=cfg.cache_views,
                cache_dir=fcache, batch_size=64, device=device,
                channels_last=cfg.channels_last, progress=progress, cancel=cancel))
        feats = np.concatenate(blocks, axis=1)  # (views, N, D)
        if cfg.standardize_features and feats.shape[1] > 1:
            net.feat_mean.copy_(torch.from_numpy(feats[0].mean(axis=0)))
            net.feat_std.copy_(torch.from_numpy(feats[0].std(axis=0) + 1e-6))
        for p in net.image_encoder.parameters():
            p.requires_grad_(False)
        frozen = feats[0]
        if cfg.context_neighbours != "none":  # neighbours' mean features, same section, per view
            graph = neighbour_graph(grid, cfg.context_radius, groups=sections)
            context = np.stack([neighbour_mean(f, graph) for f in feats])
    else:
        ds = SpotPatchDataset.from_sections(
            {n: adatas[n] for n in names}, None, spec, images=imgs,
            cache_dir=cdir, progress=progress,
            cancel=cancel)
        patches = ds.patches
        notes = ds.notes
        frozen = None
        if frozen_features:  # initial (frozen) backbone features for the ridge baseline
            frozen = np.concatenate([section_frozen_features(
                net.image_encoder, bsig, adatas[n], n, imgs[n], spec, views=1,
                cache_dir=fcache, device=device, channels_last=cfg.channels_last,
                patches=patches[sections == n], progress=progress, cancel=cancel)[0]
                for n in names])
        if cfg.channels_last:
            net.image_encoder.to(memory_format=torch.channels_last)
    del imgs  # release decoded full-resolution images

    n = len(expression)
    bs = int(cfg.batch_size)

    epoch_cpu: dict[int, float] = {}

    def on_epoch_end(epoch: int, record: dict) -> dict:
        """CPU seconds of the epoch (all threads): a load-independent cost figure."""
        return {"cpu_seconds": time.process_time() - epoch_cpu.get(epoch, time.process_time())}

    def batches(epoch: int):
        epoch_cpu[epoch] = time.process_time()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(n)
        if n % bs == 1 and n > 1:  # a batch of one spot has a trivial loss: drop it
            order = order[:-1]
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            b = {"expression": torch.from_numpy(expression[idx]),
                 "position": torch.from_numpy(positions[idx])}
            if feats is not None:
                view = rng.integers(0, feats.shape[0], len(idx))
                b["features"] = torch.from_numpy(feats[view, idx])
                if context is not None:
                    b["context"] = torch.from_numpy(context[view, idx])
            else:
                from ..data.patches import augment_batch, to_float_nchw

                x = to_float_nchw(torch.from_numpy(patches[idx]))
                if cfg.augment:
                    x = augment_batch(x, gen, jitter=tuple(cfg.jitter))
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                b["image"] = x
            yield b

    use_bf16 = bool(cfg.bf16 and device.type == "cpu")

    def step(model, batch, dev):
        # Under DDP each process holds a slice of the global batch: the image embeddings are
        # gathered with autograd and the spot Transformer (which attends over the batch's
        # spots) runs on the gathered global inputs, so the loss is the global B x B one with
        # every negative. In one process both gathers are the identity.
        e = all_gather_tensor(batch["expression"].to(dev, non_blocking=True))
        p = all_gather_tensor(batch["position"].to(dev, non_blocking=True))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            if "features" in batch:
                ctx = batch.get("context")
                img = model.embed_features(batch["features"].to(dev),
                                           None if ctx is None else ctx.to(dev))
            else:
                if model.training and cfg.mode == "cached":
                    model.image_encoder.eval()
                img = model.embed_images(batch["image"].to(dev))
            img = all_gather_with_grad(img)
            spot = model.embed_spots(e, p)
        return model.loss(img, spot)

    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                     device=str(device), amp=True)
    sig = _run_signature(cfg, panel, names, n)
    resume = True
    if checkpoint_dir is not None:
        discard_stale_checkpoint(Path(checkpoint_dir) / "last.pt", sig)
    n_batches = math.ceil((n - (1 if (n % bs == 1 and n > 1) else 0)) / bs)
    t_fit = time.perf_counter()
    history = None
    if cfg.epochs > 0:
        net.to(device)
        history = fit(net, batches, step, tc, optimizer=make_optimizer(net, cfg, device),
                      checkpoint_dir=checkpoint_dir, resume=resume, extra_state={"run": sig},
                      progress=progress, cancel=cancel, batches_per_epoch=n_batches,
                      on_epoch_end=on_epoch_end)
    fit_seconds = time.perf_counter() - t_fit
    check_cancel(cancel, "training")

    net.eval()
    ref_emb = _embed_spots(net, expression, positions, bs, device)
    net.to("cpu")
    ref = Reference(embeddings=ref_emb, expression=expression, sections=sections.astype(str),
                    obs_names=obs_names.astype(str), positions=positions,
                    frozen_features=frozen, grid=grid)
    prov = {
        "software": "napari-stexp", "version": version(), "torch": torch.__version__,
        "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seed": cfg.seed, "device": str(device), "mode": cfg.mode,
        "sections": names, "n_spots": int(n), "n_genes": len(panel),
        "data": {nm: section_source(adatas[nm]) for nm in names},
        "train_patients": sorted({p for p in (patient_of(adatas[nm]) for nm in names)
                                  if p is not None}),
        "initial_backbone_digest": initial_digest,
        "n_parameters": int(sum(p.numel() for p in net.parameters())),
        "seconds_total": time.perf_counter() - t_start, "seconds_training": fit_seconds,
        "patch_notes": notes,
        "mpp_handling": ("patches cover patch_size × target_mpp µm and are resampled to "
                         "input_size px; images with unknown µm/px are assumed at target_mpp"),
    }
    report(progress, 1, 1, "training done")
    return ExpressionModel(net=net, config=cfg, genes=list(panel), reference=ref,
                           provenance=prov, history=history.epochs if history else [])
