"""Reader for 10x Visium HD Space Ranger output (``binned_outputs/square_{002,008,016}um``).

::

    outs/binned_outputs/square_008um/
      filtered_feature_bc_matrix.h5        10x HDF5 (or the filtered_feature_bc_matrix/ mtx folder)
      spatial/tissue_positions.parquet     barcode, in_tissue, array_row, array_col,
                                           pxl_row_in_fullres, pxl_col_in_fullres
      spatial/scalefactors_json.json       bin_size_um, microns_per_pixel, spot_diameter_fullres,
                                           tissue_{hires,lowres}_scalef
      spatial/tissue_{hires,lowres}_image.png

Bins are squares of ``bin_size_um`` (2, 8 or 16 µm); ``obsm['spatial']`` are full-resolution
pixel centres (x, y) and ``mpp_fullres`` is ``microns_per_pixel`` when present, else
``bin_size_um / spot_diameter_fullres`` (HD's "spot diameter" is the bin pitch in pixels). The
bin size travels in ``uns['spatial'][section]['scalefactors']['bin_size_um']`` and
``metadata['shape'] = 'square'``. Only in-tissue bins are kept.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

BIN_RE = re.compile(r"^square_(\d{3})um$")
BIN_SIZES = (2, 8, 16)
DEFAULT_BIN = 8


def _bin_dirs(folder: Path) -> dict[int, Path]:
    return {int(m.group(1)): d for d in sorted(folder.iterdir())
            if d.is_dir() and (m := BIN_RE.match(d.name))}


def _binned_outputs(p: Path) -> Path | None:
    for cand in (p, p / "binned_outputs", p / "outs" / "binned_outputs"):
        if cand.is_dir() and (cand.name == "binned_outputs" or _bin_dirs(cand)):
            return cand
    return None


def looks_like_visium_hd(path: str | os.PathLike) -> bool:
    """A Space Ranger HD ``outs/``, its ``binned_outputs/`` or one ``square_NNNum`` folder."""
    p = Path(path)
    if not p.is_dir():
        return False
    if BIN_RE.match(p.name) and (p / "spatial").is_dir():
        return True
    return _binned_outputs(p) is not None


def resolve_bin_folder(path: str | os.PathLike, bin_size_um: int | None = None) -> Path:
    """The ``square_NNNum`` folder to read: ``path`` itself, or ``bin_size_um`` (default 8 µm,
    else the smallest there is) under ``binned_outputs``. InputError lists what exists."""
    p = Path(path)
    if BIN_RE.match(p.name):
        if bin_size_um is not None and int(BIN_RE.match(p.name).group(1)) != int(bin_size_um):
            raise InputError(p, f"is the {p.name} bin folder, not square_{int(bin_size_um):03d}um")
        return p
    bo = _binned_outputs(p)
    if bo is None:
        raise InputError(p, "not a Visium HD folder (no binned_outputs/square_NNNum)")
    bins = _bin_dirs(bo)
    if not bins:
        raise InputError(bo, "no square_NNNum bin folder (expected square_002um, square_008um "
                             "or square_016um)")
    if bin_size_um is None:
        size = DEFAULT_BIN if DEFAULT_BIN in bins else min(bins)
    else:
        size = int(bin_size_um)
        if size not in bins:
            raise InputError(bo / f"square_{size:03d}um", "bin folder not found; available: "
                             + ", ".join(d.name for d in bins.values()))
    return bins[size]


def _open_text(path: Path):
    """A text handle for ``*.tsv[.gz]``, gzip or not (some writers name plain TSV ``.gz``)."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        with _open_text(path) as fh:
            return pd.read_csv(fh, sep="\t", header=None, dtype=str, quotechar='"')
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(path, f"cannot read TSV: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise InputError(path, "empty file") from exc


def _first(folder: Path, names: tuple[str, ...]) -> Path:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise InputError(folder / names[0], "file not found")


def read_mtx_folder(folder: Path) -> tuple[sp.csr_matrix, list[str], pd.DataFrame]:
    """A 10x ``filtered_feature_bc_matrix/`` folder: (bins × genes CSR, barcodes, var)."""
    import anndata as ad
    import scipy.io

    mtx = _first(folder, ("matrix.mtx.gz", "matrix.mtx"))
    bcs = _read_tsv(_first(folder, ("barcodes.tsv.gz", "barcodes.tsv")))[0].tolist()
    feats = _read_tsv(_first(folder, ("features.tsv.gz", "features.tsv", "genes.tsv")))
    try:
        with _open_text(mtx) as fh:
            M = scipy.io.mmread(fh)
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(mtx, f"not a MatrixMarket file: {exc}") from exc
    M = sp.csr_matrix(M).T.tocsr().astype(np.float32)
    if M.shape != (len(bcs), len(feats)):
        raise InputError(mtx, f"matrix is {M.shape[1]}×{M.shape[0]} (genes × bins) but there are "
                              f"{len(feats)} features and {len(bcs)} barcodes")
    ftype = feats[2] if feats.shape[1] > 2 else pd.Series(["Gene Expression"] * len(feats))
    var = pd.DataFrame({"gene_ids": feats[0].to_numpy(), "feature_types": ftype.to_numpy()})
    names = feats[1] if feats.shape[1] > 1 else feats[0]
    keep = np.flatnonzero(var["feature_types"].to_numpy() == "Gene Expression")
    M, var = M[:, keep], var.iloc[keep]
    var.index = ad.utils.make_index_unique(pd.Index(names.to_numpy()[keep], dtype=str))
    return M, bcs, var


def read_json_object(path: Path, what: str = "JSON object") -> dict:
    """A JSON file holding an object; InputError naming it when unreadable or not an object."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a valid {what} ({exc})") from exc
    if not isinstance(raw, dict):
        raise InputError(path, f"not a valid {what} (not a JSON object)")
    return raw


def read_scalefactors(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise InputError(path, "file not found (Visium HD needs the bin size and µm/px)")
    raw = read_json_object(path, "scalefactors JSON")
    return {k: float(v) for k, v in raw.items() if isinstance(v, int | float)}


def read_visium_hd(path: str | os.PathLike, *, bin_size_um: int | None = None,
                   images: bool = True, section: str | None = None):
    """Read one bin size of a Visium HD run into an ST AnnData (one section)."""
    from .spatial import build_st_adata
    from .visium import _load_png, read_10x_h5, read_tissue_positions

    folder = resolve_bin_folder(path, bin_size_um)
    size = int(BIN_RE.match(folder.name).group(1))
    spatial_dir = folder / "spatial"
    sf = read_scalefactors(spatial_dir / "scalefactors_json.json")
    h5 = folder / "filtered_feature_bc_matrix.h5"
    mtx_dir = folder / "filtered_feature_bc_matrix"
    attrs: dict[str, Any] = {}
    if h5.is_file():
        X, barcodes, var, attrs = read_10x_h5(h5)
        matrix_file = h5
    elif mtx_dir.is_dir():
        X, barcodes, var = read_mtx_folder(mtx_dir)
        matrix_file = mtx_dir
    else:
        raise InputError(h5, "file not found (nor the filtered_feature_bc_matrix/ folder)")
    pos_path = spatial_dir / "tissue_positions.parquet"
    if not pos_path.is_file():
        pos_path = spatial_dir / "tissue_positions.csv"
        if not pos_path.is_file():
            raise InputError(spatial_dir / "tissue_positions.parquet", "file not found")
    pos = read_tissue_positions(pos_path)
    bc = pd.Index(barcodes, dtype=str)
    idx = pos.index.get_indexer(bc)
    if (idx < 0).all():
        raise InputError(matrix_file, f"none of the {len(bc)} matrix barcodes (e.g. "
                                      f"{', '.join(bc[:3])}) is in {pos_path.name}")
    in_tissue = np.zeros(len(bc), dtype=bool)
    ok = idx >= 0
    in_tissue[ok] = pos["in_tissue"].to_numpy()[idx[ok]] == 1
    keep = np.flatnonzero(in_tissue)
    if keep.size == 0:
        raise InputError(matrix_file, "no matrix barcode is in the tissue")
    p = pos.iloc[idx[keep]]
    xy = p[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    if not np.isfinite(xy).all():
        raise InputError(pos_path, "non-numeric or missing pixel coordinates")
    bin_um = float(sf.get("bin_size_um") or size)
    if abs(bin_um - size) > 1e-6:
        raise InputError(spatial_dir / "scalefactors_json.json",
                         f"bin_size_um {bin_um:g} does not match the folder {folder.name}")
    diam = sf.get("spot_diameter_fullres")
    mpp = sf.get("microns_per_pixel") or (bin_um / diam if diam else None)
    if diam is None and mpp:
        diam = bin_um / mpp
    imgs: dict[str, np.ndarray] = {}
    if images:
        for res in ("hires", "lowres"):
            ip = spatial_dir / f"tissue_{res}_image.png"
            if ip.is_file() and sf.get(f"tissue_{res}_scalef"):
                imgs[res] = _load_png(ip)
    if section is None:
        run = folder.parent
        for skip in ("binned_outputs", "outs"):
            run = run.parent if run.name == skip else run
        section = f"{run.name}_{size:03d}um"
    obs_names = bc[keep]
    extra = pd.DataFrame({"in_tissue": 1, "array_row": p["array_row"].to_numpy(np.int64),
                          "array_col": p["array_col"].to_numpy(np.int64)},
                         index=pd.Index(obs_names, dtype=str))
    hires = imgs.get("hires", imgs.get("lowres"))
    hires_f = sf.get("tissue_hires_scalef" if "hires" in imgs else "tissue_lowres_scalef")
    adata = build_st_adata(X[keep], obs_names, var.index, xy, section=section, patient=section,
                           array_xy=p[["array_col", "array_row"]].to_numpy(),
                           spot_diameter_fullres=diam, mpp_fullres=mpp,
                           hires_image=hires if "hires" in imgs else None,
                           hires_scalef=hires_f, source=folder, extra_obs=extra, var=var)
    entry = adata.uns["spatial"][section]
    entry["scalefactors"].update(sf)
    entry["scalefactors"]["bin_size_um"] = bin_um
    if "lowres" in imgs:
        entry["images"]["lowres"] = imgs["lowres"]
    meta = entry["metadata"]
    meta.update({"format": "visium-hd", "shape": "square", "bin_size_um": bin_um,
                 "positions_file": str(pos_path), "matrix_file": str(matrix_file)})
    if "software_version" in attrs:
        meta["software_version"] = str(np.atleast_1d(attrs["software_version"])[0])
    return adata
