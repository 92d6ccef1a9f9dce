"""The lazy image model every reader returns: a pyramid of dask arrays plus physical scale."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ImagePyramid:
    """A (possibly multiscale) 2-D image, largest level first, read lazily.

    ``levels`` are dask arrays shaped ``(Y, X)`` or ``(Y, X, C)``; nothing is decoded until a
    region is computed. ``mpp`` is micrometres per pixel at level 0 (``None`` if unknown, the
    one encoding of unknown) and ``mpp_source`` where it came from (``file``, ``spots``, ``user``,
    ``assumed`` or ``unknown``; see :mod:`napari_stexp.io.frame`; by default ``file`` when a
    reader gave an ``mpp``, else ``unknown``). ``downsamples`` gives each level's (row) downsample
    factor relative to level 0.
    """

    levels: list[Any]
    path: str | None = None
    name: str = "image"
    mpp: float | None = None
    downsamples: list[float] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    mpp_source: str = ""

    def __post_init__(self):
        self.set_mpp(self.mpp, self.mpp_source or None)
        if not self.downsamples:
            h0 = self.levels[0].shape[0]
            self.downsamples = [h0 / lvl.shape[0] for lvl in self.levels]

    def set_mpp(self, mpp: float | None, source: str | None = None) -> None:
        """Set µm/px and where it came from (``None`` → unknown; ``source`` defaults to
        ``file`` for a known value)."""
        from .frame import MPP_SOURCES, clean_mpp

        self.mpp = clean_mpp(mpp)
        if self.mpp is None:
            self.mpp_source = "unknown"
            return
        src = source or "file"
        if src not in MPP_SOURCES or src == "unknown":
            raise ValueError(f"mpp_source must be one of {MPP_SOURCES[:-1]} for a known µm/px, "
                             f"got {src!r}")
        self.mpp_source = src

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.levels[0].shape)

    @property
    def height(self) -> int:
        return int(self.levels[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.levels[0].shape[1])

    @property
    def rgb(self) -> bool:
        return self.levels[0].ndim == 3 and self.levels[0].shape[-1] in (3, 4)

    @property
    def dtype(self):
        return self.levels[0].dtype

    @property
    def multiscale(self) -> bool:
        return len(self.levels) > 1

    def best_level(self, downsample: float) -> int:
        """Index of the smallest level whose downsample does not exceed ``downsample``."""
        best = 0
        for i, d in enumerate(self.downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read_region(self, row: int, col: int, height: int, width: int, level: int = 0,
                    fill: int | float = 255) -> np.ndarray:
        """Read ``[row:row+height, col:col+width]`` of ``level``; outside the image is ``fill``.

        Coordinates are in that level's pixels. Only the chunks touched are decoded.
        """
        arr = self.levels[level]
        H, W = arr.shape[:2]
        out_shape = (height, width) + tuple(arr.shape[2:])
        out = np.full(out_shape, fill, dtype=arr.dtype)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, H), min(col + width, W)
        if r1 > r0 and c1 > c0:
            block = arr[r0:r1, c0:c1]
            block = np.asarray(block.compute() if hasattr(block, "compute") else block)
            out[r0 - row:r1 - row, c0 - col:c1 - col] = block
        return out

    def thumbnail(self, max_size: int = 512) -> np.ndarray:
        """A small RGB(A)/grey overview from the coarsest level that is still >= ``max_size``."""
        target = max(self.height, self.width) / max_size
        lvl = self.best_level(max(target, 1.0))
        arr = self.levels[lvl]
        step = max(1, int(np.ceil(max(arr.shape[:2]) / max_size)))
        small = arr[::step, ::step]
        return np.asarray(small.compute() if hasattr(small, "compute") else small)
