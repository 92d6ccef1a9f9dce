"""npe2 writer contributions: spots/points (+ features) to .h5ad, labels/images to OME-Zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_points_h5ad(path: str, data, meta: dict) -> list[str]:
    """A Points layer as AnnData: features as ``obs``, coordinates (x, y) in ``obsm['spatial']``.

    When the layer came from an AnnData (``metadata['adata']``), the original object is written
    with the layer's current features (selections, predictions, classes) merged into ``obs``.
    """
    import anndata as ad

    from .io.export import write_h5ad
    from .io.frame import rc_to_xy

    md = meta.get("metadata") or {}
    features = pd.DataFrame(meta.get("features") or {}).reset_index(drop=True)
    coords = np.asarray(data, dtype=float)
    src = md.get("adata")
    if src is not None and src.n_obs == len(coords):
        out = src.copy()
        for col in features.columns:
            if col not in ("spot_id",):
                out.obs[col] = features[col].to_numpy()
    else:
        scale = np.asarray(meta.get("scale") or (1.0, 1.0), dtype=float)[-2:]
        out = ad.AnnData(obs=features.set_axis([str(i) for i in range(len(features))]))
        out.obsm["spatial"] = rc_to_xy(coords[:, -2:] * scale)
    out.uns["napari_stexp"] = {"layer": meta.get("name", ""), "written_by": "napari-stexp"}
    write_h5ad(out, path)
    return [str(path)]


def _scale_um(meta: dict) -> tuple[float, float] | None:
    """The layer's µm/px as an OME-Zarr scale (None when unknown: see io.frame.mpp_from_layer)."""
    from .io.frame import mpp_from_layer

    mpp = mpp_from_layer(meta)
    return None if mpp is None else (mpp, mpp)


def write_labels_ome_zarr(path: str, data, meta: dict) -> list[str]:
    from .io.export import write_ome_zarr

    arr = data[0] if isinstance(data, list) else data
    write_ome_zarr(Path(path), arr, kind="labels", scale_um=_scale_um(meta),
                   name=meta.get("name"))
    return [str(path)]


def write_image_ome_zarr(path: str, data, meta: dict) -> list[str]:
    from .io.export import write_ome_zarr

    arr = data[0] if isinstance(data, list) else data
    axes = "yxc" if meta.get("rgb") else "yx"
    write_ome_zarr(Path(path), arr, kind="image", scale_um=_scale_um(meta), axes=axes,
                   name=meta.get("name"))
    return [str(path)]
