"""Reader for ``.h5ad`` files following the scanpy/squidpy spatial conventions.

Accepted: ``obsm['spatial']`` (required: spot centres in full-resolution pixels, x = column),
``uns['spatial'][library_id]`` with ``images``/``scalefactors`` (optional ``metadata``), raw counts in
``layers['counts']`` or ``X``. Files with several libraries are split into one AnnData per section,
using ``obs['section']`` or a squidpy-style ``obs['library_id']`` column.
Missing ``obs`` columns are filled: ``section``/``patient`` from the library id (or the file stem),
``label`` NaN, ``array_x``/``array_y`` from Visium's ``array_col``/``array_row``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, StexpWarning
from .spatial import split_sections, validate_st_adata

#: obs columns that may say which library (section) a spot belongs to, in order of preference.
LIBRARY_COLUMNS = ("section", "library_id", "library", "sample", "batch")


class H5adWarning(StexpWarning):
    """An h5ad was read with a repair or a doubtful assumption (e.g. normalised X as counts)."""


def _looks_like_counts(X, max_values: int = 100_000) -> bool:
    """Non-negative and integer valued (checked on up to ``max_values`` stored values)."""
    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    vals = np.asarray(vals[:max_values])
    if vals.size == 0:
        return True
    if vals.dtype.kind in "iub":
        return bool((vals >= 0).all())
    return bool(np.all(vals >= 0) and np.allclose(vals, np.round(vals)))


def _section_column(adata, libs: list[str]) -> str | None:
    for col in LIBRARY_COLUMNS:
        if col in adata.obs.columns:
            vals = set(pd.unique(adata.obs[col].astype(str)))
            if col == "section" or not libs or vals <= set(libs):
                return col
    return None


def _fill_obs(adata, path: Path) -> None:
    libs = [str(k) for k in (adata.uns.get("spatial") or {}).keys()]
    col = _section_column(adata, libs)
    if col is not None:
        adata.obs["section"] = adata.obs[col].astype(str)
    elif len(libs) > 1:
        raise InputError(path, f"{len(libs)} libraries in uns['spatial'] ({', '.join(libs)}) but "
                               f"no obs column ({', '.join(LIBRARY_COLUMNS)}) says which spot "
                               "belongs to which")
    else:
        adata.obs["section"] = libs[0] if libs else path.stem
    adata.obs["section"] = pd.Categorical(adata.obs["section"].astype(str))
    if "patient" not in adata.obs.columns:
        adata.obs["patient"] = adata.obs["section"]
    adata.obs["patient"] = pd.Categorical(adata.obs["patient"].astype(str))
    if "label" not in adata.obs.columns:
        adata.obs["label"] = pd.Categorical([np.nan] * adata.n_obs)
    elif not isinstance(adata.obs["label"].dtype, pd.CategoricalDtype):
        adata.obs["label"] = pd.Categorical(adata.obs["label"])
    for dst, src in (("array_x", "array_col"), ("array_y", "array_row")):
        if dst not in adata.obs.columns and src in adata.obs.columns:
            adata.obs[dst] = adata.obs[src].astype(np.int64)


def _fill_uns(adata, section: str, path: Path) -> None:
    """Make sure ``uns['spatial'][section]`` has images/scalefactors/metadata dicts."""
    spatial = dict(adata.uns.get("spatial") or {})
    if section not in spatial and len(spatial) == 1:  # one library under another name
        spatial = {section: next(iter(spatial.values()))}
    entry = dict(spatial.get(section) or {})
    for k in ("images", "scalefactors", "metadata"):
        entry[k] = dict(entry.get(k) or {})
    meta = entry["metadata"]
    meta.setdefault("image_scale", 1.0)
    meta.setdefault("source", str(path))
    sf = entry["scalefactors"]
    if "mpp_fullres" not in meta and sf.get("spot_diameter_fullres") and \
            {"array_row", "array_col"} <= set(adata.obs.columns):
        # scanpy-read Visium: 55 µm spots
        meta["mpp_fullres"] = 55.0 / float(sf["spot_diameter_fullres"])
        meta["mpp_source"] = "Visium spot diameter (55 um)"
    adata.uns["spatial"] = {section: entry}


def read_st_h5ad(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ST ``.h5ad`` into ``{section: AnnData}`` (validated, obs/uns filled, counts kept)."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:
        raise InputError(path, f"cannot read h5ad (corrupt or truncated?): "
                               f"{type(exc).__name__}: {exc}") from exc
    if adata.n_obs == 0:
        raise InputError(path, "no spots (0 rows): nothing to show, train on or evaluate")
    if "spatial" not in adata.obsm:
        raise InputError(path, "no spot coordinates: obsm['spatial'] is missing")
    xy = np.asarray(adata.obsm["spatial"])
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise InputError(path, f"obsm['spatial'] must be (n_spots, 2), got {xy.shape}")
    if not np.issubdtype(xy.dtype, np.number) or np.issubdtype(xy.dtype, np.complexfloating):
        raise InputError(path, f"obsm['spatial'] holds {xy.dtype} values, not numeric pixel "
                               "coordinates")
    adata.obsm["spatial"] = xy[:, :2].astype(np.float64)
    from ._validate import check_counts, check_sparse

    for where, M in (("X", adata.X), *((f"layers['{k}']", v) for k, v in adata.layers.items())):
        if M is not None:
            check_sparse(f"{path} {where}", M)
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if counts is not None:
        check_counts(path, counts, adata.obs_names,
                     what="layers['counts']" if "counts" in adata.layers else "X")
    if "counts" not in adata.layers:
        if not _looks_like_counts(adata.X):
            warnings.warn(f"{path}: X looks normalised (non-integer or negative values) and there "
                          "is no layers['counts']; using X as counts", H5adWarning, stacklevel=2)
        adata.layers["counts"] = adata.X.copy() if sp.issparse(adata.X) else np.array(adata.X)
    _fill_obs(adata, path)
    sections = split_sections(adata) if adata.obs["section"].nunique() > 1 else {
        str(adata.obs["section"].iloc[0]) if adata.n_obs else path.stem: adata}
    out: dict[str, Any] = {}
    for sec, sub in sections.items():
        sub.obs["section"] = pd.Categorical([sec] * sub.n_obs)
        _fill_uns(sub, sec, path)
        validate_st_adata(sub, f"{path} [{sec}]" if len(sections) > 1 else path)
        out[sec] = sub
    return out


# -- peeking (h5py, no matrix read): what the slide collection lists


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


def read_obs_column(f, name: str) -> np.ndarray | None:
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
    sec_col = next((c for c in LIBRARY_COLUMNS if c in columns), None)
    section = read_obs_column(f, sec_col) if sec_col else None
    label = read_obs_column(f, "label") if "label" in columns else None
    patient = read_obs_column(f, "patient") if "patient" in columns else None
    class_cols = {c: read_obs_column(f, c) for c in classes}

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
    except Exception as exc:
        raise InputError(path, f"cannot read h5ad: {type(exc).__name__}: {exc}") from exc
    try:
        summary = adata_summary(a)
        obs = a.obs
        sec_col = next((c for c in LIBRARY_COLUMNS if c in obs.columns), None)
        sections = [str(s) for s in pd.unique(obs[sec_col].astype(str))] if sec_col else []
        per = {None: {"n_spots": int(a.n_obs), "n_genes": int(a.n_vars)}}
        return {"path": str(path), "sections": sections if len(sections) > 1 else sections[:1],
                "flags": summary["flags"], "per_section": per,
                "classes": summary["classes"], "embeddings": summary["embeddings"],
                "image_path": None,
                "n_obs": int(a.n_obs), "n_vars": int(a.n_vars),
                "has_spatial": "spatial" in a.obsm, "patient": summary["patient"]}
    finally:
        a.file.close()


def adata_summary(adata) -> dict[str, Any]:
    """What an in-memory (or backed) AnnData holds: availability ``flags`` (image,
    expression, labels, predictions, classes, cells, embeddings), ``classes`` (``*_class``
    columns), ``embeddings`` (``obsm['X_*']``), ``n_spots``, ``n_genes`` and ``patient``."""
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
    flags = {
        "image": has_image,
        "expression": adata.n_vars > 0 and not is_prediction,
        "labels": labelled,
        "predictions": "predicted" in adata.layers or any("pred" in k.lower()
                                                          for k in adata.obsm.keys())
        or is_prediction,
        "classes": bool(classes),
        "cells": "cell" in task,
        "embeddings": bool(embeddings),
    }
    patient = str(obs["patient"].iloc[0]) if "patient" in obs and adata.n_obs else None
    return {"flags": flags, "classes": classes, "embeddings": embeddings,
            "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars), "patient": patient}
