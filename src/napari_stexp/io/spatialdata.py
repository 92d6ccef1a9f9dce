"""Read SpatialData stores (``.zarr``) into sections, through the ``spatialdata`` library.

A store holds elements (``images``, ``labels``, ``shapes``, ``points``) and ``tables``; a table
annotates elements through ``uns['spatialdata_attrs']`` = ``{region, region_key, instance_key}``.
Each (table, annotated element) pair becomes one section AnnData built by
:func:`~napari_stexp.io.spatial.build_st_adata`:

- ``obsm['spatial']`` = element centroids (x, y) in the chosen coordinate system (default
  ``global``), i.e. that coordinate system is the section's "full-resolution" frame;
- ``mpp_fullres`` = 1.0 when the coordinate system's axes say ``micrometer``, else ``None``
  (unknown: the coordinate system's own unit);
- circles give the spot diameter (2 × median radius, scaled), polygons and labels the diameter
  of a disc of their median area;
- images are opened lazily (dask, every scale) and carry an affine to the coordinate system
  (``metadata['affine']``).

Older stores (zarr v2, spatialdata ~0.1–0.2) open the same way. A points element without its
parquet is skipped with a warning (we never show points); any other missing or unreadable element
file, a table region that names an absent element, ids that do not match, or an unknown
coordinate system raise :class:`InputError` naming the store path and the problem.

The ``spatialdata`` package is the optional extra ``napari-stexp[spatialdata]``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, StexpWarning
from .ome_zarr import is_ngff

ELEMENT_GROUPS = ("images", "labels", "shapes", "points", "tables", "table")
EXTRA_HINT = "reading SpatialData stores needs the spatialdata extra: pip install 'napari-stexp[spatialdata]'"
DEFAULT_CS = "global"


class SpatialDataWarning(StexpWarning):
    """An element of a SpatialData store was skipped while reading."""


# ----------------------------------------------------------------------------- detection


def _attrs(group: Path) -> dict:
    """Group attributes of a zarr v2 (``.zattrs``) or v3 (``zarr.json``) group, {} if none."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        f = group / name
        if f.is_file():
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return {}
            d = d.get(key, {}) if key else d
            return d if isinstance(d, dict) else {}
    return {}


def _is_group(p: Path) -> bool:
    return p.is_dir() and ((p / ".zgroup").is_file() or (p / "zarr.json").is_file())


def looks_like_spatialdata(path: str | os.PathLike) -> bool:
    """A zarr group with SpatialData element groups (or the root ``spatialdata_attrs``)."""
    p = Path(path)
    if not _is_group(p):
        return False
    if "spatialdata_attrs" in _attrs(p):
        return True
    if is_ngff(p):  # a plain OME-Zarr image (it may hold a labels/ group)
        return False
    return any(_is_group(p / g) for g in ELEMENT_GROUPS if g != "labels")


def _require_spatialdata(path: Any):
    try:
        import spatialdata
    except ImportError as exc:
        raise InputError(path, EXTRA_HINT) from exc
    return spatialdata


# ----------------------------------------------------------------------------- reading


def _element_dirs(root: Path) -> dict[str, tuple[str, Path]]:
    out = {}
    for g in ELEMENT_GROUPS:
        gp = root / g
        if gp.is_dir():
            for d in sorted(gp.iterdir()):
                if _is_group(d):
                    out[d.name] = (g, d)
    return out


def _check_points(root: Path) -> set[str]:
    """Names of points elements whose parquet is missing (warned, then skipped)."""
    missing = set()
    gp = root / "points"
    if not gp.is_dir():
        return missing
    for d in sorted(gp.iterdir()):
        if _is_group(d) and not (d / "points.parquet").exists():
            warnings.warn(f"{d}: points element has no points.parquet; skipped (points are not "
                          "shown by napari-stexp)", SpatialDataWarning, stacklevel=3)
            missing.add(d.name)
    return missing


def read_sdata(path: str | os.PathLike, selection: tuple[str, ...] | None = None):
    """``spatialdata.read_zarr`` with our errors: a missing or unreadable element file raises
    :class:`InputError` naming it; points without parquet are skipped with a warning.
    ``selection``: only these element groups (e.g. ``("images",)``)."""
    sd = _require_spatialdata(path)
    root = Path(path)
    if not root.exists():
        raise InputError(root, "no such store")
    skip_points = _check_points(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sdata = sd.read_zarr(root, on_bad_files="warn", selection=selection)
        except Exception as exc:
            raise InputError(root, f"not a readable SpatialData store ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    for w in caught:
        msg = str(w.message)
        head = msg.split(":", 1)[0].strip()
        if head.count("/") == 1 and head.split("/")[0] in ELEMENT_GROUPS:
            group, name = head.split("/")
            if group == "points" and name in skip_points:
                continue
            raise InputError(root / group / name, f"cannot read element "
                                                  f"({msg.split(':', 1)[1].strip().splitlines()[0]})")
        if issubclass(w.category, DeprecationWarning | FutureWarning) or \
                "most current format" in msg or "not recognized as a component" in msg:
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return sdata


def read_sdata_selection(path: str | os.PathLike, selection: tuple[str, ...]):
    """Only the element groups in ``selection`` of a store (images stay lazy)."""
    return read_sdata(path, selection=selection)


def _cs_unit_is_um(element: Any, cs: str) -> bool:
    """True when the element's transformation to ``cs`` declares micrometre axes."""
    from spatialdata.transformations import get_transformation

    from .sdata_fast import FastCircles

    if isinstance(element, FastCircles):
        return bool(element.units.get(cs, set()) & _UM_UNITS)

    try:
        t = get_transformation(element, to_coordinate_system=cs)
    except Exception:  # noqa: BLE001
        return False
    axes = getattr(t, "output_coordinate_system", None) or []
    units = {str(getattr(a, "unit", "") or "").lower() for a in axes}
    return bool(units & _UM_UNITS)


_UM_UNITS = {"micrometer", "micron", "um", "µm"}


def _affine_yx(element: Any, cs: str, path: Path) -> np.ndarray:
    """3×3 affine (row, col, 1) from the element's intrinsic space to ``cs``."""
    from spatialdata.transformations import get_transformation

    from .sdata_fast import FastCircles

    all_t = element.transformations if isinstance(element, FastCircles) else \
        (get_transformation(element, get_all=True) or {})
    if cs not in all_t:
        raise InputError(path, f"no transformation to coordinate system '{cs}'; it has: "
                               f"{', '.join(sorted(all_t)) or 'none'}")
    m = np.asarray(all_t[cs].to_affine_matrix(input_axes=("y", "x"), output_axes=("y", "x")),
                   dtype=np.float64)
    return m


def _apply(m: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """``m`` applied to (row, col) points (elementwise: a BLAS call is slower on big inputs when
    the cores are busy)."""
    r, c = rc[:, 0], rc[:, 1]
    return np.column_stack([m[0, 0] * r + m[0, 1] * c + m[0, 2],
                            m[1, 0] * r + m[1, 1] * c + m[1, 2]])


def _linear_scale(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))


def _shape_geometry(gdf, m: np.ndarray) -> tuple[pd.Index, np.ndarray, float | None, str]:
    """(ids, centres (x, y) in cs, diameter in cs units, 'circle'|'polygon')."""
    from .sdata_fast import FastCircles, circles_geometry

    if isinstance(gdf, FastCircles):
        ids, rc, diam = circles_geometry(gdf, m, _linear_scale(m))
        return ids, _apply(m, rc)[:, ::-1], diam, "circle"
    geom = gdf.geometry
    kinds = set(geom.geom_type.unique())
    if kinds <= {"Point"}:
        rc = np.column_stack([geom.y.to_numpy(), geom.x.to_numpy()])
        r = gdf["radius"].to_numpy(np.float64) if "radius" in gdf else None
        diam = float(2 * np.nanmedian(r) * _linear_scale(m)) if r is not None and len(r) else None
        kind = "circle"
    else:
        c = geom.centroid
        rc = np.column_stack([c.y.to_numpy(), c.x.to_numpy()])
        area = geom.area.to_numpy(np.float64)
        diam = float(2 * np.sqrt(np.nanmedian(area) / np.pi) * _linear_scale(m)) if len(area) \
            else None
        kind = "polygon"
    rc = _apply(m, rc)
    return pd.Index(gdf.index), rc[:, ::-1], diam, kind


def _labels_geometry(labels, m: np.ndarray) -> tuple[pd.Index, np.ndarray, float | None, str]:
    from scipy import ndimage

    arr = labels
    if hasattr(arr, "keys") and "scale0" in arr:  # DataTree multiscale
        arr = next(iter(arr["scale0"].values()))
    a = np.asarray(arr.data.compute() if hasattr(arr.data, "compute") else arr.data)
    ids = np.unique(a)
    ids = ids[ids != 0]
    rc = np.asarray(ndimage.center_of_mass(np.ones_like(a), a, ids), dtype=np.float64).reshape(-1, 2)
    area = ndimage.sum_labels(np.ones_like(a), a, ids)
    diam = float(2 * np.sqrt(np.median(area) / np.pi) * _linear_scale(m)) if len(ids) else None
    return pd.Index(ids), _apply(m, rc)[:, ::-1], diam, "label"


def _image_pyramid(name: str, image, m: np.ndarray, cs: str, um: bool):
    """A lazy ImagePyramid (every scale) from an image DataArray/DataTree, with its affine."""
    from .image import ImagePyramid

    if hasattr(image, "keys") and "scale0" in image:
        arrs = [next(iter(image[k].values())) for k in image.keys()]
    else:
        arrs = [image]
    levels = []
    for a in arrs:
        d = a.data
        dims = tuple(a.dims)
        if "c" in dims:
            d = d.transpose(*[dims.index(k) for k in ("y", "x", "c")])
            if d.shape[-1] == 1:
                d = d[..., 0]
            elif d.shape[-1] not in (3, 4):
                d = d[..., 0]
        levels.append(d)
    mpp = _linear_scale(m) if um else None
    return ImagePyramid(levels=levels, path=None, name=name, mpp=mpp,
                        mpp_source="file" if um else "", metadata={"format": "spatialdata", "element": name, "affine": m.tolist(),
                                  "coordinate_system": cs,
                                  "mpp_source": "file" if um else "unknown"})


def _as_csr(X):
    import scipy.sparse as sp

    if sp.issparse(X):
        return sp.csr_matrix(X)
    return sp.csr_matrix(np.asarray(X))


def read_spatialdata(path: str | os.PathLike, *, coordinate_system: str | None = None,
                     images: bool = True, sdata: Any = None):
    """Read a SpatialData store into an :class:`~napari_stexp.io.open.Opened` record."""
    from .open import Opened
    from .sdata_fast import fast_sdata
    from .spatial import build_st_adata

    root = Path(path)
    if sdata is None:
        if not root.exists():
            raise InputError(root, "no such store")
        _require_spatialdata(root)
        sdata = fast_sdata(root, images=images) or read_sdata(root)
    systems = list(sdata.coordinate_systems)
    cs = coordinate_system or (DEFAULT_CS if DEFAULT_CS in systems else (systems or [None])[0])
    if cs is None or cs not in systems:
        raise InputError(root, f"unknown coordinate system '{cs}'; the store has: "
                               f"{', '.join(systems) or 'none'}")
    out = Opened(path=str(root), kind="spatialdata")
    out.sdata = sdata
    out.coordinate_system = cs
    rows, skipped = [], []
    for tname, table in sdata.tables.items():
        attrs = table.uns.get("spatialdata_attrs") or {}
        tpath = root / "tables" / tname
        region = attrs.get("region")
        rkey, ikey = attrs.get("region_key"), attrs.get("instance_key")
        if region is None or rkey is None or ikey is None:
            skipped.append(tname)
            continue
        if rkey not in table.obs or ikey not in table.obs:
            raise InputError(tpath, f"obs lacks region_key '{rkey}' or instance_key '{ikey}'")
        regions = [region] if isinstance(region, str) else list(region)
        for reg in regions:
            mask = (table.obs[rkey].astype(str) == str(reg)).to_numpy()
            sub = table if mask.all() else table[mask]
            if reg in sdata.shapes:
                elem = sdata.shapes[reg]
                m = _affine_yx(elem, cs, root / "shapes" / reg)
                ids, xy, diam, shape = _shape_geometry(elem, m)
            elif reg in sdata.labels:
                elem = sdata.labels[reg]
                m = _affine_yx(elem, cs, root / "labels" / reg)
                ids, xy, diam, shape = _labels_geometry(elem, m)
            elif reg in sdata.points:
                warnings.warn(f"{tpath}: annotates points element '{reg}'; skipped",
                              SpatialDataWarning, stacklevel=2)
                continue
            else:
                names = ", ".join(n for _, n, _ in sdata.gen_elements()) or "none"
                raise InputError(tpath, f"region '{reg}' names an element the store does not "
                                        f"have (elements: {names})")
            inst = pd.Index(sub.obs[ikey].to_numpy())
            pos = pd.Index(ids).get_indexer(inst)
            bad = pos < 0
            if bad.any():
                ex = ", ".join(map(str, inst[bad][:3]))
                raise InputError(tpath, f"{int(bad.sum())} of {len(inst)} instance ids "
                                        f"('{ikey}') are not in element '{reg}' (e.g. {ex})")
            um = _cs_unit_is_um(elem, cs)
            # our own results carry their frame (µm/px, source image) in uns (see sdata_write)
            frame = dict((table.uns.get("napari_stexp") or {}).get("frame") or {}) \
                if cs == DEFAULT_CS else {}
            mpp = frame.get("mpp_fullres") or (1.0 if um else None)
            sec = frame.get("section") or (str(reg) if len(sdata.tables) == 1
                                           else f"{tname}:{reg}")
            names = sub.obs_names if sub.obs_names.is_unique else pd.Index(map(str, inst))
            extra = sub.obs.drop(columns=[c for c in ("section", "patient") if c in sub.obs])
            extra.index = names if len(names) and isinstance(names[0], str) \
                else pd.Index([str(v) for v in names])
            labels = extra.pop("label") if "label" in extra else None
            if labels is not None and not labels.notna().any():
                labels = None  # all unlabelled: the same column, without a 10⁶-item list
            adata = build_st_adata(_as_csr(sub.X), extra.index, sub.var_names, xy[pos],
                                   section=sec, patient=sec, labels=labels,
                                   spot_diameter_fullres=frame.get("spot_diameter_fullres", diam),
                                   mpp_fullres=mpp, source=root,
                                   image_path=frame.get("source_image_path"),
                                   image_scale=float(frame.get("image_scale", 1.0)),
                                   extra_obs=extra, var=sub.var.copy())
            for k, v in sub.layers.items():
                adata.layers[k] = v
            if "napari_stexp" in table.uns:
                adata.uns["napari_stexp"] = dict(table.uns["napari_stexp"])
            # napari-spatialdata's widgets find the keys here (get_table_keys)
            adata.uns["spatialdata_attrs"] = {"region": str(reg), "region_key": rkey,
                                              "instance_key": ikey}
            for k, v in sub.obsm.items():
                if k != "spatial":
                    adata.obsm[k] = np.asarray(v)
            meta = adata.uns["spatial"][sec]["metadata"]
            meta.update({"format": "spatialdata", "element": str(reg), "table": tname,
                         "shape": shape, "region_key": rkey, "instance_key": ikey,
                         "coordinate_system": cs, "units": "micrometer" if um else "unknown"})
            out.adatas[sec] = adata
            if images:
                img = _first_image(sdata, cs, um)
                if img is not None:
                    out.images[sec] = img
    if not out.adatas and images:
        for name in sdata.images:
            img = _first_image(sdata, cs, _cs_unit_is_um(sdata.images[name], cs), name)
            if img is not None:
                out.images[name] = img
    from .st import section_summary

    for sec, ad in out.adatas.items():
        row = section_summary(ad)
        img = out.images.get(sec)
        if img is not None:
            row["image"] = img.name
            row["image_size"] = (img.height, img.width)
            row["levels"] = [tuple(int(v) for v in lvl.shape) for lvl in img.levels]
        rows.append(row)
    out.summary = {"kind": "spatialdata", "path": str(root), "coordinate_system": cs,
                   "coordinate_systems": systems, "sections": rows,
                   "elements": {g: list(getattr(sdata, g)) for g in
                                ("images", "labels", "shapes", "points", "tables")}}
    if skipped:
        out.summary["tables_without_region"] = skipped
    return out


def _first_image(sdata, cs: str, um: bool, name: str | None = None):
    from spatialdata.transformations import get_transformation

    for n in ([name] if name else list(sdata.images)):
        el = sdata.images[n]
        if cs in (get_transformation(el, get_all=True) or {}):
            return _image_pyramid(n, el, _affine_yx(el, cs, Path(n)), cs, um)
    return None


# ----------------------------------------------------------------------------- layers


def sdata_layers(opened, *, max_visible: int = 1, skip_spots=()) -> list:
    """Layers for a SpatialData record, with the metadata napari-spatialdata's widgets read
    (``sdata``, ``adata``, ``name``, ``region_key``, ``instance_key``, ``table_names``,
    ``_current_cs``, ``_active_in_cs``, ``indices``) next to ours (``adata``, ``section``).
    ``skip_spots``: sections shown otherwise (as rasters): no Points layer, and on the fast
    path the full store is not read for them."""
    from .layers import spots_layer
    from .sdata_fast import FastSData

    sdata = getattr(opened, "sdata", None)
    cs = getattr(opened, "coordinate_system", DEFAULT_CS)
    layers = []
    done_images = set()
    if isinstance(sdata, FastSData):
        if any(sec not in skip_spots for sec in opened.adatas):
            sdata = opened.sdata = sdata.load()  # Points layers: napari-spatialdata reads sdata
        else:
            sdata = sdata._images_sdata  # the image layers' elements (lazy, read already)
    for i, (sec, ad) in enumerate(opened.adatas.items()):
        visible = i < max_visible
        img = opened.images.get(sec)
        if img is not None and img.name not in done_images:
            layers.append(_sd_image_layer(img, sdata, cs, visible))
            done_images.add(img.name)
        if sec in skip_spots:
            continue
        meta = ad.uns["spatial"][sec]["metadata"]
        data, attrs, kind = spots_layer(ad, section=sec, visible=visible)
        attrs["metadata"].update({
            "adata": ad, "stexp_adata": ad, "sdata": sdata, "name": meta.get("element", sec),
            "region_key": meta.get("region_key"), "instance_key": meta.get("instance_key"),
            "table_names": [meta["table"]] if meta.get("table") else None,
            "_current_cs": cs, "_active_in_cs": {cs},
            "_n_indices": ad.n_obs,
            "indices": ad.obs[meta["instance_key"]].tolist() if meta.get("instance_key") in
            ad.obs else list(range(ad.n_obs)),
            "_columns_df": None,
        })
        layers.append((data, attrs, kind))
    for img in opened.images.values():
        if img.name not in done_images:
            layers.append(_sd_image_layer(img, sdata, cs, True))
            done_images.add(img.name)
    return layers


def _sd_image_layer(img, sdata, cs, visible):
    import anndata as ad

    from .layers import image_layer

    data, attrs, kind = image_layer(img, img.name, visible=visible)
    m = np.asarray(img.metadata.get("affine", np.eye(3)))
    attrs.pop("scale", None)
    attrs["affine"] = m
    chans = ["RGB(A)"] if img.rgb else ["0"]
    attrs["metadata"].update({"sdata": sdata, "name": img.name, "_current_cs": cs,
                              "_active_in_cs": {cs},
                              "adata": ad.AnnData(shape=(0, len(chans)),
                                                  var=pd.DataFrame(index=chans))})
    return data, attrs, kind


def section_for_layer(layer) -> Any:
    """Our section AnnData for a layer napari-spatialdata created (``metadata['sdata']`` and
    ``['name']``: the element), built once and cached in ``metadata['stexp_adata']``; None when
    the layer shows no table-annotated element."""
    meta = getattr(layer, "metadata", None) or {}
    if meta.get("stexp_adata") is not None:
        return meta["stexp_adata"]
    sdata, name = meta.get("sdata"), meta.get("name")
    if sdata is None or name is None:
        return None
    cs = meta.get("_current_cs") or DEFAULT_CS
    src = getattr(sdata, "path", None) or "SpatialData"
    opened = read_spatialdata(src, coordinate_system=cs, images=False, sdata=sdata)
    for ad in opened.adatas.values():
        sec = str(ad.obs["section"].iloc[0])
        if ad.uns["spatial"][sec]["metadata"].get("element") == name:
            meta["stexp_adata"] = ad
            return ad
    return None
