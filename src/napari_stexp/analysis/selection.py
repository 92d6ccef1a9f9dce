"""Selections in a 2-D scatter, kept as a categorical column of a features table (no Qt).

A selection is a column, not a private list: ``features[column]`` is a ``pd.Categorical`` whose
categories are ``["unselected", *groups]``. Every row belongs to at most one named group; a lasso
or a rectangle assigns the rows it contains to the current group (``mode="replace"`` makes the
group exactly those rows, ``"add"`` extends it, ``"remove"`` takes rows out of it).

The scatter may mix several slides: :class:`RowLinks` remembers, for each scatter point, the layer
(slide) and the row of that layer's features table it stands for.

Geometry is vectorised for 1e6 points: a bounding-box prefilter in numpy, then
``matplotlib.path.Path.contains_points`` (C) on the survivors only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io._atomic import atomic_path

UNSELECTED = "unselected"
SELECTION_MODES = ("replace", "add", "remove")
ID_COLUMNS = ("spot_id", "cell_id", "id", "label", "index")


# -- geometry -------------------------------------------------------------------------------

def _as_xy(xy) -> np.ndarray:
    arr = np.asarray(xy)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError("points", f"must be (n, 2) coordinates, got shape {arr.shape}")
    return arr


def points_in_rectangle(xy, corner_a: Sequence[float], corner_b: Sequence[float]) -> np.ndarray:
    """Boolean mask of the rows of ``xy`` inside the axis-aligned box spanned by two corners.

    NaN coordinates (missing rows) are never inside.
    """
    arr = _as_xy(xy)
    (x0, x1) = sorted((float(corner_a[0]), float(corner_b[0])))
    (y0, y1) = sorted((float(corner_a[1]), float(corner_b[1])))
    x, y = arr[:, 0], arr[:, 1]
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def points_in_polygon(xy, polygon) -> np.ndarray:
    """Boolean mask of the rows of ``xy`` inside the closed ``polygon`` (k, 2) (a lasso).

    Fewer than 3 distinct vertices enclose nothing. NaN coordinates are never inside.
    """
    arr = _as_xy(xy)
    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2:
        raise InputError("lasso", f"polygon must be (k, 2) vertices, got shape {poly.shape}")
    poly = poly[np.isfinite(poly).all(axis=1)]
    out = np.zeros(arr.shape[0], bool)
    if len(np.unique(poly, axis=0)) < 3:
        return out
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    cand = np.flatnonzero(points_in_rectangle(arr, lo, hi))
    if cand.size == 0:
        return out
    from matplotlib.path import Path as MplPath

    path = MplPath(np.vstack([poly, poly[:1]]), closed=True)
    out[cand] = path.contains_points(np.asarray(arr[cand], dtype=np.float64))
    return out


# -- which layer row each scatter point stands for --------------------------------------------

@dataclass(frozen=True)
class RowLinks:
    """Per scatter point: the index of its layer in ``layer_names`` (-1: none) and its row."""

    layer_names: tuple[str, ...]
    layer_codes: np.ndarray  # (n,) int32
    rows: np.ndarray  # (n,) int64

    @classmethod
    def from_lengths(cls, names: Sequence[str], lengths: Sequence[int]) -> RowLinks:
        """Points are the rows of each layer in turn (the concatenation of their tables)."""
        codes = np.repeat(np.arange(len(names), dtype=np.int32), np.asarray(lengths, np.int64))
        rows = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]) if len(lengths) \
            else np.zeros(0, np.int64)
        return cls(tuple(names), codes, rows)

    @classmethod
    def unlinked(cls, n: int) -> RowLinks:
        return cls((), np.full(n, -1, np.int32), np.arange(n, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def points_of(self, layer: str) -> np.ndarray:
        """Scatter indices of the points that belong to ``layer`` (in scatter order)."""
        if layer not in self.layer_names:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.layer_codes == self.layer_names.index(layer))

    def split(self, indices) -> dict[str, np.ndarray]:
        """Scatter indices (or a boolean mask) -> {layer name: sorted layer rows}."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        codes = self.layer_codes[idx]
        out = {}
        for k, name in enumerate(self.layer_names):
            rows = self.rows[idx[codes == k]]
            out[name] = np.sort(rows)
        return out

    def indices_of(self, layer: str, rows) -> np.ndarray:
        """Scatter indices of ``rows`` of ``layer`` (rows not in the scatter are ignored)."""
        pts = self.points_of(layer)
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if pts.size == 0 or rows.size == 0:
            return np.zeros(0, np.int64)
        lrows = self.rows[pts]
        lookup = np.full(int(max(lrows.max(), rows.max())) + 1, -1, np.int64)
        lookup[lrows] = pts
        hit = lookup[rows[(rows >= 0) & (rows < lookup.size)]]
        return np.sort(hit[hit >= 0])


# -- the selection column -------------------------------------------------------------------

def groups_in(values) -> list[str]:
    """Group names present as categories of a selection column (``unselected`` excluded)."""
    if values is None:
        return []
    ser = pd.Series(values)
    cats = ser.cat.categories if isinstance(ser.dtype, pd.CategoricalDtype) else \
        pd.unique(ser.dropna())
    return [str(c) for c in cats if str(c) != UNSELECTED]


def codes_from_column(values, groups: Sequence[str]) -> np.ndarray:
    """int16 codes of a selection column: 0 = unselected / NaN / unknown, k = ``groups[k-1]``."""
    if values is None:
        return np.zeros(0, np.int16)
    ser = pd.Series(values)
    lut = {g: i + 1 for i, g in enumerate(groups)}
    if isinstance(ser.dtype, pd.CategoricalDtype):
        cat_codes = np.array([lut.get(str(c), 0) for c in ser.cat.categories] + [0], np.int16)
        return cat_codes[ser.cat.codes.to_numpy()]  # code -1 (NaN) picks the trailing 0
    return np.array([lut.get(str(v), 0) for v in ser.to_numpy()], np.int16)


def selection_categorical(codes, groups: Sequence[str]) -> pd.Categorical:
    """The column written to features: categories ``[unselected, *groups]``, never NaN."""
    _check_groups(groups)
    return pd.Categorical.from_codes(np.asarray(codes, np.int16), [UNSELECTED, *groups])


def assign_group(codes, indices, group_code: int, mode: str = "replace") -> np.ndarray:
    """New codes after a selection of ``indices`` (mask or indices) for group ``group_code``."""
    if mode not in SELECTION_MODES:
        raise InputError("selection", f"unknown mode {mode!r} (choose {SELECTION_MODES})")
    if group_code < 1:
        raise InputError("selection", "choose a group to assign rows to")
    out = np.array(codes, dtype=np.int16, copy=True)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if mode == "replace":
        out[out == group_code] = 0
        out[idx] = group_code
    elif mode == "add":
        out[idx] = group_code
    else:
        sel = out[idx]
        out[idx] = np.where(sel == group_code, 0, sel)
    return out


def write_selection(features: pd.DataFrame, rows, group: str, *, column: str = "selection",
                    mode: str = "replace", groups: Sequence[str] | None = None) -> int:
    """Assign ``rows`` of ``features`` to ``group`` in the categorical ``column`` (in place).

    ``groups`` fixes the category order (the groups already in the column and ``group`` are
    always kept). Returns the number of rows whose value changed.
    """
    names = list(groups) if groups is not None else groups_in(features.get(column))
    for g in [*groups_in(features.get(column)), group]:
        if g not in names:
            names.append(g)
    old = codes_from_column(features[column], names) if column in features else \
        np.zeros(len(features), np.int16)
    rows = np.asarray(rows)
    if rows.dtype != bool and rows.size and (rows.min() < 0 or rows.max() >= len(features)):
        raise InputError(column, f"rows out of range for a table of {len(features)} rows")
    new = assign_group(old, rows, names.index(group) + 1, mode)
    features[column] = selection_categorical(new, names)
    return int((new != old).sum())


def _check_groups(groups: Sequence[str]) -> None:
    seen = set()
    for g in groups:
        if not str(g).strip():
            raise InputError("selection", "group names cannot be empty")
        if g == UNSELECTED:
            raise InputError("selection", f"{UNSELECTED!r} is reserved, pick another group name")
        if g in seen:
            raise InputError("selection", f"duplicate group name {g!r}")
        seen.add(g)


# -- export -----------------------------------------------------------------------------------

def item_ids(features: pd.DataFrame) -> np.ndarray:
    """Readable ids of the rows of a features table (spot id, cell id or label), else row numbers."""
    for col in ID_COLUMNS:
        if col in features:
            return features[col].astype(str).to_numpy()
    return np.arange(len(features)).astype(str)


def selection_table(tables: Mapping[str, pd.DataFrame], column: str = "selection",
                    groups: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per selected item of every table: ``layer, row, id, group``."""
    want = None if groups is None else {str(g) for g in groups}
    parts = []
    for layer, df in tables.items():
        if column not in df:
            continue
        vals = df[column].astype(str).to_numpy()
        keep = vals != UNSELECTED
        keep &= vals != "nan"
        if want is not None:
            keep &= np.isin(vals, list(want))
        rows = np.flatnonzero(keep)
        parts.append(pd.DataFrame({"layer": layer, "row": rows, "id": item_ids(df)[rows],
                                   "group": vals[rows]}))
    if not parts:
        return pd.DataFrame({"layer": [], "row": [], "id": [], "group": []})
    return pd.concat(parts, ignore_index=True)


def export_groups_csv(path: str | os.PathLike, tables: Mapping[str, pd.DataFrame], *,
                      column: str = "selection", groups: Iterable[str] | None = None) -> Path:
    """Write the selected items (``layer,row,id,group``) to a CSV file, atomically.

    Raises InputError when nothing is selected (an empty export is almost always a mistake).
    """
    table = selection_table(tables, column, groups)
    if table.empty:
        raise InputError(path, "nothing to export: no item is in the chosen group(s)")
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def align_to_obs(features: pd.DataFrame, obs_names: Sequence[str], column: str = "selection",
                 source: str = "layer") -> pd.Categorical:
    """A features ``column`` reordered to AnnData ``obs_names`` (by ``spot_id`` when present,
    else by position when the lengths agree); obs without a row are ``unselected``."""
    vals = features[column]
    groups = groups_in(vals)
    codes = codes_from_column(vals, groups)
    obs = pd.Index([str(o) for o in obs_names])
    if "spot_id" in features:
        pos = obs.get_indexer(features["spot_id"].astype(str))
        out = np.zeros(len(obs), np.int16)
        ok = pos >= 0
        out[pos[ok]] = codes[ok]
        if not ok.any() and len(features):
            raise InputError(source, "none of its spot ids is in the AnnData obs_names")
    elif len(features) == len(obs):
        out = codes
    else:
        raise InputError(source, f"has {len(features)} rows but the AnnData has {len(obs)} obs "
                                 "and no spot_id column to match them")
    return selection_categorical(out, groups)


def export_groups_h5ad(path: str | os.PathLike, adata, values, *, column: str = "selection",
                       groups: Iterable[str] | None = None) -> Path:
    """Store ``values`` (aligned to ``adata.obs``) as the categorical ``obs[column]`` and write
    the AnnData to ``path`` (atomic). With ``groups``, the other groups become ``unselected``."""
    vals = pd.Categorical(values)
    if len(vals) != adata.n_obs:
        raise InputError(path, f"{len(vals)} selection values for {adata.n_obs} observations")
    all_groups = groups_in(vals)
    keep = all_groups if groups is None else [g for g in all_groups if g in set(groups)]
    codes = codes_from_column(vals, keep)
    if not (codes > 0).any():
        raise InputError(path, "nothing to export: no observation is in the chosen group(s)")
    adata.obs[column] = selection_categorical(codes, keep)
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
