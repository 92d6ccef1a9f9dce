"""The one segmentation interface: input checks, the result type, the backend registry and the
objects table (one row per label).

A backend is registered under a name with :func:`register_backend` and provides

- ``prepare(image, params) -> params``: global settings computed once per image (thresholds,
  expected cell size, a loaded model...). Tiled runs call it once on the whole image (or an
  overview of it) so that every tile is segmented with the same settings as an untiled run;
- ``run(image, params, progress, cancel) -> SegmentationResult`` on one in-memory array;
- ``halo(params) -> int``: how much context (pixels) a tile needs around its core so that cells
  cut by the tile border are still segmented whole (the tiling default overlap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, StexpError
from ..progress import CancelFlag, ProgressFn

OBJECT_COLUMNS = ["label", "y", "x", "ymin", "xmin", "ymax", "xmax", "area", "score"]


class BackendUnavailableError(StexpError):
    """A segmentation backend whose optional dependency is not installed."""


@dataclass
class SegmentationResult:
    """Labels (int32, (Y, X), 0 = background) and one table row per label.

    ``table`` columns: ``label, y, x`` (centroid, pixels), ``ymin, xmin, ymax, xmax`` (bbox,
    max exclusive), ``area`` (pixels), ``score`` (0..1), and ``class`` when the backend knows
    it. ``roi_features`` (optional, (n, d) float32) are per-object model features aligned with
    the table rows (Mask R-CNN's RoI box-head features when asked for).
    """

    labels: Any
    table: pd.DataFrame
    roi_features: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return int(len(self.table))


@dataclass
class Backend:
    name: str
    run: Callable[..., SegmentationResult]
    prepare: Callable[[np.ndarray, dict], dict] | None = None
    halo: Callable[[dict], int] | None = None
    available: Callable[[], bool] = lambda: True
    description: str = ""
    defaults: dict = field(default_factory=dict)
    #: does ``prepare`` look at the pixels (else it gets ``None`` and no sample is read)?
    needs_sample: bool = True
    #: whole slides: ``prepare(sample, params, mask)`` takes the sample's tissue pixels and
    #: ``run`` takes ``params['tissue_window']`` (the tile's tissue; objects outside dropped)
    tissue_aware: bool = False


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend in the registry."""
    _BACKENDS[backend.name] = backend
    return backend


def _load_builtin() -> None:
    from . import cellpose_backend, classical, maskrcnn  # noqa: F401  (they register themselves)


def get_backend(name: str) -> Backend:
    _load_builtin()
    try:
        return _BACKENDS[name]
    except KeyError:
        raise InputError(None, f"unknown segmentation method '{name}' "
                               f"(choose from {', '.join(sorted(_BACKENDS))})") from None


def list_backends(only_available: bool = False) -> list[str]:
    """Registered backend names (optionally only those whose dependencies are installed)."""
    _load_builtin()
    return [n for n, b in _BACKENDS.items() if not only_available or b.available()]


# --------------------------------------------------------------------------- input checks


def as_rgb_or_grey(image: Any, source: str | None = "image") -> np.ndarray:
    """Validate and normalise one image to float32 in [0, 1]: (Y, X) grey or (Y, X, 3) RGB.

    RGBA drops alpha; (Y, X, 1) becomes grey; integer images are scaled by their dtype range,
    floats above 1 by 255. Anything else (1-D, stacks, 2 or 5+ channels) is an
    :class:`InputError`.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise InputError(source, f"expected a 2-D grey (Y, X), RGB (Y, X, 3) or RGBA (Y, X, 4) "
                                 f"image, got shape {tuple(arr.shape)}")
    if min(arr.shape[:2]) < 2:
        raise InputError(source, f"image too small: shape {tuple(arr.shape)}")
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype in (np.uint8, np.uint16):
            top = float(np.iinfo(arr.dtype).max)
        else:  # int32/int64 images: 8-bit values if they fit, else their own range
            top = max(float(arr.max(initial=0)), 255.0)
        return (arr.astype(np.float32) / top).clip(0, 1)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(source, "image contains NaN or infinite values")
        if out.size and out.max() > 1.0:
            out = out / 255.0
        return out.clip(0, 1)
    raise InputError(source, f"unsupported image dtype {arr.dtype}")


def check_image_shape(shape: tuple[int, ...], source: str | None = "image") -> None:
    """Shape-only version of :func:`as_rgb_or_grey`'s checks (for lazy images)."""
    ok = len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4))
    if not ok:
        raise InputError(source, f"expected a 2-D grey (Y, X), RGB (Y, X, 3) or RGBA (Y, X, 4) "
                                 f"image, got shape {tuple(shape)}")


# --------------------------------------------------------------------------- objects table


def objects_table(labels: np.ndarray, scores: dict[int, float] | np.ndarray | None = None,
                  classes: dict[int, str] | None = None, *, offset: tuple[int, int] = (0, 0)
                  ) -> pd.DataFrame:
    """One row per label of ``labels``: centroid, bbox (max exclusive), area, score[, class].

    ``scores``/``classes`` map label -> value (missing labels get score 1.0). ``offset`` is
    added to all coordinates (a tile's position in the slide).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.max(initial=0) == 0:
        return empty_table(with_class=classes is not None)
    props = regionprops_table(labels, properties=("label", "centroid", "bbox", "area"))
    oy, ox = offset
    df = pd.DataFrame({
        "label": props["label"].astype(np.int64),
        "y": props["centroid-0"] + oy, "x": props["centroid-1"] + ox,
        "ymin": props["bbox-0"] + oy, "xmin": props["bbox-1"] + ox,
        "ymax": props["bbox-2"] + oy, "xmax": props["bbox-3"] + ox,
        "area": props["area"].astype(np.int64),
    })
    if scores is None:
        df["score"] = 1.0
    else:
        if isinstance(scores, dict):
            df["score"] = [float(scores.get(int(lab), 1.0)) for lab in df["label"]]
        else:
            df["score"] = np.asarray(scores, dtype=float)[df["label"].to_numpy() - 1]
    if classes is not None:
        df["class"] = [classes.get(int(lab), "") for lab in df["label"]]
    for c in ("ymin", "xmin", "ymax", "xmax"):
        df[c] = df[c].astype(np.int64)
    return df


def empty_table(with_class: bool = False) -> pd.DataFrame:
    cols = OBJECT_COLUMNS + (["class"] if with_class else [])
    df = pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    for c in ("label", "ymin", "xmin", "ymax", "xmax", "area"):
        df[c] = df[c].astype(np.int64)
    if with_class:
        df["class"] = df["class"].astype(object)
    return df


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Labels 1..n in order of first appearance (row-major) and the old -> new mapping."""
    from skimage.segmentation import relabel_sequential as _rs

    out, fw, _ = _rs(labels.astype(np.int32, copy=False))
    old = np.unique(labels)
    old = old[old != 0]
    return out.astype(np.int32), {int(o): int(fw[o]) for o in old}


RunFn = Callable[[np.ndarray, dict, ProgressFn | None, CancelFlag | None], SegmentationResult]
