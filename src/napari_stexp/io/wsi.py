"""Whole-slide and large-image reader (lazy dask pyramids) and a tiled pyramidal TIFF writer.

``open_image`` turns any supported file into an :class:`~napari_stexp.io.image.ImagePyramid`
whose levels are dask arrays: nothing is decoded until a region is computed, and a region only
decodes the tiles it touches. That is what lets napari show a 40,000 x 40,000 slide in well under
a second: it only ever asks for the coarse level that fits the canvas, then the visible tiles.

- Tiled / pyramidal TIFF, OME-TIFF, SVS, SCN, BIF, QPTIFF: tifffile -> zarr store -> one dask
  array per pyramid level, chunked like the TIFF tiles. Label, macro and thumbnail series are
  skipped. A large TIFF without a pyramid gets lazily coarsened levels.
- JPEG / PNG / BMP: decoded on demand and cached. JPEG coarse levels use libjpeg's DCT scaling
  (PIL "draft" mode, 1/2, 1/4, 1/8), so an overview of a 10k x 10k H&E costs ~0.1 s and the full
  image is decoded (once) only when a level-0 region is asked for.
- NDPI, MRXS and other vendor formats: openslide, when the optional extra is installed.

Channel layout is kept: grey images are ``(Y, X)``, RGB ``(Y, X, 3)``, RGBA ``(Y, X, 4)``;
multichannel (OME ``CYX``) images become ``(Y, X, C)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from ._atomic import atomic_writer
from .image import ImagePyramid

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs", ".btf", ".tf8", ".tf2",
                 ".scn", ".bif", ".qptiff")
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".vms", ".vmu", ".svslide")
PIL_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
IMAGE_SUFFIXES: tuple[str, ...] = TIFF_SUFFIXES + OPENSLIDE_SUFFIXES + PIL_SUFFIXES + ZARR_SUFFIXES

#: Images whose longer side exceeds this get generated coarse levels (napari multiscale).
PYRAMID_MIN_SIZE = 4096
#: Generated pyramids stop once the longer side is at most this many pixels.
COARSEST_SIZE = 1024
#: Chunk size of the dask arrays built over decoded (non-tiled) images.
DECODED_CHUNK = 1024
#: µm/px found only in generic resolution tags (TIFF dpi, JPEG/PNG density) above this value is
#: treated as a screen resolution (72/96/300 dpi), not a physical pixel size.
MAX_PLAUSIBLE_DPI_MPP = 50.0

#: Largest image (level 0, pixels) we open; ``STEXP_MAX_IMAGE_PIXELS`` raises it. 4e10 px is a
#: 200,000 x 200,000 slide, larger than any scanner's output.
MAX_IMAGE_PIXELS = 4 * 10**10
#: Largest decoded-size / file-size ratio for images decoding to more than
#: ``RATIO_CHECK_BYTES``; ``STEXP_MAX_DECODE_RATIO`` raises it. Real slides compress 3-100x,
#: an almost blank PNG ~1000x; a header that lies about its size gives 10^4-10^6x.
MAX_DECODE_RATIO = 5000
RATIO_CHECK_BYTES = 256 * 2**20
#: Most chunks (tiles) per pyramid level: beyond it the lazy array's graph alone is too big.
MAX_CHUNKS_PER_LEVEL = 2 * 10**6


def _limit(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise InputError(env, f"must be a number, got {raw!r}") from exc
    if not value > 0:
        raise InputError(env, f"must be > 0, got {raw!r}")
    return value


def check_declared_size(path: str | os.PathLike, height: int, width: int, *,
                        bytes_per_pixel: int = 1, tile: tuple[int, int] | None = None,
                        file_size: int | None = None) -> None:
    """Refuse, before anything is decoded or a lazy array is built, an image whose header
    declares more pixels than ``MAX_IMAGE_PIXELS``, more tiles than ``MAX_CHUNKS_PER_LEVEL``,
    or far more decoded bytes than its file size explains (``MAX_DECODE_RATIO``).

    The limits are documented in docs/formats-images.md and raised with the environment
    variables ``STEXP_MAX_IMAGE_PIXELS`` / ``STEXP_MAX_DECODE_RATIO``.
    """
    p = Path(path)
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise InputError(p, f"declares an empty image ({h} x {w} px)")
    px = h * w
    max_px = _limit("STEXP_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)
    if px > max_px:
        raise InputError(p, f"declares {w:,} x {h:,} px ({px:.3g} pixels), more than the limit "
                            f"of {max_px:.3g}; set STEXP_MAX_IMAGE_PIXELS to open it anyway")
    if tile:
        th, tw = max(int(tile[0]), 1), max(int(tile[1]), 1)
        chunks = math.ceil(h / th) * math.ceil(w / tw)
        if chunks > MAX_CHUNKS_PER_LEVEL:
            raise InputError(p, f"declares {chunks:,} tiles of {tw} x {th} px in one level "
                                f"(limit {MAX_CHUNKS_PER_LEVEL:,}); corrupt header or "
                                "unusably small tiles")
    size = p.stat().st_size if file_size is None else int(file_size)
    decoded = px * max(int(bytes_per_pixel), 1)
    ratio = decoded / max(size, 1)
    max_ratio = _limit("STEXP_MAX_DECODE_RATIO", MAX_DECODE_RATIO)
    if decoded > RATIO_CHECK_BYTES and ratio > max_ratio:
        raise InputError(p, f"declares {w:,} x {h:,} px ({decoded / 2**30:.1f} GiB decoded) "
                            f"from a {size:,}-byte file (x{ratio:,.0f}, limit x{max_ratio:,.0f}):"
                            " the header does not match the data (decompression bomb?); set "
                            "STEXP_MAX_DECODE_RATIO to open it anyway")


_UNIT_TO_UM = {
    "pm": 1e-6, "picometer": 1e-6, "å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
    "centimeter": 1e4, "m": 1e6, "meter": 1e6, "in": 25400.0, "inch": 25400.0,
}


def unit_to_um(unit: str | None) -> float | None:
    """Micrometres per ``unit`` (OME / NGFF / ImageJ spellings); ``None`` when unknown."""
    if unit is None:
        return None
    return _UNIT_TO_UM.get(str(unit).strip().lower())


def _suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return Path(name).suffix


def is_image_file(path: str | os.PathLike) -> bool:
    """True if ``open_image`` handles this path (by suffix; OME-Zarr folders by their metadata)."""
    p = Path(path)
    s = _suffix(p)
    if s in ZARR_SUFFIXES or p.is_dir():
        from .ome_zarr import is_ngff

        return is_ngff(p)
    return s in IMAGE_SUFFIXES


def _sniff(path: Path) -> str:
    """File kind from the first bytes: 'tiff', 'jpeg', 'png', 'bmp' or ''."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:2] == b"BM":
        return "bmp"
    return ""


def open_image(path: str | os.PathLike) -> ImagePyramid:
    """Open an image or whole slide lazily as an :class:`ImagePyramid` (largest level first).

    Raises :class:`InputError` naming the file for a missing, unsupported, truncated or corrupt
    file (also later, from a region read, if a tile turns out to be undecodable).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    s = _suffix(p)
    if p.is_dir() or s in ZARR_SUFFIXES:
        from .ome_zarr import read_ome_zarr

        return read_ome_zarr(p)
    if s not in IMAGE_SUFFIXES:
        raise InputError(p, f"unsupported image format '{s or p.name}' (supported: "
                            + ", ".join(IMAGE_SUFFIXES) + ")")
    try:
        if p.stat().st_size == 0:
            raise InputError(p, "empty file")
        kind = _sniff(p)
        if s in OPENSLIDE_SUFFIXES:
            return _open_openslide(p)
        if kind == "tiff":
            return _open_tiff(p)
        if kind in ("jpeg", "png", "bmp"):
            return _open_pil(p, kind)
        expected = "TIFF" if s in TIFF_SUFFIXES else s.lstrip(".").upper()
        raise InputError(p, f"not a valid {expected} file (unrecognised header); "
                            "the file is corrupt or has the wrong suffix")
    except InputError:
        raise
    except Exception as exc:  # tifffile/PIL/zarr raise many types; users get one.
        raise InputError(p, f"cannot read image ({type(exc).__name__}: {exc})") from exc


def _dask_name(path: Path, tag: str) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}|{tag}"
    return "stexp-image-" + hashlib.md5(key.encode()).hexdigest()


def _from_lazy(obj: Any, chunks: tuple[int, ...], name: str):
    import dask.array as da

    return da.from_array(obj, chunks=chunks, name=name, asarray=True, fancy=False, lock=False,
                         meta=np.empty((0,) * len(obj.shape), dtype=obj.dtype))


# --------------------------------------------------------------------------- TIFF (tifffile)


class _TileArray:
    """Array-like over one tifffile zarr level: counts reads and turns decode errors into
    :class:`InputError` (tifffile raises assorted types from inside a dask compute)."""

    def __init__(self, zarray: Any, path: Path, level: int, keepalive: Any):
        self._z = zarray
        self._path = path
        self._level = level
        self._keep = keepalive  # the TiffFile must outlive the store
        self.shape = tuple(zarray.shape)
        self.dtype = np.dtype(zarray.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(zarray.chunks)
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        try:
            return np.asarray(self._z[key])
        except Exception as exc:
            raise InputError(self._path, f"cannot decode level {self._level} region {key} "
                                         f"({type(exc).__name__}: {exc})") from exc


def _main_series(tf: Any) -> Any:
    """The largest series that is not a label, macro, overview or thumbnail image."""
    skip = ("label", "macro", "thumbnail", "overview")
    candidates = []
    for s in tf.series:
        name = (s.name or "").lower()
        if any(k in name for k in skip):
            continue
        try:
            ax = s.axes
            area = s.shape[ax.index("Y")] * s.shape[ax.index("X")]
        except (ValueError, IndexError):
            continue
        candidates.append((area, s))
    if not candidates:
        return None
    return max(candidates, key=lambda t: t[0])[1]


def _check_tiff_complete(path: Path, series: Any, size: int) -> None:
    """Raise if any level's tile/strip data points past the end of the file (truncation)."""
    for i, lvl in enumerate(series.levels):
        pages = [pg for pg in list(lvl.pages)[:64] if pg is not None]
        for pg in pages:
            offsets = np.asarray(pg.dataoffsets, dtype=np.int64)
            counts = np.asarray(pg.databytecounts, dtype=np.int64)
            if offsets.size and int((offsets + counts).max()) > size:
                raise InputError(path, f"truncated TIFF: level {i} image data ends at byte "
                                       f"{int((offsets + counts).max())} but the file has "
                                       f"{size} bytes")


def _check_series_size(path: Path, series: Any, size: int) -> None:
    """check_declared_size for level 0 of a TIFF series (its declared tiles and sample size)."""
    axes = series.axes.upper()
    shape = series.shape
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    per_px = int(np.dtype(series.dtype).itemsize)
    for name in ("S", "C"):
        if name in axes:
            per_px *= int(shape[axes.index(name)])
    page = series.keyframe
    tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else (
        int(getattr(page, "rowsperstrip", 0) or h), w)
    check_declared_size(path, h, w, bytes_per_pixel=per_px, tile=tile, file_size=size)


def _tiff_format(tf: Any) -> str:
    for flag, name in (("is_svs", "svs"), ("is_ome", "ome-tiff"), ("is_ndpi", "ndpi"),
                       ("is_scn", "scn"), ("is_bif", "bif"), ("is_qpi", "qptiff"),
                       ("is_imagej", "imagej-tiff")):
        if getattr(tf, flag, False):
            return name
    return "tiff"


def _to_yxc(levels: list, axes: str) -> tuple[list, str, dict]:
    """Reduce tifffile axes to (Y, X[, C]); extra axes of size > 1 keep index 0 (noted)."""
    notes: dict = {}
    axes = axes.upper()
    shape0 = levels[0].shape
    chan = None
    for name in ("S", "C"):
        if name in axes and shape0[axes.index(name)] > 1:
            chan = name
            break
    out = []
    for arr in levels:
        index, keep = [], []
        for i, name in enumerate(axes):
            if name in ("Y", "X") or name == chan:
                index.append(slice(None))
                keep.append(name)
            else:
                index.append(0)
                if arr.shape[i] > 1:
                    notes.setdefault("dropped_axes", {})[name] = int(arr.shape[i])
        a = arr[tuple(index)]
        order = [keep.index("Y"), keep.index("X")] + ([keep.index(chan)] if chan else [])
        if order != list(range(len(keep))):
            a = a.transpose(order)
        out.append(a)
    layout = "grey" if out[0].ndim == 2 else {3: "rgb", 4: "rgba"}.get(out[0].shape[-1],
                                                                      "multichannel")
    return out, layout, notes


def _open_tiff(p: Path) -> ImagePyramid:
    import tifffile
    import zarr

    try:
        tf = tifffile.TiffFile(p)
    except Exception as exc:
        raise InputError(p, f"not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            series = _main_series(tf)
        if series is None:
            raise InputError(p, "TIFF contains no image series (corrupt or truncated)")
        _check_series_size(p, series, tf.filehandle.size)
        _check_tiff_complete(p, series, tf.filehandle.size)
        sindex = next(i for i, s in enumerate(tf.series) if s is series)
        raw = []
        for i in range(len(series.levels)):
            z = zarr.open_array(series.aszarr(level=i), mode="r")
            raw.append(_TileArray(z, p, i, tf))
        levels = [_from_lazy(a, a.chunks, _dask_name(p, f"tiff-{sindex}-{i}"))
                  for i, a in enumerate(raw)]
        levels, layout, notes = _to_yxc(levels, series.axes)
        generated = False
        if len(levels) == 1 and max(levels[0].shape[:2]) > PYRAMID_MIN_SIZE:
            levels = levels + coarsen_levels(levels[0])
            generated = True
        mpp, mpp_source = _tiff_mpp(tf, series, sindex)
        page = series.keyframe
        meta = {
            "format": _tiff_format(tf),
            "series": series.name or str(sindex),
            "axes": series.axes,
            "layout": layout,
            "tiled": bool(page.is_tiled),
            "tile": (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None,
            "compression": getattr(page.compression, "name", str(page.compression)),
            "mpp_source": mpp_source,
            "generated_levels": generated,
            "_tile_arrays": raw,
            **notes,
        }
    except InputError:
        tf.close()
        raise
    except Exception as exc:
        tf.close()
        raise InputError(p, f"cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    return ImagePyramid(levels=levels, path=str(p), name=_stem(p), mpp=mpp, metadata=meta)


def _stem(p: Path) -> str:
    name = p.name
    s = _suffix(p)
    return name[: -len(s)] if s and name.lower().endswith(s) else p.stem


def _tiff_mpp(tf: Any, series: Any, sindex: int) -> tuple[float | None, str | None]:
    """µm/px of level 0: OME PhysicalSizeX, Aperio MPP, ImageJ unit, then TIFF resolution tags."""
    if getattr(tf, "is_ome", False):
        mpp = _ome_mpp(tf.ome_metadata, sindex)
        if mpp:
            return mpp, "ome"
    page = tf.pages[0]
    desc = page.description or ""
    m = re.search(r"\bMPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", desc)
    if m and float(m.group(1)) > 0:
        return float(m.group(1)), "aperio"
    keyframe = series.keyframe
    xres = _rational(keyframe.tags.get("XResolution"))
    unit_tag = keyframe.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    if getattr(tf, "is_imagej", False) and xres:
        ij = tf.imagej_metadata or {}
        per = unit_to_um(ij.get("unit"))
        if per:
            return per / xres, "imagej"
    if xres and unit in (2, 3):
        mpp = (25400.0 if unit == 2 else 10000.0) / xres
        if 0 < mpp <= MAX_PLAUSIBLE_DPI_MPP:
            return mpp, "tiff-resolution"
    return None, None


def _rational(tag: Any) -> float | None:
    if tag is None:
        return None
    v = tag.value
    try:
        val = v[0] / v[1] if isinstance(v, tuple) and len(v) == 2 else float(v)
    except (TypeError, ZeroDivisionError, ValueError):
        return None
    return val if val > 0 else None


def _ome_mpp(xml: str | None, index: int) -> float | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Image"]
    if not images:
        return None
    image = images[index] if index < len(images) else images[0]
    for el in image.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":
            size = el.get("PhysicalSizeX")
            if size is None:
                return None
            per = unit_to_um(el.get("PhysicalSizeXUnit", "µm"))
            try:
                val = float(size) * (per if per else 1.0)
            except ValueError:
                return None
            return val if val > 0 else None
    return None


# --------------------------------------------------------------------------- lazy pyramids


def _mean_reduce(x: np.ndarray, axis: tuple[int, ...] | None = None, *,
                 dtype: np.dtype) -> np.ndarray:
    """Mean over ``axis`` cast back to ``dtype`` (integers rounded half up, in integer maths)."""
    dtype = np.dtype(dtype)
    if axis is None:  # dask calls the reduction without axis to learn the output meta
        axis = tuple(range(x.ndim))
    if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        n = math.prod(x.shape[a] for a in axis)
        acc = np.int64 if dtype.kind == "i" else np.uint32
        s = x.sum(axis=axis, dtype=acc)
        if dtype.kind == "i":
            return np.floor_divide(s + n // 2, n).astype(dtype)
        return ((s + n // 2) // n).astype(dtype)
    m = x.mean(axis=axis)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        m = np.clip(np.rint(m), info.min, info.max)
    return m.astype(dtype)


def coarsen_levels(level0: Any, min_size: int = COARSEST_SIZE, chunk: int = 512) -> list:
    """Lazily 2x-mean-downsampled levels of a dask (Y, X[, C]) array until the longer side is
    at most ``min_size`` (used for large images stored without a pyramid)."""
    import functools

    import dask.array as da

    out = []
    cur = level0
    red = functools.partial(_mean_reduce, dtype=level0.dtype)
    while max(cur.shape[:2]) > min_size and min(cur.shape[:2]) >= 2:
        cur = da.coarsen(red, cur, {0: 2, 1: 2}, trim_excess=True)
        rech = {0: min(chunk, cur.shape[0]), 1: min(chunk, cur.shape[1])}
        cur = cur.rechunk(rech)
        out.append(cur)
    return out


def downsample2(a: np.ndarray, how: str = "mean") -> np.ndarray:
    """Halve a (Y, X[, C]) numpy array: 2x2 mean (edges replicated, so shape = ceil(n/2)) or
    nearest (every second pixel)."""
    if how == "nearest":
        return a[::2, ::2]
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad, mode="edge")
    dtype = a.dtype
    if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        acc = np.int32
        s = a[0::2, 0::2].astype(acc)
        s += a[1::2, 0::2]
        s += a[0::2, 1::2]
        s += a[1::2, 1::2]
        s += 2
        s //= 4
        return s.astype(dtype)
    h2, w2 = a.shape[0] // 2, a.shape[1] // 2
    r = a.reshape((h2, 2, w2, 2) + a.shape[2:])
    return _mean_reduce(r, (1, 3), dtype=dtype)


_PIL_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_open(path: Path):
    """``PIL.Image.open`` with the decompression-bomb limit lifted: slides are big on purpose."""
    from PIL import Image

    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old
    try:
        yield im
    finally:
        im.close()


_MODE_MAP = {
    # PIL mode -> (mode to convert to or None to keep, channels, dtype)
    "1": ("L", 0, np.uint8), "L": (None, 0, np.uint8), "P": ("RGB", 3, np.uint8),
    "PA": ("RGBA", 4, np.uint8), "LA": ("RGBA", 4, np.uint8), "RGB": (None, 3, np.uint8),
    "RGBA": (None, 4, np.uint8), "RGBa": ("RGBA", 4, np.uint8), "RGBX": ("RGB", 3, np.uint8),
    "CMYK": ("RGB", 3, np.uint8), "YCbCr": ("RGB", 3, np.uint8), "LAB": ("RGB", 3, np.uint8),
    "HSV": ("RGB", 3, np.uint8), "I;16": (None, 0, np.uint16), "I;16L": (None, 0, np.uint16),
    "I;16B": (None, 0, np.uint16), "I": (None, 0, np.int32), "F": (None, 0, np.float32),
}


class _PILSource:
    """Decodes a PIL-readable image on demand, once per scale (thread-safe cache).

    Scale s gives shape ceil(H/s) x ceil(W/s). For JPEG, s in (2, 4, 8) uses libjpeg's DCT
    scaling (``Image.draft``), so coarse levels never decode the full image; larger s are
    downsampled from the nearest smaller cached scale.
    """

    def __init__(self, path: Path, fmt: str, size: tuple[int, int], mode: str, info: dict):
        self.path, self.fmt = path, fmt
        self.width, self.height = size
        convert, channels, dtype = _MODE_MAP.get(mode, ("RGB", 3, np.uint8))
        if mode == "P" and "transparency" in info:
            convert, channels = "RGBA", 4
        self.convert, self.channels, self.dtype = convert, channels, np.dtype(dtype)
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.RLock()
        self._locks: dict[int, threading.RLock] = {}
        self.decoded: list[int] = []  # scales decoded from the file, in order (for tests)

    def shape(self, scale: int) -> tuple[int, ...]:
        shp = (math.ceil(self.height / scale), math.ceil(self.width / scale))
        return shp + ((self.channels,) if self.channels else ())

    def _decode(self, scale: int) -> np.ndarray | None:
        with _pil_open(self.path) as im:
            if scale > 1:
                # PIL picks the largest DCT scale with size // request >= scale, giving ceil.
                im.draft(im.mode if im.mode in ("RGB", "L") else "RGB",
                         (max(1, self.width // scale), max(1, self.height // scale)))
                if im.size != (math.ceil(self.width / scale), math.ceil(self.height / scale)):
                    return None
            if self.convert and im.mode != self.convert:
                im = im.convert(self.convert)
            elif not self.convert and self.channels == 3 and im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im)
        self.decoded.append(scale)
        return arr.astype(self.dtype, copy=False)

    def _scale_lock(self, scale: int) -> threading.RLock:
        with self._lock:
            return self._locks.setdefault(scale, threading.RLock())

    def get(self, scale: int) -> np.ndarray:
        # one lock per scale: a coarse draft decode (tissue mask) does not wait for a full
        # decode running in another thread
        with self._scale_lock(scale):
            if scale in self._cache:
                return self._cache[scale]
            arr = None
            try:
                if scale == 1 or (self.fmt == "jpeg" and scale in (2, 4, 8)):
                    arr = self._decode(scale)
                if arr is None:
                    arr = downsample2(self.get(scale // 2) if scale > 1 else self._decode(1))
            except InputError:
                raise
            except Exception as exc:
                raise InputError(self.path, f"cannot decode {self.fmt.upper()} image "
                                            f"({type(exc).__name__}: {exc}); the file is "
                                            "truncated or corrupt") from exc
            if arr.shape != self.shape(scale):
                raise InputError(self.path, f"decoded image has shape {arr.shape}, expected "
                                            f"{self.shape(scale)}")
            self._cache[scale] = arr
            return arr


class _PILLevel:
    def __init__(self, source: _PILSource, scale: int):
        self.source, self.scale = source, scale
        self.shape = source.shape(scale)
        self.dtype = source.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        return self.source.get(self.scale)[key]


def _check_complete_pil(p: Path, kind: str) -> None:
    size = p.stat().st_size
    with open(p, "rb") as fh:
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        raise InputError(p, "truncated JPEG (no end-of-image marker)")
    if kind == "png" and b"IEND" not in tail[-64:]:
        raise InputError(p, "truncated PNG (no IEND chunk)")
    if kind == "bmp":
        with open(p, "rb") as fh:
            head = fh.read(6)
        declared = int.from_bytes(head[2:6], "little") if len(head) == 6 else 0
        if declared > size:
            raise InputError(p, f"truncated BMP: the header says {declared} bytes, the file "
                                f"has {size}")


def _pil_mpp(info: dict) -> float | None:
    dpi = info.get("dpi")
    if not dpi:
        return None
    try:
        x = float(dpi[0])
    except (TypeError, ValueError, IndexError):
        return None
    if x <= 0:
        return None
    mpp = 25400.0 / x
    return mpp if mpp <= MAX_PLAUSIBLE_DPI_MPP else None


def _open_pil(p: Path, kind: str) -> ImagePyramid:
    _check_complete_pil(p, kind)
    try:
        with _pil_open(p) as im:
            fmt = (im.format or kind).lower()
            size, mode, info = im.size, im.mode, dict(im.info)
    except Exception as exc:
        raise InputError(p, f"not a readable {kind.upper()} image "
                            f"({type(exc).__name__}: {exc})") from exc
    fmt = "jpeg" if fmt in ("jpeg", "mpo") else fmt
    src = _PILSource(p, fmt, size, mode, info)
    check_declared_size(p, size[1], size[0],
                        bytes_per_pixel=max(src.channels, 1) * src.dtype.itemsize)
    scales = [1]
    if max(size) > PYRAMID_MIN_SIZE:
        while max(src.shape(scales[-1])[:2]) > COARSEST_SIZE:
            scales.append(scales[-1] * 2)
    levels = []
    for s in scales:
        arr = _PILLevel(src, s)
        chunks = (DECODED_CHUNK, DECODED_CHUNK) + arr.shape[2:]
        levels.append(_from_lazy(arr, chunks, _dask_name(p, f"pil-{s}")))
    mpp = _pil_mpp(info)
    layout = {0: "grey", 3: "rgb", 4: "rgba"}[src.channels]
    meta = {"format": fmt, "layout": layout, "mode": mode, "tiled": False,
            "mpp_source": "dpi" if mpp else None, "generated_levels": len(levels) > 1,
            "scales": scales, "_source": src}
    return ImagePyramid(levels=levels, path=str(p), name=_stem(p), mpp=mpp,
                        downsamples=[float(s) for s in scales], metadata=meta)


# --------------------------------------------------------------------------- openslide


class _OpenSlideLevel:
    """Array-like over one openslide level, RGB uint8 (transparent areas become white)."""

    def __init__(self, slide: Any, level: int, path: Path, lock: threading.Lock):
        self._slide, self._level, self._path, self._lock = slide, level, path, lock
        w, h = slide.level_dimensions[level]
        self._ds = float(slide.level_downsamples[level])
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)[(slice(None),) * 2
                                                                               + key[2:]]
        try:
            with self._lock:
                region = self._slide.read_region(
                    (int(round(x0 * self._ds)), int(round(y0 * self._ds))), self._level,
                    (x1 - x0, y1 - y0))
            rgba = np.asarray(region.convert("RGBA"))
        except Exception as exc:
            raise InputError(self._path, f"openslide cannot read level {self._level} "
                                         f"({type(exc).__name__}: {exc})") from exc
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255
        return rgb[(slice(None), slice(None)) + tuple(key[2:])]


def _open_openslide(p: Path) -> ImagePyramid:
    try:
        import openslide
    except ImportError as exc:
        raise InputError(p, f"reading {_suffix(p)} slides needs openslide: "
                            "pip install 'napari-stexp[openslide]'") from exc
    try:
        slide = openslide.OpenSlide(str(p))
    except Exception as exc:
        raise InputError(p, f"openslide cannot open this slide ({type(exc).__name__}: {exc})"
                         ) from exc
    lock = threading.Lock()
    levels = []
    for i in range(slide.level_count):
        arr = _OpenSlideLevel(slide, i, p, lock)
        levels.append(_from_lazy(arr, (512, 512, 3), _dask_name(p, f"openslide-{i}")))
    props = dict(slide.properties)
    mpp = None
    with contextlib.suppress(KeyError, ValueError):
        mpp = float(props["openslide.mpp-x"])
    if len(levels) == 1 and max(levels[0].shape[:2]) > PYRAMID_MIN_SIZE:
        levels = levels + coarsen_levels(levels[0])
    meta = {"format": "openslide:" + str(props.get("openslide.vendor", "unknown")),
            "layout": "rgb", "mpp_source": "openslide" if mpp else None, "_slide": slide}
    ds = [float(d) for d in slide.level_downsamples]
    ds += [ds[-1] * 2 ** (k + 1) for k in range(len(levels) - len(ds))]
    return ImagePyramid(levels=levels, path=str(p), name=_stem(p), mpp=mpp, downsamples=ds,
                        metadata=meta)


# --------------------------------------------------------------------------- writer

TileFn = Callable[[int, int, int, int, int], np.ndarray]


def _n_levels(shape: tuple[int, ...], tile: int) -> int:
    n, h, w = 1, shape[0], shape[1]
    while max(h, w) > tile and min(h, w) > 1:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        n += 1
    return n


class _ArrayLevels:
    """Bands of an in-memory or dask array and of its 2x mean-downsampled levels."""

    def __init__(self, data: Any, budget: int = 256 * 2**20):
        self.levels = [data]
        self.budget = budget

    def level(self, k: int) -> Any:
        while len(self.levels) <= k:
            prev = self.levels[-1]
            if isinstance(prev, np.ndarray):
                nxt = downsample2(prev)
            else:
                import dask.array as da

                h, w = prev.shape[:2]
                pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (prev.ndim - 2)
                if h % 2 or w % 2:
                    prev = da.pad(prev, pad, mode="edge")
                import functools

                nxt = da.coarsen(functools.partial(_mean_reduce, dtype=prev.dtype), prev,
                                 {0: 2, 1: 2})
                if nxt.nbytes <= self.budget:
                    nxt = np.asarray(nxt.compute())
            self.levels.append(nxt)
        return self.levels[k]

    def band(self, k: int, y0: int, y1: int) -> np.ndarray:
        b = self.level(k)[y0:y1]
        return np.asarray(b.compute() if hasattr(b, "compute") else b)


def write_pyramidal_tiff(
    path: str | os.PathLike,
    data_or_tile_fn: Any,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: Any = np.uint8,
    tile: int = 512,
    levels: int | None = None,
    mpp: float | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
    maxworkers: int | None = None,
) -> Path:
    """Write a tiled, pyramidal (sub-IFD) TIFF atomically, without holding the image in memory.

    ``data_or_tile_fn`` is either an array (numpy, dask or any sliceable with ``shape``/``dtype``)
    shaped ``(Y, X)`` or ``(Y, X, C)``, or a callable ``fn(row, col, height, width, downsample)``
    returning that region of the image at the given downsample (1, 2, 4, ...; coordinates in that
    level's pixels) -- then ``shape`` (level 0, ``(Y, X[, C])``) is required. Lower levels are
    ceil(n/2) each, down to one tile (or ``levels`` in total). ``mpp`` (µm/px at level 0) is
    stored in the resolution tags of every level (pixels per cm). ``compression``: 'jpeg'
    (uint8 grey/RGB only; ``quality``), 'zlib', or None.
    """
    import tifffile

    target = Path(path)
    if callable(data_or_tile_fn) and not hasattr(data_or_tile_fn, "shape"):
        if shape is None:
            raise InputError(target, "shape is required when writing from a tile function")
        tile_fn: TileFn | None = data_or_tile_fn
        src = None
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
    else:
        tile_fn = None
        src = _ArrayLevels(data_or_tile_fn)
        shape = tuple(int(s) for s in data_or_tile_fn.shape)
        dtype = np.dtype(data_or_tile_fn.dtype)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InputError(target, f"image shape must be (Y, X) or (Y, X, 1|3|4), got {shape}")
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if tile % 16:
        raise InputError(target, f"TIFF tile size must be a multiple of 16, got {tile}")
    channels = shape[2] if len(shape) == 3 else 0
    comp = None if compression in (None, "none", False) else str(compression).lower()
    if comp == "jpeg" and (dtype != np.uint8 or channels == 4):
        raise InputError(target, "JPEG compression needs uint8 grey or RGB data; use 'zlib'")
    n = levels or _n_levels(shape, tile)
    shapes = [shape]
    for _ in range(1, n):
        h, w = shapes[-1][:2]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)) + shape[2:])
    total = sum(math.ceil(s[0] / tile) * math.ceil(s[1] / tile) for s in shapes)
    done = [0]

    def tiles(k: int) -> Iterator[np.ndarray]:
        h, w = shapes[k][:2]
        ds = 2 ** k
        for y in range(0, h, tile):
            th = min(tile, h - y)
            band = src.band(k, y, y + th) if src is not None else None
            for x in range(0, w, tile):
                check_cancel(cancel, "writing TIFF")
                tw = min(tile, w - x)
                if band is not None:
                    t = band[:, x:x + tw]
                else:
                    t = np.asarray(tile_fn(y, x, th, tw, ds))
                if t.ndim == 3 and not channels:
                    t = t[..., 0]
                if t.shape[:2] != (th, tw):
                    raise InputError(target, f"tile function returned shape {t.shape} for a "
                                             f"{th}x{tw} tile at level {k}")
                done[0] += 1
                report(progress, done[0], total, "writing pyramidal TIFF")
                yield np.ascontiguousarray(t, dtype=dtype)

    photometric = "rgb" if channels in (3, 4) else "minisblack"
    extras = {"extrasamples": ("unassalpha",)} if channels == 4 else {}
    compargs = {"compression": comp}
    if comp == "jpeg":
        compargs["compressionargs"] = {"level": int(quality)}
    raw_bytes = sum(math.prod(s) for s in shapes) * dtype.itemsize
    with atomic_writer(target, "TIFF") as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 2**31 - 2**26) as tw:
            for k, shp in enumerate(shapes):
                kw: dict[str, Any] = {}
                if k == 0:
                    if n > 1:
                        kw["subifds"] = n - 1
                    kw["software"] = "napari-stexp"
                else:
                    kw["subfiletype"] = 1
                if mpp:
                    ppcm = 1e4 / (float(mpp) * 2 ** k)
                    kw["resolution"] = (ppcm, ppcm)
                    kw["resolutionunit"] = "CENTIMETER"
                tw.write(tiles(k), shape=shp, dtype=dtype, tile=(tile, tile),
                         photometric=photometric, metadata=None,
                         maxworkers=maxworkers, **compargs, **extras, **kw)
    return target
