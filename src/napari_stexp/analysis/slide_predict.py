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
file has none, the slide is assumed to be at the model's training µm/px (recorded in provenance;
the result keeps its µm/px unknown).

The pipeline itself is :mod:`napari_stexp.analysis.slide_grid`; this module is its adapter for
mclSTExp (:class:`ExpressionGridModel`) and the AnnData naming.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.image import ImagePyramid
from ..progress import CancelFlag, ProgressFn
from .slide_grid import SlideGrid, run_slide_grid, slide_geometry

__all__ = ["ExpressionGridModel", "predict_slide", "slide_geometry"]


class ExpressionGridModel:
    """mclSTExp as a :class:`~napari_stexp.analysis.slide_grid.SlideGridModel`.

    Per batch: embed (with test-time views) and retrieve. A model with the spatial-context,
    smoothing or test-time-augmentation options needs every spot's neighbours: it streams the
    backbone features (views × n × D floats) and predicts once in :meth:`finish` over the
    pseudo-spot grid.
    """

    def __init__(self, model, *, device: Any = "auto", batch_size: int = 32,
                 baseline: str | None = None):
        from ..models.mclstexp import _device

        self.model = model
        self.config = model.config
        self.patch_spec = model.patch_spec
        self.device = _device(device)
        self.batch_size = int(batch_size)
        if baseline is not None:
            if baseline not in ("ridge", "pca_ridge"):
                raise InputError("baseline", f"unknown baseline '{baseline}' (ridge or "
                                             "pca_ridge)")
            if model.config.mode != "cached" or model.reference.frozen_features is None:
                raise InputError(model.path or "model", "a baseline prediction needs a "
                                                        "cached-mode model (its frozen "
                                                        "training features)")
        self.baseline = baseline
        self.two_pass = bool(model.config.uses_grid) or baseline is not None

    def embed_batch(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        m, cfg = self.model, self.config
        if self.two_pass:
            from ..models.feature_cache import compute_features

            f = compute_features(m.net.image_encoder, patches, batch_size=self.batch_size,
                                 device=self.device, views=cfg.tta_views,
                                 channels_last=bool(cfg.channels_last))
            return {"features": np.swapaxes(f, 0, 1)}  # (b, views, D)
        e = m.embed_patches(patches, batch_size=self.batch_size, device=self.device)
        p, c = m.predict_embeddings(e)
        return {"predicted": p, "embeddings": e, "confidence": c}

    def finish(self, outputs: dict[str, np.ndarray], grid: SlideGrid) -> dict[str, np.ndarray]:
        if not self.two_pass:
            return outputs
        from ..io.frame import grid_coordinates

        feats = np.ascontiguousarray(np.swapaxes(outputs.pop("features"), 0, 1))
        out = self.model.predict_features(feats, grid_coordinates(grid.array_xy, grid.layout))
        res = {k: out[k] for k in ("predicted", "embeddings", "confidence")}
        if self.baseline is not None:  # the same frozen features, fitted on the training spots
            from ..evaluation.regression import pca_ridge_predict, ridge_predict

            ref = self.model.reference
            res["baseline"] = (ridge_predict(ref.frozen_features, ref.expression, feats[0])
                               if self.baseline == "ridge" else
                               pca_ridge_predict(ref.frozen_features, ref.expression, feats[0],
                                                 groups=ref.sections))
        return res


def predict_slide(model, image: ImagePyramid | str | os.PathLike, *, name: str | None = None,
                  pitch_um: float | None = None, layout: str = "square",
                  min_tissue: float = 0.5, batch_size: int = 32, tile: int = 2048,
                  device: Any = "auto", mask_max_size: int | None = None,
                  baseline: str | None = None,
                  progress: ProgressFn | None = None, cancel: CancelFlag | None = None):
    """Predict expression over the tissue of an H&E slide; returns an AnnData (see module).

    ``baseline`` (``'ridge'`` or ``'pca_ridge'``, cached-mode models): also the baseline's
    prediction from the same frozen features, fitted on the model's training spots, in
    ``layers['baseline_<name>']`` (to show beside the model's when the report says the baseline
    is the better predictor)."""
    from .slide_grid import grid_adata

    res = run_slide_grid(ExpressionGridModel(model, device=device, batch_size=batch_size,
                                             baseline=baseline),
                         image, name=name, pitch_um=pitch_um, layout=layout,
                         min_tissue=min_tissue, batch_size=batch_size, tile=tile,
                         mask_max_size=mask_max_size, progress=progress, cancel=cancel,
                         what="slide prediction", verb="predicting")
    out, c = res.outputs, model.config
    pred = np.asarray(out["predicted"], np.float32)
    adata = grid_adata(
        res, X=pred, var_names=model.genes, fmt="mclstexp-prediction",
        obs={"confidence": np.asarray(out["confidence"], np.float32)},
        obsm={"X_mclstexp": np.asarray(out["embeddings"], np.float32)},
        provenance={"kind": "mclstexp_slide_prediction", "model": model.path or "in memory",
                    "model_mode": c.mode, "backbone": c.backbone, "seed": c.seed,
                    "top_k": c.top_k, "reference_sections": model.reference.section_names,
                    "version": model.provenance.get("version", ""),
                    "baseline": baseline or ""})
    adata.layers["predicted"] = pred
    if baseline is not None:
        adata.layers[f"baseline_{baseline}"] = np.asarray(out["baseline"], np.float32)
    return adata
