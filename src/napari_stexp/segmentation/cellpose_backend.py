"""Cellpose backend, used only when the user has cellpose installed
(``pip install napari-stexp[cellpose]``). Works with cellpose 3 (``model_type``, ``channels``)
and 4 (Cellpose-SAM). Its weights download on first use (or come from ``pretrained_model``)."""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import numpy as np

from ..errors import StexpError
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from .base import (
    Backend,
    BackendUnavailableError,
    SegmentationResult,
    as_rgb_or_grey,
    objects_table,
    register_backend,
)

INSTALL_HINT = "cellpose is not installed: pip install napari-stexp[cellpose]"

DEFAULTS: dict[str, Any] = {
    "model_type": "cyto3",      # cellpose 3 model name (ignored by cellpose 4)
    "pretrained_model": None,   # path to a custom/fine-tuned cellpose model
    "diameter": None,           # expected cell diameter (px); None: cellpose estimates it
    "channels": None,           # cellpose 3 channels; None: [0, 0] (grey)
    "flow_threshold": 0.4,
    "cellprob_threshold": 0.0,
    "halo": 128,
    "model": None,
}

_CACHE: dict = {}


def cellpose_available() -> bool:
    return importlib.util.find_spec("cellpose") is not None


def _require() -> None:
    if not cellpose_available():
        raise BackendUnavailableError(INSTALL_HINT)


def prepare_cellpose(image: Any, params: dict) -> dict:
    _require()
    from cellpose import models

    from ..training.device import get_device

    p = {**DEFAULTS, **params}
    dev = get_device(p.get("device", "auto"))
    key = (p["model_type"], str(p["pretrained_model"]), dev.type)
    if p.get("model") is None:
        if key not in _CACHE:
            gpu = dev.type == "cuda"
            try:
                kw: dict[str, Any] = {"gpu": gpu}
                sig = inspect.signature(models.CellposeModel.__init__).parameters
                if p["pretrained_model"]:
                    kw["pretrained_model"] = str(p["pretrained_model"])
                elif "model_type" in sig:
                    kw["model_type"] = p["model_type"]
                _CACHE.clear()
                _CACHE[key] = models.CellposeModel(**kw)
            except Exception as exc:
                raise StexpError(f"cannot load the cellpose model ({type(exc).__name__}: {exc}); "
                                 "without a network pass pretrained_model=<local file>") from exc
        p["model"] = _CACHE[key]
    return p


def segment_cellpose(image: Any, params: dict | None = None, progress: ProgressFn | None = None,
                     cancel: CancelFlag | None = None) -> SegmentationResult:
    """Segment cells with cellpose on one in-memory image."""
    _require()
    p = {**DEFAULTS, **(params or {})}
    if p.get("model") is None:
        p = prepare_cellpose(image, p)
    img = as_rgb_or_grey(image)
    check_cancel(cancel, "segmentation")
    report(progress, 0, 1, "cellpose")
    model = p["model"]
    kw: dict[str, Any] = {"diameter": p["diameter"], "flow_threshold": p["flow_threshold"],
                          "cellprob_threshold": p["cellprob_threshold"]}
    if "channels" in inspect.signature(model.eval).parameters:
        kw["channels"] = list(p["channels"] or [0, 0])
    out = model.eval((img * 255).astype(np.uint8), **kw)
    labels = np.asarray(out[0], dtype=np.int32)
    table = objects_table(labels)
    report(progress, 1, 1, "done")
    return SegmentationResult(labels=labels, table=table,
                              metadata={"method": "cellpose", "model_type": p["model_type"]})


register_backend(Backend(
    name="cellpose",
    run=segment_cellpose,
    prepare=prepare_cellpose,
    halo=lambda p: int(p.get("halo") or 128),
    available=cellpose_available,
    description="cellpose (optional dependency)",
    defaults=DEFAULTS,
    needs_sample=False,
))
