"""The image-encoder registry: every backbone the expression model, the classifier and the
β-VAE image side can use, by name.

Each :class:`EncoderSpec` says how to build the network, what it expects (input px, µm per
pixel, normalisation mean/std), which token(s) form the feature and its dimension, and which
weight files it accepts in which published key layout. The CNNs of :mod:`.backbones`
(DenseNet-121, ResNet-18/50, the tiny test CNN) are entries too, so every caller goes through one
:func:`build_encoder`.

Weights are found **offline**, never downloaded at run time:

- ``weights=None`` / ``"none"`` / ``"random"``: random initialisation (seeded by the caller);
- ``"imagenet"``: torchvision's ImageNet weights (CNN entries only; online or torch hub cache);
- ``"pretrained"``: the entry's published file under the weights directory,
  ``$STEXP_WEIGHTS/<encoder>/<file>`` (default ``<cache>/weights/<encoder>/``, the cache being
  ``$STEXP_CACHE`` or ``~/.cache/napari-stexp``);
- a path: that file, or a folder holding one of the entry's files.

A missing file is one :class:`~napari_stexp.errors.InputError` naming the encoder, where it
looked and which file to put there. Files are read with ``safetensors`` or
``torch.load(weights_only=True)`` only.

Published layouts (``EncoderSpec.layout``): ``timm`` (the timm model's own state dict: UNI,
UNI2-h, Virchow2, H-optimus-0/1, Prov-GigaPath), ``hf-dinov2`` (Hugging Face transformers'
``Dinov2Model``: Phikon-v2, mapped onto the equivalent timm ViT), ``conch`` (CONCH's open_clip
CoCa checkpoint: its ``visual.trunk`` timm ViT-B/16 at 448 px and the contrastive attentional
pooler; text tower ignored) and ``torchvision`` (the CNNs).

torch and timm are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: What an encoder of a test build looks like: same modules and key names, far fewer numbers.
REDUCED_VIT = {"depth": 2, "embed_dim": 96, "num_heads": 4}


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry (see the module docstring)."""

    name: str
    kind: str  # 'cnn' | 'timm' | 'conch'
    feature_dim: int
    input_size: int = 224  # px fed to the network
    patch_px: int = 224  # px read per patch at ``mpp`` (field of view = patch_px * mpp µm)
    mpp: float | None = None  # µm/px the encoder was trained at (None: the data's own)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pool: str = "avg"  # 'avg' (CNN) | 'cls' | 'cls+mean' (CLS ⊕ mean of patch tokens) | 'attn'
    timm_model: str | None = None
    timm_kwargs: dict = field(default_factory=dict)  # 'mlp_layer'/'act_layer' given by name
    layout: str = "torchvision"  # 'torchvision' | 'timm' | 'hf-dinov2' | 'conch'
    weight_files: tuple[str, ...] = ()
    hf_repo: str | None = None
    reference: str = ""
    dynamic_size: bool = False  # the ViT accepts other input sizes (interpolated positions)
    full_params_m: float = 0.0  # parameters of the full model, millions (memory planning)

    @property
    def foundation(self) -> bool:
        """A pathology foundation model (weights from a model card, used frozen)."""
        return self.kind != "cnn"


def _vit(name, dim, *, model, kwargs, layout="timm", files=("pytorch_model.bin",), repo,
         ref, mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls", params=0.0, input_size=224,
         kind="timm"):
    return EncoderSpec(name=name, kind=kind, feature_dim=dim, input_size=input_size,
                       patch_px=224, mpp=0.5, mean=mean, std=std, pool=pool, timm_model=model,
                       timm_kwargs=kwargs, layout=layout, weight_files=tuple(files),
                       hf_repo=repo, reference=ref,
                       dynamic_size=bool(kwargs.get("dynamic_img_size")), full_params_m=params)


ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    EncoderSpec("densenet121", "cnn", 1024, reference="Huang et al. 2017 (torchvision)",
                weight_files=("densenet121-a639ec97.pth",), full_params_m=7.0),
    EncoderSpec("resnet18", "cnn", 512, reference="He et al. 2016 (torchvision)",
                weight_files=("resnet18-f37072fd.pth",), full_params_m=11.2),
    EncoderSpec("resnet50", "cnn", 2048, reference="He et al. 2016 (torchvision)",
                weight_files=("resnet50-11ad3fa6.pth",), full_params_m=23.5),
    EncoderSpec("tinycnn", "cnn", 64, reference="4-block CNN for tests", full_params_m=0.06),
    _vit("vit-tiny", 192, model="vit_tiny_patch16_224",
         kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
         files=("model.safetensors", "pytorch_model.bin"), repo="timm/vit_tiny_patch16_224",
         params=5.5, ref="a small timm ViT (ImageNet-21k DeiT-style) for tests and quick CPU "
                         "runs; not a pathology model"),
    _vit("uni", 1024, model="vit_large_patch16_224",
         kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                 "dynamic_img_size": True},
         repo="MahmoodLab/UNI", params=303,
         ref="Chen et al. 2024, Nat Med 30:850 (UNI); ViT-L/16, CLS token"),
    _vit("uni2-h", 1536, model="vit_giant_patch14_224",
         kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                 "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                 "num_classes": 0, "no_embed_class": True, "mlp_layer": "swiglu_packed",
                 "act_layer": "silu", "reg_tokens": 8, "dynamic_img_size": True},
         repo="MahmoodLab/UNI2-h", params=681,
         ref="MahmoodLab/UNI2-h model card; ViT-H/14, 8 registers, SwiGLU, CLS token"),
    _vit("virchow2", 2560, model="vit_huge_patch14_224",
         kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
                 "reg_tokens": 4, "global_pool": "", "dynamic_img_size": True,
                 "mlp_layer": "swiglu_packed", "act_layer": "silu"},
         files=("pytorch_model.bin", "model.safetensors"), repo="paige-ai/Virchow2",
         pool="cls+mean", params=632,
         ref="Zimmermann et al. 2024, arXiv:2408.00738 (Virchow2); ViT-H/14, 4 registers, "
             "SwiGLU; CLS ⊕ mean of patch tokens"),
    _vit("h-optimus-0", 1536, model="vit_giant_patch14_reg4_dinov2",
         kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                 "global_pool": "token", "dynamic_img_size": False},
         files=("pytorch_model.bin", "model.safetensors"), repo="bioptimus/H-optimus-0",
         mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, params=1134,
         ref="Saillard et al. 2024, bioptimus/H-optimus-0; ViT-g/14, 4 registers, CLS token"),
    _vit("prov-gigapath", 1536, model="vit_giant_patch14_dinov2",
         kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                 "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334,
                 "num_classes": 0},
         repo="prov-gigapath/prov-gigapath", params=1134,
         ref="Xu et al. 2024, Nature 630:181 (Prov-GigaPath tile encoder); ViT-g/16, CLS"),
    _vit("conch", 512, model="vit_base_patch16_224", kind="conch", input_size=448,
         kwargs={"img_size": 448, "num_classes": 0, "global_pool": ""},
         layout="conch", repo="MahmoodLab/CONCH", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
         pool="attn", params=88,
         ref="Lu et al. 2024, Nat Med 30:863 (CONCH); vision tower ViT-B/16 at 448 px + "
             "contrastive attentional pooler (encode_image without projection)"),
    _vit("phikon-v2", 1024, model="vit_large_patch16_224",
         kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0},
         layout="hf-dinov2", files=("model.safetensors", "pytorch_model.bin"),
         repo="owkin/phikon-v2", params=303,
         ref="Filiot et al. 2024, arXiv:2409.09173 (Phikon-v2); DINOv2 ViT-L/16 in HF "
             "transformers layout, CLS token"),
)}

# H-optimus-1: H-optimus-0's architecture and normalisation, new weights
ENCODERS["h-optimus-1"] = replace(ENCODERS["h-optimus-0"], name="h-optimus-1",
                                  hf_repo="bioptimus/H-optimus-1",
                                  reference="bioptimus/H-optimus-1 model card; ViT-g/14, 4 "
                                            "registers, CLS token")

#: Old names that keep working.
ALIASES = {"uni2": "uni2-h", "uni-2h": "uni2-h", "hoptimus0": "h-optimus-0",
           "hoptimus1": "h-optimus-1", "gigapath": "prov-gigapath", "phikon2": "phikon-v2"}

# CONCH's contrastive pooler: d_model, heads, queries (context dim = the trunk's width)
_CONCH_POOL = {"d_model": 512, "n_head": 8, "n_queries": 1}
_CONCH_POOL_REDUCED = {"d_model": 32, "n_head": 8, "n_queries": 1}


def get_spec(name: str) -> EncoderSpec:
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in ENCODERS:
        raise InputError(name, f"unknown encoder (unknown backbone; choose from {', '.join(ENCODERS)})")
    return ENCODERS[key]


def is_random(weights: Any) -> bool:
    return weights is None or str(weights).lower() in ("none", "random", "")


def default_weights(name: str) -> str | None:
    """What an unset ``--weights`` means: the published file for a foundation model, random
    initialisation for the CNNs (as before)."""
    return "pretrained" if get_spec(name).foundation else None


def weights_choice(name: str, weights: Any) -> str | None:
    """A ``--weights`` value → the config's ``weights``: unset → :func:`default_weights`,
    none/random → None, anything else as given."""
    if weights is None:
        return default_weights(name)
    return None if is_random(weights) else str(weights)


def encoder_help() -> str:
    """One line for ``--encoder``'s help."""
    return ("image encoder: " + ", ".join(ENCODERS) + " (foundation models read their published "
            "weights offline: --weights FILE|FOLDER, or $STEXP_WEIGHTS/<encoder>/; docs/mclstexp.md)")


def weights_root() -> Path:
    """``$STEXP_WEIGHTS``, else ``<cache>/weights`` (``$STEXP_CACHE`` or ~/.cache/napari-stexp)."""
    env = os.environ.get("STEXP_WEIGHTS")
    if env:
        return Path(env).expanduser()
    from .feature_cache import default_cache_dir

    return default_cache_dir() / "weights"


def _missing(spec: EncoderSpec, looked: list[Path]) -> InputError:
    where = ", ".join(str(p) for p in looked)
    files = " or ".join(spec.weight_files) or "a state dict"
    target = looked[0] / spec.weight_files[0] if looked and spec.weight_files else looked[0]
    hub = ""
    if spec.hf_repo:
        hub = (f" The file is on https://huggingface.co/{spec.hf_repo} (gated: accept the "
               "licence there, download it once on a machine with internet")
        try:
            import huggingface_hub  # noqa: F401

            hub += (f", e.g. `huggingface-cli download {spec.hf_repo} {spec.weight_files[0]} "
                    f"--local-dir {looked[0]}`")
        except ImportError:
            pass
        hub += ")."
    return InputError(spec.name, f"no weights found for encoder '{spec.name}': looked in "
                                 f"{where} for {files}. Put {spec.weight_files[0] if spec.weight_files else 'the file'} at "
                                 f"{target}, pass --weights PATH, or set $STEXP_WEIGHTS to a "
                                 f"folder with {spec.name}/<file>.{hub}")


def find_weights(name: str, weights: Any = "pretrained") -> Path:
    """The weights file for ``name``: a given file, a file of the entry inside a given folder, or
    the entry's file under :func:`weights_root` ``/<name>/``. One clear error when absent."""
    spec = get_spec(name)
    if str(weights).lower() in ("pretrained", "auto", "default"):
        folders = [weights_root() / spec.name]
    else:
        p = Path(weights).expanduser()
        if p.is_file():
            return p
        if not p.is_dir():
            raise InputError(p, f"weights file not found for encoder '{spec.name}' (weights "
                                "must be none, pretrained, imagenet (CNNs), a file or a folder)")
        folders = [p, p / spec.name]
    for d in folders:
        for f in spec.weight_files:
            if (d / f).is_file():
                return d / f
        if not spec.weight_files and d.is_dir():
            cands = sorted(list(d.glob("*.safetensors")) + list(d.glob("*.bin"))
                           + list(d.glob("*.pth")) + list(d.glob("*.pt")))
            if cands:
                return cands[0]
    raise _missing(spec, folders)


def read_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from ``*.safetensors`` (safetensors) or a torch file (weights_only)."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            import torch

            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(p, f"cannot read weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise InputError(p, "not a state dict (expected a mapping of parameter names to "
                            "tensors)")
    return {str(k): v for k, v in state.items()}


# ----------------------------------------------------------------------------- building


def _timm_kwargs(spec: EncoderSpec, reduced: bool) -> dict:
    import torch
    from timm.layers import SwiGLUPacked

    named = {"swiglu_packed": SwiGLUPacked, "silu": torch.nn.SiLU}
    kw = {k: named.get(v, v) if isinstance(v, str) and k in ("mlp_layer", "act_layer") else v
          for k, v in spec.timm_kwargs.items()}
    if reduced:
        kw.update(REDUCED_VIT)
    return kw


def _token_encoder_class():
    import torch
    from torch import nn

    class AttentionalPool(nn.Module):
        """Learned queries attend over the tokens (CoCa/CONCH's contrastive pooler)."""

        def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
            super().__init__()
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim,
                                              vdim=context_dim, batch_first=True)
            self.ln_q = nn.LayerNorm(d_model)
            self.ln_k = nn.LayerNorm(context_dim)

        def forward(self, x):
            k = self.ln_k(x)
            q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
            return self.attn(q, k, k, need_weights=False)[0]

    class TokenEncoder(nn.Module):
        """Normalise → ViT tokens → the entry's pooling → ``(B, feature_dim)``."""

        def __init__(self, spec: EncoderSpec, model: nn.Module, reduced: bool):
            super().__init__()
            self.name = spec.name
            self.pool = spec.pool
            self.model = model
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1),
                                 persistent=False)
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1),
                                 persistent=False)
            width = int(model.num_features)
            if spec.pool == "attn":
                p = _CONCH_POOL_REDUCED if reduced else _CONCH_POOL
                self.attn_pool = AttentionalPool(p["d_model"], width, p["n_head"],
                                                 p["n_queries"])
                self.ln = nn.LayerNorm(p["d_model"])
                self.feature_dim = p["d_model"]
            else:
                self.feature_dim = width * (2 if spec.pool == "cls+mean" else 1)
            self.spec_signature = {"pool": spec.pool, "mean": list(spec.mean),
                                   "std": list(spec.std), "reduced": bool(reduced)}

        def forward(self, x):
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
            tokens = self.model.forward_features(x)  # (B, T, C), final norm applied
            if self.pool == "attn":
                return self.ln(self.attn_pool(tokens)[:, 0])
            cls = tokens[:, 0]
            if self.pool == "cls+mean":
                patches = tokens[:, int(self.model.num_prefix_tokens):]
                return torch.cat([cls, patches.mean(1)], dim=1)
            return cls

    return TokenEncoder


def build_encoder(name: str = "densenet121", weights: Any = None, *, reduced: bool = False,
                  memory_efficient: bool = True):
    """``(module, feature_dim)`` for registry entry ``name``: the module takes ``(B, 3, H, W)``
    floats in ``[0, 1]`` (normalisation inside) and returns ``(B, feature_dim)`` features.

    ``reduced``: a test build (depth 2, width 96 for the ViTs; same module tree and key names).
    """
    spec = get_spec(name)
    if spec.kind == "cnn":
        from .backbones import build_cnn_encoder

        return build_cnn_encoder(spec.name, weights, memory_efficient=memory_efficient)
    import timm

    model = timm.create_model(spec.timm_model, pretrained=False,
                              **_timm_kwargs(spec, reduced))
    encoder = _token_encoder_class()(spec, model, reduced)
    if not is_random(weights):
        if str(weights).lower() == "imagenet":
            raise InputError(spec.name, f"'imagenet' weights are for the CNNs; encoder "
                                        f"'{spec.name}' takes its published weights "
                                        f"({', '.join(spec.weight_files)}): --weights pretrained "
                                        "or a path")
        path = find_weights(spec.name, weights)
        load_published(encoder, spec.name, read_state_dict(path), source=path)
    return encoder, encoder.feature_dim


# ----------------------------------------------------------------------------- key layouts

_HF_BLOCK = [  # (timm name inside blocks.N, HF name inside encoder.layer.N)
    ("norm1.", "norm1."), ("norm2.", "norm2."), ("attn.proj.", "attention.output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1"),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
]
_HF_TOP = [("cls_token", "embeddings.cls_token"), ("pos_embed", "embeddings.position_embeddings"),
           ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
           ("norm.", "layernorm.")]
_HF_QKV = ("query", "key", "value")


def _hf_dinov2_to_timm(state: dict) -> dict:
    import torch

    out: dict = {}
    qkv: dict = {}
    blk = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")
    for k, v in state.items():
        k = k.removeprefix("dinov2.")
        m = blk.match(k)
        if m:
            i, rest = m.groups()
            mq = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if mq:
                qkv.setdefault((i, mq.group(2)), {})[mq.group(1)] = v
                continue
            for t, h in _HF_BLOCK:
                if rest.startswith(h):
                    out[f"blocks.{i}.{t}{rest[len(h):]}"] = v
                    break
            else:
                out[f"unmapped:{k}"] = v
            continue
        for t, h in _HF_TOP:
            if k.startswith(h):
                out[t + k[len(h):]] = v
                break
        else:
            if k != "embeddings.mask_token":  # DINOv2's masking token: unused at inference
                out[f"unmapped:{k}"] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != set(_HF_QKV):
            out[f"unmapped:encoder.layer.{i}.attention.attention.*.{kind}"] = next(
                iter(parts.values()))
            continue
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in _HF_QKV], 0)
    return out


def _timm_to_hf_dinov2(state: dict) -> dict:
    out: dict = {}
    blk = re.compile(r"^blocks\.(\d+)\.(.*)$")
    for k, v in state.items():
        m = blk.match(k)
        if m:
            i, rest = m.groups()
            if rest.startswith("attn.qkv."):
                kind = rest.removeprefix("attn.qkv.")
                for n, part in zip(_HF_QKV, v.chunk(3, 0), strict=True):
                    out[f"encoder.layer.{i}.attention.attention.{n}.{kind}"] = part.clone()
                continue
            for t, h in _HF_BLOCK:
                if rest.startswith(t):
                    out[f"encoder.layer.{i}.{h}{rest[len(t):]}"] = v
                    break
            continue
        for t, h in _HF_TOP:
            if k.startswith(t):
                out[h + k[len(t):]] = v
                break
    import torch

    out["embeddings.mask_token"] = torch.zeros_like(state["cls_token"])
    return out


_CONCH_MAP = [("visual.trunk.", "model."), ("visual.attn_pool_contrast.", "attn_pool."),
              ("visual.ln_contrast.", "ln.")]
#: keys of a CONCH checkpoint that encode_image(proj_contrast=False) does not use
_CONCH_IGNORED = ("text.", "logit_scale", "visual.proj_contrast", "visual.attn_pool_caption.",
                  "visual.ln_caption.", "visual.head.", "text_decoder.")


def _to_internal(spec: EncoderSpec, state: dict) -> dict:
    """Published layout → this module's keys (``model.*`` etc.); unusable keys dropped or
    marked ``unmapped:`` so the caller can report them."""
    if spec.layout == "conch":
        out = {}
        for k, v in state.items():
            k = k.removeprefix("module.")
            for pub, ours in _CONCH_MAP:
                if k.startswith(pub):
                    out[ours + k[len(pub):]] = v
                    break
            else:
                if not k.startswith(_CONCH_IGNORED):
                    out[f"unmapped:{k}"] = v
        return out
    if spec.layout == "hf-dinov2":
        state = _hf_dinov2_to_timm(state)
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model.", "encoder.", "image_encoder.", "trunk."):
            if not k.startswith("unmapped:"):
                k = k.removeprefix(prefix)
        if k.startswith("head.") and k.endswith(("weight", "bias")):
            continue  # a classification head: not part of the features
        out[k if k.startswith("unmapped:") else "model." + k] = v
    return out


def export_published(encoder, name: str) -> dict:
    """This module's weights in the entry's published layout (what the model card's file holds;
    used to write test files and to hand weights to the reference code)."""
    spec = get_spec(name)
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    if spec.kind == "cnn":
        from .backbones import RESNET_ORDER

        trunk = {k.removeprefix("trunk."): v for k, v in state.items()}
        if spec.name == "densenet121":
            return {f"features.{k}": v for k, v in trunk.items()}
        if spec.name.startswith("resnet"):
            return {RESNET_ORDER[int(k.split(".", 1)[0])] + "." + k.split(".", 1)[1]: v
                    for k, v in trunk.items()}
        return state
    if spec.layout == "conch":
        out = {}
        for k, v in state.items():
            for pub, ours in _CONCH_MAP:
                if k.startswith(ours):
                    out[pub + k[len(ours):]] = v
        return out
    trunk = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if spec.layout == "hf-dinov2":
        return _timm_to_hf_dinov2(trunk)
    if spec.layout == "timm":
        return trunk
    return state


def load_published(encoder, name: str, state: dict, *, source: Any = None) -> None:
    """Load a published-layout state dict into a :func:`build_encoder` module (strict: every
    parameter must be given with the right shape, else one InputError)."""
    spec = get_spec(name)
    src = source if source is not None else spec.name
    if spec.kind == "cnn":
        from .backbones import _clean_state_dict, _load_into

        _load_into(encoder, spec.name, _clean_state_dict(state), src)
        return
    mapped = _to_internal(spec, state)
    own = encoder.state_dict()
    unmapped = sorted(k.removeprefix("unmapped:") for k in mapped if k.startswith("unmapped:"))
    mapped = {k: v for k, v in mapped.items() if not k.startswith("unmapped:")}
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own)) + unmapped
    if missing or unexpected:
        raise InputError(src, f"weights do not fit encoder '{spec.name}' ({spec.layout} layout, "
                              f"{', '.join(spec.weight_files) or 'state dict'}): "
                              f"{len(missing)} missing parameter(s) (e.g. "
                              f"{', '.join(missing[:3]) or '-'}); {len(unexpected)} unexpected "
                              f"(e.g. {', '.join(unexpected[:3]) or '-'})")
    bad = [f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in own
           if tuple(mapped[k].shape) != tuple(own[k].shape)]
    if bad:
        raise InputError(src, f"weights do not fit encoder '{spec.name}': {len(bad)} shape "
                              f"mismatch(es), e.g. {'; '.join(bad[:2])} (file vs model)")
    encoder.load_state_dict(mapped, strict=True)


# ----------------------------------------------------------------------------- geometry


def apply_encoder_geometry(cfg, *, note: Callable[[str], None] | None = None) -> None:
    """Patch geometry of a model config from its encoder entry: a foundation model reads
    ``patch_px`` px at its training µm/px (unless the user set ``target_mpp``) and gets the input
    size it was trained at when its ViT does not interpolate positions."""
    spec = get_spec(cfg.backbone)
    if spec.mpp is None:
        return
    if getattr(cfg, "target_mpp", None) is None:
        cfg.target_mpp = spec.mpp
    if not spec.dynamic_size and cfg.input_size != spec.input_size:
        if note is not None:
            note(f"input_size {cfg.input_size} → {spec.input_size} ({spec.name} has fixed "
                 "position embeddings)")
        cfg.input_size = spec.input_size


def registry_table() -> list[dict]:
    """One row per entry (for docs and ``--help``)."""
    return [{"name": s.name, "arch": s.timm_model or s.name, "dim": s.feature_dim,
             "input_px": s.input_size, "mpp": s.mpp, "field_um": (s.patch_px * s.mpp
                                                                   if s.mpp else None),
             "pool": s.pool, "layout": s.layout, "files": list(s.weight_files),
             "hf_repo": s.hf_repo, "params_m": s.full_params_m, "reference": s.reference}
            for s in ENCODERS.values()]
