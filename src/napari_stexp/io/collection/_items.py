"""What a slide has: :class:`SlideItem` (listed cheaply) and :class:`SlideData` (read)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..image import ImagePyramid
from ..layers import CATEGORY_COLORS, LayerDataTuple, image_layer, spots_layer

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


