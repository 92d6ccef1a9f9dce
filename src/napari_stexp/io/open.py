"""One entry point for every reader: detect what a path is, read it, describe it, and build the
napari layers. The npe2 reader, the loader widget and ``napari-stexp info`` all go through here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from .layers import LayerDataTuple, boxes_layer, image_layer, spots_layer

KINDS = ("her2st", "visium", "h5ad", "xenium", "visium-hd", "spatialdata", "ome-zarr", "smear-folder", "cell-crops", "voc-boxes", "image")


@dataclass
class Opened:
    """What a path holds: its kind, a printable summary, and how to show it."""

    path: str
    kind: str
    summary: dict = field(default_factory=dict)
    adatas: dict[str, Any] = field(default_factory=dict)  # section -> AnnData
    images: dict[str, Any] = field(default_factory=dict)  # section/name -> ImagePyramid
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    sdata: Any = None  # the SpatialData object (kind "spatialdata")
    coordinate_system: str | None = None

    def layers(self, *, max_visible: int = 1, skip_spots=()) -> list[LayerDataTuple]:
        """``skip_spots``: sections without a spots layer (shown as rasters instead)."""
        if self.kind == "spatialdata":
            from .spatialdata import sdata_layers

            return sdata_layers(self, max_visible=max_visible, skip_spots=skip_spots)
        return build_layers(self, max_visible=max_visible, skip_spots=skip_spots)


def detect_kind(path: str | os.PathLike) -> str | None:
    """Guess what ``path`` is, from names only (cheap). ``None`` when we cannot read it."""
    from .st import detect_st_kind

    p = Path(path)
    if not p.exists():
        return None
    name = p.name.lower()
    from .spatialdata import looks_like_spatialdata

    if looks_like_spatialdata(p):
        return "spatialdata"
    if p.is_dir() and (name.endswith(".zarr") or (p / ".zattrs").exists()
                       or (p / "zarr.json").exists()):
        return "ome-zarr"
    st = detect_st_kind(p)
    if st:
        return st
    if p.is_dir():
        if (p / "JPEGImages").is_dir() or (p / "smears" / "JPEGImages").is_dir():
            return "smear-folder"
        if (p / "labels.csv").exists() or _has_class_subfolders(p):
            return "cell-crops"
        return None
    if name.endswith(".xml"):
        return "voc-boxes"
    from .wsi import is_image_file

    if is_image_file(p):
        return "image"
    return None


def _has_class_subfolders(p: Path) -> bool:
    from .wsi import is_image_file

    subs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bool(subs) and all(any(is_image_file(f) for f in d.iterdir()) for d in subs)


def apply_user_mpp(pyr, mpp: float | None):
    """Set the µm/px the user gave (``mpp_source = "user"``); ``None`` leaves the file's."""
    if mpp is None:
        return pyr
    if not float(mpp) > 0:
        raise InputError("mpp", f"must be a positive number, got {mpp}")
    pyr.set_mpp(float(mpp), "user")
    return pyr


def open_path(path: str | os.PathLike, *, sections: list[str] | None = None,
              images: bool = True, mpp: float | None = None) -> Opened:
    """Read ``path`` with the right reader. Raises :class:`InputError` for what we can't read.
    ``mpp``: the µm/px of an image the file does not describe (JPEG/PNG) or describes wrong."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    kind = detect_kind(p)
    if kind is None:
        raise InputError(p, "not a format napari-stexp reads (expected a slide/image, an .h5ad, "
                            "a Visium, Visium HD, Xenium or her2st folder, a SpatialData store, a smear "
                            "folder, cell crops or OME-Zarr)")
    out = Opened(path=str(p), kind=kind)
    if kind in ("xenium", "spatialdata"):
        from .spatialdata import read_spatialdata
        from .xenium import open_xenium

        return (open_xenium if kind == "xenium" else read_spatialdata)(p, images=images)
    if kind in ("her2st", "visium", "visium-hd", "h5ad"):
        from .st import read_st, section_image, section_summary

        out.adatas = read_st(p, sections=sections, images=images)
        rows = []
        for sec, ad in out.adatas.items():
            row = section_summary(ad)
            img = section_image(ad)  # lazy: opens the pyramid, decodes nothing
            if img is not None:
                out.images[sec] = img
                row["levels"] = [tuple(int(v) for v in lvl.shape) for lvl in img.levels]
            rows.append(row)
        out.summary = {"kind": kind, "path": str(p), "sections": rows}
    elif kind == "ome-zarr":
        from .ome_zarr import read_ome_zarr

        pyr = apply_user_mpp(read_ome_zarr(p), mpp)
        out.images[pyr.name] = pyr
        out.summary = {"kind": kind, "path": str(p), "images": [_image_summary(pyr)]}
    elif kind == "image":
        from .wsi import open_image

        pyr = apply_user_mpp(open_image(p), mpp)
        out.images[pyr.name] = pyr
        out.summary = {"kind": kind, "path": str(p), "images": [_image_summary(pyr)]}
    elif kind == "voc-boxes":
        from .smears import read_voc_boxes

        boxes = read_voc_boxes(p)
        out.tables["boxes"] = boxes
        out.summary = {"kind": kind, "path": str(p), "boxes": _counts(boxes, "name")}
    elif kind == "smear-folder":
        from .smears import read_smear_folder

        table = read_smear_folder(p)
        out.tables["smears"] = table
        out.summary = {"kind": kind, "path": str(p), "images": int(len(table)),
                       "with_boxes": int(table.get("annotation", pd.Series(dtype=object))
                                         .notna().sum())}
    elif kind == "cell-crops":
        from .smears import read_cell_crops

        table = read_cell_crops(p)
        out.tables["crops"] = table
        out.summary = {"kind": kind, "path": str(p), "crops": int(len(table)),
                       "labels": _counts(table, "label")}
    return out


def _counts(df: pd.DataFrame, col: str) -> dict:
    if col not in df:
        return {}
    return {str(k): int(v) for k, v in df[col].value_counts().items()}


def _image_summary(pyr) -> dict:
    return {"name": pyr.name, "levels": len(pyr.levels),
            "shapes": [tuple(int(s) for s in lvl.shape) for lvl in pyr.levels],
            "dtype": str(pyr.dtype), "mpp": pyr.mpp,
            "format": pyr.metadata.get("format")}


def build_layers(opened: Opened, *, max_visible: int = 1,
                 skip_spots=()) -> list[LayerDataTuple]:
    """Layers for everything in ``opened``; only the first ``max_visible`` sections visible."""
    layers: list[LayerDataTuple] = []
    if opened.adatas:
        for i, (sec, ad) in enumerate(opened.adatas.items()):
            visible = i < max_visible
            img = opened.images.get(sec)
            if img is not None:
                layers.append(image_layer(img, f"{sec} H&E", visible=visible))
                layers[-1][1]["metadata"]["section"] = sec
            if sec in skip_spots:
                continue
            layers.append(spots_layer(ad, section=sec, visible=visible))
            layers[-1][1]["metadata"]["adata"] = ad  # widgets find the AnnData here
        return layers
    for name, pyr in opened.images.items():
        kind = pyr.metadata.get("kind_hint")
        if kind == "labels":
            data, attrs, _ = image_layer(pyr, name)
            attrs.pop("rgb", None)
            layers.append((data, attrs, "labels"))
        else:
            layers.append(image_layer(pyr, name))
    if "boxes" in opened.tables:
        layers.append(boxes_layer(opened.tables["boxes"], f"{Path(opened.path).stem} boxes"))
    if "smears" in opened.tables:
        layers.extend(_smear_folder_layers(opened.tables["smears"], limit=1))
    if "crops" in opened.tables:
        layers.append(_crops_stack_layer(opened.tables["crops"], Path(opened.path).name))
    return layers


def _smear_folder_layers(table: pd.DataFrame, limit: int = 1) -> list[LayerDataTuple]:
    """The first smear(s) of a folder with their boxes (the navigator clicks through the rest)."""
    from .smears import read_voc_boxes
    from .wsi import open_image

    out = []
    for row in table.head(limit).itertuples():
        pyr = open_image(row.image)
        out.append(image_layer(pyr, pyr.name))
        ann = getattr(row, "annotation", None)
        if isinstance(ann, str) and ann:
            out.append(boxes_layer(read_voc_boxes(ann), f"{pyr.name} boxes"))
    return out


def _crops_stack_layer(table: pd.DataFrame, name: str, size: int = 128) -> LayerDataTuple:
    """All crops resized to ``size`` as one (N, size, size, 3) stack: the slider browses cells."""
    import numpy as np
    from PIL import Image

    stack = np.zeros((len(table), size, size, 3), np.uint8)
    for i, path in enumerate(table["path"]):
        try:
            with Image.open(path) as im:
                stack[i] = np.asarray(im.convert("RGB").resize((size, size)))
        except Exception as exc:
            raise InputError(path, f"cannot read cell crop ({exc})") from exc
    meta = {"kind": "cell-crops", "table": table.reset_index(drop=True)}
    return stack, {"name": f"{name} crops", "rgb": True, "metadata": meta}, "image"


def format_summary(summary: dict) -> str:
    """Human-readable multi-line text for a reader summary (loader widget and CLI ``info``)."""
    lines = [f"kind: {summary.get('kind')}", f"path: {summary.get('path')}"]
    for sec in summary.get("sections", []) or []:
        img = sec.get("image_size")
        nlev = len(sec.get("levels") or [])
        img_txt = (f"image {img[1]}×{img[0]} px ({nlev} level{'s' if nlev != 1 else ''})"
                   if img else "no image")
        mpp = sec.get("image_mpp")
        mpp_txt = f", {mpp:.3f} µm/px" if mpp else ""
        lab = sec.get("label_counts") or {}
        lab_txt = (", labels: " + ", ".join(f"{k} {v}" for k, v in lab.items())) if lab else ""
        lines.append(f"- {sec.get('section')} (patient {sec.get('patient')}): "
                     f"{sec.get('n_spots')} spots × {sec.get('n_genes')} genes, "
                     f"{img_txt}{mpp_txt}{lab_txt}")
    for im in summary.get("images", []) if isinstance(summary.get("images"), list) else []:
        shapes = " > ".join("×".join(str(s) for s in sh) for sh in im.get("shapes", []))
        mpp = im.get("mpp")
        lines.append(f"- image {im.get('name')}: {im.get('levels')} level(s) [{shapes}] "
                     f"{im.get('dtype')}, " + (f"{mpp:.4f} µm/px" if mpp else "µm/px unknown"))
    for key in ("crops", "boxes", "labels", "with_boxes"):
        if key in summary:
            lines.append(f"{key}: {summary[key]}")
    if isinstance(summary.get("images"), int):
        lines.append(f"images: {summary['images']}")
    return "\n".join(lines)
