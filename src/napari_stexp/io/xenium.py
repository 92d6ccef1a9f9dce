"""Reader for 10x Xenium Onboard Analysis (XOA >= 1.x) output folders, without spatialdata.

::

    folder/
      experiment.xenium              run manifest (JSON): pixel_size (µm/px), image file names
      cells.parquet                  one row per cell: cell_id, x_centroid, y_centroid (µm), areas
      cell_feature_matrix.h5         10x HDF5 feature-barcode matrix (cells × panel + controls)
      cell_boundaries.parquet        polygon vertices (cell_id, vertex_x, vertex_y in µm), optional
      nucleus_boundaries.parquet     same for nuclei, optional
      transcripts.parquet            one row per decoded transcript, optional, read lazily
      morphology_focus/morphology_focus_0000.ome.tif   XOA >= 2: one file per stain (pyramid)
      morphology_focus.ome.tif | morphology_mip.ome.tif | morphology.ome.tif   older layouts

Xenium positions are micrometres; the morphology image is the full-resolution frame, so
``obsm['spatial'] = centroid_µm / pixel_size`` (x, y) and ``mpp_fullres = pixel_size``
(0.2125 µm/px). The image pyramid (JPEG-2000 tiles, decoded by imagecodecs through
tifffile → zarr → dask) is opened lazily. Only "Gene Expression" features enter ``X``; the
control probe/codeword counts stay in ``obs`` (from ``cells.parquet``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ._validate import check_columns

MANIFEST = "experiment.xenium"
CELLS = "cells.parquet"
MATRIX = "cell_feature_matrix.h5"
# XOA >= 2.0 first; then the single-file layouts of XOA 1.x.
IMAGE_CANDIDATES = ("morphology_focus/morphology_focus_0000.ome.tif", "morphology_focus.ome.tif",
                    "morphology_mip.ome.tif", "morphology.ome.tif")
XENIUM_MARKERS = (MANIFEST, CELLS, MATRIX, "transcripts.parquet", "cells.zarr.zip")


def looks_like_xenium(path: str | os.PathLike) -> bool:
    """A folder holding ``experiment.xenium`` or the Xenium cell files (cheap, names only)."""
    p = Path(path)
    if p.is_file() and p.name == MANIFEST:
        return True
    if not p.is_dir():
        return False
    if (p / MANIFEST).is_file():
        return True
    # Xenium-looking folder without its manifest: claim it so the reader can say what is missing.
    return (p / CELLS).is_file() and ((p / MATRIX).is_file() or (p / "transcripts.parquet")
                                      .is_file())


def xenium_root(path: str | os.PathLike) -> Path:
    p = Path(path)
    root = p.parent if p.is_file() else p
    if not (root / MANIFEST).is_file():
        raise InputError(root / MANIFEST, "missing: not a complete Xenium output folder (the run "
                                          "manifest gives the pixel size)")
    return root


def read_manifest(root: Path) -> dict:
    from .visium_hd import read_json_object

    path = root / MANIFEST
    meta = read_json_object(path, "JSON run manifest")
    try:
        mpp = float(meta.get("pixel_size"))
    except (TypeError, ValueError):
        mpp = float("nan")
    if not np.isfinite(mpp) or mpp <= 0:
        raise InputError(path, f"pixel_size must be a positive number, got "
                               f"{meta.get('pixel_size')!r}")
    meta["pixel_size"] = mpp
    return meta


def read_parquet(path: Path, columns: list[str] | None = None,
                 required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A parquet file as a DataFrame; InputError naming it when missing, truncated or lacking
    ``required`` columns."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(path, "reading parquet needs pyarrow (pip install pyarrow)") from exc
    if not path.is_file():
        raise InputError(path, "file not found")
    read_parquet_schema(path, required)
    try:
        df = pq.read_table(path, columns=columns).to_pandas()
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for truncated files
        raise InputError(path, f"cannot read parquet (corrupt or truncated): "
                               f"{type(exc).__name__}: {exc}") from exc
    return df


def _str_ids(s: pd.Series) -> pd.Index:
    return pd.Index([v.decode() if isinstance(v, bytes) else str(v) for v in s], dtype=str)


def find_morphology_image(root: Path, meta: dict | None = None) -> Path | None:
    images = (meta or {}).get("images") or {}
    names = [images.get("morphology_focus_filepath"), images.get("morphology_mip_filepath"),
             *IMAGE_CANDIDATES, images.get("morphology_filepath")]
    for name in names:
        if name and (root / name).is_file():
            return root / name
    return None


def open_morphology(path: Path, mpp: float, channel: int = 0):
    """The morphology pyramid (one stain, DAPI by default) as a lazy grey ImagePyramid at
    ``mpp`` µm/px; tiles are decoded only when a region is shown."""
    from .image import ImagePyramid
    from .wsi import open_image

    pyr = open_image(path)
    levels = pyr.levels
    layout = pyr.metadata.get("layout")
    if levels[0].ndim == 3:  # (Y, X, C): the stains are channels, not colours
        c = min(channel, levels[0].shape[-1] - 1)
        levels = [lvl[..., c] for lvl in levels]
        layout = "grey"
    meta = {k: v for k, v in pyr.metadata.items() if k != "layout"}
    meta.update({"layout": layout, "channel": channel, "file_mpp": pyr.mpp,
                 "mpp_source": "file", "format": "xenium-morphology"})
    return ImagePyramid(levels=levels, path=str(path), name=path.stem.removesuffix(".ome"),
                        mpp=mpp, mpp_source="file", downsamples=list(pyr.downsamples),
                        metadata=meta)


def read_boundaries(path: Path, mpp: float) -> pd.DataFrame:
    """Polygon vertices (cell_id, vertex_x, vertex_y) with full-resolution pixel columns added."""
    df = read_parquet(path, required=("cell_id", "vertex_x", "vertex_y"))
    df["cell_id"] = _str_ids(df["cell_id"])
    df["x_px"] = df["vertex_x"].to_numpy(np.float64) / mpp
    df["y_px"] = df["vertex_y"].to_numpy(np.float64) / mpp
    return df


def lazy_transcripts(path: Path):
    """``transcripts.parquet`` as a lazy dask DataFrame (nothing read but the footer)."""
    import dask.dataframe as dd

    read_parquet_schema(path, ("x_location", "y_location", "feature_name"))
    return dd.read_parquet(str(path))


def read_parquet_schema(path: Path, required: tuple[str, ...] = ()) -> list[str]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:
        raise InputError(path, f"cannot read parquet footer (corrupt or truncated): "
                               f"{type(exc).__name__}: {exc}") from exc
    check_columns(path, names, required)
    return names


def read_xenium(path: str | os.PathLike, *, images: bool = True, transcripts: bool = True,
                boundaries: bool = True, section: str | None = None) -> dict[str, Any]:
    """Read a Xenium output folder.

    Returns ``{"adata", "image" (ImagePyramid or None), "cell_boundaries", "nucleus_boundaries"
    (DataFrames or None), "transcripts" (lazy dask DataFrame or None), "manifest"}``. The AnnData
    is one section (``section`` or the manifest's ``region_name``/the folder name).
    """
    from .spatial import build_st_adata
    from .visium import read_10x_h5

    root = xenium_root(path)
    meta = read_manifest(root)
    mpp = float(meta["pixel_size"])
    cells = read_parquet(root / CELLS, required=("cell_id", "x_centroid", "y_centroid"))
    cells.index = _str_ids(cells.pop("cell_id"))
    if cells.index.has_duplicates:
        raise InputError(root / CELLS, f"duplicate cell ids: "
                                       f"{', '.join(cells.index[cells.index.duplicated()][:5])}")
    X, barcodes, var, attrs = read_10x_h5(root / MATRIX)
    bc = pd.Index(barcodes, dtype=str)
    missing = bc[~bc.isin(cells.index)]
    if len(missing):
        raise InputError(root / MATRIX, f"{len(missing)} cell id(s) of the matrix are not in "
                                        f"{CELLS} (e.g. {', '.join(missing[:3])})")
    cells = cells.loc[bc]
    xy = cells[["x_centroid", "y_centroid"]].to_numpy(np.float64) / mpp
    if not np.isfinite(xy).all():
        raise InputError(root / CELLS, "non-numeric or missing centroids")
    area = cells["cell_area"].to_numpy(np.float64) if "cell_area" in cells else None
    diam_px = None
    if area is not None and np.isfinite(area).any():
        diam_px = float(2 * np.sqrt(np.nanmedian(area) / np.pi) / mpp)
    img_path = find_morphology_image(root, meta)
    sec = section or str(meta.get("region_name") or root.name)
    if sec in ("", "region"):
        sec = root.name
    extra = cells.drop(columns=["x_centroid", "y_centroid"])
    for col in extra.columns:
        if extra[col].dtype == object:
            extra[col] = pd.Categorical(extra[col].astype(str))
    extra.index = bc
    adata = build_st_adata(X, bc, var.index, xy, section=sec, patient=sec,
                           spot_diameter_fullres=diam_px, mpp_fullres=mpp,
                           image_path=img_path if images else None, image_scale=1.0,
                           source=root, extra_obs=extra, var=var)
    entry = adata.uns["spatial"][sec]["metadata"]
    entry.update({"format": "xenium", "matrix_file": str(root / MATRIX),
                  "cells_file": str(root / CELLS), "shape": "cells",
                  "software_version": str(meta.get("analysis_sw_version", "")),
                  "panel_name": str(meta.get("panel_name", "")),
                  "n_cells_manifest": int(meta.get("num_cells") or adata.n_obs)})
    out: dict[str, Any] = {"adata": adata, "manifest": meta, "image": None,
                           "cell_boundaries": None, "nucleus_boundaries": None,
                           "transcripts": None, "root": root}
    if images and img_path is not None:
        out["image"] = open_morphology(img_path, mpp)
        out["image"].metadata["section"] = sec
        entry["image_width"], entry["image_height"] = out["image"].width, out["image"].height
        if out["image"].name == "image":
            out["image"].name = sec
    if boundaries:
        for key, fname in (("cell_boundaries", "cell_boundaries.parquet"),
                           ("nucleus_boundaries", "nucleus_boundaries.parquet")):
            if (root / fname).is_file():
                out[key] = read_boundaries(root / fname, mpp)
    if transcripts and (root / "transcripts.parquet").is_file():
        out["transcripts"] = lazy_transcripts(root / "transcripts.parquet")
    return out


def cell_polygons(boundaries: pd.DataFrame, cell_ids: pd.Index | None = None
                  ) -> list[np.ndarray]:
    """One (n, 2) array of (row, col) full-resolution pixels per cell, in ``cell_ids`` order."""
    groups = {k: g for k, g in boundaries.groupby("cell_id", sort=False)}
    ids = list(groups) if cell_ids is None else [str(c) for c in cell_ids]
    return [groups[c][["y_px", "x_px"]].to_numpy(np.float64) for c in ids if c in groups]


def open_xenium(path: str | os.PathLike, *, images: bool = True):
    """A Xenium folder as an :class:`~napari_stexp.io.open.Opened` record: one section of cells,
    the morphology pyramid, boundary tables and the lazy transcripts table."""
    from .open import Opened
    from .st import section_summary

    r = read_xenium(path, images=images)
    ad = r["adata"]
    sec = str(ad.obs["section"].iloc[0])
    out = Opened(path=str(r["root"]), kind="xenium", adatas={sec: ad})
    row = section_summary(ad)
    if r["image"] is not None:
        out.images[sec] = r["image"]
        row["levels"] = [tuple(int(v) for v in lvl.shape) for lvl in r["image"].levels]
    for key in ("cell_boundaries", "nucleus_boundaries", "transcripts"):
        if r[key] is not None:
            out.tables[key] = r[key]
    out.summary = {"kind": "xenium", "path": str(r["root"]), "sections": [row],
                   "software": r["manifest"].get("analysis_sw_version"),
                   "panel": r["manifest"].get("panel_name"),
                   "tables": {k: (int(len(v)) if k != "transcripts" else "lazy")
                              for k, v in out.tables.items()}}
    return out
