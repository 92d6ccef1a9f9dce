"""Many bins as a raster: a gene map, class map or latent dimension over a regular bin grid
(Visium HD 2/8/16 µm, pseudo-spot grids) shown as one multiscale Image layer instead of one Point
per bin.

:class:`BinGrid` maps each bin (``obs['array_row']``/``['array_col']``) to a pixel and fits the
affine from grid pixels to the section's µm frame (the same frame as
:func:`~napari_stexp.io.spatial.spots_rc_um`, so the raster overlays the H&E and any spots). Values
are scattered into level 0 (one float32 per bin, NaN where there is no bin); coarser levels are
dask ``coarsen`` views (NaN-aware mean), computed only when napari shows them. The layer's value
at the cursor is the bin's value; :func:`bin_at` gives the bin (obs row) under a position.
Switching the gene (:func:`set_raster_values`) rebuilds the levels lazily from a cached CSC copy of
the counts (one column read per switch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Beyond this many elements a map is a raster, not Points.
RASTER_THRESHOLD = 100_000
COARSEST = 256


class BinGrid:
    """The bin grid of one section (requires integer ``array_row``/``array_col`` in obs)."""

    def __init__(self, adata, section: str | None = None):
        from ..io.frame import spots_rc_um
        from ..io.spatial import counts_matrix

        obs = adata.obs
        if "array_row" in obs and "array_col" in obs:
            r = obs["array_row"].to_numpy(np.int64)
            c = obs["array_col"].to_numpy(np.int64)
        elif "array_y" in obs and "array_x" in obs:
            r = obs["array_y"].to_numpy(np.int64)
            c = obs["array_x"].to_numpy(np.int64)
        else:
            raise ValueError("no bin grid: obs has no array_row/array_col")
        self.adata = adata
        self.section = section
        self.r, self.c = r - r.min(), c - c.min()
        self.shape = (int(self.r.max()) + 1, int(self.c.max()) + 1)
        self.index = np.full(self.shape, -1, np.int32)
        self.index[self.r, self.c] = np.arange(len(r), dtype=np.int32)
        rc_um = spots_rc_um(adata, section)
        self.affine = _fit_affine(self.r, self.c, rc_um)
        self._counts = counts_matrix(adata)
        self._csc = None

    def column(self, key: str) -> np.ndarray:
        """Per-bin values for a gene (counts), an obs column (categories → codes) or
        ``"<obsm key>:<i>"`` (a latent dimension)."""
        ad = self.adata
        if key in ad.var_names:
            import scipy.sparse as sp

            j = int(ad.var_names.get_loc(key))
            if sp.issparse(self._counts):
                if self._csc is None:
                    self._csc = sp.csc_matrix(self._counts)
                return np.asarray(self._csc[:, j].toarray()).ravel().astype(np.float32)
            return np.asarray(self._counts[:, j], np.float32).ravel()
        if key in ad.obs:
            col = ad.obs[key]
            if isinstance(col.dtype, pd.CategoricalDtype):
                v = col.cat.codes.to_numpy().astype(np.float32)
                v[v < 0] = np.nan
                return v
            return pd.to_numeric(col, errors="coerce").to_numpy(np.float32)
        if ":" in key:
            name, i = key.rsplit(":", 1)
            if name in ad.obsm:
                return np.asarray(ad.obsm[name])[:, int(i)].astype(np.float32)
        raise KeyError(f"{key!r} is not a gene, an obs column or '<obsm>:<dim>'")

    def level0(self, values: np.ndarray) -> np.ndarray:
        img = np.full(self.shape, np.nan, np.float32)
        img[self.r, self.c] = values
        return img

    def levels(self, values: np.ndarray) -> list:
        """Lazy multiscale levels: level 0 from the bins, then 2× NaN-mean coarsenings."""
        import dask.array as da

        base = da.from_array(self.level0(values), chunks=1024)
        out = [base]
        while max(out[-1].shape) > COARSEST and min(out[-1].shape) >= 4:
            out.append(da.coarsen(_nanmean, out[-1], {0: 2, 1: 2}, trim_excess=True))
        return out


def _nanmean(x, axis=None, **kwargs):
    """NaN-aware mean; all-NaN blocks (no bin) stay NaN without a warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis, **kwargs)


def _fit_affine(r: np.ndarray, c: np.ndarray, rc_um: np.ndarray) -> np.ndarray:
    """3×3 affine (row, col, 1) → µm (row, col), least squares over (a sample of) the bins."""
    n = len(r)
    take = np.linspace(0, n - 1, min(n, 20_000)).astype(np.int64)
    A = np.column_stack([r[take], c[take], np.ones(len(take))]).astype(np.float64)
    sol, *_ = np.linalg.lstsq(A, rc_um[take], rcond=None)  # (3, 2)
    m = np.eye(3)
    m[:2, :2] = sol[:2].T
    m[:2, 2] = sol[2]
    return m


def _limits(level0: np.ndarray) -> tuple[float, float]:
    finite = level0[np.isfinite(level0)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(np.percentile(finite, 99.5))
    return (lo, hi if hi > lo else lo + 1.0)


def raster_layer(adata, key: str, *, section: str | None = None, grid: BinGrid | None = None,
                 name: str | None = None, **kwargs) -> tuple[Any, dict, str]:
    """An Image layer tuple showing ``key`` over the bin grid (multiscale, lazy)."""
    grid = grid or BinGrid(adata, section)
    values = grid.column(key)
    levels = grid.levels(values)
    sec = section or (str(adata.obs["section"].iloc[0]) if "section" in adata.obs else "bins")
    attrs = {"name": name or f"{sec} {key}", "affine": grid.affine, "multiscale": True,
             "colormap": "viridis", "contrast_limits": _limits(np.asarray(levels[0])),
             "metadata": {"kind": "bin-raster", "section": sec, "key": key, "adata": adata,
                          "bin_grid": grid, "n_bins": int(adata.n_obs)}}
    attrs.update(kwargs)
    return levels, attrs, "image"


def set_raster_values(layer, key: str) -> None:
    """Show ``key`` (another gene, class or latent dim) on an existing raster layer."""
    grid: BinGrid = layer.metadata["bin_grid"]
    levels = grid.levels(grid.column(key))
    layer.data = levels
    layer.contrast_limits = _limits(np.asarray(levels[0]))
    layer.metadata["key"] = key


def bin_at(layer, position) -> int | None:
    """The obs row of the bin under world ``position`` (row, col in µm), or None."""
    grid: BinGrid = layer.metadata["bin_grid"]
    inv = np.linalg.inv(grid.affine)
    rc = inv @ np.array([position[-2], position[-1], 1.0])
    r, c = int(round(rc[0])), int(round(rc[1]))
    if 0 <= r < grid.shape[0] and 0 <= c < grid.shape[1]:
        i = int(grid.index[r, c])
        return i if i >= 0 else None
    return None


def rasterize_large(layers: list, threshold: int = RASTER_THRESHOLD) -> list:
    """Replace spot Points layers with more than ``threshold`` points on a bin grid by a raster
    of their first colouring (total counts by default)."""
    out = []
    for data, attrs, kind in layers:
        meta = attrs.get("metadata") or {}
        ad = meta.get("adata")
        if kind == "points" and ad is not None and len(data) > threshold:
            try:
                grid = BinGrid(ad, meta.get("section"))
            except ValueError:
                out.append((data, attrs, kind))
                continue
            key = ad.var_names[int(np.argmax(np.asarray(grid._counts.sum(axis=0)).ravel()))]
            out.append(raster_layer(ad, key, section=meta.get("section"), grid=grid,
                                    visible=attrs.get("visible", True)))
            continue
        out.append((data, attrs, kind))
    return out
