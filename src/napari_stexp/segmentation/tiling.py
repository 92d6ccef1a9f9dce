"""Tiled segmentation of large images with bounded memory, stitched without split or duplicated
cells.

The image is cut into a grid of *cores* (``tile`` x ``tile``); each core is segmented together with
a halo of ``overlap`` pixels of context on every side (clipped at the image border), reading only
that window (ImagePyramid ``read_region``, a dask slice, or a numpy view). Stitching rule: an
object is kept only by the tile whose core contains its centroid, so a cell seen by two tiles is
written once; with an overlap of at least one cell diameter every kept cell was seen whole. As a
safety net, an object whose pixels are already mostly claimed by a previously written object
(same cell, centroids on both sides of a core border) is dropped as a duplicate.

Output labels are a numpy array, or with ``labels_out=PATH`` a zarr array written tile by tile
(for whole slides; returned as a lazy dask array). Images above ``LABELS_IN_MEMORY_PIXELS``
always get a zarr array (a temporary one when no ``labels_out`` is given). The objects table is rebuilt from the pixels
actually written: one row per label.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from .base import Backend, SegmentationResult, empty_table

#: Images up to this many pixels are used whole to compute the global settings.
SAMPLE_PIXELS = 2048 * 2048
#: Larger images get their global settings from a mosaic of this many evenly spread tiles.
SAMPLE_TILES = 4
SAMPLE_TILE = 1024
#: Tiled runs without ``labels_out`` keep labels in memory up to this many pixels (256 MiB of
#: int32); larger images get their labels in a temporary zarr store on disk (deleted at exit),
#: so a whole-slide label array is never allocated.
LABELS_IN_MEMORY_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Tile:
    """One grid cell: its core ``[row:row+height, col:col+width]`` and the window read around it
    ``[r0:r1, c0:c1]`` (core + overlap, clipped to the image)."""

    index: int
    row: int
    col: int
    height: int
    width: int
    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def window_shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0

    def in_core(self, y: float, x: float) -> bool:
        return (self.row <= y < self.row + self.height) and (self.col <= x < self.col + self.width)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def tile_slide(shape: tuple[int, ...], tile: int | tuple[int, int],
               overlap: int | tuple[int, int] = 0) -> Iterator[Tile]:
    """Row-major grid of tiles covering an image of ``shape`` (Y, X[, C]).

    Cores partition the image exactly (no pixel in two cores); windows add ``overlap`` pixels
    of context each side, clipped to the image.
    """
    H, W = int(shape[0]), int(shape[1])
    th, tw = _pair(tile)
    oy, ox = _pair(overlap)
    if th < 1 or tw < 1:
        raise InputError(None, f"tile size must be >= 1, got {tile!r}")
    if oy < 0 or ox < 0:
        raise InputError(None, f"overlap must be >= 0, got {overlap!r}")
    k = 0
    for row in range(0, H, th):
        for col in range(0, W, tw):
            h, w = min(th, H - row), min(tw, W - col)
            yield Tile(k, row, col, h, w, max(row - oy, 0), max(col - ox, 0),
                       min(row + h + oy, H), min(col + w + ox, W))
            k += 1


def n_tiles(shape: tuple[int, ...], tile: int | tuple[int, int]) -> int:
    th, tw = _pair(tile)
    return math.ceil(int(shape[0]) / th) * math.ceil(int(shape[1]) / tw)


# --------------------------------------------------------------------------- reading windows


def image_shape(image: Any) -> tuple[int, ...]:
    from ..io.image import ImagePyramid

    if isinstance(image, ImagePyramid):
        return tuple(int(s) for s in image.shape)
    return tuple(int(s) for s in image.shape)


def read_window(image: Any, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    """``image[r0:r1, c0:c1]`` as numpy, reading only that region (pyramid level 0 / dask)."""
    from ..io.image import ImagePyramid

    if isinstance(image, ImagePyramid):
        return image.read_region(r0, c0, r1 - r0, c1 - c0, level=0)
    block = image[r0:r1, c0:c1]
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block)


def global_sample(image: Any) -> tuple[np.ndarray, bool]:
    """The pixels the global settings are computed from: the whole image when it is small
    (``True``), else a mosaic of evenly spread full-resolution tiles (``False``)."""
    shape = image_shape(image)
    H, W = shape[:2]
    if H * W <= SAMPLE_PIXELS:
        return read_window(image, 0, 0, H, W), True
    n = int(math.ceil(math.sqrt(SAMPLE_TILES)))
    t = SAMPLE_TILE
    ys = np.linspace(0, max(H - t, 0), n).astype(int)
    xs = np.linspace(0, max(W - t, 0), n).astype(int)
    rows = []
    for y in ys:
        rows.append(np.concatenate([read_window(image, y, x, min(y + t, H), min(x + t, W))
                                    for x in xs], axis=1))
    return np.concatenate(rows, axis=0), False


# --------------------------------------------------------------------------- stitching


def _new_output(shape: tuple[int, int], tile: tuple[int, int], tmp: Path | None):
    if tmp is None:
        return np.zeros(shape, dtype=np.int32)
    import zarr

    return zarr.open_array(str(tmp), mode="w", shape=shape, dtype="int32",
                           chunks=(min(tile[0], 2048), min(tile[1], 2048)), fill_value=0,
                           zarr_format=2)


def _temporary_labels_store() -> Path:
    """A zarr path in a fresh temporary folder, removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="stexp-labels-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder / "labels.zarr"


def iter_segment_tiled(image: Any, backend: Backend, params: dict, *, tile_size: int,
                       overlap: int | None = None, labels_out: str | os.PathLike | None = None,
                       cancel: CancelFlag | None = None, tissue=None
                       ) -> Iterator[tuple[int, int, SegmentationResult | None]]:
    """Generator form of :func:`segment_tiled`: yields ``(tiles done, tiles total, None)`` after
    every tile and finally ``(total, total, result)``. ``params`` must already hold the global
    settings (``backend.prepare`` applied). ``tissue``: ``(mask, downsample)`` (see
    :mod:`.tissue`): tiles without tissue are skipped, the others get their tissue mask."""
    shape = image_shape(image)
    H, W = shape[:2]
    tile = _pair(tile_size)
    if overlap is None:
        overlap = backend.halo(params) if backend.halo else 64
    total = n_tiles(shape, tile)
    state = {"rows": [], "feats": [], "extra": set(), "dup": 0, "cut": 0, "tissue": tissue}
    if labels_out is None and H * W > LABELS_IN_MEMORY_PIXELS:
        labels_out = _temporary_labels_store()
    if labels_out is None:
        out = _new_output((H, W), tile, None)
        yield from _run_tiles(image, backend, params, shape, tile, overlap, out, state, cancel)
        labels: Any = out
    else:
        import dask.array as da

        from ..io._atomic import atomic_path

        with atomic_path(labels_out, directory=True) as tmp:
            out = _new_output((H, W), tile, tmp)
            yield from _run_tiles(image, backend, params, shape, tile, overlap, out, state,
                                  cancel)
        labels = da.from_zarr(str(labels_out))
    rows, feats, extra_cols = state["rows"], state["feats"], state["extra"]
    n_dup, n_cut = state["dup"], state["cut"]
    if rows:
        table = pd.DataFrame(rows)
    else:
        table = empty_table(with_class="class" in extra_cols)
    meta = {"tiled": True, "tile_size": tile, "overlap": int(overlap), "n_tiles": total,
            "dropped_duplicates": n_dup, "cut_by_window": n_cut}
    result = SegmentationResult(labels=labels, table=table,
                                roi_features=np.stack(feats) if feats else None,
                                metadata=meta)
    yield total, total, result


def _run_tiles(image, backend, params, shape, tile, overlap, out, state, cancel):
    rows, feats, extra_cols = state["rows"], state["feats"], state["extra"]
    H, W = shape[:2]
    total = n_tiles(shape, tile)
    next_label = 1
    yield 0, total, None
    for t in tile_slide(shape, tile, overlap):
        check_cancel(cancel, "segmentation")
        run_params = params
        if state["tissue"] is not None:
            from .tissue import window_mask

            run_params = {**params, "tissue_window": window_mask(state["tissue"], t.r0, t.c0,
                                                                 t.r1, t.c1)}
            if not run_params["tissue_window"].any():
                yield t.index + 1, total, None
                continue
        window = read_window(image, t.r0, t.c0, t.r1, t.c1)
        res = backend.run(window, run_params, None, cancel)
        lab = np.asarray(res.labels)
        tab = res.table
        if len(tab):
            region = np.asarray(out[t.r0:t.r1, t.c0:t.c1])
            changed = False
            for i, r in enumerate(tab.itertuples(index=False)):
                gy, gx = r.y + t.r0, r.x + t.c0
                if not t.in_core(gy, gx):
                    continue
                sl = (slice(int(r.ymin), int(r.ymax)), slice(int(r.xmin), int(r.xmax)))
                m = lab[sl] == r.label
                taken = region[sl][m]
                taken = taken[taken > 0]
                if taken.size and np.bincount(taken).max() > 0.5 * m.sum():
                    state["dup"] += 1
                    continue
                cut = ((r.ymin == 0 and t.r0 > 0) or (r.xmin == 0 and t.c0 > 0)
                       or (r.ymax == lab.shape[0] and t.r1 < H)
                       or (r.xmax == lab.shape[1] and t.c1 < W))
                state["cut"] += bool(cut)
                write = m & (region[sl] == 0)
                if not write.any():
                    continue
                region[sl][write] = next_label
                ys, xs = np.nonzero(write)
                row = {"label": next_label,
                       "y": float(ys.mean()) + sl[0].start + t.r0,
                       "x": float(xs.mean()) + sl[1].start + t.c0,
                       "ymin": int(ys.min()) + sl[0].start + t.r0,
                       "xmin": int(xs.min()) + sl[1].start + t.c0,
                       "ymax": int(ys.max()) + 1 + sl[0].start + t.r0,
                       "xmax": int(xs.max()) + 1 + sl[1].start + t.c0,
                       "area": int(write.sum()), "score": float(r.score)}
                for c in tab.columns:
                    if c not in row:
                        row[c] = tab[c].iloc[i]
                        extra_cols.add(c)
                rows.append(row)
                if res.roi_features is not None:
                    feats.append(np.asarray(res.roi_features[i]))
                next_label += 1
                changed = True
            if changed:
                out[t.r0:t.r1, t.c0:t.c1] = region
        yield t.index + 1, total, None


def segment_tiled(image: Any, backend: Backend, params: dict, *, tile_size: int,
                  overlap: int | None = None, labels_out: str | os.PathLike | None = None,
                  progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                  tissue=None) -> SegmentationResult:
    """Segment ``image`` tile by tile (see the module doc). Progress is reported per tile."""
    result = None
    for done, total, res in iter_segment_tiled(image, backend, params, tile_size=tile_size,
                                               overlap=overlap, labels_out=labels_out,
                                               cancel=cancel, tissue=tissue):
        report(progress, done, total, f"tile {done}/{total}")
        result = res
    assert result is not None
    return result
