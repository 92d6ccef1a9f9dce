"""OME-Zarr (NGFF) in one module: the writer, the reader and the one sniffer.

- ``write_ome_zarr``: NGFF v0.4 multiscale (zarr format 2, ``/`` chunk keys, so napari-ome-zarr,
  ome-zarr-py, QuPath and Fiji read it) with a µm ``scale`` per level, written atomically chunk
  band by chunk band so dask inputs larger than memory work. ``kind='labels'`` writes a label
  image (``image-label`` metadata, nearest-neighbour pyramid); ``add_ome_zarr_labels`` puts one
  under an existing image's ``labels/`` group (the NGFF labels layout).
- ``read_ome_zarr``: our reader for these files and other NGFF 0.4 / 0.5 images, lazily as an
  :class:`~napari_stexp.io.image.ImagePyramid`.
- ``ngff_attrs`` / ``is_ngff`` / ``ngff_kind`` / ``ngff_label_names``: what a folder is, from its
  ``.zattrs`` (zarr 2) or ``zarr.json`` (zarr 3, NGFF 0.5 keeps the metadata under ``ome``)
  alone, without opening arrays. Every place that asks "is this an OME-Zarr image or label
  image?" calls these (``io.wsi.is_image_file``, ``io.collection``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CancelledError, InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from ._atomic import atomic_path, atomic_writer
from .image import ImagePyramid
from .wsi import downsample2, unit_to_um

NGFF_VERSION = "0.4"

# --------------------------------------------------------------------------- sniff


def ngff_attrs(path: str | os.PathLike) -> dict:
    """The NGFF attributes of the zarr group at ``path`` (``{}`` when it has none or they do not
    parse): ``.zattrs`` (zarr 2) or the ``attributes`` of ``zarr.json`` (zarr 3), with an
    NGFF 0.5 ``ome`` block unwrapped."""
    p = Path(path)
    for name in (".zattrs", "zarr.json"):
        f = p / name
        if f.is_file():
            try:
                attrs = json.loads(f.read_text())
            except (OSError, ValueError):
                return {}
            if not isinstance(attrs, dict):
                return {}
            attrs = attrs.get("attributes", attrs)
            return attrs.get("ome", attrs)
    return {}


def ngff_kind(path: str | os.PathLike) -> str | None:
    """``'labels'`` (an ``image-label`` multiscale), ``'image'`` (another multiscale) or ``None``
    (not an OME-Zarr image)."""
    attrs = ngff_attrs(path)
    if "multiscales" not in attrs:
        return None
    return "labels" if "image-label" in attrs else "image"


def is_ngff(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding an NGFF multiscale image (or label image)."""
    return Path(path).is_dir() and ngff_kind(path) is not None


def ngff_label_names(path: str | os.PathLike) -> list[str]:
    """Names of the label images under ``<path>/labels`` that exist on disk (NGFF order)."""
    p = Path(path)
    return [str(n) for n in ngff_attrs(p / "labels").get("labels", [])
            if (p / "labels" / str(n)).is_dir()]


# --------------------------------------------------------------------------- OME-Zarr write


def _axes_meta(axes: str, unit: bool = True) -> list[dict]:
    """NGFF axes; ``unit=False`` (µm/px unknown): space axes without a unit."""
    out = []
    for a in axes:
        if a == "c":
            out.append({"name": "c", "type": "channel"})
        else:
            out.append({"name": a, "type": "space", **({"unit": "micrometer"} if unit else {})})
    return out


def _labels_block(block: np.ndarray, target: Path, out_dtype: np.dtype) -> np.ndarray:
    if block.dtype.kind == "b":
        return block.astype(np.uint8)
    if block.dtype.kind in "iu":
        return block
    if block.dtype.kind == "f":
        if np.isnan(block).any():
            raise InputError(target, "labels contain NaN; a label image needs integer ids")
        if not np.array_equal(block, np.round(block)):
            raise InputError(target, "labels are not integers (fractional values found)")
        if block.size and (block.min() < np.iinfo(out_dtype).min
                           or block.max() > np.iinfo(out_dtype).max):
            raise InputError(target, f"label ids do not fit {out_dtype}")
        return block.astype(out_dtype)
    raise InputError(target, f"labels must be an integer array, got dtype {block.dtype}")


def _row_chunk(data: Any) -> int:
    chunks = getattr(data, "chunks", None)
    if chunks is None:
        return 0
    first = chunks[-2] if isinstance(chunks[0], int) else chunks[-2][0]
    return int(first if isinstance(first, int | np.integer) else max(first))


def _band(data: Any, y0: int, y1: int) -> np.ndarray:
    b = data[..., y0:y1, :]
    return np.asarray(b.compute() if hasattr(b, "compute") else b)


def _level_shapes(shape: tuple[int, ...], n_levels: int | None, chunk: int) -> list[tuple]:
    shapes = [tuple(shape)]
    while True:
        h, w = shapes[-1][-2:]
        if n_levels is not None:
            if len(shapes) >= n_levels:
                break
        elif max(h, w) <= chunk:
            break
        if min(h, w) <= 1:
            break
        shapes.append(tuple(shape[:-2]) + (math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _downsample_band(block: np.ndarray, how: str) -> np.ndarray:
    """Halve the last two axes of a (..., Y, X) block."""
    if block.ndim == 2:
        return downsample2(block, how)
    moved = np.moveaxis(block, 0, -1)
    return np.ascontiguousarray(np.moveaxis(downsample2(moved, how), -1, 0))


def _write_multiscale(group: Any, data: Any, *, target: Path, kind: str, axes: str,
                      scale_um: tuple[float, float] | None, n_levels: int | None, chunk: int,
                      name: str, progress: ProgressFn | None, cancel: CancelFlag | None,
                      extra_attrs: dict | None = None) -> list[tuple]:
    import numcodecs

    labels = kind == "labels"
    dtype = np.dtype(data.dtype)
    if labels:
        out_dtype = np.dtype(np.uint8) if dtype.kind == "b" else (
            dtype if dtype.kind in "iu" else np.dtype(np.int32))
    else:
        out_dtype = dtype
    shapes = _level_shapes(tuple(data.shape), n_levels, chunk)
    ch = data.shape[0] if data.ndim == 3 else None
    zchunks = ((ch if ch <= 4 else 1,) if ch else ()) + (chunk, chunk)
    compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    band0 = chunk * max(1, math.ceil(_row_chunk(data) / chunk))
    n_bands = [math.ceil(s[-2] / (band0 if i == 0 else chunk)) for i, s in enumerate(shapes)]
    total, done = sum(n_bands), 0
    how = "nearest" if labels else "mean"
    arrays = []
    for lvl, shp in enumerate(shapes):
        z = group.create_array(str(lvl), shape=shp, chunks=tuple(min(c, s) for c, s in
                                                                 zip(zchunks, shp, strict=True)),
                               dtype=out_dtype, compressors=compressor, fill_value=0,
                               chunk_key_encoding={"name": "v2", "separator": "/"})
        arrays.append(z)
        step = band0 if lvl == 0 else chunk
        for y0 in range(0, shp[-2], step):
            check_cancel(cancel, "writing OME-Zarr")
            y1 = min(shp[-2], y0 + step)
            if lvl == 0:
                block = _band(data, y0, y1)
            else:
                prev = arrays[lvl - 1]
                block = _downsample_band(np.asarray(prev[..., 2 * y0:2 * y1, :]), how)
            if labels:
                block = _labels_block(block, target, out_dtype)
            elif block.dtype != out_dtype:
                block = block.astype(out_dtype)
            z[..., y0:y1, :] = block
            done += 1
            report(progress, done, total, f"writing OME-Zarr level {lvl}")
    known = scale_um is not None
    scale_um = scale_um if known else (1.0, 1.0)
    datasets = []
    for lvl in range(len(shapes)):
        f = 2.0 ** lvl
        scale = ([1.0] if ch else []) + [float(scale_um[0]) * f, float(scale_um[1]) * f]
        datasets.append({"path": str(lvl),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    attrs: dict[str, Any] = {"multiscales": [{
        "version": NGFF_VERSION, "name": name, "axes": _axes_meta(axes, unit=known), "datasets": datasets,
        "type": "nearest" if labels else "mean",
        "metadata": {"method": "napari_stexp.io.ome_zarr.write_ome_zarr",
                     "description": "nearest neighbour (every 2nd pixel)" if labels
                     else "2x2 mean"},
    }]}
    if ch == 3 and not labels and out_dtype == np.uint8:
        attrs["omero"] = {"rdefs": {"model": "color"}, "channels": [
            {"label": lab, "color": col, "active": True, "window":
             {"start": 0, "end": 255, "min": 0, "max": 255}}
            for lab, col in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))]}
    if extra_attrs:
        attrs.update(extra_attrs)
    group.attrs.update(attrs)
    return shapes


def _prepare(data: Any, target: Path, kind: str, axes: str) -> tuple[Any, str]:
    if kind not in ("image", "labels"):
        raise InputError(target, f"kind must be 'image' or 'labels', got {kind!r}")
    axes = axes.lower()
    if axes not in ("yx", "cyx", "yxc"):
        raise InputError(target, f"axes must be 'yx', 'cyx' or 'yxc', got {axes!r}")
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    if kind == "labels" and (len(data.shape) != 2 or axes != "yx"):
        raise InputError(target, f"labels must be a 2-D (Y, X) array, got shape "
                                 f"{tuple(data.shape)} with axes {axes!r}")
    if len(data.shape) != len(axes):
        raise InputError(target, f"data shape {tuple(data.shape)} does not match axes {axes!r}")
    if min(data.shape[-2:] if axes != "yxc" else data.shape[:2]) < 1:
        raise InputError(target, f"empty image of shape {tuple(data.shape)}")
    if kind == "labels" and np.dtype(data.dtype).kind not in "biuf":
        raise InputError(target, f"labels must be an integer array, got dtype {data.dtype}")
    if kind == "image" and np.dtype(data.dtype).kind not in "biuf":
        raise InputError(target, f"image dtype {data.dtype} cannot be stored in OME-Zarr")
    if axes == "yxc":
        data = data.transpose(2, 0, 1)
        axes = "cyx"
    return data, axes


def _check_scale(target: Path, scale_um: Any) -> tuple[float, float]:
    try:
        sy, sx = (float(v) for v in scale_um)
    except (TypeError, ValueError) as exc:
        raise InputError(target, f"scale_um must be (y, x) micrometres, got {scale_um!r}"
                         ) from exc
    if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
        raise InputError(target, f"scale_um must be positive, got {scale_um!r}")
    return sy, sx


def write_ome_zarr(
    path: str | os.PathLike,
    data: Any,
    *,
    kind: str = "image",
    scale_um: tuple[float, float] | None = (1.0, 1.0),
    axes: str = "yx",
    name: str | None = None,
    n_levels: int | None = None,
    chunks: int = 256,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
) -> Path:
    """Write a 2-D image, gene map or label image as an NGFF v0.4 OME-Zarr pyramid, atomically.

    ``data``: numpy or dask array (dask is written band by band: bounded memory) with ``axes``
    'yx', 'cyx' or 'yxc' (stored as 'cyx', as NGFF requires channel before space).
    ``scale_um``: (y, x) µm per pixel at level 0 (``None``: µm/px unknown, written as a
    unit-less scale of 1 so it reopens as unknown); level k has 2**k times that. Levels halve
    until the image fits one chunk (or ``n_levels``). ``kind='labels'``: integer ids (bool ->
    uint8; integral floats -> int32; NaN or fractional values -> InputError), nearest-neighbour
    pyramid and ``image-label`` metadata so napari opens it as a Labels layer.
    """
    import zarr

    target = Path(path)
    data, axes = _prepare(data, target, kind, axes)
    scale = None if scale_um is None else _check_scale(target, scale_um)
    name = name or target.name.split(".")[0]
    extra = {"image-label": {"version": NGFF_VERSION}} if kind == "labels" else None
    with atomic_writer(target, "OME-Zarr", directory=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        _write_multiscale(root, data, target=target, kind=kind, axes=axes, scale_um=scale,
                          n_levels=n_levels, chunk=int(chunks), name=name,
                          progress=progress, cancel=cancel, extra_attrs=extra)
    return target


def add_ome_zarr_labels(
    image_path: str | os.PathLike,
    labels: Any,
    name: str,
    *,
    n_levels: int | None = None,
    chunks: int = 256,
    colors: dict[int, tuple[float, float, float, float]] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
) -> Path:
    """Add a label image under ``<image>.zarr/labels/<name>`` (the NGFF labels layout).

    The labels must have the image's (Y, X) shape; they get the image's µm scale. ``colors``
    maps label id -> RGBA in 0..1 (stored as NGFF ``image-label`` colours). Atomic per label
    image; returns the label group's path.
    """
    import zarr

    root_path = Path(image_path)
    img = read_ome_zarr(root_path)
    target = root_path / "labels" / name
    data, _ = _prepare(labels, target, "labels", "yx")
    if tuple(data.shape) != (img.height, img.width):
        raise InputError(target, f"labels shape {tuple(data.shape)} differs from the image's "
                                 f"(Y, X) = {(img.height, img.width)}")
    mpp = img.metadata.get("scale_um") if img.mpp is not None else None  # None: unknown
    label_attrs: dict[str, Any] = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    if colors:
        label_attrs["colors"] = [
            {"label-value": int(k), "rgba": [int(round(255 * c)) for c in v]}
            for k, v in sorted(colors.items())]
    labels_dir = root_path / "labels"
    try:
        if not labels_dir.exists():
            zarr.open_group(str(labels_dir), mode="w", zarr_format=2)
        with atomic_path(target, directory=True) as tmp:
            g = zarr.open_group(str(tmp), mode="w", zarr_format=2)
            _write_multiscale(g, data, target=target, kind="labels", axes="yx",
                              scale_um=None if mpp is None else tuple(mpp), n_levels=n_levels, chunk=int(chunks),
                              name=name, progress=progress, cancel=cancel,
                              extra_attrs={"image-label": label_attrs})
        zattrs = labels_dir / ".zattrs"
        attrs = json.loads(zattrs.read_text()) if zattrs.exists() else {}
        names = [n for n in attrs.get("labels", []) if n != name] + [name]
        attrs["labels"] = names
        with atomic_path(zattrs) as tmpf:
            tmpf.write_text(json.dumps(attrs, indent=2))
    except (InputError, CancelledError):
        raise
    except Exception as exc:
        raise InputError(target, f"cannot write labels ({type(exc).__name__}: {exc})") from exc
    return target


# --------------------------------------------------------------------------- OME-Zarr read


def _group_attrs(group: Any) -> dict:
    """The NGFF attributes of an open zarr group (NGFF 0.5 ``ome`` block unwrapped)."""
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)


def read_ome_zarr(path: str | os.PathLike, *, labels: str | None = None) -> ImagePyramid:
    """Open an NGFF (0.4/0.5) multiscale image lazily as an :class:`ImagePyramid`.

    ``labels`` opens ``<path>/labels/<labels>`` instead. Levels are (Y, X[, C]) dask arrays
    (channel moved last; t/z keep index 0); ``mpp`` comes from the x-axis scale and unit.
    """
    import dask.array as da
    import zarr

    p = Path(path)
    if labels:
        p = p / "labels" / labels
    if not p.exists():
        raise InputError(p, "OME-Zarr not found")
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as exc:
        raise InputError(p, f"not a zarr group ({type(exc).__name__}: {exc})") from exc
    try:
        attrs = _group_attrs(group)
        ms = attrs.get("multiscales")
        if not ms:
            raise InputError(p, "no NGFF 'multiscales' metadata (not an OME-Zarr image)")
        m = ms[0]
        raw_axes = m.get("axes") or ["t", "c", "z", "y", "x"][-len(
            group[m["datasets"][0]["path"]].shape):]
        names = [a["name"] if isinstance(a, dict) else str(a) for a in raw_axes]
        units = [a.get("unit") if isinstance(a, dict) else None for a in raw_axes]
        if "y" not in names or "x" not in names:
            raise InputError(p, f"NGFF axes {names} have no y/x")
        global_scale = _scale_of(m.get("coordinateTransformations"), len(names))
        levels, scales = [], []
        for d in m["datasets"]:
            arr = group[d["path"]]
            levels.append(da.from_zarr(arr))
            sc = _scale_of(d.get("coordinateTransformations"), len(names))
            scales.append([a * b for a, b in zip(sc, global_scale, strict=True)])
        iy, ix = names.index("y"), names.index("x")
        out = []
        for arr in levels:
            index = [slice(None) if n in ("y", "x", "c") else 0 for n in names]
            kept = [n for n in names if n in ("y", "x", "c")]
            a = arr[tuple(index)]
            order = [kept.index("y"), kept.index("x")] + ([kept.index("c")] if "c" in kept
                                                          else [])
            a = a.transpose(order)
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[..., 0]
            out.append(a)
        per = unit_to_um(units[ix])
        if per is None and units[ix] is None and scales[0][ix] != 1.0:
            per = 1.0
        mpp = scales[0][ix] * per if per else None
        downsamples = [s[iy] / scales[0][iy] for s in scales]
        kind = "labels" if "image-label" in attrs else "image"
        meta = {"format": "ome-zarr", "kind": kind, "axes": "".join(names),
                "ngff_version": m.get("version", attrs.get("version")),
                "scale_um": (scales[0][iy] * (per or 1.0), scales[0][ix] * (per or 1.0)),
                "layout": ("grey" if out[0].ndim == 2 else
                           {3: "rgb", 4: "rgba"}.get(out[0].shape[-1], "multichannel")),
                "mpp_source": "ngff" if mpp else None}
        if "labels" in group:
            meta["labels"] = list(_group_attrs(group["labels"]).get("labels", []))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(p, f"cannot read OME-Zarr ({type(exc).__name__}: {exc})") from exc
    name = m.get("name") or p.name.split(".")[0]
    return ImagePyramid(levels=out, path=str(p), name=str(name), mpp=mpp,
                        downsamples=downsamples, metadata=meta)


def _scale_of(transforms: list | None, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=True)]
    return scale

