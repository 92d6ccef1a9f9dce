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

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InputError
from .._atomic import atomic_path
from ..h5ad import h5ad_metadata
from ..layers import CATEGORY_COLORS
from ._items import FLAG_SHORT, FLAGS, SlideData, SlideItem
from .listing import _flags_from_adata, _unique_names, list_slides
from .load import _open_cells, _read_adata
from .thumbnails import _make_thumbnail, default_cache_dir, thumbnail_key

__all__ = ["CATEGORY_COLORS", "FLAGS", "FLAG_SHORT", "SlideCollection", "SlideData", "SlideItem",
           "default_cache_dir", "h5ad_metadata", "list_slides", "thumbnail_key"]


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
                from ..spatial import library_id

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
            from ..wsi import open_image

            out.image = open_image(item.image)
            if out.adata is not None and not out.image.mpp:
                from ..frame import mpp_of

                out.image.set_mpp(mpp_of(out.adata, item.section), "spots")
        elif out.adata is not None and item.has("image"):
            from ..st import section_image

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


