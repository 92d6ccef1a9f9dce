"""A collection of slides/sections to click through (no Qt): what is there, cheaply, and one
slide's data on demand.

:class:`SlideCollection` is built from one or more paths -- a her2st folder, a Visium folder,
``.h5ad`` files, image files, or any folder of such files (e.g. a batch output folder with
per-slide ``<name>.h5ad`` and ``<name>.ome.zarr``) -- and lists one :class:`SlideItem` per
slide/section with its patient/batch and what is available for it (``FLAGS``).

Listing is cheap: no pyramid is opened and no count matrix is read. her2st uses its manifest and
file names, Visium the matrix attributes, ``.h5ad`` files are inspected with h5py (obs columns,
``obsm``/``layers`` keys, ``uns['spatial']``), image files only by name. Data are read by
:meth:`SlideCollection.load`, one slide at a time; AnnData objects (small) are kept in a bounded
LRU cache, image pyramids never are -- the caller drops them when it moves on. Thumbnails come
from the coarsest pyramid level (or a drawing of the spot positions when a slide has no image)
and are cached on disk, keyed by source path + mtime + size.

Files of one folder (or of several given paths) are grouped into one slide by name:
``S.h5ad`` + ``S.ome.zarr`` (or ``S.tif``) + ``S_cells.ome.zarr`` are the expression/results,
image and cell masks of slide ``S``. Suffixes ``_cells``/``_labels``/``_mask(s)``/``_seg``
mark cell masks; ``_pred``/``_predicted``/``_predictions``, ``_classes`` and ``_embeddings``
mark extra result tables merged into the slide's AnnData (by ``obs_names``).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ._atomic import atomic_path
from .image import ImagePyramid
from .layers import CATEGORY_COLORS, LayerDataTuple, image_layer, spots_layer
from .ome_zarr import ngff_kind, ngff_label_names

#: What a slide can have (the navigator shows these).
FLAGS = ("image", "expression", "labels", "predictions", "classes", "cells", "embeddings")
#: Short names for compact displays.
FLAG_SHORT = {"image": "img", "expression": "expr", "labels": "lbl", "predictions": "pred",
              "classes": "cls", "cells": "cells", "embeddings": "emb"}

#: Distinct colours for categories (labels, classes): napari's default cycle has two.
_H5AD = ".h5ad"
_ROLE_PATTERNS = {
    "cells": re.compile(r"[._-](cells?|labels?|masks?|seg|segmentation)$", re.I),
    "predictions": re.compile(r"[._-](pred|predicted|predictions?)$", re.I),
    "classes": re.compile(r"[._-](class|classes|classified)$", re.I),
    "embeddings": re.compile(r"[._-](embed|embeddings?|latent)$", re.I),
}
#: obs columns that can say which section a spot belongs to (same order as io.h5ad).
_SECTION_COLUMNS = ("section", "library_id", "library", "sample", "batch")
_THUMB_VERSION = "1"


# ----------------------------------------------------------------------------- items


@dataclass
class SlideItem:
    """One slide/section of a collection and what is available for it (cheap to build).

    ``kind`` says how to read it: ``her2st`` (``source`` = dataset root, ``section``), ``visium``
    (``source`` = Space Ranger folder), ``h5ad`` (``h5ads``, optional ``image``/``cells``),
    ``image`` (``image``, optional ``cells``) or ``memory`` (AnnData/pyramid already in memory).
    """

    name: str
    kind: str
    source: str | None = None
    section: str | None = None
    patient: str | None = None
    batch: str | None = None
    image: str | None = None
    h5ads: list[str] = field(default_factory=list)
    cells: str | None = None
    flags: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(FLAGS, False))
    info: dict[str, Any] = field(default_factory=dict)

    def has(self, flag: str) -> bool:
        return bool(self.flags.get(flag, False))

    @property
    def available(self) -> list[str]:
        """The flags that are true, in ``FLAGS`` order."""
        return [f for f in FLAGS if self.flags.get(f)]

    def describe(self, short: bool = False) -> str:
        names = [FLAG_SHORT[f] if short else f for f in self.available]
        return " · ".join(names) if names else "nothing readable"

    def files(self) -> list[Path]:
        """The files this slide's data come from (used for thumbnail cache keys)."""
        out = [self.image, *self.h5ads, self.cells, self.info.get("spots_file"),
               self.info.get("thumb_image")]
        return [Path(p) for p in out if p]


@dataclass
class SlideData:
    """One slide's data, opened: AnnData (or None), image and cell-mask pyramids (lazy)."""

    item: SlideItem
    adata: Any = None
    image: ImagePyramid | None = None
    cells: ImagePyramid | None = None
    messages: list[str] = field(default_factory=list)

    def layers(self, *, image_cache: bool = False) -> list[LayerDataTuple]:
        """Layer tuples (image, cells, spots), each with ``metadata['section'|'kind']``.

        ``image_cache=False`` keeps napari's global dask cache out of it: the readers cache
        decoded data themselves and that cache goes away with the slide.
        """
        name = self.item.name
        out: list[LayerDataTuple] = []
        if self.image is not None:
            title = f"{name} H&E" if self.adata is not None else name
            data, attrs, ltype = image_layer(self.image, title, cache=image_cache)
            attrs["metadata"].update(section=name, kind="image")
            out.append((data, attrs, ltype))
        if self.cells is not None:
            data, attrs, _ = image_layer(self.cells, f"{name} cells", cache=image_cache)
            attrs.pop("rgb", None)
            attrs["opacity"] = 0.5
            attrs["metadata"].update(section=name, kind="cells")
            out.append((data, attrs, "labels"))
        if self.adata is not None and "spatial" in self.adata.obsm:
            data, attrs, ltype = spots_layer(self.adata, f"{name} spots",
                                             section=self.item.section,
                                             face_color_cycle=CATEGORY_COLORS)
            attrs["metadata"].update(section=name, kind="spots", adata=self.adata)
            out.append((data, attrs, ltype))
        return out


# ----------------------------------------------------------------------------- collection


class SlideCollection:
    """Slides/sections from one or more paths; cheap listing, one-slide loading, thumbnails."""

    def __init__(self, items: Sequence[SlideItem], *, cache_dir: str | os.PathLike | None = None,
                 adata_cache: int = 8, sources: Sequence[str] = ()):
        self.items: list[SlideItem] = _unique_names(list(items))
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.sources = [str(s) for s in sources]
        self._adata_cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # workers read slides while the GUI thread may, too
        self._adata_cache_size = int(adata_cache)
        self._memory: dict[str, tuple[Any, Any]] = {}

    # -- construction
    @classmethod
    def from_paths(cls, paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                   cache_dir: str | os.PathLike | None = None) -> SlideCollection:
        """List the slides in ``paths`` (folders, dataset folders, files). InputError if none."""
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        paths = [Path(p) for p in paths]
        if not paths:
            raise InputError(None, "no path given")
        for p in paths:
            if not p.exists():
                raise InputError(p, "no such file or folder")
        items = list_slides(paths)
        if not items:
            src = paths[0] if len(paths) == 1 else ", ".join(map(str, paths))
            raise InputError(src, "no slides found (expected images, .h5ad files, a her2st or "
                                  "Visium folder, or a folder of those)")
        return cls(items, cache_dir=cache_dir, sources=[str(p) for p in paths])

    @classmethod
    def from_adatas(cls, adatas: dict[str, Any], images: dict[str, Any] | None = None, *,
                    cache_dir: str | os.PathLike | None = None) -> SlideCollection:
        """A collection of sections already in memory (e.g. what the loader put in the session)."""
        images = images or {}
        items = []
        names = list(dict.fromkeys([*adatas, *images]))
        for name in names:
            ad = adatas.get(name)
            pyr = images.get(name)
            item = SlideItem(name=str(name), kind="memory", section=None)
            if ad is not None:
                _flags_from_adata(item, ad)
                from .spatial import library_id

                item.section = library_id(ad, str(name)) or library_id(ad)
            if pyr is not None:
                item.flags["image"] = True
                item.info["image_size"] = (int(pyr.height), int(pyr.width))
            items.append(item)
        coll = cls(items, cache_dir=cache_dir)
        coll._memory = {str(n): (adatas.get(n), images.get(n)) for n in names}
        return coll

    # -- container protocol
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, key: int | str) -> SlideItem:
        if isinstance(key, str):
            return self.items[self.index(key)]
        return self.items[key]

    @property
    def names(self) -> list[str]:
        return [it.name for it in self.items]

    def index(self, name: str) -> int:
        for i, it in enumerate(self.items):
            if it.name == name:
                return i
        raise KeyError(f"no slide named {name!r}; available: {', '.join(self.names)}")

    def table(self) -> pd.DataFrame:
        """One row per slide: name, kind, patient, batch, one boolean column per flag."""
        rows = [{"name": it.name, "kind": it.kind, "patient": it.patient, "batch": it.batch,
                 **{f: it.has(f) for f in FLAGS}} for it in self.items]
        return pd.DataFrame(rows, columns=["name", "kind", "patient", "batch", *FLAGS])

    # -- reading
    def read_adata(self, key: int | str | SlideItem) -> Any:
        """The slide's AnnData (LRU-cached; None for image-only slides)."""
        item = key if isinstance(key, SlideItem) else self[key]
        if item.kind == "memory":
            return self._memory.get(item.name, (None, None))[0]
        with self._lock:
            if item.name in self._adata_cache:
                self._adata_cache.move_to_end(item.name)
                return self._adata_cache[item.name]
        ad = _read_adata(item)
        with self._lock:
            if ad is not None and self._adata_cache_size > 0:
                ad = self._adata_cache.setdefault(item.name, ad)
                self._adata_cache.move_to_end(item.name)
                while len(self._adata_cache) > self._adata_cache_size:
                    self._adata_cache.popitem(last=False)
        return ad

    def load(self, key: int | str | SlideItem, *, image: bool = True) -> SlideData:
        """Open one slide: AnnData, and (``image=True``) its image and cell-mask pyramids."""
        item = key if isinstance(key, SlideItem) else self[key]
        out = SlideData(item=item)
        try:
            out.adata = self.read_adata(item)
        except InputError as exc:
            if item.kind in ("her2st", "visium") or not (item.image or item.cells):
                raise
            out.messages.append(str(exc))
        if not image:
            return out
        if item.kind == "memory":
            out.image = self._memory.get(item.name, (None, None))[1]
        elif item.image:
            from .wsi import open_image

            out.image = open_image(item.image)
            if out.adata is not None and not out.image.mpp:
                from .frame import mpp_of

                out.image.set_mpp(mpp_of(out.adata, item.section), "spots")
        elif out.adata is not None and item.has("image"):
            from .st import section_image

            out.image = section_image(out.adata, item.section)
        if item.cells:
            out.cells = _open_cells(item)
            ref = out.image
            if ref is not None and ref.mpp and not out.cells.mpp:
                out.cells.set_mpp(ref.mpp, ref.mpp_source)
        return out

    # -- thumbnails
    def thumbnail(self, key: int | str | SlideItem, max_size: int = 128) -> np.ndarray:
        """A small RGB(A) overview (uint8), from the disk cache when the sources are unchanged."""
        item = key if isinstance(key, SlideItem) else self[key]
        if item.kind == "memory":
            return _make_thumbnail(item, max_size, memory=self._memory.get(item.name))
        path = self.cache_dir / f"{thumbnail_key(item, max_size)}.png"
        if path.is_file():
            try:
                from PIL import Image

                with Image.open(path) as im:
                    return np.asarray(im.convert("RGB"))
            except OSError:
                pass  # unreadable cache entry: recompute and overwrite
        thumb = _make_thumbnail(item, max_size)
        try:
            from PIL import Image

            with atomic_path(path) as tmp:
                Image.fromarray(thumb[..., :3] if thumb.ndim == 3 else thumb).save(tmp,
                                                                                   format="PNG")
        except OSError as exc:  # a read-only cache must not stop the navigator
            warnings.warn(f"{path}: cannot write thumbnail cache ({exc})", stacklevel=2)
        return thumb


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


# ----------------------------------------------------------------------------- listing


def list_slides(paths: Sequence[str | os.PathLike]) -> list[SlideItem]:
    """Slide items for ``paths``: datasets expand to their sections, files are grouped by name."""
    from .st import detect_st_kind

    items: list[SlideItem] = []
    files: list[tuple[Path, str]] = []  # (file, batch)
    for p in map(Path, paths):
        kind = detect_st_kind(p)
        if kind == "her2st":
            items += _her2st_items(p)
        elif kind == "visium":
            items.append(_visium_item(p))
        elif p.is_dir() and not _is_image_path(p):
            items += _folder_items(p, files, depth=0)
        else:
            files.append((p, p.parent.name))
    return items + _bundle_items(files)


def _folder_items(folder: Path, files: list[tuple[Path, str]], depth: int) -> list[SlideItem]:
    """Datasets inside ``folder`` become items; loose files are collected for grouping."""
    from .st import detect_st_kind

    items: list[SlideItem] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name.startswith("~"):
            continue  # hidden files, atomic-write temporaries
        if p.is_dir():
            kind = detect_st_kind(p)
            if kind == "her2st":
                items += _her2st_items(p)
            elif kind == "visium":
                items.append(_visium_item(p))
            elif _is_image_path(p):
                files.append((p, folder.name))
            elif depth < 1:
                items += _folder_items(p, files, depth + 1)
        elif p.name.lower().endswith(_H5AD) or _is_image_path(p):
            files.append((p, folder.name))
    return items


def _is_image_path(p: Path) -> bool:
    from .wsi import is_image_file

    try:
        return is_image_file(p)
    except OSError:
        return False


def _strip_suffix(name: str) -> str:
    from .wsi import IMAGE_SUFFIXES

    low = name.lower()
    for s in sorted((*IMAGE_SUFFIXES, _H5AD), key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def _role(stem: str) -> tuple[str, str | None]:
    """``(base name, role)``: ``S_cells`` -> ``('S', 'cells')``; plain names have role None."""
    for role, pat in _ROLE_PATTERNS.items():
        m = pat.search(stem)
        if m and m.start() > 0:
            return stem[: m.start()], role
    return stem, None


def _bundle_items(files: list[tuple[Path, str]]) -> list[SlideItem]:
    """Group loose files by slide name into items (h5ad + image + cells + extra tables)."""
    groups: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def group(name: str, batch: str) -> dict[str, Any]:
        return groups.setdefault(name, {"batch": batch, "h5ads": [], "extra": [], "image": None,
                                        "cells": None, "cells_labels": None,
                                        "h5ad_meta": []})

    for p, batch in files:
        stem = _strip_suffix(p.name)
        base, role = _role(stem)
        if p.name.lower().endswith(_H5AD):
            try:
                meta = h5ad_metadata(p)
            except InputError as exc:
                warnings.warn(str(exc), stacklevel=3)
                continue
            sections = meta["sections"]
            if role is not None:
                g = group(base, batch)
                g["extra"].append(str(p))
                g["h5ad_meta"].append((meta, None))
            elif len(sections) <= 1:
                g = group(stem, batch)
                g["h5ads"].append(str(p))
                g["h5ad_meta"].append((meta, sections[0] if sections else None))
            else:
                for sec in sections:
                    g = group(sec, batch)
                    g["h5ads"].append(str(p))
                    g["h5ad_meta"].append((meta, sec))
            continue
        kind = ngff_kind(p) if p.is_dir() else None
        if role == "cells" or kind == "labels":
            g = group(base if role == "cells" else stem, batch)
            g["cells"] = str(p)
        else:
            g = group(stem, batch)
            if g["image"] is None:
                g["image"] = str(p)
            labels = ngff_label_names(p) if kind == "image" else []
            if labels and g["cells"] is None:
                g["cells"], g["cells_labels"] = str(p), labels[0]

    items = []
    for name, g in groups.items():
        if not (g["h5ads"] or g["image"] or g["cells"] or g["extra"]):
            continue
        item = SlideItem(name=name, kind="h5ad" if (g["h5ads"] or g["extra"]) else "image",
                         batch=g["batch"],
                         image=g["image"], cells=g["cells"],
                         h5ads=list(dict.fromkeys(g["h5ads"] + g["extra"])))
        if g["cells_labels"]:
            item.info["cells_labels"] = g["cells_labels"]
        item.source = item.h5ads[0] if item.h5ads else (item.image or item.cells)
        for meta, sec in g["h5ad_meta"]:
            _merge_h5ad_flags(item, meta, sec)
        if not item.h5ads and item.image is None:
            item.kind = "image"
        if g["image"]:
            item.flags["image"] = True
        if g["cells"]:
            item.flags["cells"] = True
        if item.kind == "h5ad" and item.section is None:
            secs = [sec for meta, sec in g["h5ad_meta"] if sec is not None]
            item.section = secs[0] if secs else None
        items.append(item)
    return items


def _merge_h5ad_flags(item: SlideItem, meta: dict, section: str | None) -> None:
    per = meta["per_section"].get(section, meta["per_section"].get(None, {}))
    for f in FLAGS:
        item.flags[f] = item.flags[f] or bool(per.get(f, meta["flags"].get(f, False)))
    if item.patient is None:
        item.patient = per.get("patient") or meta.get("patient")
    for key in ("n_spots", "n_genes"):
        if key in per and key not in item.info:
            item.info[key] = per[key]
    for key in ("classes", "embeddings"):
        item.info[key] = sorted(set(item.info.get(key, [])) | set(meta.get(key, [])))
    if meta.get("image_path") and not item.image:
        item.info["thumb_image"] = meta["image_path"]


def _her2st_items(path: Path) -> list[SlideItem]:
    from .her2st import find_her2st_root, list_her2st_sections

    root = find_her2st_root(path)
    table = list_her2st_sections(root)
    extra = pd.DataFrame()
    if (root / "sections.csv").is_file():
        try:
            extra = pd.read_csv(root / "sections.csv", dtype=str, keep_default_na=False)
            extra = extra.set_index("section")
        except (OSError, ValueError, KeyError):
            extra = pd.DataFrame()
    items = []
    for row in table.itertuples():
        sec = str(row.section)
        image = row.image if isinstance(row.image, str) and Path(row.image).is_file() else None
        labels = row.labels if isinstance(row.labels, str) and Path(row.labels).is_file() \
            else None
        item = SlideItem(name=sec, kind="her2st", source=str(root), section=sec,
                         patient=str(row.patient), batch=root.name)
        item.flags.update(image=image is not None, labels=labels is not None,
                          expression=Path(row.counts).is_file())
        item.info["spots_file"] = str(row.spots)
        if image:
            item.info["thumb_image"] = image
        if sec in extra.index:
            e = extra.loc[sec]
            for key, col in (("n_spots", "n_spots_counts"), ("n_genes", "n_genes")):
                v = str(e.get(col, "")).strip()
                if v.isdigit():
                    item.info[key] = int(v)
            w, h = str(e.get("image_width", "")).strip(), str(e.get("image_height", "")).strip()
            if image and w.isdigit() and h.isdigit():
                item.info["image_size"] = (int(h), int(w))
        items.append(item)
    return items


def _visium_item(path: Path) -> SlideItem:
    import h5py

    from .visium import MATRIX_FILES, find_visium_root

    root = find_visium_root(path)
    lib = root.parent.name if root.name == "outs" else root.name
    n_spots = n_genes = None
    try:
        with h5py.File(root / MATRIX_FILES[0], "r") as f:
            ids = f.attrs.get("library_ids")
            if ids is not None and len(np.atleast_1d(ids)):
                v = np.atleast_1d(ids)[0]
                lib = v.decode() if isinstance(v, bytes) else str(v)
            if "matrix" in f and "shape" in f["matrix"]:
                n_genes, n_spots = (int(v) for v in f["matrix"]["shape"][()])
    except OSError as exc:
        raise InputError(root / MATRIX_FILES[0], f"cannot read the matrix header ({exc})") from exc
    item = SlideItem(name=lib, kind="visium", source=str(root), section=lib, patient=lib,
                     batch=root.name)
    spatial = root / "spatial"
    imgs = [spatial / f"tissue_{r}_image.png" for r in ("lowres", "hires")]
    imgs = [p for p in imgs if p.is_file()]
    item.flags.update(expression=True, image=bool(imgs))
    if imgs:
        item.info["thumb_image"] = str(imgs[0])
    item.info.update(n_spots=n_spots, n_genes=n_genes)
    return item


def _unique_names(items: list[SlideItem]) -> list[SlideItem]:
    seen: dict[str, int] = {}
    for it in items:
        seen[it.name] = seen.get(it.name, 0) + 1
    for it in items:
        if seen[it.name] > 1:
            it.name = f"{it.batch or it.kind}:{it.name}"
    final: dict[str, int] = {}
    for it in items:
        n = final.get(it.name, 0)
        final[it.name] = n + 1
        if n:
            it.name = f"{it.name}#{n + 1}"
    return items


# ----------------------------------------------------------------------------- h5ad metadata


def h5ad_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What an ``.h5ad`` holds, read with h5py (obs columns, keys; no matrix is loaded).

    Returns ``sections`` (values of the section column, or ``[]``), overall ``flags``,
    ``per_section`` flags (``labels``, ``classes``, ``n_spots``, ``patient``), ``classes``
    (``*_class`` columns), ``embeddings`` (``obsm['X_*']`` keys) and ``image_path``.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"cannot read h5ad (corrupt or truncated?): {exc}") from exc
    with f:
        if "obs" not in f or not isinstance(f["obs"], h5py.Group):
            return _h5ad_metadata_legacy(path)
        return _h5ad_metadata_h5py(path, f)


def _read_obs_column(f, name: str) -> np.ndarray | None:
    from anndata.io import read_elem

    obs = f["obs"]
    if name not in obs:
        return None
    try:
        v = read_elem(obs[name])
    except Exception:  # noqa: BLE001 - an odd column must not stop the listing
        return None
    return np.asarray(pd.Series(v).astype(object).where(pd.Series(v).notna(), None))


def _h5ad_metadata_h5py(path: Path, f) -> dict[str, Any]:
    obs = f["obs"]
    columns = [str(c) for c in obs.attrs.get("column-order", [])] or \
        [k for k in obs.keys() if k != obs.attrs.get("_index", "_index")]
    index_key = obs.attrs.get("_index", "_index")
    n_obs = int(obs[index_key].shape[0]) if index_key in obs else 0
    import h5py

    var = f.get("var")
    n_vars = 0
    if isinstance(var, h5py.Group):
        vkey = var.attrs.get("_index", "_index")
        n_vars = int(var[vkey].shape[0]) if vkey in var else 0
    has_x = "X" in f and n_vars > 0
    layers = list(f["layers"].keys()) if "layers" in f else []
    obsm = list(f["obsm"].keys()) if "obsm" in f else []
    uns = f.get("uns")
    spatial = uns.get("spatial") if uns is not None else None
    stexp = uns.get("napari_stexp") if uns is not None else None
    task = ""
    if stexp is not None:
        for key in ("task", "kind", "model"):
            if key in stexp:
                try:
                    v = stexp[key][()]
                    task += " " + (v.decode() if isinstance(v, bytes) else str(v))
                except (TypeError, ValueError, OSError):
                    pass
    is_prediction = "predict" in task.lower()
    classes = [c for c in columns if c.endswith("_class")]
    embeddings = [k for k in obsm if k.startswith("X_") and k != "X_spatial"]
    image_path = None
    has_small_image = False
    if spatial is not None:
        for lib in spatial:
            entry = spatial[lib]
            if "images" in entry and len(entry["images"]):
                has_small_image = True
            meta = entry.get("metadata")
            if meta is not None and "source_image_path" in meta:
                v = meta["source_image_path"][()]
                v = v.decode() if isinstance(v, bytes) else str(v)
                if Path(v).is_file():
                    image_path = v
    flags = {
        "image": bool(image_path) or has_small_image,
        "expression": ("counts" in layers or has_x) and not is_prediction,
        "labels": False,
        "predictions": "predicted" in layers or any("pred" in k.lower() for k in obsm)
        or is_prediction,
        "classes": bool(classes),
        "cells": "cell" in task.lower(),
        "embeddings": bool(embeddings),
    }
    sec_col = next((c for c in _SECTION_COLUMNS if c in columns), None)
    section = _read_obs_column(f, sec_col) if sec_col else None
    label = _read_obs_column(f, "label") if "label" in columns else None
    patient = _read_obs_column(f, "patient") if "patient" in columns else None
    class_cols = {c: _read_obs_column(f, c) for c in classes}

    def known(v: Any) -> bool:
        return v is not None and str(v).strip().lower() not in ("", "nan", "unknown",
                                                                 "undetermined", "none")

    sections = [] if section is None else [str(s) for s in pd.unique(section.astype(str))]
    if len(sections) <= 1:
        groups = {sections[0] if sections else None: np.ones(n_obs, bool)}
    else:
        groups = {s: section.astype(str) == s for s in sections}
    per: dict[Any, dict] = {}
    for sec, mask in groups.items():
        d: dict[str, Any] = {"n_spots": int(mask.sum()), "n_genes": n_vars}
        if label is not None:
            d["labels"] = any(known(v) for v in label[mask])
        d["classes"] = any(any(known(v) for v in col[mask]) for col in class_cols.values()
                           if col is not None)
        if patient is not None and mask.any():
            d["patient"] = str(patient[mask][0])
        per[sec] = d
    flags["labels"] = any(d.get("labels") for d in per.values())
    return {"path": str(path), "sections": sections, "flags": flags, "per_section": per,
            "classes": classes, "embeddings": embeddings, "image_path": image_path,
            "n_obs": n_obs, "n_vars": n_vars, "has_spatial": "spatial" in obsm,
            "patient": next((d["patient"] for d in per.values() if "patient" in d), None)}


def _h5ad_metadata_legacy(path: Path) -> dict[str, Any]:
    """Old h5ad layouts (obs as a compound dataset): anndata in backed mode (X stays on disk)."""
    import anndata as ad

    try:
        a = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read h5ad: {type(exc).__name__}: {exc}") from exc
    try:
        item = SlideItem(name=path.stem, kind="h5ad")
        _flags_from_adata(item, a)
        obs = a.obs
        sec_col = next((c for c in _SECTION_COLUMNS if c in obs.columns), None)
        sections = [str(s) for s in pd.unique(obs[sec_col].astype(str))] if sec_col else []
        per = {None: {"n_spots": int(a.n_obs), "n_genes": int(a.n_vars)}}
        return {"path": str(path), "sections": sections if len(sections) > 1 else sections[:1],
                "flags": dict(item.flags), "per_section": per,
                "classes": item.info.get("classes", []),
                "embeddings": item.info.get("embeddings", []), "image_path": None,
                "n_obs": int(a.n_obs), "n_vars": int(a.n_vars),
                "has_spatial": "spatial" in a.obsm, "patient": item.patient}
    finally:
        a.file.close()


def _flags_from_adata(item: SlideItem, adata) -> None:
    """Availability flags of an in-memory (or backed) AnnData."""
    obs = adata.obs
    meta = (adata.uns.get("napari_stexp") or {}) if hasattr(adata, "uns") else {}
    task = " ".join(str(meta.get(k, "")) for k in ("task", "kind", "model")).lower()
    is_prediction = "predict" in task
    labelled = False
    if "label" in obs:
        lab = obs["label"].astype(object)
        labelled = bool(lab.notna().any() and (~lab.astype(str).str.lower().isin(
            ["unknown", "nan", "undetermined", ""])).any())
    classes = [c for c in obs.columns if str(c).endswith("_class")]
    embeddings = [k for k in adata.obsm.keys() if k.startswith("X_") and k != "X_spatial"]
    has_image = False
    for entry in (adata.uns.get("spatial") or {}).values():
        meta_s = entry.get("metadata", {}) or {}
        src = meta_s.get("source_image_path")
        if entry.get("images") or (src and Path(str(src)).is_file()):
            has_image = True
    item.flags.update(
        image=item.flags.get("image", False) or has_image,
        expression=adata.n_vars > 0 and not is_prediction,
        labels=labelled,
        predictions="predicted" in adata.layers or any("pred" in k.lower()
                                                       for k in adata.obsm.keys())
        or is_prediction,
        classes=bool(classes),
        cells="cell" in task,
        embeddings=bool(embeddings),
    )
    item.info.update(n_spots=int(adata.n_obs), n_genes=int(adata.n_vars), classes=classes,
                     embeddings=embeddings)
    if "patient" in obs and adata.n_obs:
        item.patient = str(obs["patient"].iloc[0])


# ----------------------------------------------------------------------------- reading


def _read_adata(item: SlideItem) -> Any:
    if item.kind == "her2st":
        from .her2st import read_her2st

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the listing already said what is there
            return read_her2st(item.source, [item.section], images=False)[item.section]
    if item.kind == "visium":
        from .visium import read_visium

        return read_visium(item.source, images=True)
    if item.kind != "h5ad" or not item.h5ads:
        return None
    base = None
    extras = []
    for p in item.h5ads:
        meta = h5ad_metadata(p)
        if base is None and meta["has_spatial"] and not _role(_strip_suffix(Path(p).name))[1]:
            base = p
        else:
            extras.append(p)
    if base is None:  # only result tables: the first one is the slide's AnnData
        base, extras = item.h5ads[0], item.h5ads[1:]
    adata = _read_h5ad_section(base, item.section)
    for p in extras:
        _merge_results(adata, _read_h5ad_section(p, item.section, st=False), p)
    return adata


def _read_h5ad_section(path: str, section: str | None, st: bool = True) -> Any:
    import anndata as ad

    from .h5ad import read_st_h5ad

    if st:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = read_st_h5ad(path)
        except InputError as exc:
            if "obsm['spatial']" not in str(exc):
                raise
        else:
            if section in data:
                return data[section]
            if len(data) == 1:
                return next(iter(data.values()))
            raise InputError(path, f"section {section!r} not found; "
                                   f"available: {', '.join(data)}")
    try:
        a = ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read h5ad: {type(exc).__name__}: {exc}") from exc
    if section is not None:
        for col in _SECTION_COLUMNS:
            if col in a.obs and (a.obs[col].astype(str) == section).any():
                a = a[a.obs[col].astype(str) == section].copy()
                break
    return a


def _merge_results(adata, extra, source: str) -> None:
    """Copy an extra result table's obs columns, obsm, and X (as predictions) into ``adata``."""
    common = adata.obs_names.intersection(extra.obs_names)
    if len(common) == 0:
        warnings.warn(f"{source}: no spot id in common with the slide; not merged", stacklevel=3)
        return
    extra = extra[extra.obs_names.isin(common)]
    for col in extra.obs.columns:
        if col not in adata.obs.columns:
            adata.obs[col] = extra.obs[col].reindex(adata.obs_names)
    for key in extra.obsm.keys():
        if key not in adata.obsm and key != "spatial":
            m = extra.obsm[key]
            if isinstance(m, pd.DataFrame):
                adata.obsm[key] = m.reindex(adata.obs_names)
            else:
                df = pd.DataFrame(np.asarray(m), index=extra.obs_names)
                adata.obsm[key] = df.reindex(adata.obs_names).to_numpy()
    _, role = _role(_strip_suffix(Path(source).name))
    pred = extra.layers["predicted"] if "predicted" in extra.layers else (
        extra.X if role == "predictions" and extra.n_vars else None)
    if pred is not None and "predicted" not in adata.obsm:
        dense = pred.toarray() if hasattr(pred, "toarray") else np.asarray(pred)
        df = pd.DataFrame(dense, index=extra.obs_names, columns=extra.var_names.astype(str))
        adata.obsm["predicted"] = df.reindex(adata.obs_names)


def _open_cells(item: SlideItem) -> ImagePyramid:
    labels = item.info.get("cells_labels")
    if labels:
        from .ome_zarr import read_ome_zarr

        return read_ome_zarr(item.cells, labels=labels)
    from .wsi import open_image

    return open_image(item.cells)


# ----------------------------------------------------------------------------- features


def gene_expression(adata, gene: str, transform: str = "log1p") -> np.ndarray:
    """One gene per spot: ``log1p`` of counts per 10k (``transform='log1p'``) or raw counts."""
    from .spatial import counts_matrix

    if gene not in adata.var_names:
        raise KeyError(gene)
    X = counts_matrix(adata)
    j = int(adata.var_names.get_loc(gene))
    col = X[:, j]
    col = np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=np.float64).ravel()
    if transform == "raw":
        return col.astype(np.float32)
    lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    lib[lib == 0] = 1.0
    return np.log1p(col / lib * 1e4).astype(np.float32)


_OBSM_DIM = re.compile(r"^(?P<key>.+?)(?:\[(?P<i1>\d+)\]|[_ ](?P<i2>\d+))$")
_PREDICTED = re.compile(r"^(?:(?P<g1>.+) \(predicted\)|predicted[:_ ](?P<g2>.+))$")


def resolve_feature(adata, column: str, spec: dict | None = None) -> tuple[np.ndarray, dict] | None:
    """Values of ``column`` for every spot of ``adata``, and how they were found (``spec``).

    Tried in order (or as ``spec`` says): an ``obs`` column; a predicted gene
    (``"<gene> (predicted)"``/``"predicted:<gene>"`` from ``layers['predicted']`` or
    ``obsm['predicted']``); a measured gene (``log1p`` counts per 10k unless ``spec`` says
    ``transform='raw'``); an embedding dimension ``"X_<model>_<i>"``/``"X_<model>[i]"`` (also
    without the ``X_``). None when the slide has no such feature -- the caller says so.
    """
    spec = dict(spec or {})
    kind = spec.get("type")
    if kind in (None, "obs") and column in adata.obs.columns:
        return adata.obs[column].to_numpy(), {"type": "obs"}
    if kind in (None, "predicted"):
        m = _PREDICTED.match(column)
        gene = spec.get("gene") or (m and (m.group("g1") or m.group("g2")))
        if gene:
            vals = _predicted_values(adata, gene)
            if vals is not None:
                return vals, {"type": "predicted", "gene": gene}
    if kind in (None, "gene") and column in adata.var_names:
        transform = spec.get("transform", "log1p")
        return gene_expression(adata, column, transform), {"type": "gene",
                                                           "transform": transform}
    if kind in (None, "obsm"):
        key, dim = spec.get("key"), spec.get("dim")
        if key is None:
            m = _OBSM_DIM.match(column)
            if m:
                key, dim = m.group("key"), int(m.group("i1") or m.group("i2"))
        if key is not None:
            for k in (key, f"X_{key}"):
                if k in adata.obsm:
                    arr = adata.obsm[k]
                    arr = arr.to_numpy() if isinstance(arr, pd.DataFrame) else np.asarray(arr)
                    if arr.ndim == 2 and int(dim) < arr.shape[1]:
                        return arr[:, int(dim)].astype(np.float32), {"type": "obsm", "key": k,
                                                                     "dim": int(dim)}
    return None


def _predicted_values(adata, gene: str) -> np.ndarray | None:
    if "predicted" in adata.layers and gene in adata.var_names:
        col = adata.layers["predicted"][:, int(adata.var_names.get_loc(gene))]
        col = col.toarray() if hasattr(col, "toarray") else col
        return np.asarray(col, dtype=np.float32).ravel()
    pred = adata.obsm["predicted"] if "predicted" in adata.obsm else None
    if isinstance(pred, pd.DataFrame) and gene in pred.columns:
        return pred[gene].to_numpy(dtype=np.float32)
    return None


# ----------------------------------------------------------------------------- thumbnails


def _make_thumbnail(item: SlideItem, max_size: int, memory: tuple | None = None) -> np.ndarray:
    """Coarsest image level when there is an image, else a drawing of the spot positions."""
    pyr = None
    try:
        if memory is not None and memory[1] is not None:
            pyr = memory[1]
        elif item.image:
            from .wsi import open_image

            pyr = open_image(item.image)
        elif item.info.get("thumb_image"):
            from .wsi import open_image

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
            from .her2st import read_spot_file

            sp = read_spot_file(item.info["spots_file"])
            return sp[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
        for p in item.h5ads:
            import h5py

            with h5py.File(p, "r") as f:
                if "obsm" in f and "spatial" in f["obsm"]:
                    xy = np.asarray(f["obsm"]["spatial"][()], dtype=np.float64)[:, :2]
                    if item.section is not None:
                        sec = next((_read_obs_column(f, c) for c in _SECTION_COLUMNS
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
