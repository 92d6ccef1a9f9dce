"""Image encoders shared by the expression model and the classifier.

Every name of the encoder registry (:mod:`.encoders`: the CNNs below and the pathology foundation
models) is accepted by :func:`build_image_encoder`; this module builds the CNN entries.

:func:`build_image_encoder` returns ``(module, feature_dim)``: the module takes a float batch
``(B, 3, H, W)`` with values in ``[0, 1]`` (ImageNet mean/std normalisation happens inside, so
callers never forget it) and returns globally average-pooled features ``(B, feature_dim)``.

Weights: ``None`` (random initialisation, seeded by the caller), ``'imagenet'`` (torchvision's
weights API: works online or from the torch hub cache; a clear error otherwise) or a path to a
local state dict (a torchvision model's, or an encoder saved by us; ``module.`` prefixes and the
classifier head are ignored).

torch/torchvision are imported inside functions so that importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, StexpError
from .encoders import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, build_encoder, read_state_dict

#: Backbone name -> pooled feature dimension (every registry entry; tinycnn is a 4-block CNN for
#: tests and quick CPU experiments, without ImageNet weights).
BACKBONES: dict[str, int] = {name: s.feature_dim for name, s in ENCODERS.items()}
#: torchvision ResNet modules in the order of our trunk's nn.Sequential
RESNET_ORDER = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
CNN_BACKBONES = tuple(name for name, s in ENCODERS.items() if s.kind == "cnn")

_WEIGHTS_ENUMS = {
    "densenet121": "DenseNet121_Weights",
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
}


def _encoder_class():
    import torch
    from torch import nn

    class ImageEncoder(nn.Module):
        """Normalise → trunk → ReLU (DenseNet) → global average pool → flatten."""

        def __init__(self, name: str, trunk: nn.Module, feature_dim: int, final_relu: bool):
            super().__init__()
            self.name = name
            self.trunk = trunk
            self.feature_dim = feature_dim
            self.final_relu = final_relu
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                                 persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                                 persistent=False)

        def forward(self, x):
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
            x = self.trunk(x)
            if self.final_relu:
                x = torch.relu(x)
            return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)

    return ImageEncoder


def _tiny_trunk():
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True))


def _torchvision_model(name: str, memory_efficient: bool):
    import torchvision

    if name == "densenet121":
        return torchvision.models.densenet121(weights=None, memory_efficient=memory_efficient)
    return getattr(torchvision.models, name)(weights=None)


def _trunk_of(name: str, model):
    from torch import nn

    if name == "densenet121":
        return model.features, True
    # ResNets: everything up to (not including) avgpool/fc
    return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                         model.layer1, model.layer2, model.layer3, model.layer4), False


def imagenet_state_dict(name: str) -> dict:
    """ImageNet weights of a torchvision backbone (download or torch hub cache).

    Raises :class:`StexpError` with the cache location when offline and not cached.
    """
    import torch
    import torchvision

    if name not in _WEIGHTS_ENUMS:
        raise InputError(name, f"no ImageNet weights for backbone '{name}' "
                               f"(available for: {', '.join(_WEIGHTS_ENUMS)})")
    enum = getattr(torchvision.models, _WEIGHTS_ENUMS[name]).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    try:
        return enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, OSError, HTTPError, ...
        raise StexpError(
            f"{name}: cannot get ImageNet weights ({type(exc).__name__}: {exc}). Connect to the "
            f"internet once, or copy {os.path.basename(enum.url)} from {enum.url} to {cache}, "
            "or pass a local weights file, or use weights=None") from exc


def _clean_state_dict(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model.", "encoder.", "image_encoder."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def _load_into(encoder, name: str, state: dict, source: Any) -> None:
    """Load a torchvision-layout or encoder-layout state dict into ``encoder``."""
    import re

    trunk_keys = set(encoder.trunk.state_dict())
    if any(k.startswith("trunk.") for k in state):
        mapped = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
    elif name == "densenet121":
        mapped = {k.removeprefix("features."): v for k, v in state.items()
                  if k.startswith("features.")}
        # torchvision's old checkpoints use "norm.1" instead of "norm1" inside dense layers
        pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|"
                         r"running_mean|running_var))$")
        fixed = {}
        for k, v in mapped.items():
            m = pat.match(k)
            fixed[m.group(1) + m.group(2) if m else k] = v
        mapped = fixed
    elif name.startswith("resnet"):
        idx = {n: str(i) for i, n in enumerate(RESNET_ORDER)}
        mapped = {}
        for k, v in state.items():
            head, _, rest = k.partition(".")
            if head in idx:
                mapped[f"{idx[head]}.{rest}"] = v
    else:
        mapped = dict(state)
    missing = sorted(trunk_keys - set(mapped))
    unexpected = sorted(set(mapped) - trunk_keys)
    if missing or not mapped:
        raise InputError(source, f"weights do not fit backbone '{name}': {len(missing)} missing "
                                 f"parameter(s) (e.g. {', '.join(missing[:3]) or '-'}); "
                                 f"{len(unexpected)} unexpected")
    try:
        encoder.trunk.load_state_dict({k: mapped[k] for k in trunk_keys}, strict=True)
    except RuntimeError as exc:  # shape mismatch
        msg = str(exc).splitlines()
        raise InputError(source, f"weights do not fit backbone '{name}': "
                                 f"{' '.join(m.strip() for m in msg[1:3])}") from exc


def build_image_encoder(name: str = "densenet121", weights: str | os.PathLike | None = None,
                        memory_efficient: bool = True, *, reduced: bool = False):
    """Build ``(encoder, feature_dim)`` for any registry entry (:mod:`.encoders`).

    ``memory_efficient`` uses DenseNet's checkpointed dense layers (recomputes concatenations in
    the backward pass: much lower training memory for little extra time; no effect on others).
    ``reduced``: the test build of a foundation model (same key layout, far smaller).
    """
    return build_encoder(name, weights, reduced=reduced, memory_efficient=memory_efficient)


def build_cnn_encoder(name: str, weights: str | os.PathLike | None = None, *,
                      memory_efficient: bool = True):
    """``(encoder, feature_dim)`` of a CNN entry (:data:`CNN_BACKBONES`)."""
    name = str(name).lower()
    if name not in CNN_BACKBONES:
        raise InputError(name, f"unknown backbone (choose from {', '.join(BACKBONES)})")
    dim = BACKBONES[name]
    cls = _encoder_class()
    if name == "tinycnn":
        encoder = cls(name, _tiny_trunk(), dim, final_relu=False)
    else:
        trunk, final_relu = _trunk_of(name, _torchvision_model(name, memory_efficient))
        encoder = cls(name, trunk, dim, final_relu=final_relu)
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return encoder, dim
    if str(weights).lower() == "imagenet":
        _load_into(encoder, name, imagenet_state_dict(name), f"{name} ImageNet weights")
        return encoder, dim
    path = Path(weights).expanduser()
    if str(weights).lower() in ("pretrained", "auto", "default") or path.is_dir():
        from .encoders import find_weights

        path = find_weights(name, weights)
    if not path.is_file():
        raise InputError(path, "weights file not found (weights must be None, 'imagenet' or a "
                               "path to a state dict)")
    _load_into(encoder, name, _clean_state_dict(read_state_dict(path)), path)
    return encoder, dim


def weights_label(weights: str | os.PathLike | None) -> str:
    """A short, stable description of a weights choice (for provenance)."""
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return "random"
    if str(weights).lower() == "imagenet":
        return "imagenet"
    p = Path(weights).expanduser()
    try:
        st = p.stat()
        return f"file:{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"file:{p}"


def module_digest(module) -> str:
    """SHA-256 of a module's parameters and buffers (exact identity of frozen weights)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu()
        t = (t.float() if t.dtype.is_floating_point else t.long()).contiguous()
        h.update(f"{k}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
