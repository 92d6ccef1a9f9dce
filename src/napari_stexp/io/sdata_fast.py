"""The fast path of :func:`napari_stexp.io.spatialdata.read_spatialdata` for big stores.

``spatialdata.read_zarr`` reads every element in full: the shapes' geometries become one shapely
object per bin (most of the time on a Visium HD store of 10⁵–10⁷ bins), labels are decoded,
points loaded. A section needs much less: the table (obs, var, X as CSR, layers, obsm; read with
anndata's ``read_elem`` straight from zarr), the circles' centres and radii (WKB points decoded
with numpy from the parquet's geometry column, read with pyarrow) and their transformations, and
the images (lazy dask, through ``spatialdata.read_zarr(selection=("images",))``).

:func:`fast_sdata` returns a :class:`FastSData` standing in for the ``SpatialData`` object with
what the reader uses (``tables``, ``shapes``, ``images``, ``coordinate_systems``, ...), or
``None`` when the store holds something this path does not read (labels, points, polygons,
the old zarr layouts, a table annotating anything but circles, small stores): then the
reader falls back to ``spatialdata.read_zarr`` and behaves as before. :meth:`FastSData.load`
reads the real ``SpatialData`` on demand (napari-spatialdata's widgets need it).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Stores whose tables have fewer rows than this go through ``spatialdata.read_zarr``.
FAST_MIN_ROWS = 50_000
_WKB_POINT = 21  # byte order (1) + geometry type (4) + x, y (2 × 8)


class Unsupported(Exception):
    """The store holds something the fast path does not read."""


class FastCircles:
    """One circles shapes element: ids, centres (x, y) in intrinsic units, radii, transforms."""

    def __init__(self, ids: pd.Index, xy: np.ndarray, radius: np.ndarray | None,
                 transformations: dict, units: dict[str, set[str]]):
        self.ids, self.xy, self.radius = ids, xy, radius
        self.transformations, self.units = transformations, units

    def __len__(self) -> int:
        return len(self.ids)


class FastSData:
    """What :func:`~napari_stexp.io.spatialdata.read_spatialdata` reads of a store."""

    def __init__(self, root: Path, tables: dict, shapes: dict, images: Any):
        self.path = root
        self.tables, self.shapes = tables, shapes
        self._images_sdata = images
        self.images = dict(images.images) if images is not None else {}
        self.labels: dict = {}
        self.points: dict = {}
        self._full = None

    @property
    def coordinate_systems(self) -> list[str]:
        out = []
        for el in self.shapes.values():
            out += [c for c in el.transformations if c not in out]
        if self._images_sdata is not None:
            out += [c for c in self._images_sdata.coordinate_systems if c not in out]
        return out

    def gen_elements(self):
        for g in ("images", "shapes"):
            for n, el in getattr(self, g).items():
                yield g, n, el

    def load(self):
        """The real ``SpatialData`` of the store (read once, on demand)."""
        if self._full is None:
            from .spatialdata import read_sdata

            self._full = read_sdata(self.path)
        return self._full


def _attrs(group: Path) -> dict:
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = group / name
        if f.is_file():
            d = json.loads(f.read_text(encoding="utf-8"))
            return d.get(key, {}) if key else d
    raise Unsupported(f"{group}: no zarr attributes")


def _units(ngff: list[dict]) -> dict[str, set[str]]:
    return {t["output"]["name"]: {str(a.get("unit") or "").lower()
                                  for a in t["output"].get("axes", [])}
            for t in ngff if isinstance(t.get("output"), dict) and "name" in t["output"]}


def _read_circles(d: Path) -> FastCircles:
    import pyarrow.parquet as pq
    from spatialdata._io._utils import _get_transformations_from_ngff_dict

    attrs = _attrs(d)
    version = str((attrs.get("spatialdata_attrs") or {}).get("version", ""))
    if version not in ("0.2", "0.3") or "coordinateTransformations" not in attrs:
        raise Unsupported(f"{d}: shapes format {version or '?'}")
    pf = d / "shapes.parquet"
    if not pf.is_file():
        raise Unsupported(f"{pf}: missing")  # the slow path names the file in its error
    schema = pq.read_schema(pf)
    meta = schema.metadata or {}
    geo = json.loads(meta.get(b"geo", b"{}"))
    col = geo.get("primary_column", "geometry")
    info = (geo.get("columns") or {}).get(col) or {}
    if info.get("encoding") != "WKB" or info.get("geometry_types") != ["Point"]:
        raise Unsupported(f"{pf}: not WKB points")
    pandas_meta = json.loads(meta.get(b"pandas", b"{}"))
    idx_cols = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)]
    cols = [col] + [c for c in ("radius",) if c in schema.names] + idx_cols
    tb = pq.read_table(pf, columns=cols)
    g = tb.column(col).combine_chunks()
    n = len(g)
    offsets = np.frombuffer(g.buffers()[1], np.int32 if g.type.id != 26 else np.int64)
    offsets = offsets[g.offset:g.offset + n + 1]
    if g.null_count or not np.all(np.diff(offsets) == _WKB_POINT):
        raise Unsupported(f"{pf}: not 2-D WKB points")
    raw = np.frombuffer(g.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].reshape(n, _WKB_POINT)
    if n and not ((raw[:, 0] == 1).all() and (raw[:, 1:5].view("<u4").ravel() == 1).all()):
        raise Unsupported(f"{pf}: not little-endian 2-D points")
    xy = raw[:, 5:].copy().view("<f8").reshape(n, 2)
    radius = tb.column("radius").to_numpy().astype(np.float64) if "radius" in tb.column_names \
        else None
    if idx_cols:
        ids = pd.Index(tb.column(idx_cols[0]).to_numpy(), name=idx_cols[0])
    else:
        ri = next((c for c in pandas_meta.get("index_columns", []) if isinstance(c, dict)), None)
        start, step = (int(ri.get("start", 0)), int(ri.get("step", 1))) if ri else (0, 1)
        ids = pd.RangeIndex(start, start + step * n, step)
    ngff = attrs["coordinateTransformations"]
    return FastCircles(ids, xy, radius, _get_transformations_from_ngff_dict(ngff), _units(ngff))


class FastTable:
    """A table's parts as read (obs, var, X, layers, obsm, uns): what the reader uses of an
    AnnData, without building one (its checks cost seconds on 10⁶ string ids)."""

    def __init__(self, parts: dict):
        self.obs: pd.DataFrame = parts["obs"]
        self.var: pd.DataFrame = parts["var"]
        self.X = parts.get("X")
        self.uns = dict(parts.get("uns") or {})
        self.obsm = dict(parts.get("obsm") or {})
        self.layers = dict(parts.get("layers") or {})

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    def __getitem__(self, mask) -> FastTable:
        rows = np.asarray(mask)
        return FastTable({"obs": self.obs[rows], "var": self.var, "X": self.X[rows],
                          "uns": self.uns, "obsm": {k: v[rows] for k, v in self.obsm.items()},
                          "layers": {k: v[rows] for k, v in self.layers.items()}})


def _read_table(d: Path) -> FastTable:
    import zarr
    from anndata.io import read_elem

    g = zarr.open_group(str(d), mode="r")
    return FastTable({k: read_elem(g[k]) for k in ("X", "obs", "var", "uns", "obsm", "layers")
                      if k in g})


def fast_sdata(root: Path, *, images: bool = True, min_rows: int | None = None) -> FastSData | None:
    """A :class:`FastSData` for ``root``, or None when the slow path must read it."""
    min_rows = FAST_MIN_ROWS if min_rows is None else min_rows
    try:
        if not (root / "zarr.json").is_file():
            return None  # zarr v2 (older layout): spatialdata reads it
        if any((root / g).is_dir() and any(p.is_dir() for p in (root / g).iterdir())
               for g in ("labels", "points")):
            return None
        tdir, sdir = root / "tables", root / "shapes"
        if not tdir.is_dir() or not sdir.is_dir():
            return None
        tables_attrs = {d.name: _attrs(d) for d in sorted(tdir.iterdir()) if d.is_dir()}
        shape_dirs = {d.name: d for d in sorted(sdir.iterdir()) if d.is_dir()}
        rows = 0
        for name, a in tables_attrs.items():
            region = a.get("region")
            regions = [region] if isinstance(region, str) else list(region or [])
            if not regions or any(r not in shape_dirs for r in regions):
                return None
            shape = json.loads((tdir / name / "obs" / "zarr.json").read_text()).get("attributes")
            if shape is None:
                return None
            rows += _n_rows(tdir / name)
        if rows < min_rows:
            return None
        shapes = {n: _read_circles(d) for n, d in shape_dirs.items()}
        tables = {n: _read_table(tdir / n) for n in tables_attrs}
    except (Unsupported, OSError, KeyError, ValueError, TypeError, json.JSONDecodeError):
        return None
    imgs = None
    if images and (root / "images").is_dir():
        from .spatialdata import read_sdata_selection

        imgs = read_sdata_selection(root, ("images",))
    return FastSData(root, tables, shapes, imgs)


def _n_rows(table: Path) -> int:
    """The table's row count from its obs index array metadata (no data read)."""
    obs = table / "obs"
    index = _attrs(obs).get("_index", "_index")
    meta = json.loads((obs / index / "zarr.json").read_text())
    return int(meta["shape"][0])


def circles_geometry(el: FastCircles, m: np.ndarray, scale: float):
    """(ids, centres (row, col) in intrinsic units, diameter in cs units) of circles."""
    rc = el.xy[:, ::-1]
    diam = None
    if el.radius is not None and len(el.radius):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            diam = float(2 * np.nanmedian(el.radius) * scale)
    return el.ids, rc, diam
