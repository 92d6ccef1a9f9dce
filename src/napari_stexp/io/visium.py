"""Reader for 10x Visium Space Ranger output folders (``outs/``), without scanpy.

::

    folder/                          (or folder/outs/)
      filtered_feature_bc_matrix.h5  10x HDF5 (v3: matrix/{barcodes,data,indices,indptr,shape,
                                     features/{id,name,feature_type}}; v2 genome groups accepted)
      spatial/tissue_positions_list.csv   Space Ranger v1: no header
      spatial/tissue_positions.csv        Space Ranger v2+: header row
      spatial/tissue_positions.parquet    Space Ranger v3 (needs pyarrow)
      spatial/scalefactors_json.json
      spatial/tissue_hires_image.png, spatial/tissue_lowres_image.png

Positions are full-resolution pixels: ``obsm['spatial'] = (pxl_col_in_fullres, pxl_row_in_fullres)``
(x = column). Spots are 55 µm across, so ``mpp_fullres = 55 / spot_diameter_fullres``.
The full-resolution image is not part of a Space Ranger folder; pass ``fullres_image=`` to link it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, StexpWarning
from ._validate import check_columns
from .spatial import build_st_adata

VISIUM_SPOT_DIAMETER_UM = 55.0
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col",
                    "pxl_row_in_fullres", "pxl_col_in_fullres"]
POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
MATRIX_FILES = ("filtered_feature_bc_matrix.h5",)


class VisiumWarning(StexpWarning):
    """Something in a Space Ranger folder was dropped or replaced while reading."""


def find_visium_root(folder: str | os.PathLike) -> Path:
    """``folder`` or ``folder/outs`` when it holds a Space Ranger matrix and ``spatial/``."""
    folder = Path(folder)
    for cand in (folder, folder / "outs"):
        if (cand / "spatial").is_dir() and any((cand / m).is_file() for m in MATRIX_FILES):
            return cand
    for cand in (folder, folder / "outs"):
        if any((cand / "spatial" / p).is_file() for p in POSITION_FILES):
            raise InputError(cand, f"Space Ranger folder without {MATRIX_FILES[0]}")
    raise InputError(folder, "not a Space Ranger folder (no spatial/ and "
                             f"{MATRIX_FILES[0]})")


# ----------------------------------------------------------------------------- matrix


def _strs(ds) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in ds[()]]


def read_10x_h5(path: str | os.PathLike, *, gene_expression_only: bool = True
                ) -> tuple[sp.csr_matrix, list[str], pd.DataFrame, dict[str, Any]]:
    """Read a 10x HDF5 feature-barcode matrix with h5py.

    Returns ``(X barcodes x features CSR float32, barcodes, var, attrs)``; ``var`` is indexed by
    unique gene symbols with columns ``gene_ids``, ``feature_types`` (and ``genome``).
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError as exc:
        raise InputError(path, "file not found") from exc
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 file (corrupt or truncated): {exc}") from exc
    try:
        with f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if "matrix" in f:  # v3
                g = f["matrix"]
                feats = g["features"]
                ids = _strs(feats["id"])
                names = _strs(feats["name"])
                ftype = (_strs(feats["feature_type"]) if "feature_type" in feats
                         else ["Gene Expression"] * len(ids))
                genome = _strs(feats["genome"]) if "genome" in feats else None
            else:  # v2: one group per genome
                groups = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
                if not groups:
                    raise InputError(path, "not a 10x matrix: no 'matrix' group")
                g = f[groups[0]]
                ids = _strs(g["genes"])
                names = _strs(g["gene_names"])
                ftype = ["Gene Expression"] * len(ids)
                genome = [groups[0]] * len(ids)
            data = g["data"][()]
            indices = g["indices"][()]
            indptr = g["indptr"][()]
            shape = tuple(int(v) for v in g["shape"][()])
            barcodes = _strs(g["barcodes"])
    except InputError:
        raise
    except KeyError as exc:
        raise InputError(path, f"not a 10x matrix: missing dataset {exc}") from exc
    except OSError as exc:
        raise InputError(path, f"cannot read (corrupt or truncated): {exc}") from exc
    n_feat, n_bc = shape
    if len(barcodes) != n_bc or len(ids) != n_feat or len(indptr) != n_bc + 1:
        raise InputError(path, f"inconsistent matrix: shape {shape}, {len(barcodes)} barcodes, "
                               f"{len(ids)} features, indptr {len(indptr)}")
    from ._validate import check_compressed, check_counts

    # one column per barcode (CSC): a bad index or indptr would crash scipy or train garbage
    check_compressed(path, indices, indptr, n_bc, n_feat, n_values=len(data), major="barcode",
                     minor="feature")
    check_counts(path, data, what="count")
    try:
        X = sp.csc_matrix((data.astype(np.float32), indices, indptr), shape=shape).T.tocsr()
    except ValueError as exc:
        raise InputError(path, f"invalid sparse matrix: {exc}") from exc
    var = pd.DataFrame({"gene_ids": ids, "feature_types": ftype})
    if genome is not None:
        var["genome"] = genome
    if gene_expression_only:
        keep = np.flatnonzero(var["feature_types"].to_numpy() == "Gene Expression")
        if keep.size < len(var):
            X = X[:, keep]
            var = var.iloc[keep]
        names = [names[i] for i in keep]
    import anndata as ad

    var.index = ad.utils.make_index_unique(pd.Index(names, dtype=str))
    return X, barcodes, var, attrs


# ----------------------------------------------------------------------------- spatial/


def read_tissue_positions(path: str | os.PathLike) -> pd.DataFrame:
    """Read v1 (no header), v2 (header) or parquet tissue positions, indexed by barcode."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise InputError(path, "reading tissue_positions.parquet needs pyarrow "
                                   "(pip install pyarrow)") from exc
        try:
            df = pd.read_parquet(path)
        except Exception as exc:
            raise InputError(path, f"cannot read parquet: {exc}") from exc
    else:
        try:
            first = path.open("r", encoding="utf-8", errors="replace").readline()
        except FileNotFoundError as exc:
            raise InputError(path, "file not found") from exc
        has_header = first.split(",")[0].strip().strip('"') == "barcode"
        try:
            if has_header:
                df = pd.read_csv(path)
            else:
                df = pd.read_csv(path, header=None)
                if df.shape[1] != len(POSITION_COLUMNS):
                    raise InputError(path, f"expected {len(POSITION_COLUMNS)} columns "
                                           f"({', '.join(POSITION_COLUMNS)}), got {df.shape[1]}")
                df.columns = POSITION_COLUMNS
        except InputError:
            raise
        except Exception as exc:
            raise InputError(path, f"cannot parse tissue positions: {exc}") from exc
    check_columns(path, df.columns, POSITION_COLUMNS)
    for c in POSITION_COLUMNS[1:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.set_index(df["barcode"].astype(str))
    if df.index.has_duplicates:
        raise InputError(path, f"duplicate barcode(s): "
                               f"{', '.join(df.index[df.index.duplicated()][:5])}")
    return df


def find_positions_file(spatial_dir: Path) -> Path:
    for name in POSITION_FILES:
        if (spatial_dir / name).is_file():
            return spatial_dir / name
    raise InputError(spatial_dir, f"no tissue positions file ({' or '.join(POSITION_FILES)})")


def _is_placeholder(img: np.ndarray) -> bool:
    """True for an image that carries no picture (all black or one flat colour)."""
    rgb = img[..., :3] if img.ndim == 3 else img
    return bool(rgb.size == 0 or rgb.max() == 0 or rgb.min() == rgb.max())


def _load_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise InputError(path, f"cannot decode image: {exc}") from exc


# ----------------------------------------------------------------------------- reader


def read_visium(folder: str | os.PathLike, *, library_id: str | None = None,
                images: bool = True, fullres_image: str | os.PathLike | None = None,
                counts_file: str = "filtered_feature_bc_matrix.h5"):
    """Read a Space Ranger output folder into an ST AnnData (one section).

    Keeps the in-tissue barcodes of the matrix (matrix order); only 'Gene Expression' features.
    ``library_id`` (default: the matrix's ``library_ids`` attribute, else the folder name) becomes
    ``obs['section']`` and ``obs['patient']``. An all-black placeholder hires image is dropped with a
    warning and the lowres image used instead.
    """
    root = find_visium_root(folder)
    image_path = None
    if fullres_image is not None:
        image_path = Path(fullres_image)
        if not image_path.is_file():
            raise InputError(image_path, "full-resolution image not found")
    spatial_dir = root / "spatial"
    h5 = root / counts_file
    X, barcodes, var, attrs = read_10x_h5(h5)

    pos_path = find_positions_file(spatial_dir)
    pos = read_tissue_positions(pos_path)
    bc = pd.Index(barcodes)
    in_pos = bc.isin(pos.index)
    if not in_pos.any():
        raise InputError(h5, f"none of the {len(bc)} matrix barcodes (e.g. {', '.join(bc[:3])}) "
                             f"is in {pos_path.name}")
    in_tissue = np.zeros(len(bc), dtype=bool)
    in_tissue[in_pos] = pos.loc[bc[in_pos], "in_tissue"].to_numpy() == 1
    n_no_pos = int((~in_pos).sum())
    n_out = int((in_pos & ~in_tissue).sum())
    if n_no_pos:
        warnings.warn(f"{h5}: dropped {n_no_pos} barcode(s) missing from {pos_path.name}",
                      VisiumWarning, stacklevel=2)
    if n_out:
        warnings.warn(f"{h5}: dropped {n_out} barcode(s) outside the tissue (in_tissue = 0)",
                      VisiumWarning, stacklevel=2)
    keep = np.flatnonzero(in_tissue)
    if keep.size == 0:
        raise InputError(h5, "no matrix barcode is in the tissue")
    obs_names = bc[keep]
    p = pos.loc[obs_names]
    xy = p[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise InputError(pos_path, "non-numeric or missing pixel coordinates")

    # scale factors
    sf_path = spatial_dir / "scalefactors_json.json"
    scalefactors: dict[str, float] = {}
    if sf_path.is_file():
        try:
            raw = json.loads(sf_path.read_text())
        except (ValueError, json.JSONDecodeError) as exc:
            raise InputError(sf_path, f"invalid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise InputError(sf_path, f"expected a JSON object, got {type(raw).__name__}")
        for k, v in raw.items():
            # the sizes and scales we use must be positive numbers (a string or a negative
            # value would silently drop the images or flip the spot frame)
            if k.endswith(("_scalef", "_fullres")) and (
                    isinstance(v, bool) or not isinstance(v, int | float)
                    or not np.isfinite(v) or v <= 0):
                raise InputError(sf_path, f"{k} is {v!r}, not a positive number")
        scalefactors = {k: float(v) for k, v in raw.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)}
    else:
        warnings.warn(f"{sf_path}: missing; spot size, µm/px and images unavailable",
                      VisiumWarning, stacklevel=2)
    diam = scalefactors.get("spot_diameter_fullres")
    mpp = VISIUM_SPOT_DIAMETER_UM / diam if diam else None

    # images
    imgs: dict[str, np.ndarray] = {}
    if images and scalefactors:
        for kind in ("hires", "lowres"):
            ip = spatial_dir / f"tissue_{kind}_image.png"
            sf = scalefactors.get(f"tissue_{kind}_scalef")
            if ip.is_file() and sf:
                imgs[kind] = _load_png(ip)
        if "hires" in imgs and _is_placeholder(imgs["hires"]):
            real = "lowres" in imgs and not _is_placeholder(imgs["lowres"])
            warnings.warn(f"{spatial_dir / 'tissue_hires_image.png'}: blank placeholder image "
                          f"ignored{'; using the lowres image' if real else ''}",
                          VisiumWarning, stacklevel=2)
            del imgs["hires"]
        if "lowres" in imgs and _is_placeholder(imgs["lowres"]):
            warnings.warn(f"{spatial_dir / 'tissue_lowres_image.png'}: blank placeholder image "
                          "ignored", VisiumWarning, stacklevel=2)
            del imgs["lowres"]

    lib = library_id
    if lib is None:
        ids = attrs.get("library_ids")
        if ids is not None and len(np.atleast_1d(ids)):
            v = np.atleast_1d(ids)[0]
            lib = v.decode() if isinstance(v, bytes) else str(v)
        else:
            lib = root.parent.name if root.name == "outs" else root.name
    extra = pd.DataFrame({
        "in_tissue": p["in_tissue"].to_numpy(dtype=np.int64),
        "array_row": p["array_row"].to_numpy(dtype=np.int64),
        "array_col": p["array_col"].to_numpy(dtype=np.int64),
    }, index=pd.Index(obs_names, dtype=str))
    adata = build_st_adata(
        X[keep],
        obs_names,
        var.index,
        xy,
        section=lib,
        patient=lib,
        array_xy=p[["array_col", "array_row"]].to_numpy(),
        spot_diameter_fullres=diam,
        mpp_fullres=mpp,
        image_path=image_path,
        image_scale=1.0,
        hires_image=imgs.get("hires"),
        hires_scalef=scalefactors.get("tissue_hires_scalef"),
        source=root,
        extra_obs=extra,
        var=var,
    )
    entry = adata.uns["spatial"][lib]
    entry["scalefactors"].update(scalefactors)
    if "lowres" in imgs:
        entry["images"]["lowres"] = imgs["lowres"]
    meta = entry["metadata"]
    meta["format"] = "visium"
    meta["positions_file"] = str(pos_path)
    meta["matrix_file"] = str(h5)
    for k in ("software_version", "chemistry_description"):
        v = attrs.get(k)
        if v is not None:
            v = np.atleast_1d(v)[0]
            meta[k] = v.decode() if isinstance(v, bytes) else str(v)
    meta["join"] = {"n_matrix_barcodes": len(bc), "n_barcodes_without_position": n_no_pos,
                    "n_barcodes_out_of_tissue": n_out, "n_positions": len(pos)}
    return adata
