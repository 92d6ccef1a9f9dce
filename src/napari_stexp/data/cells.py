"""Single-cell crops for the β-VAE: decoded once, resized, masked, cached in memory.

A :class:`CellCropDataset` holds ``N`` RGB crops of ``size × size`` (aspect kept, padded with the
crop's border colour) and a *soft* foreground mask per crop (the white blood cell, dilated and
blurred, values in [0, 1]). The mask comes from segmentation when the crops come from a Labels
image, otherwise it is computed in the crop by :func:`cell_mask` (stain colour: the purple
nucleus nearest the centre plus the surrounding bluish cytoplasm, holes filled).

Sources: a table of crop paths + labels (:meth:`CellCropDataset.from_table`), a crop folder such as
PBC / BCCD (:meth:`~CellCropDataset.from_folder`, ``labels.csv`` or class sub-folders), arrays
(:meth:`~CellCropDataset.from_arrays`) and segmentation output (image + Labels + features,
:meth:`~CellCropDataset.from_segmentation`).

Bad input: grey images are converted to RGB with one warning per dataset, RGBA loses its alpha
channel, unreadable files raise :class:`~napari_stexp.errors.InputError` naming the file. A crop
with no cell in it is **skipped and counted** when it is one of many (``dataset.skipped`` lists
``(id, reason)`` and a warning gives the count); a dataset where every crop is empty, or a single
crop given on its own (``on_empty='error'``), raises ``InputError``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
PATH_COLUMNS = ("path", "image_path", "crop_path", "file", "filename", "image")
MASK_WORK_SIZE = 128  # masks are computed at this size, then resized to the crop size


# --------------------------------------------------------------------------- reading


def read_rgb(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Decode an image file to ``uint8`` RGB ``(H, W, 3)``; also return what was converted
    (``''``, ``'grey'`` or ``'rgba'``). Unreadable files raise ``InputError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "cell image not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                arr = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    return to_rgb_uint8(arr, source=path)


def to_rgb_uint8(arr: np.ndarray, source: Any = None) -> tuple[np.ndarray, str]:
    """Any 2-D grey, (H, W, 1|2|3|4) array -> ``uint8`` RGB plus the conversion done."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CYX -> YXC
    converted = ""
    if arr.ndim == 2:
        arr, converted = np.repeat(arr[..., None], 3, axis=-1), "grey"
    elif arr.ndim == 3 and arr.shape[-1] in (1, 2):  # grey (+ alpha)
        arr, converted = np.repeat(arr[..., :1], 3, axis=-1), "grey"
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr, converted = arr[..., :3], "rgba"
    elif not (arr.ndim == 3 and arr.shape[-1] == 3):
        raise InputError(source, f"not an RGB or grey image (array shape {arr.shape})")
    if arr.shape[0] < 4 or arr.shape[1] < 4:
        raise InputError(source, f"image too small ({arr.shape[0]}x{arr.shape[1]} px)")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr), converted
    if arr.dtype == bool:
        return (arr.astype(np.uint8) * 255), converted
    a = arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        top = float(np.iinfo(arr.dtype).max) if a.max() > 255 else 255.0
        if arr.dtype == np.uint16 and a.max() <= 4095:
            top = 4095.0 if a.max() > 255 else 255.0
    else:
        top = 1.0 if a.max() <= 1.0 else 255.0
    return np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), converted


def _crop_table_fallback(folder: Path):
    """Crop folder -> DataFrame(path, label): ``labels.csv`` (path column + ``label``), else
    class sub-folders, else the images in the folder itself (label unknown)."""
    import pandas as pd

    csv = folder / "labels.csv"
    if csv.is_file():
        try:
            df = pd.read_csv(csv)
        except Exception as exc:
            raise InputError(csv, f"cannot read labels table ({exc})") from exc
        col = next((c for c in PATH_COLUMNS if c in df.columns), None)
        if col is None:
            raise InputError(csv, f"no path column (expected one of {', '.join(PATH_COLUMNS)})")
        paths = [str(p if os.path.isabs(p) else folder / p) for p in df[col].astype(str)]
        labels = df["label"].astype(str).tolist() if "label" in df.columns else [None] * len(df)
        return pd.DataFrame({"path": paths, "label": labels})
    rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                rows.append((str(f), sub.name))
    if not rows:
        rows = [(str(f), None) for f in sorted(folder.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    if not rows:
        raise InputError(folder, "no cell images found (expected labels.csv, class sub-folders "
                                 "or image files)")
    return pd.DataFrame(rows, columns=["path", "label"])


def crop_table(folder: str | os.PathLike):
    """The crops of a folder as ``DataFrame(path, label)``: the shared smear reader
    (``io.smears.read_cell_crops``) when available, else our own folder scan."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "cell crop folder not found")
    try:
        from ..io.smears import read_cell_crops
    except ImportError:
        read_cell_crops = None
    if read_cell_crops is not None:
        table = read_cell_crops(folder)
        if "path" not in table.columns:
            raise InputError(folder, "crop reader returned no 'path' column")
        table = table.copy()
        if "label" not in table.columns:
            table["label"] = None
        # read_cell_crops already resolved the paths against the folder: joining them to it
        # again would double a relative folder (in/crops/in/crops/...)
        table["path"] = [str(p) for p in table["path"]]
        return table.reset_index(drop=True)
    return _crop_table_fallback(folder)


# --------------------------------------------------------------------------- geometry


def _border_colour(img: np.ndarray) -> np.ndarray:
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)
    return np.median(border, axis=0)


def fit_square(img: np.ndarray, size: int, mask: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize keeping the aspect ratio so the long side is ``size``, pad to ``size × size``
    (image with its border colour, mask with 0). Returns float32 RGB in [0, 1] (+ float mask)."""
    from PIL import Image

    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR), np.float32) / 255
    out = np.empty((size, size, 3), np.float32)
    out[:] = _border_colour(small)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    out_mask = None
    if mask is not None:
        m = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
        m = np.asarray(m.resize((nw, nh), Image.BILINEAR), np.float32) / 255
        out_mask = np.zeros((size, size), np.float32)
        out_mask[y0:y0 + nh, x0:x0 + nw] = m
    return out, out_mask


def _resize_float(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] == size and a.shape[1] == size:
        return a.astype(np.float32, copy=False)
    from skimage.transform import resize

    return resize(a, (size, size) + a.shape[2:], order=1, anti_aliasing=a.shape[0] > size,
                  preserve_range=True).astype(np.float32)


# --------------------------------------------------------------------------- masks


def _disk(r: int) -> np.ndarray:
    r = max(int(r), 0)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def cell_mask(rgb: np.ndarray, *, min_area: int = 12, nucleus_floor: float = 0.12,
              nucleus_peak: float = 0.18) -> np.ndarray | None:
    """Binary mask of the centred white blood cell in a ``MASK_WORK_SIZE`` float RGB crop, or
    ``None`` when there is no cell: no purple-stained object of ``min_area`` px whose purple
    score ((R + B) / 2 - G above the background) peaks above ``nucleus_peak``. On the PBC
    images every cell (platelets included) peaks above 0.21, while three quarters of the
    cell-free corners (red cells, background) stay below 0.13.

    Stain heuristic for Giemsa / May-Grünwald / Wright smears: the nucleus is purple (green much
    lower than red and blue), cytoplasm is bluer than the background, red cells are not. For a
    grey image (no hue) the nucleus is the dark object instead. The
    nucleus component nearest the centre (plus lobes within a few px) seeds the cell; connected
    cytoplasm joins it, limited to a disc around the nucleus; holes are filled.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    a = ndi.gaussian_filter(np.asarray(rgb, np.float32), (1, 1, 0))
    h, w = a.shape[:2]
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    bright = a.sum(-1)
    bg = bright >= np.percentile(bright, 70)
    if np.percentile(a.max(-1) - a.min(-1), 99) < 0.03:  # grey image: darkness, no stain hue
        purple = np.median(bright[bg]) / 3 - bright / 3
        blue = np.zeros_like(purple)
    else:
        purple = (r + b) / 2 - g
        blue = b - r
    purple = purple - np.median(purple[bg])
    blue = blue - np.median(blue[bg])
    if float(purple.max()) <= nucleus_peak:
        return None
    t = max(float(threshold_otsu(purple)), nucleus_floor)
    nuc = purple > t
    lab, n = ndi.label(nuc)
    if n == 0:
        return None
    idx = np.arange(1, n + 1)
    areas = np.asarray(ndi.sum(nuc, lab, idx))
    peaks = np.asarray(ndi.maximum(purple, lab, idx))
    ok = (areas >= min_area) & (peaks >= nucleus_peak)
    if not ok.any():
        return None
    com = np.asarray(ndi.center_of_mass(nuc, lab, idx)).reshape(-1, 2)
    dist = np.hypot(com[:, 0] - (h - 1) / 2, com[:, 1] - (w - 1) / 2)
    k = idx[ok][np.argmin(dist[ok])]
    seed = lab == k
    near = ndi.distance_transform_edt(~seed) <= 6  # nucleus lobes of the same cell
    keep = np.unique(lab[near & nuc])
    seed = np.isin(lab, keep[keep > 0])
    cand = (blue > 0.08) | (purple > 0.6 * t) | seed
    cand = ndi.binary_opening(cand, _disk(2)) | seed
    lab2, _ = ndi.label(cand)
    ids = np.unique(lab2[seed])
    cell = np.isin(lab2, ids[ids > 0])
    req = np.sqrt(seed.sum() / np.pi)
    cy, cx = ndi.center_of_mass(seed)
    yy, xx = np.mgrid[:h, :w]
    cell &= np.hypot(yy - cy, xx - cx) <= max(2.2 * req, req + 12)
    cell = ndi.binary_fill_holes(ndi.binary_closing(cell, _disk(2)))
    cell = ndi.binary_opening(cell, _disk(4)) | seed
    lab3, _ = ndi.label(cell)
    ids = np.unique(lab3[seed])
    return np.isin(lab3, ids[ids > 0])


def soften_mask(mask: np.ndarray, size: int, dilate: float = 4.0, blur: float = 2.0
                ) -> np.ndarray:
    """Binary/float mask -> soft float32 mask in [0, 1] at ``size``: dilated by ``dilate`` px and
    Gaussian-blurred with ``blur`` px (both given at 128 px and scaled to ``size``)."""
    from scipy import ndimage as ndi

    m = _resize_float(np.asarray(mask, np.float32), size) > 0.5
    f = size / 128.0
    rad = int(round(dilate * f))
    if rad > 0:
        m = ndi.binary_dilation(m, _disk(rad))
    soft = m.astype(np.float32)
    if blur * f > 0.3:
        soft = ndi.gaussian_filter(soft, blur * f)
        soft = np.maximum(soft, ndi.binary_erosion(m, _disk(max(1, rad))).astype(np.float32))
    return np.clip(soft, 0.0, 1.0).astype(np.float32)


def prepare_crop(rgb: np.ndarray, size: int = 128, mask: np.ndarray | None = None,
                 dilate: float = 4.0, blur: float = 2.0
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """One crop -> (float32 RGB ``(size, size, 3)`` in [0, 1], soft mask ``(size, size)``).

    ``mask`` (same shape as ``rgb``, e.g. from segmentation) is used as is; without it the cell
    is found by :func:`cell_mask`. Returns ``None`` when the crop holds no cell.
    """
    img, m = fit_square(rgb, size, mask)
    if m is None:
        work = img if size == MASK_WORK_SIZE else fit_square(rgb, MASK_WORK_SIZE)[0]
        binary = cell_mask(work)
        if binary is None:
            return None
        m = binary.astype(np.float32)
    elif m.max() <= 0:
        return None
    return img, soften_mask(m, size, dilate, blur)


# --------------------------------------------------------------------------- dataset


@dataclass
class CellCropDataset:
    """In-memory cell crops: ``images`` (N, H, W, 3) float32 in [0, 1], ``masks`` (N, H, W)
    soft float32, ``table`` (one row per kept crop: ``id``, ``label``, ``path``/``source``...),
    optional ``roi_features`` (N, F) from a Mask R-CNN backend, ``skipped`` (id, reason)."""

    images: np.ndarray
    masks: np.ndarray
    table: Any
    roi_features: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _tensors: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.images = np.ascontiguousarray(self.images, np.float32)
        self.masks = np.ascontiguousarray(self.masks, np.float32)
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise InputError("cells", f"images must be (N, H, W, 3), got {self.images.shape}")
        if self.masks.shape != self.images.shape[:3]:
            raise InputError("cells", f"masks {self.masks.shape} do not match images "
                                      f"{self.images.shape}")
        if len(self.table) != len(self.images):
            raise InputError("cells", "table rows do not match images")
        if self.roi_features is not None:
            self.roi_features = np.asarray(self.roi_features, np.float32)
            if len(self.roi_features) != len(self.images):
                raise InputError("cells", "roi_features rows do not match images")

    # --- basic access
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def ids(self) -> list[str]:
        return [str(v) for v in self.table["id"]]

    @property
    def labels(self) -> np.ndarray:
        """Labels as an object array (``None`` where unknown)."""
        if "label" not in self.table.columns:
            return np.array([None] * len(self), dtype=object)
        out = self.table["label"].to_numpy(dtype=object)
        return np.array([None if (v is None or (isinstance(v, float) and np.isnan(v))
                                  or str(v) in ("", "None", "nan")) else str(v)
                         for v in out], dtype=object)

    @property
    def classes(self) -> list[str]:
        return sorted({v for v in self.labels if v is not None})

    def __getitem__(self, i: int) -> dict:
        x, m = self.tensors()
        out = {"image": x[i], "mask": m[i], "label": self.labels[i]}
        if self.roi_features is not None:
            out["roi"] = self.roi_features[i]
        return out

    def tensors(self):
        """``(x, m)`` torch tensors (N, 3, H, W) and (N, 1, H, W), built once and cached."""
        if self._tensors is None:
            import torch

            x = torch.from_numpy(np.ascontiguousarray(self.images.transpose(0, 3, 1, 2)))
            m = torch.from_numpy(self.masks[:, None].copy())
            self._tensors = (x, m)
        return self._tensors

    def subset(self, index: Sequence[int] | np.ndarray) -> CellCropDataset:
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        roi = None if self.roi_features is None else self.roi_features[idx]
        return CellCropDataset(self.images[idx], self.masks[idx],
                               self.table.iloc[idx].reset_index(drop=True), roi, [])

    def resized(self, size: int) -> CellCropDataset:
        """The same crops at another size (masks re-softened from their core)."""
        if size == self.size:
            return self
        imgs = np.stack([_resize_float(im, size) for im in self.images])
        masks = np.stack([np.clip(_resize_float(m, size), 0, 1) for m in self.masks])
        return CellCropDataset(imgs, masks, self.table.copy(), self.roi_features,
                               list(self.skipped))

    # --- constructors
    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], labels: Sequence[Any] | None = None,
                    masks: Sequence[np.ndarray | None] | None = None, *, size: int = 128,
                    ids: Sequence[str] | None = None, sources: Sequence[str] | None = None,
                    on_empty: str = "skip", dilate: float = 4.0, blur: float = 2.0,
                    roi_features: np.ndarray | None = None,
                    progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                    ) -> CellCropDataset:
        """Crops given as arrays (any size, grey/RGB/RGBA) with optional labels and masks."""
        n = len(images)
        labels = list(labels) if labels is not None else [None] * n
        ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
        sources = list(sources) if sources is not None else ids
        masks = list(masks) if masks is not None else [None] * n
        if not (len(labels) == len(ids) == len(masks) == n):
            raise InputError("cells", "images, labels, masks and ids differ in length")

        def load(i):
            return to_rgb_uint8(images[i], source=sources[i])

        return cls._build(n, load, labels, masks, ids, sources, size=size, on_empty=on_empty,
                          dilate=dilate, blur=blur, roi_features=roi_features,
                          progress=progress, cancel=cancel)

    @classmethod
    def from_table(cls, table, *, size: int = 128, root: str | os.PathLike | None = None,
                   on_empty: str = "skip", dilate: float = 4.0, blur: float = 2.0,
                   progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                   ) -> CellCropDataset:
        """From ``DataFrame(path, label[, mask_path])``; relative paths resolve against ``root``.

        Unreadable files raise ``InputError`` naming the file; crops with no cell are skipped and
        counted (``on_empty='skip'``) or raise (``'error'``).
        """
        col = next((c for c in PATH_COLUMNS if c in table.columns), None)
        if col is None:
            raise InputError("cells", f"table has no path column ({', '.join(PATH_COLUMNS)})")
        paths = [str(p) if root is None or os.path.isabs(str(p)) else str(Path(root) / str(p))
                 for p in table[col]]
        labels = table["label"].tolist() if "label" in table.columns else [None] * len(paths)
        mask_paths = table["mask_path"].tolist() if "mask_path" in table.columns else None

        def load(i):
            return read_rgb(paths[i])

        masks: list = [None] * len(paths)
        if mask_paths is not None:
            masks = [_LazyMask(p) if isinstance(p, str) and p else None for p in mask_paths]
        return cls._build(len(paths), load, labels, masks, paths, paths, size=size,
                          on_empty=on_empty, dilate=dilate, blur=blur, progress=progress,
                          cancel=cancel)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs) -> CellCropDataset:
        """A crop folder (``labels.csv`` / class sub-folders / images), e.g. PBC or BCCD."""
        return cls.from_table(crop_table(folder), **kwargs)

    @classmethod
    def from_segmentation(cls, image: np.ndarray, labels: np.ndarray, features=None, *,
                          size: int = 128, margin: float = 0.15, class_column: str = "class",
                          on_empty: str = "skip", dilate: float = 4.0, blur: float = 2.0,
                          roi_features: np.ndarray | None = None,
                          progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                          ) -> CellCropDataset:
        """One crop per label of a Labels image: a square around the label's bbox (plus
        ``margin`` of its size), the mask being that label. ``features`` (one row per label with a
        ``label`` column, e.g. a Labels layer's features) gives the order and classes."""
        import pandas as pd
        from scipy import ndimage as ndi

        image = np.asarray(image)
        labels = np.asarray(labels)
        if image.shape[:2] != labels.shape[:2]:
            raise InputError("labels", f"label image {labels.shape[:2]} does not match image "
                                       f"{image.shape[:2]}")
        rgb, conv = to_rgb_uint8(image, source="image")
        if conv == "grey":
            warnings.warn("image: grey image converted to RGB", UserWarning, stacklevel=2)
        slices = ndi.find_objects(labels.astype(np.int64, copy=False))
        present = [i + 1 for i, s in enumerate(slices) if s is not None]
        if features is not None and len(features) and "label" in features.columns:
            order = [int(v) for v in features["label"]]
            klass = (features[class_column].tolist() if class_column in features.columns
                     else [None] * len(order))
        else:
            order, klass = present, [None] * len(present)
        if not order:
            raise InputError("labels", "the label image holds no cells")
        H, W = labels.shape[:2]
        crops, masks, ids = [], [], []
        for lab in order:
            sl = slices[lab - 1] if 0 < lab <= len(slices) else None
            if sl is None:
                crops.append(np.zeros((8, 8, 3), np.uint8))
                masks.append(np.zeros((8, 8), bool))
                ids.append(str(lab))
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            side = int(np.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin))) + 2
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            ya, xa = int(round(cy - side / 2)), int(round(cx - side / 2))
            yb, xb = ya + side, xa + side
            pad = ((max(0, -ya), max(0, yb - H)), (max(0, -xa), max(0, xb - W)))
            ya, xa, yb, xb = max(ya, 0), max(xa, 0), min(yb, H), min(xb, W)
            c = rgb[ya:yb, xa:xb]
            m = labels[ya:yb, xa:xb] == lab
            if any(p for pp in pad for p in pp):
                c = np.pad(c, pad + ((0, 0),), mode="edge")
                m = np.pad(m, pad, mode="constant")
            crops.append(c)
            masks.append(m)
            ids.append(str(lab))
        ds = cls.from_arrays(crops, klass, masks, size=size, ids=ids,
                             sources=[f"label {i}" for i in ids], on_empty=on_empty,
                             dilate=dilate, blur=blur, roi_features=roi_features,
                             progress=progress, cancel=cancel)
        ds.table["label_id"] = pd.to_numeric(ds.table["id"]).astype(int)
        return ds

    @classmethod
    def _build(cls, n, load, labels, masks, ids, sources, *, size, on_empty, dilate, blur,
               roi_features=None, progress=None, cancel=None) -> CellCropDataset:
        import pandas as pd

        if on_empty not in ("skip", "error"):
            raise ValueError("on_empty must be 'skip' or 'error'")
        if n == 0:
            raise InputError("cells", "no cell crops given")
        imgs = np.empty((n, size, size, 3), np.float32)
        soft = np.empty((n, size, size), np.float32)
        keep, skipped, grey = [], [], []
        for i in range(n):
            check_cancel(cancel, "reading cells")
            rgb, conv = load(i)
            if conv == "grey":
                grey.append(sources[i])
            m = masks[i]
            if isinstance(m, _LazyMask):
                m = m.load(rgb.shape[:2])
            res = prepare_crop(rgb, size, m, dilate, blur)
            if res is None:
                if on_empty == "error":
                    raise InputError(sources[i], "no cell found in this crop (no purple-stained "
                                                 "nucleus near the centre)")
                skipped.append((ids[i], "no cell found"))
            else:
                imgs[len(keep)], soft[len(keep)] = res
                keep.append(i)
            report(progress, i + 1, n, "reading cells")
        if grey:
            warnings.warn(f"{grey[0]}: grey image converted to RGB"
                          + (f" (and {len(grey) - 1} more)" if len(grey) > 1 else ""),
                          UserWarning, stacklevel=3)
        if not keep:
            raise InputError(sources[0] if n == 1 else "cells",
                             f"no cell found in {'the crop' if n == 1 else f'any of {n} crops'}")
        if skipped:
            warnings.warn(f"skipped {len(skipped)} of {n} crops with no cell in them "
                          f"(first: {skipped[0][0]})", UserWarning, stacklevel=3)
        table = pd.DataFrame({
            "id": [str(ids[i]) for i in keep],
            "label": [None if labels[i] is None or (isinstance(labels[i], float)
                                                    and np.isnan(labels[i]))
                      else str(labels[i]) for i in keep],
            "path": [str(sources[i]) for i in keep],
        })
        roi = None if roi_features is None else np.asarray(roi_features)[keep]
        k = len(keep)
        return cls(imgs[:k], soft[:k], table, roi, skipped)


def _read_label_image(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            lab = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                lab = np.asarray(im)
    except Exception as exc:
        raise InputError(path, f"cannot read label image ({exc})") from exc
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise InputError(path, f"not a 2-D integer label image (shape {lab.shape}, {lab.dtype})")
    return lab


class _LazyMask:
    """A mask file (read when its crop is decoded, checked against the crop's shape)."""

    def __init__(self, path: str):
        self.path = path

    def load(self, shape) -> np.ndarray:
        rgb, _ = read_rgb(self.path)
        m = rgb.max(axis=-1) > 0
        if m.shape != tuple(shape):
            raise InputError(self.path, f"mask {m.shape} does not match its crop {tuple(shape)}")
        return m


def load_cells(path: str | os.PathLike | CellCropDataset, *, size: int = 128,
               labels: str | os.PathLike | None = None, on_empty: str | None = None,
               progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
               ) -> CellCropDataset:
    """Cells from what a user points at: a crop folder, a ``.csv`` table (path, label), one crop
    image (no cell -> ``InputError``), or a smear image plus its label image (``labels=``)."""
    if isinstance(path, CellCropDataset):
        return path.resized(size)
    p = Path(path)
    if not p.exists():
        raise InputError(p, "cells path not found")
    if labels is not None:
        rgb, _ = read_rgb(p)
        lab_path = Path(labels)
        if not lab_path.is_file():
            raise InputError(lab_path, "label image not found")
        lab = _read_label_image(lab_path)
        feats = None
        objects = lab_path.with_name("objects.csv")
        if objects.is_file():
            import pandas as pd

            feats = pd.read_csv(objects)
        return CellCropDataset.from_segmentation(rgb, np.asarray(lab), feats, size=size,
                                                 on_empty=on_empty or "skip",
                                                 progress=progress, cancel=cancel)
    if p.is_dir():
        return CellCropDataset.from_folder(p, size=size, on_empty=on_empty or "skip",
                                           progress=progress, cancel=cancel)
    if p.suffix.lower() == ".csv":
        import pandas as pd

        try:
            table = pd.read_csv(p)
        except Exception as exc:
            raise InputError(p, f"cannot read crop table ({exc})") from exc
        return CellCropDataset.from_table(table, size=size, root=p.parent,
                                          on_empty=on_empty or "skip", progress=progress,
                                          cancel=cancel)
    rgb, conv = read_rgb(p)
    if conv == "grey":
        warnings.warn(f"{p}: grey image converted to RGB", UserWarning, stacklevel=2)
    return CellCropDataset.from_arrays([rgb], [None], size=size, ids=[p.name],
                                       sources=[str(p)], on_empty=on_empty or "error")


def synthetic_cell_images(n_per_class: int = 8, n_classes: int = 3, size: int = 64,
                          seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Smear-like RGB crops of one centred white cell (for tests and demos, not real data).

    Beige background with pink red cells; class ``k`` has a purple nucleus and a bluish
    cytoplasm whose radii grow with ``k`` (so the classes differ in a way an image model can
    learn); positions and colours jitter.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images, labels = [], []
    for k in range(n_classes):
        for _ in range(n_per_class):
            img = np.empty((size, size, 3), np.float32)
            img[:] = np.array([0.95, 0.88, 0.80]) + rng.normal(0, 0.01, 3)
            for _ in range(int(rng.integers(3, 7))):  # red cells
                cy, cx = rng.uniform(0, size, 2)
                r = size * rng.uniform(0.08, 0.12)
                d = np.hypot(yy - cy, xx - cx)
                img[d < r] = np.array([0.85, 0.65, 0.65]) + rng.normal(0, 0.01, 3)
            cy, cx = size / 2 + rng.normal(0, size * 0.02, 2)
            r_cyto = size * (0.16 + 0.06 * k) * rng.uniform(0.95, 1.05)
            r_nuc = r_cyto * (0.75 - 0.15 * k) * rng.uniform(0.95, 1.05)
            d = np.hypot(yy - cy, xx - cx)
            img[d < r_cyto] = np.array([0.75, 0.75, 0.92]) + rng.normal(0, 0.01, 3)
            img[d < r_nuc] = np.array([0.40, 0.18, 0.60]) + rng.normal(0, 0.02, 3)
            img += rng.normal(0, 0.01, img.shape)
            images.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
            labels.append(f"class{k}")
    return images, labels
