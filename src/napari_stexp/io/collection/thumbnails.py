"""Slide thumbnails (coarsest image level, or a drawing of the spots) and their disk cache."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..h5ad import LIBRARY_COLUMNS, read_obs_column
from ._items import SlideItem

_THUMB_VERSION = "1"


def default_cache_dir() -> Path:
    """``$NAPARI_STEXP_CACHE/thumbs``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/napari-stexp/thumbs``."""
    env = os.environ.get("NAPARI_STEXP_CACHE")
    if env:
        return Path(env).expanduser() / "thumbs"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-stexp" / "thumbs"


def thumbnail_key(item: SlideItem, max_size: int) -> str:
    """Cache key: the slide's source files (resolved path, mtime, size), section and size."""
    parts = [_THUMB_VERSION, item.kind, str(item.section), str(max_size)]
    for p in item.files():
        try:
            st = p.stat()
            parts.append(f"{p.resolve()}|{st.st_mtime_ns}|{st.st_size}")
        except OSError:
            parts.append(f"{p}|missing")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()



# ----------------------------------------------------------------------------- thumbnails


def _make_thumbnail(item: SlideItem, max_size: int, memory: tuple | None = None) -> np.ndarray:
    """Coarsest image level when there is an image, else a drawing of the spot positions."""
    pyr = None
    try:
        if memory is not None and memory[1] is not None:
            pyr = memory[1]
        elif item.image:
            from ..wsi import open_image

            pyr = open_image(item.image)
        elif item.info.get("thumb_image"):
            from ..wsi import open_image

            pyr = open_image(item.info["thumb_image"])
        if pyr is not None:
            return _fit(_as_rgb_uint8(pyr.thumbnail(max_size)), max_size)
    except (InputError, OSError) as exc:
        warnings.warn(f"{item.name}: no image thumbnail ({exc})", stacklevel=3)
    finally:
        del pyr  # never keep a pyramid open for a thumbnail
    xy = _spot_xy(item, memory)
    return _spot_map(xy, max_size)


def _as_rgb_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = np.nanpercentile(a, [1, 99]) if a.size else (0.0, 1.0)
        a = np.clip((a - lo) / (hi - lo or 1.0) * 255, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3]
    elif a.shape[2] != 3:
        a = np.repeat(a[..., :1], 3, axis=2)
    return a


def _fit(a: np.ndarray, max_size: int) -> np.ndarray:
    from PIL import Image

    h, w = a.shape[:2]
    if max(h, w) <= max_size:
        return a
    f = max_size / max(h, w)
    im = Image.fromarray(a).resize((max(1, round(w * f)), max(1, round(h * f))),
                                   Image.Resampling.BILINEAR)
    return np.asarray(im)


def _spot_xy(item: SlideItem, memory: tuple | None = None) -> np.ndarray | None:
    try:
        if memory is not None and memory[0] is not None:
            return np.asarray(memory[0].obsm["spatial"])[:, :2]
        if item.info.get("spots_file"):
            from ..her2st import read_spot_file

            sp = read_spot_file(item.info["spots_file"])
            return sp[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
        for p in item.h5ads:
            import h5py

            with h5py.File(p, "r") as f:
                if "obsm" in f and "spatial" in f["obsm"]:
                    xy = np.asarray(f["obsm"]["spatial"][()], dtype=np.float64)[:, :2]
                    if item.section is not None:
                        sec = next((read_obs_column(f, c) for c in LIBRARY_COLUMNS
                                    if c in f["obs"]), None)
                        if sec is not None and len(sec) == len(xy):
                            xy = xy[sec.astype(str) == item.section]
                    return xy
    except (InputError, OSError, KeyError, ValueError):
        return None
    return None


def _spot_map(xy: np.ndarray | None, max_size: int) -> np.ndarray:
    """Dots at the spot positions on a light background (x = column), aspect kept."""
    if xy is None or len(xy) == 0:
        return np.full((max_size // 2, max_size, 3), 200, np.uint8)
    xy = np.asarray(xy, dtype=np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    pad = 0.06
    scale = (max_size * (1 - 2 * pad)) / span.max()
    w = max(8, int(np.ceil(span[0] * scale + 2 * pad * max_size)))
    h = max(8, int(np.ceil(span[1] * scale + 2 * pad * max_size)))
    out = np.full((h, w, 3), 245, np.uint8)
    cols = ((xy[:, 0] - lo[0]) * scale + pad * max_size).astype(int)
    rows = ((xy[:, 1] - lo[1]) * scale + pad * max_size).astype(int)
    step = span.max() / 20
    if len(xy) > 1:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(xy).query(xy, k=2)
        if (d[:, 1] > 0).any():
            step = float(np.median(d[d[:, 1] > 0, 1]))
    r = max(1, int(round(step * scale * 0.35)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (yy ** 2 + xx ** 2) <= r * r
    for rr, cc in zip(rows, cols, strict=True):
        r0, c0 = rr - r, cc - r
        sl_r = slice(max(r0, 0), min(r0 + 2 * r + 1, h))
        sl_c = slice(max(c0, 0), min(c0 + 2 * r + 1, w))
        m = disc[sl_r.start - r0:sl_r.stop - r0, sl_c.start - c0:sl_c.stop - c0]
        out[sl_r, sl_c][m] = (120, 60, 140)
    return out
