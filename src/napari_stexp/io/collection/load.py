"""Reading one slide's AnnData (results merged by ``obs_names``), its cell masks."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InputError
from ..h5ad import LIBRARY_COLUMNS, h5ad_metadata
from ..image import ImagePyramid
from ._items import SlideItem
from .listing import _role, _strip_suffix

# ----------------------------------------------------------------------------- reading


def _read_adata(item: SlideItem) -> Any:
    if item.kind == "her2st":
        from ..her2st import read_her2st

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the listing already said what is there
            return read_her2st(item.source, [item.section], images=False)[item.section]
    if item.kind == "visium":
        from ..visium import read_visium

        return read_visium(item.source, images=True)
    if item.kind != "h5ad" or not item.h5ads:
        return None
    base = None
    extras = []
    for p in item.h5ads:
        meta = h5ad_metadata(p)
        if base is None and meta["has_spatial"] and not _role(_strip_suffix(Path(p).name))[1]:
            base = p
        else:
            extras.append(p)
    if base is None:  # only result tables: the first one is the slide's AnnData
        base, extras = item.h5ads[0], item.h5ads[1:]
    adata = _read_h5ad_section(base, item.section)
    for p in extras:
        _merge_results(adata, _read_h5ad_section(p, item.section, st=False), p)
    return adata


def _read_h5ad_section(path: str, section: str | None, st: bool = True) -> Any:
    import anndata as ad

    from ..h5ad import read_st_h5ad

    if st:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = read_st_h5ad(path)
        except InputError as exc:
            if "obsm['spatial']" not in str(exc):
                raise
        else:
            if section in data:
                return data[section]
            if len(data) == 1:
                return next(iter(data.values()))
            raise InputError(path, f"section {section!r} not found; "
                                   f"available: {', '.join(data)}")
    try:
        a = ad.read_h5ad(path)
    except Exception as exc:
        raise InputError(path, f"cannot read h5ad: {type(exc).__name__}: {exc}") from exc
    if section is not None:
        for col in LIBRARY_COLUMNS:
            if col in a.obs and (a.obs[col].astype(str) == section).any():
                a = a[a.obs[col].astype(str) == section].copy()
                break
    return a


def _merge_results(adata, extra, source: str) -> None:
    """Copy an extra result table's obs columns, obsm, and X (as predictions) into ``adata``."""
    common = adata.obs_names.intersection(extra.obs_names)
    if len(common) == 0:
        warnings.warn(f"{source}: no spot id in common with the slide; not merged", stacklevel=3)
        return
    extra = extra[extra.obs_names.isin(common)]
    for col in extra.obs.columns:
        if col not in adata.obs.columns:
            adata.obs[col] = extra.obs[col].reindex(adata.obs_names)
    for key in extra.obsm.keys():
        if key not in adata.obsm and key != "spatial":
            m = extra.obsm[key]
            if isinstance(m, pd.DataFrame):
                adata.obsm[key] = m.reindex(adata.obs_names)
            else:
                df = pd.DataFrame(np.asarray(m), index=extra.obs_names)
                adata.obsm[key] = df.reindex(adata.obs_names).to_numpy()
    _, role = _role(_strip_suffix(Path(source).name))
    pred = extra.layers["predicted"] if "predicted" in extra.layers else (
        extra.X if role == "predictions" and extra.n_vars else None)
    if pred is not None and "predicted" not in adata.obsm:
        dense = pred.toarray() if hasattr(pred, "toarray") else np.asarray(pred)
        df = pd.DataFrame(dense, index=extra.obs_names, columns=extra.var_names.astype(str))
        adata.obsm["predicted"] = df.reindex(adata.obs_names)


def _open_cells(item: SlideItem) -> ImagePyramid:
    labels = item.info.get("cells_labels")
    if labels:
        from ..ome_zarr import read_ome_zarr

        return read_ome_zarr(item.cells, labels=labels)
    from ..wsi import open_image

    return open_image(item.cells)
