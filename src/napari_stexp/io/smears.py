"""Blood-smear readers (no Qt): smear images, Pascal VOC boxes (BCCD), smear folders and folders
of single-cell crops (BCCD crops, PBC).

Coordinates follow the files: VOC boxes are pixel ``xmin, ymin, xmax, ymax`` with the origin at
the top-left corner, x = column and y = row. napari wants (row, col), so a box becomes the
rectangle ``[[ymin, xmin], [ymax, xmax]]`` (see :func:`napari_stexp.io.layers.boxes_layer`).
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, StexpWarning
from .image import ImagePyramid

BOX_COLUMNS = ["name", "xmin", "ymin", "xmax", "ymax"]
CROP_PATH_COLUMNS = ("crop_path", "image_path", "path", "file", "filename")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class SmearWarning(StexpWarning):
    """Something odd but recoverable in a smear annotation (clipped or dropped boxes)."""


def read_smear(path: str | os.PathLike) -> ImagePyramid:
    """Open a smear photo (or any image the slide reader handles) lazily as an ImagePyramid."""
    p = Path(path)
    try:
        from .wsi import open_image
    except ImportError:  # pragma: no cover - wsi is part of the package
        return _read_small_image(p)
    return open_image(p)


def _read_small_image(p: Path) -> ImagePyramid:
    import dask.array as da
    from PIL import Image

    if not p.exists():
        raise InputError(p, "file not found")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB", "RGBA") else im)
    except Exception as exc:
        raise InputError(p, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    return ImagePyramid(levels=[da.from_array(arr)], path=str(p), name=p.stem)


# --------------------------------------------------------------------------- VOC boxes


def read_voc_boxes(xml_path: str | os.PathLike, *, clip: bool = True) -> pd.DataFrame:
    """Boxes of one Pascal VOC annotation as a table.

    Columns: ``name, xmin, ymin, xmax, ymax`` (float pixels, origin top-left, as in the file),
    ``width, height`` (the image size declared in the XML, NaN when absent), ``image``
    (the ``<filename>``). BCCD quirks are repaired with a :class:`SmearWarning`: boxes reaching
    outside the image are clipped, empty/degenerate and exact duplicate boxes are dropped, names
    are stripped of whitespace. A file that is not VOC XML raises :class:`InputError`.
    """
    p = Path(xml_path)
    if not p.exists():
        raise InputError(p, "annotation file not found")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise InputError(p, f"not valid XML ({exc})") from exc
    if root.tag != "annotation":
        raise InputError(p, f"not a Pascal VOC annotation (root element <{root.tag}>)")
    width = _num(root.findtext("size/width"))
    height = _num(root.findtext("size/height"))
    for tag, v in (("width", width), ("height", height)):
        # 0 means "unknown" in many VOC exports; a negative size is a broken file
        if v is not None and not (v >= 0 and np.isfinite(v)):
            raise InputError(p, f"<size><{tag}> is {v:g}: an image size must be positive")
    filename = (root.findtext("filename") or "").strip()
    rows, problems = [], []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        vals = [_num(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        if not name or any(v is None for v in vals):
            problems.append(f"object {i} has no name or a non-numeric box: dropped")
            continue
        x0, y0, x1, y1 = vals
        if x1 < x0:
            x0, x1 = x1, x0
        if y1 < y0:
            y0, y1 = y1, y0
        if clip and width and height:
            cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
            cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
            if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
                problems.append(f"{name} box {vals} reaches outside the "
                                f"{int(width)}x{int(height)} image: clipped")
            x0, y0, x1, y1 = cx0, cy0, cx1, cy1
        if x1 - x0 < 1 or y1 - y0 < 1:
            problems.append(f"{name} box {vals} is empty: dropped")
            continue
        rows.append((name, x0, y0, x1, y1))
    df = pd.DataFrame(rows, columns=BOX_COLUMNS)
    for c in BOX_COLUMNS[1:]:
        df[c] = df[c].astype(float)
    dup = df.duplicated(keep="first")
    if dup.any():
        problems.append(f"{int(dup.sum())} duplicated box(es): dropped")
        df = df[~dup].reset_index(drop=True)
    df["width"] = float(width) if width else np.nan
    df["height"] = float(height) if height else np.nan
    df["image"] = filename
    if problems:
        warnings.warn(f"{p}: " + "; ".join(problems), SmearWarning, stacklevel=2)
    return df


def _num(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text.strip())
    except ValueError:
        return None
    return v if np.isfinite(v) else None


# --------------------------------------------------------------------------- smear folders


def _smear_dirs(folder: Path) -> tuple[Path, Path | None]:
    """(images dir, annotations dir or None) for a VOC-style or flat smear folder."""
    for base in (folder, folder / "smears"):
        if (base / "JPEGImages").is_dir():
            ann = base / "Annotations"
            return base / "JPEGImages", (ann if ann.is_dir() else None)
    return folder, folder


def read_smear_folder(folder: str | os.PathLike) -> pd.DataFrame:
    """Pair the smear images of a folder with their VOC annotations.

    Accepts the VOC layout (``JPEGImages/*.jpg`` + ``Annotations/*.xml``, also one level down in
    ``smears/`` as in the BCCD staging) or a flat folder of images with side-by-side ``.xml``.
    Returns one row per image, sorted: ``image_id, image, annotation`` (annotation path or None).
    """
    p = Path(folder)
    if not p.is_dir():
        raise InputError(p, "not a folder")
    img_dir, ann_dir = _smear_dirs(p)
    images = sorted(f for f in img_dir.iterdir()
                    if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES
                    and not f.name.startswith("."))
    if not images:
        raise InputError(img_dir, "no smear images (.jpg/.png/.tif) in this folder")
    rows = []
    for f in images:
        ann = (ann_dir / f"{f.stem}.xml") if ann_dir is not None else None
        rows.append((f.stem, str(f), str(ann) if ann is not None and ann.exists() else None))
    return pd.DataFrame(rows, columns=["image_id", "image", "annotation"])


def read_smear_folder_boxes(folder: str | os.PathLike, classes: tuple[str, ...] | None = None
                            ) -> pd.DataFrame:
    """All VOC boxes of a smear folder in one table (``image_id`` + :func:`read_voc_boxes`
    columns), optionally only the given class names."""
    table = read_smear_folder(folder)
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmearWarning)
        for row in table.itertuples():
            if row.annotation is None:
                continue
            b = read_voc_boxes(row.annotation)
            b.insert(0, "image_id", row.image_id)
            parts.append(b)
    if not parts:
        return pd.DataFrame(columns=["image_id", *BOX_COLUMNS, "width", "height", "image"])
    out = pd.concat(parts, ignore_index=True)
    if classes is not None:
        out = out[out["name"].isin(classes)].reset_index(drop=True)
    return out


# --------------------------------------------------------------------------- crop folders


def read_cell_crops(folder: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Single-cell crops of a folder as a table ``path, label[, other columns]``.

    With a ``labels.csv`` (BCCD: ``crop_path,label,...``; PBC: ``image_path,label,...``) paths are
    resolved relative to the folder and every other column is kept. Without one, class
    sub-folders (``<folder>/<class>/*.jpg``) give the labels; a flat folder of images gives
    ``label = None``. Missing columns, listed files that are absent, or an empty folder raise
    :class:`InputError` naming the file.
    """
    p = Path(folder)
    if p.is_file() and p.suffix.lower() == ".csv":
        csv, p = p, p.parent
    else:
        if not p.is_dir():
            raise InputError(p, "not a folder of cell crops")
        csv = p / "labels.csv"
    if csv.exists():
        return _crops_from_csv(csv, p, check_files)
    if (p / "spatial").is_dir() and any((p / "spatial").glob("scalefactors*.json")):
        raise InputError(p, "a Space Ranger folder (spatial/ with scale factors) without its "
                            "count matrix (filtered_feature_bc_matrix.h5), not cell crops")
    rows = []
    subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in subdirs:
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith("."):
                rows.append((str(f), d.name))
    if not rows:
        for f in sorted(p.iterdir()):
            if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith("."):
                rows.append((str(f), None))
    if not rows:
        raise InputError(p, "no cell images found (expected labels.csv, class sub-folders "
                            "or image files)")
    return pd.DataFrame(rows, columns=["path", "label"])


def _crops_from_csv(csv: Path, root: Path, check_files: bool) -> pd.DataFrame:
    try:
        df = pd.read_csv(csv)
    except pd.errors.EmptyDataError as exc:
        raise InputError(csv, "empty file") from exc
    except Exception as exc:
        raise InputError(csv, f"cannot read CSV ({type(exc).__name__}: {exc})") from exc
    cols = {c.strip().lower(): c for c in df.columns}
    path_col = next((cols[c] for c in CROP_PATH_COLUMNS if c in cols), None)
    if path_col is None:
        raise InputError(csv, "no image path column (expected one of "
                              f"{', '.join(CROP_PATH_COLUMNS)}; found {', '.join(df.columns)})")
    if "label" not in cols:
        raise InputError(csv, f"no 'label' column (found {', '.join(df.columns)})")
    if df.empty:
        raise InputError(csv, "no rows")
    label_col = cols["label"]
    if df[path_col].isna().any():
        bad = int(df[path_col].isna().idxmax()) + 2
        raise InputError(csv, f"empty image path on line {bad}")
    paths = [str(q if (q := Path(str(v))).is_absolute() else root / q) for v in df[path_col]]
    base = root.resolve()
    for line, q in enumerate(paths, start=2):
        if not Path(q).resolve().is_relative_to(base):
            raise InputError(csv, f"line {line} points outside the crop folder ({q}); list "
                                  "crops inside the folder that holds labels.csv")
    if check_files:
        missing = [q for q in paths if not Path(q).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(csv, f"lists {missing[0]} which does not exist{more}")
    rest = df.drop(columns=[path_col, label_col])
    out = pd.DataFrame({"path": paths, "label": df[label_col].astype(object).where(
        df[label_col].notna(), None)})
    for c in rest.columns:
        out[c] = rest[c].to_numpy()
    return out


def smear_layers(path: str | os.PathLike) -> list[tuple]:
    """Layer data tuples for one smear image plus its VOC boxes when an .xml sits next to it
    (or in ``../Annotations``)."""
    from .layers import boxes_layer, image_layer

    p = Path(path)
    pyr = read_smear(p)
    out = [image_layer(pyr, pyr.name)]
    for ann in (p.with_suffix(".xml"), p.parent.parent / "Annotations" / f"{p.stem}.xml"):
        if ann.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SmearWarning)
                out.append(boxes_layer(read_voc_boxes(ann), f"{pyr.name} boxes"))
            break
    return out
