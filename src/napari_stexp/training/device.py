"""Device choice: ``auto`` → cuda, then mps, then cpu. Explicit errors when a device is missing."""

from __future__ import annotations

from ..errors import DeviceError


def available_devices() -> list[str]:
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.insert(0 if "cuda" not in out else 1, "mps")
    return out


def get_device(device: str | None = "auto"):
    """Return a ``torch.device``; ``'auto'``/``None`` picks the best one present."""
    import torch

    if device is None or str(device) == "auto":
        avail = available_devices()
        return torch.device(avail[0])
    dev = torch.device(str(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{device}' requested but CUDA is not available here "
                          f"(available: {', '.join(available_devices())})")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device '{device}' requested but MPS is not available here "
                              f"(available: {', '.join(available_devices())})")
    return dev
