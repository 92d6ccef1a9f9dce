"""Torch next to Qt/Mesa in one process, made safe without importing torch (core tier, no Qt).

The widgets package calls :func:`guard_torch` on import, and the test suite calls it before its
first window (``tests/conftest.py``), so every process that draws a napari canvas and runs torch
goes through it.
"""

from __future__ import annotations


def _has_nvidia_driver() -> bool:
    """Whether an NVIDIA driver is present, answered without importing torch."""
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def guard_torch() -> None:
    """Make torch safe to import next to Qt/Mesa, at no cost (torch is not imported here).

    ``torch.optim``/``torchvision`` import ``torch._dynamo`` on first use, which imports triton;
    triton's bundled LLVM clashes with the LLVM of Mesa's software OpenGL that napari's canvas
    loads, and the process segfaults. Without CUDA triton is never used, so it is hidden
    (``sys.modules['triton'] = None``, which torch reads as "not installed"). The widgets
    package calls this on import, so every dock widget (and every torch path behind one) goes
    through it before anything can import torch.
    """
    import sys

    if "triton" not in sys.modules and not _has_nvidia_driver():
        sys.modules["triton"] = None  # type: ignore[assignment]
