"""THE whole-slide grid pipeline: every model that runs over the tissue of an H&E slide uses it.

1. Geometry (:func:`slide_geometry`): the slide's µm/px through :mod:`napari_stexp.io.frame`
   (else the model's training µm/px, assumed), the patch read size, the spot pitch and diameter.
2. Tissue mask on a coarse level (:func:`napari_stexp.data.tissue.tissue_mask`; one sizing rule:
   a spot about 8 mask px across, 256..1024 px on the long side), while a background thread
   warms the level patches are read from (a JPEG is decoded here, overlapping the mask).
3. A pseudo-spot grid over tissue (:func:`napari_stexp.io.frame.pseudo_spot_grid`).
4. Streamed patches: one producer thread cuts patches tile by tile (each region read once,
   resampled to the model's µm/px) while the main thread hands batches to the model adapter;
   memory is one tile + one batch + the per-spot outputs, whatever the slide size.
5. The model adapter (:class:`SlideGridModel`): ``embed_batch(patches) -> {name: (b, …)}``
   per batch, then optionally ``finish(outputs, grid)`` once (for outputs that need every
   spot's neighbours).
6. One result AnnData (:func:`grid_adata`, through :func:`napari_stexp.io.spatial.build_st_adata`:
   ``obsm['spatial']`` the pseudo-spot centres in slide px (x, y), ``mpp_fullres`` only when the
   slide's µm/px is known), written by :func:`napari_stexp.io.export.write_h5ad`.

``analysis.slide_predict.predict_slide`` (mclSTExp expression) and
``analysis.slide_classify.classify_slide`` (batch-agnostic classifier) are thin adapters.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.image import ImagePyramid
from ..io.keys import PROVENANCE
from ..progress import CancelFlag, ProgressFn, check_cancel, is_cancelled, report


@runtime_checkable
class SlideGridModel(Protocol):
    """What the pipeline needs from a model.

    ``config`` has ``target_mpp``, ``spot_pitch_um`` and ``spot_diameter_um`` (µm, or None);
    ``patch_spec`` is a :class:`~napari_stexp.data.patches.PatchSpec`; ``embed_batch`` maps
    uint8 patches ``(b, S, S, 3)`` to per-spot arrays ``{name: (b, …)}``. An adapter may also
    define ``finish(outputs, grid) -> outputs`` (called once, after the last batch).
    """

    config: Any
    patch_spec: Any

    def embed_batch(self, patches: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class SlideGrid:
    """The pseudo-spots of one slide: centres (level-0 (row, col) px), integer array
    coordinates (x, y), tissue fraction, and the geometry they were laid out with."""

    name: str
    source: str
    image_path: str | None
    shape: tuple[int, int]
    centres: np.ndarray
    array_xy: np.ndarray
    tissue_fraction: np.ndarray
    layout: str
    min_tissue: float
    geometry: dict

    @property
    def n(self) -> int:
        return int(len(self.centres))

    @property
    def obs_names(self) -> list[str]:
        return [f"{x}x{y}" for x, y in self.array_xy]


@dataclass
class SlideGridResult:
    grid: SlideGrid
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    hires: tuple | None = None  # (image, tissue_hires_scalef): io.hires.hires_image_for

    def provenance(self) -> dict:
        """The pipeline's part of a result's provenance."""
        g = self.grid
        return {"slide": g.source, "slide_shape": list(g.shape), "n_spots": g.n,
                "layout": g.layout, "min_tissue": g.min_tissue, **g.geometry,
                "seconds": self.seconds}


def open_slide(image: ImagePyramid | str | os.PathLike) -> ImagePyramid:
    if isinstance(image, ImagePyramid):
        return image
    from ..io.wsi import open_image

    return open_image(image)


def slide_geometry(model, pyramid: ImagePyramid, pitch_um: float | None = None) -> dict:
    """µm/px, patch read size, spot pitch and diameter (slide px) for ``model`` on ``pyramid``.

    ``mpp`` is the µm/px the grid is laid out at: the slide's own (``mpp_source`` ``file``,
    ``spots`` or ``user``), else the model's training µm/px (``assumed``), else ``None``
    (``unknown``: pixels used as is). ``slide_mpp`` is the slide's own µm/px or ``None``: that
    is what a result records, so an unknown µm/px stays unknown on disk.
    """
    from ..data.patches import read_size_px
    from ..io.frame import mpp_of

    cfg = model.config
    slide_mpp = mpp_of(pyramid)
    known = slide_mpp is not None
    if known:
        mpp, source = slide_mpp, pyramid.mpp_source
        how = "slide µm/px from the file"
    elif cfg.target_mpp:
        mpp, source = float(cfg.target_mpp), "assumed"
        how = "slide µm/px unknown: assumed equal to the training µm/px"
    else:
        mpp, source = None, "unknown"
        how = "µm/px unknown for slide and training data: pixels used as is"
    spec = model.patch_spec
    read_px = read_size_px(pyramid, spec) if known else float(spec.patch_size)
    pitch = pitch_um or cfg.spot_pitch_um
    pitch_px = pitch / mpp if (pitch and mpp) else float(spec.patch_size)
    diam_px = (cfg.spot_diameter_um / mpp) if (cfg.spot_diameter_um and mpp) else pitch_px / 2
    return {"mpp": mpp, "mpp_known": known, "mpp_source": source, "slide_mpp": slide_mpp,
            "mpp_handling": how, "read_px": read_px,
            "pitch_px": float(pitch_px), "spot_diameter_px": float(diam_px),
            "pitch_um": pitch, "input_size": spec.input_size}


def mask_size_for(pyramid: ImagePyramid, spot_diameter_px: float) -> int:
    """Long side (px) of the tissue mask: a spot ~8 mask px across, fine enough, and the grid's
    disk filter (cost ~ spots × disk px) stays cheap; 256..1024 px."""
    ds_want = max(float(spot_diameter_px) / 8.0, 1.0)
    return int(np.clip(max(pyramid.height, pyramid.width) / ds_want, 256, 1024))


class _Background:
    """Run ``fn()`` in a daemon thread; :meth:`result` joins it and re-raises its exception."""

    def __init__(self, fn):
        self._exc: BaseException | None = None
        self._value: Any = None

        def run():
            try:
                self._value = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in result()
                self._exc = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._exc is not None:
            raise self._exc
        return self._value


def _warm_level(pyramid: ImagePyramid, read_px: float, out_size: int) -> None:
    """Touch the level patches are read from: a whole-image format (JPEG, PNG) is decoded
    and cached here, a tiled one reads one tile; so the decode overlaps the tissue mask."""
    from ..data.patches import _level_for

    level = _level_for(pyramid, read_px, out_size)
    pyramid.read_region(0, 0, 1, 1, level=level)


def _producer(pyramid, centres, read_px, out_size, tile, q: queue.Queue, stop: threading.Event):
    from ..data.patches import iter_patch_tiles

    try:
        for item in iter_patch_tiles(pyramid, centres, read_px, out_size, tile=tile,
                                     cancel=stop.is_set):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer
        q.put(exc)


def slide_grid(model, image: ImagePyramid | str | os.PathLike, *, name: str | None = None,
               pitch_um: float | None = None, layout: str = "square", min_tissue: float = 0.5,
               mask_max_size: int | None = None, progress: ProgressFn | None = None,
               cancel: CancelFlag | None = None, what: str = "slide prediction"
               ) -> tuple[ImagePyramid, SlideGrid]:
    """Steps 1-3: the opened slide and its pseudo-spot grid over tissue (InputError when the
    slide is smaller than a patch, has no tissue, or its decode fails)."""
    from ..data.patches import check_geometry
    from ..data.tissue import tissue_mask
    from ..io.frame import pseudo_spot_grid

    pyr = open_slide(image)
    name = name or pyr.name or "slide"
    src = str(pyr.path or name)
    geo = slide_geometry(model, pyr, pitch_um)
    if min(pyr.height, pyr.width) < geo["read_px"]:
        raise InputError(src, f"slide is {pyr.height}×{pyr.width} px, smaller than one patch "
                              f"({int(round(geo['read_px']))} px at its µm/px)")
    report(progress, 0, 1, "tissue mask")
    warm = _Background(lambda p=pyr: _warm_level(p, geo["read_px"], geo["input_size"]))
    if mask_max_size is None:
        mask_max_size = mask_size_for(pyr, geo["spot_diameter_px"])
    mask, ds = tissue_mask(pyr, max_size=mask_max_size)
    centres, grid, frac = pseudo_spot_grid(mask, ds, (pyr.height, pyr.width), geo["pitch_px"],
                                           geo["spot_diameter_px"], min_tissue=min_tissue,
                                           layout=layout)
    if len(centres) == 0:
        raise InputError(src, "no tissue found (no pseudo-spot is at least "
                              f"{min_tissue:.0%} tissue); is this an H&E slide?")
    check_geometry(pyr, centres, geo["read_px"], src)
    warm.result()  # a corrupt or truncated file raises its InputError here
    check_cancel(cancel, what)
    image_path = pyr.path if isinstance(image, ImagePyramid) else str(image)
    return pyr, SlideGrid(name=name, source=src,
                          image_path=str(Path(image_path).resolve()) if image_path else None,
                          shape=(int(pyr.height), int(pyr.width)), centres=centres,
                          array_xy=grid, tissue_fraction=frac, layout=layout,
                          min_tissue=float(min_tissue), geometry=geo)


def run_slide_grid(model: SlideGridModel, image: ImagePyramid | str | os.PathLike, *,
                   name: str | None = None, pitch_um: float | None = None,
                   layout: str = "square", min_tissue: float = 0.5, batch_size: int = 32,
                   tile: int = 2048, mask_max_size: int | None = None,
                   progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                   what: str = "slide prediction", verb: str = "predicting"
                   ) -> SlideGridResult:
    """Run ``model`` (a :class:`SlideGridModel`) over the tissue of a slide (see module)."""
    t0 = time.perf_counter()
    pyr, grid = slide_grid(model, image, name=name, pitch_um=pitch_um, layout=layout,
                           min_tissue=min_tissue, mask_max_size=mask_max_size,
                           progress=progress, cancel=cancel, what=what)
    n, geo = grid.n, grid.geometry
    outputs: dict[str, np.ndarray] = {}
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    th = threading.Thread(target=_producer, daemon=True,
                          args=(pyr, grid.centres, geo["read_px"], geo["input_size"], tile, q,
                                stop))
    th.start()
    buf_idx: list[np.ndarray] = []
    buf_p: list[np.ndarray] = []
    done = 0

    def flush(final: bool = False):
        nonlocal done, buf_idx, buf_p
        if not buf_idx:
            return
        idx = np.concatenate(buf_idx)
        pat = np.concatenate(buf_p)
        take = len(idx) if final else (len(idx) // batch_size) * batch_size
        for s in range(0, take, batch_size):
            check_cancel(cancel, what)
            ii = idx[s:s + batch_size]
            for k, v in model.embed_batch(pat[s:s + batch_size]).items():
                v = np.asarray(v)
                if k not in outputs:
                    outputs[k] = np.empty((n,) + v.shape[1:], v.dtype)
                outputs[k][ii] = v
            done += len(ii)
            report(progress, done, n, f"{verb} {grid.name}")
        buf_idx, buf_p = ([idx[take:]], [pat[take:]]) if take < len(idx) else ([], [])

    try:
        while True:
            if is_cancelled(cancel):
                check_cancel(cancel, what)
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            buf_idx.append(item[0])
            buf_p.append(item[1])
            if sum(len(b) for b in buf_idx) >= batch_size:
                flush()
        flush(final=True)
    finally:
        stop.set()
        th.join(timeout=5)
    from ..io.hires import hires_image_for

    hires = hires_image_for(pyr)  # the slide at a hires scale, for sc.pl.spatial
    del pyr
    finish = getattr(model, "finish", None)
    if callable(finish):
        outputs = finish(outputs, grid)
    report(progress, n, n, f"{what} done")
    return SlideGridResult(grid=grid, outputs=outputs, seconds=time.perf_counter() - t0,
                           hires=hires)


def grid_adata(result: SlideGridResult, *, X: np.ndarray, var_names, fmt: str,
               obs: dict[str, Any] | None = None, obsm: dict[str, np.ndarray] | None = None,
               uns: dict[str, Any] | None = None, provenance: dict | None = None):
    """The one result AnnData of a slide grid, through ``io.spatial.build_st_adata``:
    ``obs`` section/patient = the slide name, ``array_x``/``array_y``, ``tissue_fraction`` and
    ``obs``; ``obsm['spatial']`` the centres in slide px (x, y); ``uns['spatial'][name]``
    with ``spot_diameter_fullres``, ``source_image_path``, ``format`` and ``mpp_fullres`` only
    when the slide's µm/px is known; ``uns['napari_stexp']`` the provenance (cleaned)."""
    from ..io.export import clean_provenance
    from ..io.frame import rc_to_xy
    from ..io.spatial import build_st_adata

    g = result.grid
    extra = pd.DataFrame({"tissue_fraction": g.tissue_fraction, **(obs or {})},
                         index=pd.Index(g.obs_names))
    adata = build_st_adata(
        X, g.obs_names, list(var_names), rc_to_xy(g.centres), section=g.name, patient=g.name,
        array_xy=g.array_xy, spot_diameter_fullres=g.geometry["spot_diameter_px"],
        mpp_fullres=g.geometry["slide_mpp"], image_path=g.image_path, image_scale=1.0,
        extra_obs=extra, x_is_counts=False, metadata={"format": fmt},
        hires_image=result.hires[0] if result.hires else None,
        hires_scalef=result.hires[1] if result.hires else None)
    for k, v in (obsm or {}).items():
        adata.obsm[k] = v
    adata.uns.update(uns or {})
    adata.uns[PROVENANCE] = clean_provenance({
        **(provenance or {}), **result.provenance(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return adata
