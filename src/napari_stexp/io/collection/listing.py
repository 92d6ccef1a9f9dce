"""Listing and grouping files into slides (cheap: no pyramid, no count matrix)."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InputError
from ..h5ad import adata_summary, h5ad_metadata
from ..ome_zarr import ngff_kind, ngff_label_names
from ._items import _H5AD, _ROLE_PATTERNS, FLAGS, SlideItem

# ----------------------------------------------------------------------------- listing


def list_slides(paths: Sequence[str | os.PathLike]) -> list[SlideItem]:
    """Slide items for ``paths``: datasets expand to their sections, files are grouped by name."""
    items: list[SlideItem] = []
    files: list[tuple[Path, str]] = []  # (file, batch)
    for p in map(Path, paths):
        kind = _kind(p)
        if kind in _DATASETS:
            items += _DATASETS[kind](p)
        elif p.is_dir() and kind != "image":
            items += _folder_items(p, files, depth=0)
        else:
            files.append((p, p.parent.name))
    return items + _bundle_items(files)


def _folder_items(folder: Path, files: list[tuple[Path, str]], depth: int) -> list[SlideItem]:
    """Datasets inside ``folder`` become items; loose files are collected for grouping."""
    items: list[SlideItem] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name.startswith("~"):
            continue  # hidden files, atomic-write temporaries
        kind = _kind(p)
        if kind in _DATASETS and p.is_dir():
            items += _DATASETS[kind](p)
        elif kind in ("image", "h5ad") and (kind == "image" or not p.is_dir()):
            files.append((p, folder.name))
        elif p.is_dir() and depth < 1:
            items += _folder_items(p, files, depth + 1)
    return items


def _kind(p: Path) -> str | None:
    """What ``p`` is, by :func:`napari_stexp.io.open.detect_kind` (the one detection path);
    a zarr folder counts as an image only when it holds an NGFF image."""
    from ..open import detect_kind
    from ..wsi import is_image_file

    try:
        kind = detect_kind(p)
        if kind == "ome-zarr":
            kind = "image" if is_image_file(p) else None
    except OSError:
        return None
    return kind


def _strip_suffix(name: str) -> str:
    from ..wsi import IMAGE_SUFFIXES

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
    from ..her2st import find_her2st_root, list_her2st_sections

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

    from ..visium import MATRIX_FILES, find_visium_root

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



def _flags_from_adata(item: SlideItem, adata) -> None:
    """Availability flags of an in-memory (or backed) AnnData, into ``item``."""
    s = adata_summary(adata)
    flags = s["flags"]
    flags["image"] = item.flags.get("image", False) or flags["image"]
    item.flags.update(flags)
    item.info.update(n_spots=s["n_spots"], n_genes=s["n_genes"], classes=s["classes"],
                     embeddings=s["embeddings"])
    if s["patient"] is not None:
        item.patient = s["patient"]


#: datasets that expand to their sections (kind of :func:`~napari_stexp.io.open.detect_kind`)
_DATASETS = {"her2st": _her2st_items, "visium": lambda p: [_visium_item(p)]}
