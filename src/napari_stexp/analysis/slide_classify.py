"""Whole-slide classification with a trained batch-agnostic classifier: the classifier's adapter
to :mod:`napari_stexp.analysis.slide_grid` and its AnnData naming."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..progress import CancelFlag, ProgressFn
from .slide_grid import grid_adata, run_slide_grid

__all__ = ["ClassifierGridModel", "classify_slide"]


class ClassifierGridModel:
    """A batch-agnostic classifier as a :class:`~napari_stexp.analysis.slide_grid.SlideGridModel`:
    image embeddings and calibrated class probabilities per batch."""

    def __init__(self, model, *, device: Any = None, batch_size: int = 64):
        self.model = model
        self.config = model.config
        self.patch_spec = model.patch_spec
        self.device = device
        self.batch_size = int(batch_size)

    def embed_batch(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        e = self.model.embed_patches(patches, batch_size=self.batch_size, device=self.device)
        return {"embeddings": e, "proba": self.model.proba_from_embeddings(e)}


def classify_slide(model, image: Any, *, name: str | None = None,
                   pitch_um: float | None = None, layout: str = "square",
                   min_tissue: float = 0.5, batch_size: int = 64, tile: int = 2048,
                   device: Any = None, mask_max_size: int | None = None,
                   progress: ProgressFn | None = None, cancel: CancelFlag | None = None):
    """Classify patches on a grid over the tissue of an H&E slide (streamed, tile by tile).

    Returns an AnnData: ``obs['batch_agnostic_class']`` (categorical over the model's classes),
    ``obs['batch_agnostic_confidence']`` (top probability), ``obsm['batch_agnostic_proba']``
    (calibrated, rows sum to 1; class names in ``uns['batch_agnostic_classes']``),
    ``obsm['X_image']`` (image embeddings), ``obsm['spatial']`` (patch centres, slide px (x, y)),
    ``uns['spatial']`` and provenance in ``uns['napari_stexp']``. Memory: one tile + one batch.
    ``mask_max_size`` (long side of the tissue mask, px) defaults to ~8 mask px per spot.
    """
    from ..models.batch_agnostic import PREFIX, provenance_uns

    res = run_slide_grid(ClassifierGridModel(model, device=device, batch_size=batch_size),
                         image, name=name, pitch_um=pitch_um, layout=layout,
                         min_tissue=min_tissue, batch_size=batch_size, tile=tile,
                         mask_max_size=mask_max_size, progress=progress, cancel=cancel,
                         what="slide classification", verb="classifying")
    proba = np.asarray(res.outputs["proba"], np.float32)
    cls = np.asarray(model.classes, dtype=object)[proba.argmax(1)]
    return grid_adata(
        res, X=np.zeros((res.grid.n, 0), np.float32), var_names=[],
        fmt="batch-agnostic-classes",
        obs={f"{PREFIX}_class": pd.Categorical(cls, categories=model.classes),
             f"{PREFIX}_confidence": proba.max(1)},
        obsm={f"{PREFIX}_proba": proba,
              "X_image": np.asarray(res.outputs["embeddings"], np.float32)},
        uns={f"{PREFIX}_classes": list(model.classes)},
        provenance={**provenance_uns(model, "slide"), "n_patches": res.grid.n})
