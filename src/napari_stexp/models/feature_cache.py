"""Frozen-backbone features computed once and cached on disk (the expression model's ``cached``
mode, and the ridge baseline).

The cache key is a SHA-256 of a *data signature* and a *backbone signature*:

- data: the image file (resolved path, size, mtime) — or, for in-memory images, a digest of the
  patch pixels — plus the spot centres, the region size read per patch and the network input size;
- backbone: its name (the encoder registry entry), the weights choice and a digest of the actual
  parameters and buffers (so a randomly initialised backbone is identified exactly, whatever seed
  produced it, and a weights file by its content); for the foundation-model entries also the
  pooling and normalisation, which are not parameters;
- the number of views (1 = the patch as is; 8 = the 8 rotations/flips, for augmentation).

Files: ``<cache>/features/<key>.npy`` (float32 ``(views, n_spots, dim)``) and ``<key>.json``
(the signature, for humans), written atomically. The cache folder is ``$STEXP_CACHE`` or
``$XDG_CACHE_HOME/napari-stexp`` (default ``~/.cache/napari-stexp``); deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io._atomic import atomic_path
from ..progress import CancelFlag, ProgressFn, check_cancel, report


def default_cache_dir() -> Path:
    """``$STEXP_CACHE``, else ``$XDG_CACHE_HOME/napari-stexp``, else ``~/.cache/napari-stexp``."""
    env = os.environ.get("STEXP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "napari-stexp"


def resolve_cache_dir(cache_dir: str | os.PathLike | None | bool) -> Path | None:
    """None → :func:`default_cache_dir`; False → no disk cache (None); else that folder."""
    if cache_dir is False:
        return None
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def image_file_signature(path: str | os.PathLike | None) -> dict | None:
    """Identity of an image file (resolved path, size, mtime) or None if not a file."""
    if not path or not Path(path).is_file():
        return None
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def data_signature(pyramid, centres: np.ndarray, read_px: float, input_size: int,
                   patches: Callable[[], np.ndarray] | None = None) -> dict:
    """Signature of the patches a dataset would produce (no decoding for image files)."""
    sig: dict[str, Any] = {"read_px": round(float(read_px), 4), "input_size": int(input_size),
                           "shape": list(pyramid.shape),
                           "centres": hashlib.sha256(
                               np.round(np.asarray(centres, np.float64), 3).tobytes()
                           ).hexdigest()}
    file_sig = image_file_signature(pyramid.path)
    if file_sig is not None:
        sig["image"] = file_sig
    elif patches is not None:
        sig["pixels"] = hashlib.sha256(np.ascontiguousarray(patches()).tobytes()).hexdigest()
    else:
        raise ValueError("in-memory image: pass patches= to sign the pixels")
    return sig


def backbone_signature(encoder, name: str, weights: Any) -> dict:
    """Name, weights choice and parameter digest of a frozen backbone."""
    from .backbones import module_digest, weights_label

    sig = {"name": str(name), "weights": weights_label(weights), "digest": module_digest(encoder)}
    extra = getattr(encoder, "spec_signature", None)  # registry ViTs: pooling, mean/std
    if extra:
        sig["encoder"] = dict(extra)
    return sig


def cache_key(data_sig: dict, backbone_sig: dict, views: int = 1) -> str:
    blob = json.dumps({"v": 1, "data": data_sig, "backbone": backbone_sig, "views": int(views)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def dihedral_views(x, views: int):
    """The first ``views`` of the 8 symmetries of the square applied to a NCHW batch."""
    import torch

    out = []
    for v in range(views):
        y = torch.flip(x, dims=(3,)) if v >= 4 else x
        out.append(torch.rot90(y, v % 4, dims=(2, 3)) if v % 4 else y)
    return out


def compute_features(encoder, patches: np.ndarray, *, batch_size: int = 64, device: Any = "cpu",
                     views: int = 1, channels_last: bool = False, bf16: bool = False,
                     progress: ProgressFn | None = None, cancel: CancelFlag | None = None
                     ) -> np.ndarray:
    """Pooled features ``(views, N, D)`` float32 of uint8 patches ``(N, S, S, 3)`` (eval mode)."""
    import torch

    from ..data.patches import to_float_nchw

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    encoder = encoder.to(dev).eval()
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    n = len(patches)
    out = None
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            check_cancel(cancel, "feature extraction")
            x = to_float_nchw(torch.from_numpy(patches[s:s + batch_size])).to(dev)
            for v, xv in enumerate(dihedral_views(x, views)):
                if channels_last:
                    xv = xv.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.bfloat16,
                                    enabled=bool(bf16 and dev.type == "cpu")):
                    f = encoder(xv).float().cpu().numpy()
                if out is None:
                    out = np.empty((views, n, f.shape[1]), np.float32)
                out[v, s:s + len(f)] = f
            report(progress, min(s + batch_size, n), n, "image features")
    if out is None:
        out = np.empty((views, 0, getattr(encoder, "feature_dim", 0)), np.float32)
    return out


def cached_features(key: str, compute: Callable[[], np.ndarray], *,
                    cache_dir: str | os.PathLike | None = None, meta: dict | None = None,
                    progress: ProgressFn | None = None) -> tuple[np.ndarray, bool]:
    """Load features for ``key`` from the cache or ``compute()`` and store them.

    Returns ``(features, hit)``. A corrupt or unreadable cache entry is recomputed; an
    unwritable cache folder only warns (the features are still returned).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "features" / f"{key}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 3 and arr.dtype == np.float32:
                report(progress, 1, 1, "image features (cached)")
                return arr, True
        except (OSError, ValueError):
            pass
    arr = np.ascontiguousarray(compute(), dtype=np.float32)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        if meta is not None:
            with atomic_path(path.with_suffix(".json")) as tmp:
                tmp.write_text(json.dumps(meta, indent=1, default=str))
    except OSError as exc:
        warnings.warn(f"{path}: cannot write the feature cache ({exc})", stacklevel=2)
    return arr, False
