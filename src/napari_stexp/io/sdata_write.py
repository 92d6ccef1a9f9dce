"""Write napari-stexp results (predictions, classes, embeddings) as SpatialData elements.

One result AnnData (spots, pseudo-spots or cells in full-resolution pixels, see
:mod:`napari_stexp.io.spatial`) becomes, in the store ``X.zarr``:

- ``shapes/<name>``: circles at ``obsm['spatial']`` with radius = spot diameter / 2 (pixels);
- ``tables/<name>_table``: annotates ``<name>`` (``region_key='region'``,
  ``instance_key='instance_id'``): ``X`` = predicted expression (or what the result's ``X`` is),
  ``layers['measured']`` when the result has measured counts, ``obs['confidence']``, class labels
  as categoricals with probabilities in ``obsm``, embeddings in ``obsm['X_<model>']``,
  provenance in ``uns['napari_stexp']`` (with the frame: ``mpp_fullres``, the source image);
- ``images/<name>_image`` (``image='copy'``): the slide pyramid, written lazily level by level;
  by default only a reference (the source image path in ``uns['napari_stexp']['frame']``).

The coordinate system ``global`` is the full-resolution pixel frame (identity); when µm/px is
known a second one, ``micrometer``, scales it. Writing is element by element and atomic: the new
elements are written to a temporary store next to the target and renamed into place; elements of
an existing store that we do not write are never touched, and if anything fails (or the process is
interrupted before the renames) the store stays as it was: replaced elements are restored.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from .spatialdata import EXTRA_HINT, _is_group

REGION_KEY = "region"
INSTANCE_KEY = "instance_id"


def _require(path):
    try:
        import spatialdata  # noqa: F401
    except ImportError as exc:
        raise InputError(path, EXTRA_HINT.replace("reading", "writing")) from exc


def _frame(adata) -> dict:
    from .spatial import spatial_info

    info = spatial_info(adata)
    meta, sf = info["metadata"], info["scalefactors"]
    out = {"section": info["library_id"] or "", "image_scale": float(meta.get("image_scale") or 1)}
    if meta.get("mpp_fullres"):
        out["mpp_fullres"] = float(meta["mpp_fullres"])
    if meta.get("source_image_path"):
        out["source_image_path"] = str(meta["source_image_path"])
    if sf.get("spot_diameter_fullres"):
        out["spot_diameter_fullres"] = float(sf["spot_diameter_fullres"])
    return out


def _radius_px(adata, frame: dict) -> float:
    d = frame.get("spot_diameter_fullres")
    if d:
        return float(d) / 2
    xy = np.asarray(adata.obsm["spatial"], np.float64)[:, :2]
    if len(xy) < 2:
        return 1.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1])) / 2


def build_elements(adata, name: str, *, image: Any = "reference") -> dict:
    """The SpatialData elements (``{"shapes": {...}, "tables": {...}, "images": {...}}``)."""
    import anndata as ad
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from .export import h5ad_safe

    frame = _frame(adata)
    mpp = frame.get("mpp_fullres")
    tf = {"global": Identity()}
    if mpp:
        tf["micrometer"] = Scale([mpp, mpp], axes=("x", "y"))
    xy = np.asarray(adata.obsm["spatial"], np.float64)[:, :2]
    n = adata.n_obs
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(n, _radius_px(adata, frame)),
                               index=pd.Index(np.arange(n), name=INSTANCE_KEY),
                               transformations=dict(tf))
    t = h5ad_safe(adata)
    obs = t.obs.copy()
    if "confidence" not in obs:
        conf = [c for c in obs.columns if str(c).endswith("_confidence")]
        if conf:
            obs["confidence"] = obs[conf[0]].to_numpy()
    obs[REGION_KEY] = pd.Categorical([name] * n)
    obs[INSTANCE_KEY] = np.arange(n, dtype=np.int64)
    layers = {}
    measured = adata.layers.get("measured", adata.layers.get("counts"))
    if measured is not None:
        layers["measured"] = measured
    obsm = {k: np.asarray(v) for k, v in t.obsm.items() if k != "spatial"}
    obsm["spatial"] = xy
    uns = dict(t.uns)
    uns.pop("spatial", None)
    prov = dict(uns.get("napari_stexp") or {})
    prov["frame"] = frame
    prov["written_by"] = "napari_stexp.io.sdata_write"
    uns["napari_stexp"] = prov
    table = ad.AnnData(X=t.X, obs=obs, var=t.var, obsm=obsm, layers=layers, uns=uns)
    table = TableModel.parse(table, region=name, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    out = {"shapes": {name: shapes}, "tables": {f"{name}_table": table}, "images": {}}
    if image == "copy" and frame.get("source_image_path"):
        from .wsi import open_image

        pyr = open_image(frame["source_image_path"])
        lvl = pyr.levels[0]
        arr = lvl.transpose(2, 0, 1) if lvl.ndim == 3 else lvl[None]
        scale = 1.0 / float(frame.get("image_scale") or 1.0)  # image px -> full-res px
        itf = {"global": Scale([scale, scale], axes=("y", "x"))}
        if mpp:
            itf["micrometer"] = Scale([scale * mpp, scale * mpp], axes=("y", "x"))
        factors = []
        h = max(arr.shape[1:])
        while h > 2048:
            factors.append(2)
            h //= 2
        rgb = arr.shape[0] in (3, 4) and arr.dtype == np.uint8
        out["images"][f"{name}_image"] = Image2DModel.parse(
            arr, dims=("c", "y", "x"), scale_factors=factors or None, transformations=itf,
            c_coords=list("rgba"[:arr.shape[0]]) if rgb else None)
    return out


def _store_format(store: Path) -> str | None:
    if not store.exists():
        return None
    if (store / "zarr.json").is_file():
        return "v3"
    if (store / ".zgroup").is_file():
        return "v2"
    raise InputError(store, "exists and is not a zarr store; choose a new .zarr path")


def write_sdata(adata, store: str | os.PathLike, *, name: str | None = None,
                image: Any = "reference", _fail_after: int | None = None) -> Path:
    """Write ``adata``'s elements into ``store`` (created if absent), atomically per element.

    ``image``: ``"reference"`` (default; the path in ``uns``), ``"copy"`` (write the pyramid) or
    ``None``. ``_fail_after`` (tests) raises after that many elements were moved into place.
    """
    import spatialdata as sd

    store = Path(store)
    _require(store)
    name = name or f"{(_frame(adata)['section'] or 'napari_stexp')}_spots"
    name = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
    fmt = _store_format(store)
    if fmt == "v2":
        raise InputError(store, "is an older (zarr v2) SpatialData store; napari-stexp adds "
                                "elements only to current-format stores (write to a new .zarr "
                                "or convert it with spatialdata's write)")
    elements = build_elements(adata, name, image=image)
    tmp = Path(tempfile.mkdtemp(prefix=f".{store.name}.tmp-", dir=store.parent))
    moved: list[tuple[Path, Path | None]] = []  # (element path in store, its old copy)
    try:
        staged = tmp / "store.zarr"
        sdata = sd.SpatialData(images=elements["images"], shapes=elements["shapes"],
                               tables=elements["tables"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata.write(staged, overwrite=False)
        if fmt is None:
            os.replace(staged, store)
            return store
        for group in ("images", "shapes", "tables"):  # the table last: it annotates the shapes
            for el in elements[group]:
                dst = store / group / el
                dst.parent.mkdir(exist_ok=True)
                if not (dst.parent / "zarr.json").exists():
                    shutil.copy2(staged / group / "zarr.json", dst.parent / "zarr.json")
                old = None
                if dst.exists():
                    old = tmp / f"old-{group}-{el}"
                    os.replace(dst, old)
                moved.append((dst, old))
                os.replace(staged / group / el, dst)
                if _fail_after is not None and len(moved) >= _fail_after:
                    raise RuntimeError("interrupted (test)")
        _consolidate(store)
    except BaseException:
        for dst, old in reversed(moved):
            shutil.rmtree(dst, ignore_errors=True)
            if old is not None:
                os.replace(old, dst)
        if moved:
            with contextlib.suppress(Exception):
                _consolidate(store)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return store


def _consolidate(store: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))


def is_sdata_target(path: str | os.PathLike) -> bool:
    """True when ``--out`` asks for a SpatialData store (a path ending in ``.zarr``)."""
    return str(path).rstrip("/").lower().endswith(".zarr")


def element_names(store: str | os.PathLike) -> dict[str, list[str]]:
    """The element names present in a store, by group (reads directory names only)."""
    root = Path(store)
    return {g: sorted(d.name for d in (root / g).iterdir() if _is_group(d))
            for g in ("images", "labels", "shapes", "points", "tables") if (root / g).is_dir()}


def write_result(adata, out: str | os.PathLike, write_h5ad) -> Path:
    """``--out``: a SpatialData store when ``out`` ends with ``.zarr``, else ``write_h5ad``."""
    if is_sdata_target(out):
        return write_sdata(adata, out)
    write_h5ad(adata, out)
    return Path(out)
