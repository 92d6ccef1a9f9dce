"""Whole-slide expression prediction with a trained mclSTExp model.

1. Tissue mask on a coarse level (:func:`napari_stexp.data.tissue.tissue_mask`).
2. A pseudo-spot grid over tissue at the training spot pitch (µm → this slide's px).
3. Streamed tiled inference: a reader thread cuts patches tile by tile (each region read once,
   resampled to the model's µm/px) while the main thread embeds batches and retrieves; memory is
   one tile + one batch + the outputs (``n_spots × n_genes`` floats), whatever the slide size.
   A model with the spatial-context, smoothing or test-time-augmentation options instead
   streams the backbone features (``views × n_spots × D`` floats) and predicts once at the end
   over the pseudo-spot grid (neighbours need every spot).
4. An AnnData (same conventions as the readers): ``X`` and ``layers['predicted']`` hold the
   predicted normalised expression, ``obsm['X_mclstexp']`` the image embeddings,
   ``obs['confidence']`` the mean top-k cosine similarity, ``obsm['spatial']`` the pseudo-spot
   centres in slide pixels (x, y), and ``uns['napari_stexp']`` the provenance.

µm/px: the slide's own µm/px (from the file) is used to read the model's field of view; when the
file has none, the slide is assumed to be at the model's training µm/px (recorded in provenance).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.export import clean_provenance
from ..io.image import ImagePyramid
from ..progress import CancelFlag, ProgressFn, check_cancel, is_cancelled, report


def _open(image: ImagePyramid | str | os.PathLike) -> ImagePyramid:
    if isinstance(image, ImagePyramid):
        return image
    from ..io.wsi import open_image

    return open_image(image)


def slide_geometry(model, pyramid: ImagePyramid, pitch_um: float | None = None) -> dict:
    """µm/px, patch read size, spot pitch and diameter (slide px) for ``model`` on ``pyramid``."""
    from ..data.patches import image_mpp_known, read_size_px

    cfg = model.config
    known = image_mpp_known(pyramid)
    if known:
        mpp = float(pyramid.mpp)
        how = "slide µm/px from the file"
    elif cfg.target_mpp:
        mpp = float(cfg.target_mpp)
        how = "slide µm/px unknown: assumed equal to the training µm/px"
    else:
        mpp = None
        how = "µm/px unknown for slide and training data: pixels used as is"
    spec = model.patch_spec
    if known:
        read_px = read_size_px(pyramid, spec)
    else:
        read_px = float(spec.patch_size)
    pitch = pitch_um or cfg.spot_pitch_um
    pitch_px = pitch / mpp if (pitch and mpp) else float(spec.patch_size)
    diam_px = (cfg.spot_diameter_um / mpp) if (cfg.spot_diameter_um and mpp) else pitch_px / 2
    return {"mpp": mpp, "mpp_known": known, "mpp_handling": how, "read_px": read_px,
            "pitch_px": float(pitch_px), "spot_diameter_px": float(diam_px),
            "pitch_um": pitch, "input_size": spec.input_size}


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


def predict_slide(model, image: ImagePyramid | str | os.PathLike, *, name: str | None = None,
                  pitch_um: float | None = None, layout: str = "square",
                  min_tissue: float = 0.5, batch_size: int = 32, tile: int = 2048,
                  device: Any = "auto", mask_max_size: int = 1024,
                  progress: ProgressFn | None = None, cancel: CancelFlag | None = None):
    """Predict expression over the tissue of an H&E slide; returns an AnnData (see module)."""
    import anndata as ad

    from ..data.patches import check_geometry
    from ..data.tissue import pseudo_spot_grid, tissue_mask
    from ..models.mclstexp import _device

    t0 = time.perf_counter()
    pyr = _open(image)
    name = name or pyr.name or "slide"
    src = pyr.path or name
    geo = slide_geometry(model, pyr, pitch_um)
    slide_shape = (int(pyr.height), int(pyr.width))
    if min(pyr.height, pyr.width) < geo["read_px"]:
        raise InputError(src, f"slide is {pyr.height}×{pyr.width} px, smaller than one patch "
                              f"({int(round(geo['read_px']))} px at its µm/px)")
    report(progress, 0, 1, "tissue mask")
    warm = _Background(lambda p=pyr: _warm_level(p, geo["read_px"], geo["input_size"]))
    mask, ds = tissue_mask(pyr, max_size=mask_max_size)
    centres, grid, frac = pseudo_spot_grid(mask, ds, (pyr.height, pyr.width), geo["pitch_px"],
                                           geo["spot_diameter_px"], min_tissue=min_tissue,
                                           layout=layout)
    if len(centres) == 0:
        raise InputError(src, "no tissue found (no pseudo-spot is at least "
                              f"{min_tissue:.0%} tissue); is this an H&E slide?")
    check_geometry(pyr, centres, geo["read_px"], src)
    warm.result()  # a corrupt or truncated file raises its InputError here
    check_cancel(cancel, "slide prediction")

    n, G, D = len(centres), len(model.genes), model.config.projection_dim
    pred = np.empty((n, G), np.float32)
    emb = np.empty((n, D), np.float32)
    conf = np.empty(n, np.float32)
    dev = _device(device)
    # Options that need every spot's neighbours (spatial context, smoothing): stream the
    # backbone features (views × n × D floats) and predict once at the end over the
    # pseudo-spot grid; otherwise embed (with test-time views) and retrieve per batch.
    from ..training.feature_cache import compute_features

    cfg = model.config
    two_pass = cfg.uses_grid
    feats = None
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    th = threading.Thread(target=_producer, daemon=True,
                          args=(pyr, centres, geo["read_px"], geo["input_size"], tile, q, stop))
    th.start()
    buf_idx: list[np.ndarray] = []
    buf_p: list[np.ndarray] = []
    done = 0

    def flush(final: bool = False):
        nonlocal done, buf_idx, buf_p, feats
        if not buf_idx:
            return
        idx = np.concatenate(buf_idx)
        pat = np.concatenate(buf_p)
        take = len(idx) if final else (len(idx) // batch_size) * batch_size
        for s in range(0, take, batch_size):
            check_cancel(cancel, "slide prediction")
            ii = idx[s:s + batch_size]
            if two_pass:
                f = compute_features(model.net.image_encoder, pat[s:s + batch_size],
                                     batch_size=batch_size, device=dev, views=cfg.tta_views,
                                     channels_last=bool(cfg.channels_last))
                if feats is None:
                    feats = np.empty((cfg.tta_views, n, f.shape[2]), np.float32)
                feats[:, ii] = f
            else:
                e = model.embed_patches(pat[s:s + batch_size], batch_size=batch_size,
                                        device=dev)
                p, c = model.predict_embeddings(e)
                pred[ii], emb[ii], conf[ii] = p, e, c
            done += len(ii)
            report(progress, done, n, f"predicting {name}")
        buf_idx, buf_p = ([idx[take:]], [pat[take:]]) if take < len(idx) else ([], [])

    try:
        while True:
            if is_cancelled(cancel):
                check_cancel(cancel, "slide prediction")
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

    hires, hires_scalef = hires_image_for(pyr)
    del pyr
    if two_pass:
        from ..models.mclstexp import grid_coordinates

        out = model.predict_features(feats, grid_coordinates(grid, layout))
        pred, emb, conf = out["predicted"], out["embeddings"], out["confidence"]
        del feats

    mpp = geo["mpp"] or 1.0
    obs = pd.DataFrame({
        "section": pd.Categorical([name] * n), "patient": pd.Categorical([name] * n),
        "array_x": grid[:, 0], "array_y": grid[:, 1], "confidence": conf,
        "tissue_fraction": frac}, index=[f"{x}x{y}" for x, y in grid])
    adata = ad.AnnData(X=pred, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    adata.layers["predicted"] = pred
    adata.obsm["X_mclstexp"] = emb
    adata.obsm["spatial"] = centres[:, ::-1].astype(np.float64)
    image_path = getattr(image, "path", None) if isinstance(image, ImagePyramid) else str(image)
    meta = {"image_scale": 1.0, "mpp_fullres": float(mpp), "format": "mclstexp-prediction"}
    if image_path:
        meta["source_image_path"] = str(Path(image_path).resolve())
    adata.uns["spatial"] = {name: {
        "images": {}, "metadata": meta,
        "scalefactors": {"spot_diameter_fullres": geo["spot_diameter_px"]}}}
    adata.uns["spatial"][name]["images"]["hires"] = hires  # for sc.pl.spatial
    adata.uns["spatial"][name]["scalefactors"]["tissue_hires_scalef"] = hires_scalef
    adata.uns["napari_stexp"] = clean_provenance({
        "kind": "mclstexp_slide_prediction", "model": model.path or "in memory",
        "model_mode": model.config.mode, "backbone": model.config.backbone,
        "seed": model.config.seed, "top_k": model.config.top_k,
        "reference_sections": model.reference.section_names,
        "version": model.provenance.get("version", ""), "slide": str(src),
        "slide_shape": list(slide_shape),
        "n_spots": n, "layout": layout, "min_tissue": min_tissue, **geo,
        "seconds": time.perf_counter() - t0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    report(progress, n, n, "slide prediction done")
    return adata


def write_prediction(adata, path: str | os.PathLike) -> Path:
    """Write a prediction AnnData to ``.h5ad`` atomically."""
    from ..io._atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
