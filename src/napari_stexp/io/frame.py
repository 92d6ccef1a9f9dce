"""THE slide frame: µm/px, spot centres, spot size and pitch, spot grids and neighbour graphs.

Every other module asks here; nothing else converts between pixels, micrometres and napari's
(row, col), or decides what "unknown µm/px" means.

**µm/px.** One encoding of unknown: ``None``. An :class:`~napari_stexp.io.image.ImagePyramid`
carries ``mpp`` (µm per level-0 pixel, or ``None``) and ``mpp_source``, one of
:data:`MPP_SOURCES`: ``file`` (the image file says so), ``spots`` (from the ST data's
``mpp_fullres``), ``user`` (typed in, or a napari layer's scale), ``assumed`` (taken equal to a
model's training µm/px) or ``unknown``. An ST AnnData keeps
``uns['spatial'][lib]['metadata']['mpp_fullres']`` absent when unknown; readers, writers and
reopen carry that through (no ``1.0`` sentinel).

**Frames.** ``obsm['spatial']`` holds spot centres in full-resolution pixels as (x, y)
(:func:`spots_xy_px`). napari wants (row, col) (:func:`spots_rc_px`), and every layer of a slide
shares one physical frame in micrometres (:func:`spots_rc_um`). When µm/px is unknown the frame
unit is the full-resolution pixel (:func:`frame_unit` says which): layers then have scale 1
(:func:`layer_scale`).

**Spot size.** ``scalefactors['spot_diameter_fullres']`` when recorded, else half the spot pitch
(the median nearest-neighbour distance): :func:`spot_diameter_px`. That is the one fallback rule.

**Grids.** Integer array coordinates (:func:`array_grid`), centres in spot pitches
(:func:`grid_coordinates`, :func:`section_grid`), the pseudo-spot lattices over a slide
(:func:`square_grid`, :func:`hex_grid`, :func:`pseudo_spot_grid`) and the spot neighbour graph
(:func:`neighbour_graph`, :func:`neighbour_mean`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from .keys import IMAGE_SCALE, METADATA, MPP_FULLRES, SCALEFACTORS, SPATIAL, SPOT_DIAMETER_FULLRES

MPP_SOURCES = ("file", "spots", "user", "assumed", "unknown")


# ----------------------------------------------------------------------------- µm/px


def clean_mpp(value: Any) -> float | None:
    """``value`` as a positive finite float, else ``None`` (the one encoding of unknown)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _spatial_entry(adata, section: str | None = None) -> dict:
    from .spatial import spatial_info

    return spatial_info(adata, section)


def mpp_of(obj: Any, section: str | None = None) -> float | None:
    """µm/px of a pyramid (level 0) or of an ST AnnData (full-resolution px); ``None`` if unknown.
    """
    if hasattr(obj, "levels") and hasattr(obj, "mpp"):
        return clean_mpp(obj.mpp)
    if hasattr(obj, "uns"):
        return clean_mpp(_spatial_entry(obj, section)[METADATA].get(MPP_FULLRES))
    raise TypeError(f"mpp_of: expected an ImagePyramid or an AnnData, got {type(obj).__name__}")


def mpp_known(obj: Any, section: str | None = None) -> bool:
    return mpp_of(obj, section) is not None


def frame_unit(obj: Any, section: str | None = None) -> str:
    """``"µm"`` when µm/px is known, ``"px"`` when the frame is in (full-resolution) pixels."""
    return "µm" if mpp_known(obj, section) else "px"


def image_scale(pyramid) -> float:
    """Level-0 pixels of ``pyramid`` per full-resolution pixel of its ST data (1 for a slide)."""
    meta = getattr(pyramid, "metadata", None) or {}
    v = clean_mpp(meta.get(IMAGE_SCALE))
    return v if v is not None else 1.0


def frame_scale(pyramid) -> float:
    """Frame units per level-0 pixel: µm/px when known; else full-resolution pixels per pixel
    (``1 / image_scale``), so a downscaled image of unknown µm/px still overlays its spots."""
    mpp = mpp_of(pyramid)
    return mpp if mpp is not None else 1.0 / image_scale(pyramid)


def layer_scale(mpp: Any) -> tuple[float, float]:
    """napari ``scale`` for µm/px ``mpp`` (1.0 when unknown), or for a pyramid's level 0."""
    if hasattr(mpp, "levels"):
        s = frame_scale(mpp)
    else:
        m = clean_mpp(mpp)
        s = m if m is not None else 1.0
    return (float(s), float(s))


def mpp_from_layer(layer) -> float | None:
    """µm/px of an Image layer's level 0: ``layer.metadata['mpp']`` when the metadata says
    (``None`` there means unknown; a recorded 1.0 stays 1 µm/px). A layer without that key
    (added by hand) is at its ``scale`` when the user set one; napari's default scale of 1 on
    such a layer says nothing, so it is unknown. ``layer`` may also be a layer's attribute dict
    (``metadata``, ``scale``), as napari hands to writers."""
    meta = _layer_attr(layer, "metadata") or {}
    if "mpp" in meta:
        return clean_mpp(meta["mpp"])
    scale = _layer_attr(layer, "scale")
    if scale is None or len(scale) == 0:
        return None
    s = float(scale[-1])
    return clean_mpp(s) if s != 1.0 else None


def _layer_attr(layer, name: str):
    if isinstance(layer, dict):
        return layer.get(name)
    return getattr(layer, name, None)


def mpp_source_from_layer(layer) -> str:
    meta = _layer_attr(layer, "metadata") or {}
    mpp = mpp_from_layer(layer)
    if mpp is None:
        return "unknown"
    src = meta.get("mpp_source")
    if "mpp" in meta and src in MPP_SOURCES:
        return src
    return "user" if "mpp" not in meta else "file"


def pyramid_from_layer(layer):
    """An :class:`ImagePyramid` over an Image layer's data, µm/px from :func:`mpp_from_layer`."""
    from .image import ImagePyramid

    data = list(layer.data) if layer.multiscale else [layer.data]
    meta = {k: v for k, v in (layer.metadata or {}).items() if k != "adata"}
    return ImagePyramid(levels=data, path=meta.get("path"), name=layer.name,
                        mpp=mpp_from_layer(layer), mpp_source=mpp_source_from_layer(layer),
                        metadata=meta)


# ----------------------------------------------------------------------------- spot centres


def spots_xy_px(adata) -> np.ndarray:
    """Spot centres ``(n, 2)`` as (x, y) = (column, row) in full-resolution pixels."""
    return np.asarray(adata.obsm[SPATIAL], dtype=np.float64)[:, :2].copy()


def xy_to_rc(xy: np.ndarray) -> np.ndarray:
    """(x, y) ↔ (row, col): the one axis swap (its own inverse)."""
    return np.asarray(xy, dtype=np.float64)[:, 1::-1].copy()


rc_to_xy = xy_to_rc


def spots_rc_px(adata, pyramid=None, section: str | None = None) -> np.ndarray:
    """Spot centres as (row, col) pixels: full-resolution pixels, or with ``pyramid`` that
    image's level-0 pixels (through µm when both know µm/px, else through ``image_scale``)."""
    rc = xy_to_rc(spots_xy_px(adata))
    return rc if pyramid is None else rc * _px_per_fullres(adata, pyramid, section)


def _px_per_fullres(adata, pyramid, section: str | None = None) -> float:
    """Level-0 pixels of ``pyramid`` per full-resolution pixel of ``adata``."""
    a_mpp, p_mpp = mpp_of(adata, section), mpp_of(pyramid)
    if a_mpp is not None and p_mpp is not None:
        return a_mpp / p_mpp
    return image_scale(pyramid)


def spots_rc_um(adata, section: str | None = None) -> np.ndarray:
    """Spot centres as napari (row, col) in µm; in full-resolution pixels when µm/px is unknown
    (:func:`frame_unit` says which)."""
    mpp = mpp_of(adata, section)
    return spots_rc_px(adata) * (mpp if mpp is not None else 1.0)


def layer_coords(adata, pyramid=None, section: str | None = None) -> np.ndarray:
    """Spot centres in the frame of ``pyramid``'s image layer (result layers over a slide);
    without a pyramid, :func:`spots_rc_um`."""
    if pyramid is None:
        return spots_rc_um(adata, section)
    return spots_rc_px(adata, pyramid, section) * frame_scale(pyramid)


# ----------------------------------------------------------------------------- spot size


def _name(adata) -> str:
    if "section" in adata.obs and adata.n_obs:
        return str(adata.obs["section"].iloc[0])
    return "AnnData"


def spot_pitch_px(adata) -> float:
    """Centre-to-centre spot distance in full-resolution px (median nearest-neighbour)."""
    from scipy.spatial import cKDTree

    xy = spots_xy_px(adata)
    if len(xy) < 2:
        raise InputError(_name(adata), "need at least 2 spots to measure the spot pitch")
    d, _ = cKDTree(xy).query(xy, k=2)
    d = d[:, 1][d[:, 1] > 0]
    if d.size == 0:
        raise InputError(_name(adata), "all spots share one position")
    return float(np.median(d))


def spot_pitch_um(adata, section: str | None = None) -> float:
    """The spot pitch in the frame unit (µm; full-resolution px when µm/px is unknown)."""
    mpp = mpp_of(adata, section)
    return spot_pitch_px(adata) * (mpp if mpp is not None else 1.0)


def recorded_spot_diameter_px(adata, section: str | None = None) -> float | None:
    """``scalefactors['spot_diameter_fullres']`` (None when absent)."""
    return clean_mpp(_spatial_entry(adata, section)[SCALEFACTORS].get(SPOT_DIAMETER_FULLRES))


def spot_diameter_px(adata, section: str | None = None) -> float | None:
    """Spot diameter in full-resolution px: the recorded one, else half the spot pitch (the one
    fallback rule); ``None`` with fewer than two distinct spot positions."""
    d = recorded_spot_diameter_px(adata, section)
    if d is not None:
        return d
    try:
        return 0.5 * spot_pitch_px(adata)
    except InputError:
        return None


def spot_diameter_um(adata, section: str | None = None, *, fallback: bool = True
                     ) -> float | None:
    """Spot diameter in the frame unit (µm; full-resolution px when µm/px is unknown);
    ``fallback=False``: the recorded diameter only (None when absent)."""
    d = (spot_diameter_px if fallback else recorded_spot_diameter_px)(adata, section)
    if d is None:
        return None
    mpp = mpp_of(adata, section)
    return d * (mpp if mpp is not None else 1.0)


def layer_spot_size(adata, pyramid=None, section: str | None = None) -> float:
    """Point size of spots in the frame of ``pyramid``'s layer (or of :func:`spots_rc_um`)."""
    d = spot_diameter_px(adata, section)
    if d is None:
        return 1.0
    if pyramid is None:
        mpp = mpp_of(adata, section)
        return d * (mpp if mpp is not None else 1.0)
    return d * _px_per_fullres(adata, pyramid, section) * frame_scale(pyramid)


# ----------------------------------------------------------------------------- grids


def array_grid(adata) -> np.ndarray:
    """Integer array coordinates ``(n, 2)`` = (x, y) (the position embeddings' indices).

    ``obs['array_x']``/``obs['array_y']`` when present; otherwise ``obsm['spatial']`` divided by
    the spot pitch, shifted to start at 0 (for data written without array coordinates).
    """
    obs = adata.obs
    if "array_x" in obs and "array_y" in obs:
        a = obs[["array_x", "array_y"]].to_numpy(dtype=np.float64)
        if np.isfinite(a).all():
            return np.round(a).astype(np.int64)
    xy = spots_xy_px(adata)
    pitch = spot_pitch_px(adata)
    return np.round((xy - xy.min(axis=0)) / pitch).astype(np.int64)


def grid_coordinates(array_xy: np.ndarray, layout: str = "auto") -> np.ndarray:
    """Spot centres in units of the spot pitch from integer array coordinates ``(n, 2)`` (x, y).

    ``square`` (ST v1, her2st): as is. ``hex`` (Visium ``array_col``/``array_row``, or the
    whole-slide pseudo-spot grid with ``layout='hex'``: x steps by 2 along a row, rows offset by
    1): ``(x / 2, y · √3 / 2)``. ``auto``: hex when every ``x + y`` has the same parity (a
    hexagonal grid), square otherwise.
    """
    a = np.asarray(array_xy, dtype=np.float64).reshape(-1, 2)
    if layout == "auto":
        par = np.round(a.sum(axis=1)).astype(np.int64) % 2
        layout = "hex" if len(a) > 1 and (par == par[0]).all() else "square"
    if layout == "square":
        return a.copy()
    if layout == "hex":
        return np.column_stack([a[:, 0] / 2.0, a[:, 1] * (np.sqrt(3.0) / 2.0)])
    raise InputError("layout", f"unknown grid layout '{layout}' (square, hex or auto)")


def section_grid(adata) -> np.ndarray:
    """A section's spot centres in spot pitches: its array coordinates (square or hexagonal,
    see :func:`grid_coordinates`), else ``obsm['spatial']`` divided by the measured pitch."""
    obs = adata.obs
    if "array_x" in obs and "array_y" in obs:
        a = obs[["array_x", "array_y"]].to_numpy(dtype=np.float64)
        if np.isfinite(a).all():
            return grid_coordinates(a, "auto")
    xy = spots_xy_px(adata)
    return xy / spot_pitch_px(adata) if len(xy) > 1 else np.zeros((len(xy), 2))


def _lattice(shape: tuple[int, int], pitch_px: float, layout: str
             ) -> tuple[np.ndarray, np.ndarray]:
    H, W = int(shape[0]), int(shape[1])
    if not pitch_px > 0:
        raise InputError("pitch", f"spot pitch must be positive, got {pitch_px}")
    if layout not in ("square", "hex"):
        raise InputError("layout", f"unknown grid layout '{layout}' (square or hex)")
    hexa = layout == "hex"
    row_step = pitch_px * (np.sqrt(3) / 2 if hexa else 1.0)
    rows = np.arange(pitch_px / 2, H, row_step)
    centres, grid = [], []
    for i, r in enumerate(rows):
        shift = pitch_px / 2 if (hexa and i % 2) else 0.0
        cols = np.arange(pitch_px / 2 + shift, W, pitch_px)
        centres.append(np.column_stack([np.full(len(cols), r), cols]))
        gx = np.arange(len(cols)) * (2 if hexa else 1) + (1 if shift else 0)
        grid.append(np.column_stack([gx, np.full(len(cols), i)]))
    if not centres:
        return np.empty((0, 2)), np.empty((0, 2), np.int64)
    return np.concatenate(centres), np.concatenate(grid).astype(np.int64)


def square_grid(shape: tuple[int, int], pitch_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Square lattice over an image ``shape`` (rows, cols): ``(centres (n, 2) (row, col) px,
    integer array coordinates (n, 2) (x, y))``, centres ``pitch_px`` apart from ``pitch/2``."""
    return _lattice(shape, pitch_px, "square")


def hex_grid(shape: tuple[int, int], pitch_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Hexagonal lattice: rows ``pitch·√3/2`` apart, every other row shifted by half a pitch;
    array x steps by 2 along a row and odd rows start at 1 (Visium's convention)."""
    return _lattice(shape, pitch_px, "hex")


def pseudo_spot_grid(mask: np.ndarray, downsample: float, shape: tuple[int, int],
                     pitch_px: float, spot_diameter_px: float | None = None, *,
                     min_tissue: float = 0.5, layout: str = "square"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-spots over tissue: ``(centres (n, 2) level-0 (row, col), grid (n, 2) integer
    (x, y) array coordinates, tissue fraction (n,))``.

    Spots lie on :func:`square_grid` or :func:`hex_grid` at ``pitch_px``; a spot is kept when at
    least ``min_tissue`` of its disk (``spot_diameter_px``, default half the pitch) is tissue in
    ``mask`` (``downsample`` level-0 px per mask px).
    """
    c, g = _lattice(shape, pitch_px, layout)
    if len(c) == 0:
        return np.empty((0, 2)), np.empty((0, 2), np.int64), np.empty(0)
    diam = float(spot_diameter_px or pitch_px / 2) / downsample
    rad = max(diam / 2, 0.5)
    k = int(np.ceil(rad))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    disk = (yy * yy + xx * xx) <= rad * rad
    mr = np.clip((c[:, 0] / downsample).astype(int), 0, mask.shape[0] - 1)
    mc = np.clip((c[:, 1] / downsample).astype(int), 0, mask.shape[1] - 1)
    # Tissue fraction sampled at the spot centres only (same as correlating the mask with the
    # disk, zero outside, but costs spots × disk instead of image × disk).
    m = mask.astype(bool)
    hits = np.zeros(len(c), np.float64)
    for dy, dx in zip(yy[disk], xx[disk], strict=True):
        r, q = mr + dy, mc + dx
        ok = (r >= 0) & (r < m.shape[0]) & (q >= 0) & (q < m.shape[1])
        hits[ok] += m[r[ok], q[ok]]
    frac = hits / disk.sum()
    keep = frac >= min_tissue
    return c[keep], g[keep], frac[keep].astype(np.float32)


# ----------------------------------------------------------------------------- neighbours


def neighbour_graph(grid: np.ndarray, radius: float = 1.5, groups: np.ndarray | None = None):
    """Row-normalised neighbour matrix (scipy CSR, ``n × n``): row i averages the spots whose
    centres lie within ``radius`` (in the units of ``grid``, normally spot pitches) of spot i,
    itself excluded, and in the same group (section) only. A spot with no neighbour gets a
    row with 1 on the diagonal (it is its own context)."""
    from scipy import sparse
    from scipy.spatial import cKDTree

    g = np.asarray(grid, dtype=np.float64).reshape(-1, 2)
    n = len(g)
    labels = np.zeros(n, np.int64) if groups is None else np.unique(
        np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)
    if len(labels) != n:
        raise InputError("groups", f"{len(labels)} group labels for {n} spots")
    rows, cols = [], []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        if len(idx) > 1:
            pairs = cKDTree(g[idx]).query_pairs(float(radius) + 1e-9, output_type="ndarray")
            if len(pairs):
                rows += [idx[pairs[:, 0]], idx[pairs[:, 1]]]
                cols += [idx[pairs[:, 1]], idx[pairs[:, 0]]]
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    lone = np.setdiff1d(np.arange(n), r)
    r, c = np.concatenate([r, lone]), np.concatenate([c, lone])
    A = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    deg = np.asarray(A.sum(axis=1)).reshape(-1)
    return sparse.diags(1.0 / np.maximum(deg, 1.0)) @ A


def neighbour_mean(values: np.ndarray, grid_or_graph: Any, radius: float = 1.5,
                   groups: np.ndarray | None = None) -> np.ndarray:
    """Mean of each spot's neighbours' ``values`` (``(n, …)``; a lone spot keeps its own).
    ``grid_or_graph``: grid coordinates ``(n, 2)`` or a :func:`neighbour_graph`."""
    v = np.asarray(values)
    A = (grid_or_graph if hasattr(grid_or_graph, "tocsr")
         else neighbour_graph(grid_or_graph, radius, groups))
    flat = v.reshape(len(v), -1).astype(np.float64)
    return np.asarray(A @ flat).reshape(v.shape).astype(np.float32)


def median_spot_geometry(adatas) -> tuple[float | None, float | None]:
    """Median spot pitch and recorded spot diameter over sections, in the frame unit (µm; px
    when µm/px is unknown); ``None`` when no section gives one (training records these)."""
    items = list(adatas.values()) if hasattr(adatas, "values") else list(adatas)
    pitches = [spot_pitch_um(a) for a in items if a.n_obs > 1]
    diam = [d for a in items if (d := spot_diameter_um(a, fallback=False))]
    return (float(np.median(pitches)) if pitches else None,
            float(np.median(diam)) if diam else None)
