"""Many bins as a raster: a gene map, class map or latent dimension over a regular bin grid
(Visium HD 2/8/16 µm, pseudo-spot grids) shown as one multiscale Image layer instead of one Point
per bin.

:class:`BinGrid` maps each bin (``obs['array_row']``/``['array_col']``) to a pixel and fits the
affine from grid pixels to the section's µm frame (the same frame as
:func:`~napari_stexp.io.spatial.spots_rc_um`, so the raster overlays the H&E and any spots). Values
are scattered into level 0 (one float32 per bin, NaN where there is no bin); coarser levels are
dask ``coarsen`` views (NaN-aware mean), computed only when napari shows them. The layer's value
at the cursor is the bin's value; :func:`bin_at` gives the bin (obs row) under a position.
Switching the gene (:func:`set_raster_values`) rebuilds the levels lazily from one column of the
counts (a scan of the CSR indices: no CSC copy, no dense matrix).
"""

from __future__ import annotations

from pathlib import Path
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

    def column(self, key: str) -> np.ndarray:
        """Per-bin values for a gene (counts), an obs column (categories → codes) or
        ``"<obsm key>:<i>"`` (a latent dimension)."""
        ad = self.adata
        if key in ad.var_names:
            import scipy.sparse as sp

            j = int(ad.var_names.get_loc(key))
            X = self._counts
            if sp.issparse(X):
                if X.format == "csr":  # one column without a CSC copy: a scan of the nnz
                    out = np.zeros(X.shape[0], np.float32)
                    pos = np.flatnonzero(X.indices == j)
                    rows = np.searchsorted(X.indptr, pos, side="right") - 1
                    np.add.at(out, rows, X.data[pos])
                    return out
                return np.asarray(X[:, j].toarray()).ravel().astype(np.float32)
            return np.asarray(X[:, j], np.float32).ravel()
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


def default_key(adata) -> str:
    """The gene a raster shows first: the one with the most counts."""
    from ..io.spatial import counts_matrix

    return str(adata.var_names[int(np.argmax(np.asarray(counts_matrix(adata).sum(axis=0))
                                             .ravel()))])


def raster_or_none(adata, section: str | None = None, *, grid: BinGrid | None = None,
                   **kwargs) -> tuple[Any, dict, str] | None:
    """The raster layer of ``adata``'s most-counted gene, or None when it has no bin grid."""
    try:
        grid = grid or BinGrid(adata, section)
    except ValueError:
        return None
    return raster_layer(adata, default_key(adata), section=section, grid=grid, **kwargs)


def selection_layer(adata, *, section: str | None = None, grid: BinGrid | None = None,
                    name: str | None = None, **kwargs) -> tuple[Any, dict, str]:
    """The bins as a Labels layer for the explorer's linked selection: label ``i + 1`` is obs
    row ``i`` (``features`` has one row per bin: ``index``, ``spot_id``), drawn transparent
    until the explorer highlights a selection on it (selected bins in their group's colour).
    Multiscale like the raster (coarser levels are lazy 2× subsamplings)."""
    import dask.array as da

    grid = grid or BinGrid(adata, section)
    sec = section or (str(adata.obs["section"].iloc[0]) if "section" in adata.obs else "bins")
    base = grid.index + 1  # 0 = no bin
    levels = [da.from_array(base, chunks=1024)]
    while max(levels[-1].shape) > COARSEST and min(levels[-1].shape) >= 4:
        levels.append(levels[-1][::2, ::2])
    features = pd.DataFrame({"index": np.arange(1, adata.n_obs + 1, dtype=np.int64),
                             "spot_id": adata.obs_names.astype(str)})
    from napari.utils.colormaps import DirectLabelColormap

    clear = DirectLabelColormap(color_dict={None: np.zeros(4, np.float32),
                                            0: np.zeros(4, np.float32)})
    attrs = {"name": name or f"{sec} bins", "affine": grid.affine, "multiscale": True,
             "features": features, "colormap": clear, "opacity": 0.8,
             "metadata": {"kind": "bin-selection", "section": sec, "adata": adata,
                          "bin_grid": grid, "n_bins": int(adata.n_obs)}}
    attrs.update(kwargs)
    return levels, attrs, "labels"


def raster_layers(adata, section: str | None = None, **kwargs) -> list:
    """The raster of ``adata``'s most-counted gene and its bins overlay for the explorer's
    linked selection ([] when it has no bin grid)."""
    try:
        grid = BinGrid(adata, section)
    except ValueError:
        return []
    visible = kwargs.get("visible", True)
    return [raster_or_none(adata, section, grid=grid, **kwargs),
            selection_layer(adata, section=section, grid=grid, visible=visible)]


def raster_path(out) -> Path:
    """Where ``expression predict --raster`` writes the raster beside ``out`` (.h5ad/.zarr)."""
    p = Path(out)
    return p.with_name(p.name.split(".")[0] + "_raster.ome.zarr")


def write_raster(adata, path, *, genes=None, section: str | None = None) -> Path:
    """Write ``adata``'s values over its bin grid (pseudo-spots of a square grid, HD bins) as
    one OME-Zarr multiscale image (``c, y, x``: one channel per gene, NaN where there is no
    bin; one pixel per bin). The level-0 pixel size is the grid pitch in µm (unknown µm/px:
    a unit-less scale). The root attributes ``napari_stexp`` carry the channel genes and the
    affine from raster pixels (row, col) to the section's frame (µm, or full-resolution pixels
    when µm/px is unknown), so the raster overlays the slide."""
    import zarr

    from ..io.export import write_ome_zarr
    from ..io.frame import mpp_of

    grid = BinGrid(adata, section)
    names = list(adata.var_names) if genes is None else [str(g) for g in genes]
    X = adata.X
    stack = np.empty((len(names),) + grid.shape, np.float32)
    for k, g in enumerate(names):
        j = adata.var_names.get_loc(g)
        col = X[:, j]
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        stack[k] = grid.level0(np.asarray(col, np.float32).ravel())
    A = grid.affine
    pitch = (float(np.hypot(A[0, 0], A[1, 0])), float(np.hypot(A[0, 1], A[1, 1])))
    scale = pitch if mpp_of(adata) is not None else None
    out = write_ome_zarr(path, stack, axes="cyx", scale_um=scale,
                         name=Path(path).name.split(".")[0])
    root = zarr.open_group(str(out), mode="r+")
    root.attrs["napari_stexp"] = {"kind": "bin-raster", "genes": names,
                                  "affine": A.tolist(), "n_bins": int(adata.n_obs),
                                  "frame": "micrometer" if scale else "fullres pixels"}
    return out


def rasterize_large(layers: list, threshold: int = RASTER_THRESHOLD) -> list:
    """Replace spot Points layers with more than ``threshold`` points on a bin grid by a raster
    of their first colouring (total counts by default) and its bins overlay (selection)."""
    out = []
    for data, attrs, kind in layers:
        meta = attrs.get("metadata") or {}
        ad = meta.get("adata")
        if kind == "points" and ad is not None and len(data) > threshold:
            r = raster_layers(ad, meta.get("section"), visible=attrs.get("visible", True))
            out.extend(r or [(data, attrs, kind)])
            continue
        out.append((data, attrs, kind))
    return out
