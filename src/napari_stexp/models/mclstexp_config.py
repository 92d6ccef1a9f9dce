"""mclSTExp's configuration (torch-free, so a dock widget builds its form without importing
torch): options with one default and one help text (``models/_options.option``), presets, and
the mode resolution shared by the CLI and the widget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import InputError
from ._options import option

MODES = ("finetune", "cached")
CONTEXT_MODES = ("none", "concat", "mean")

#: Named option sets shared by the CLI (``--tiny``) and the widget's preset box: "tiny" trains
#: in seconds on a CPU (smoke tests, a first look; not for results).
PRESETS: dict[str, dict] = {
    "tiny": {"backbone": "tinycnn", "patch_size": 224, "input_size": 48, "epochs": 2,
             "batch_size": 32, "top_k": 50},
}

#: ``--mode auto`` on a CPU (cached mode): the setting chosen by leave-one-patient-out on the
#: her2st training sections (benchmarks/expression.py part d; docs/mclstexp.md, selection
#: table). ``--preset paper`` (and the config defaults) keep the faithful paper settings.
CPU_AUTO_DEFAULTS: dict = {"normalize_embeddings": True, "learn_temperature": True,
                           "dropout": 0.1, "top_k": 50, "smooth_neighbours": 0.65, "epochs": 10}


# ----------------------------------------------------------------------------- configuration


@dataclass
class MclstexpConfig:
    """Everything that defines a model and its training (saved in ``config.json``)."""

    # image encoder
    backbone: str = option("densenet121", help="image encoder: densenet121 (paper), resnet18, resnet50, tinycnn")
    weights: str | None = option(None, help="none (random init), imagenet (torchvision; online or cached) or a weights file")
    memory_efficient: bool = True
    channels_last: bool = False
    # heads / spot encoder
    projection_dim: int = 256
    heads: int = 8
    dim_head: int = 64
    depth: int = 2
    ff_dim: int | None = None  # None: the panel's width (reference: mlp_dim = spot_dim)
    dropout: float = option(0.0, help="projection-head dropout", min=0.0, max=0.9)
    pos_size_x: int = 64
    pos_size_y: int = 64
    pos_margin: int = 8
    # loss
    temperature: float = option(1.0, help="contrastive temperature (paper: 1)", min=1e-4)
    normalize_embeddings: bool = False
    learn_temperature: bool = False
    init_temperature: float = 0.07
    # data
    patch_size: int = option(224, help="patch px at the training µm/px", min=16, max=4096)
    input_size: int = option(224, help="network input px for a patch (smaller = faster)", min=16, max=1024, label="input px")
    target_mpp: float | None = None
    target_sum: float = 1e4
    augment: bool = True
    jitter: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # retrieval
    top_k: int = option(200, help="retrieval neighbours", min=1, max=100_000)
    distance: str = option("euclidean", help="retrieval weight distance (l1 = published code)", choices=("euclidean", "l1"))
    # training
    mode: str = option("finetune", help="finetune: the whole network (the paper; needs a GPU); cached: frozen backbone, features cached (minutes on a CPU)", choices=MODES)
    epochs: int = option(10, help="training epochs", min=0, max=100_000)
    batch_size: int = option(128, help="training batch (paper: 128)", min=2, max=4096, label="batch")
    lr: float = option(1e-4, help="Adam learning rate", min=0.0)
    weight_decay: float = option(1e-3, help="Adam weight decay", min=0.0)
    seed: int = 0
    device: str = "auto"
    bf16: bool = False  # bfloat16 autocast on CPU
    cache_views: int = option(1, help="cached mode: features of 1 or up to 8 rotations/flips (augmentation)", choices=(1, 2, 4, 8))
    standardize_features: bool = True  # cached mode: z-score frozen features before the head
    # spatial context and test-time augmentation (options beyond the paper; image-only, so they
    # work on H&E-only slides too; defaults = the paper)
    context_neighbours: str = option("none", help="spatial context (option; paper: none): own + neighbours' mean features (cached mode)", choices=CONTEXT_MODES)
    context_radius: float = option(1.5, help="neighbours within this many spot pitches", min=0.01, max=100.0)
    smooth_neighbours: float = option(0.0, help="option beyond the paper (0 = off): each prediction becomes (1 - w) · own + w · the mean of its neighbouring spots' predictions (image-only)", min=0.0, max=1.0, label="smoothing")
    tta_views: int = option(1, help="prediction: mean embedding over rotations/flips (option)", choices=(1, 2, 4, 8))
    # slide geometry (filled from the training data)
    spot_pitch_um: float | None = None
    spot_diameter_um: float | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError("mode", f"unknown mode '{self.mode}' (choose from {', '.join(MODES)})")
        if self.distance not in ("euclidean", "l1"):
            raise InputError("distance", f"unknown distance '{self.distance}'")
        for name in ("epochs", "top_k", "batch_size", "patch_size", "input_size"):
            v = getattr(self, name)
            if v < (0 if name == "epochs" else 1):
                raise InputError(name, f"must be positive, got {v}")
        if self.batch_size < 2 and self.epochs > 0:
            raise InputError("batch_size", "contrastive training needs batches of at least 2")
        if self.cache_views not in (1, 2, 4, 8):
            raise InputError("cache_views", "must be 1, 2, 4 or 8")
        if self.tta_views not in (1, 2, 4, 8):
            raise InputError("tta_views", "must be 1, 2, 4 or 8")
        if self.context_neighbours not in CONTEXT_MODES:
            raise InputError("context_neighbours", f"unknown context '{self.context_neighbours}' "
                                                   f"(choose from {', '.join(CONTEXT_MODES)})")
        if not self.context_radius > 0:
            raise InputError("context_radius", f"must be positive, got {self.context_radius}")
        if not 0.0 <= self.smooth_neighbours <= 1.0:
            raise InputError("smooth_neighbours",
                             f"must be between 0 and 1, got {self.smooth_neighbours}")

    @property
    def uses_grid(self) -> bool:
        """True if prediction needs the spots' grid (spatial context or smoothing)."""
        return self.context_neighbours != "none" or self.smooth_neighbours > 0

    @property
    def uses_options(self) -> bool:
        """True if any prediction option beyond the paper is on (grid options or TTA)."""
        return self.uses_grid or self.tta_views > 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MclstexpConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "jitter" in kw and kw["jitter"] is not None:
            kw["jitter"] = tuple(kw["jitter"])
        return cls(**kw)


def resolve_mode(mode: str, device: str = "auto") -> str:
    """``auto`` → finetune on a GPU (cuda/mps), cached on a CPU; other modes unchanged."""
    if mode != "auto":
        return mode
    from ..training.device import get_device

    return "finetune" if get_device(device).type in ("cuda", "mps") else "cached"
