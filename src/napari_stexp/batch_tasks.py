"""The per-slide work of ``napari-stexp batch``: one ``load_*`` / ``run_*`` pair per kind.

``load_<kind>(model_dir, options)`` runs once per worker process (the batch engine caches what
it returns); ``run_<kind>(model, input_path, out_dir, stem, options)`` processes one slide,
writes its outputs atomically (``write_h5ad`` / ``write_ome_zarr``) and returns their paths.
Each adapter calls the same functions as the matching one-slide command, so a batch gives the
same numbers as running the slides one by one.

Outputs per slide (``<stem>`` = input name without extension):

- ``segment``: ``<stem>.labels.ome.zarr`` (Labels, µm scale) + ``<stem>.cells.h5ad`` (one row
  per label: centroid/bbox/area/score[/class] in ``obs``, ``obsm['spatial']`` = (x, y) px).
- ``embed``: ``<stem>.bvae.h5ad`` (``obsm['X_bvae']`` latent means, as ``bvae embed``).
- ``predict``: ``<stem>.expression.h5ad`` (predicted expression per spot).
- ``classify``: ``<stem>.classes.h5ad`` (class + probabilities per spot/cell).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .errors import InputError

# --------------------------------------------------------------------------- helpers


def _open_image(path: Path):
    from .io.wsi import open_image

    return open_image(path)


def _provenance(kind: str, model_dir: str | None, options: dict, source: Path, **extra) -> dict:
    from . import __version__

    return {"model": kind, "model_dir": str(model_dir) if model_dir else None,
            "version": __version__, "source": str(source), "batch": True,
            "parameters": json.dumps(options, sort_keys=True, default=str), **extra}


def _objects_adata(table, *, mpp: float | None, source: Path, provenance: dict):
    """AnnData with one row per object of a segmentation table (no genes)."""
    import anndata
    import pandas as pd

    obs = table.reset_index(drop=True).copy()
    obs.index = pd.Index([f"cell{int(v)}" for v in obs["label"]], name="cell")
    adata = anndata.AnnData(X=np.zeros((len(obs), 0), np.float32), obs=obs)
    adata.obsm["spatial"] = obs[["x", "y"]].to_numpy(np.float64)
    adata.uns["napari_stexp"] = {**provenance, "mpp": mpp, "image": str(source)}
    return adata


def segment_params(options: dict, model_dir: str | None = None) -> dict:
    """Backend parameters of a batch run: ``options['params']`` plus, for the torch backends,
    ``--model`` as the trained weights (what ``segment --weights`` passes)."""
    params = dict(options.get("params") or {})
    method = options.get("method", "classical")
    if model_dir and method == "maskrcnn":
        params.setdefault("weights", str(model_dir))
    elif model_dir and method == "cellpose":
        params.setdefault("pretrained_model", str(model_dir))
    return params


def _segment(image, options: dict, model_dir: str | None = None, progress=None):
    """``segmentation.segment`` with the batch options (same call as ``napari-stexp segment``)."""
    from .segmentation import segment

    return segment(image, options.get("method", "classical"),
                   device=options.get("device", "cpu"), tile_size=options.get("tile_size"),
                   overlap=options.get("overlap"), progress=progress,
                   **segment_params(options, model_dir))


# --------------------------------------------------------------------------- segment


def load_segment(model_dir: str | None, options: dict) -> dict:
    """Check the method once per worker (a missing optional backend fails fast)."""
    from .segmentation import get_backend

    method = options.get("method", "classical")
    backend = get_backend(method)
    if not backend.available():
        backend.run(None, {}, None, None)  # raises BackendUnavailableError with advice
    return {"method": method, "model_dir": model_dir}


def run_segment(model: dict, input_path: Path, out_dir: Path, stem: str, options: dict
                ) -> list[Path]:
    """Segment one slide: labels -> OME-Zarr, objects table -> h5ad."""
    from .io.export import write_h5ad, write_ome_zarr

    img = _open_image(input_path)
    res = _segment(img, options, model["model_dir"])
    mpp = img.mpp
    scale = (mpp, mpp) if mpp else (1.0, 1.0)
    labels_path = write_ome_zarr(out_dir / f"{stem}.labels.ome.zarr", np.asarray(res.labels),
                                 kind="labels", scale_um=scale, name=f"{stem} cells")
    prov = _provenance("segmentation", model["model_dir"], options, input_path,
                       method=model["method"], n_objects=res.n_objects)
    adata = _objects_adata(res.table, mpp=mpp, source=input_path, provenance=prov)
    cells_path = write_h5ad(adata, out_dir / f"{stem}.cells.h5ad")
    return [labels_path, cells_path]


# --------------------------------------------------------------------------- embed (β-VAE)


def load_bvae(model_dir: str | None, options: dict):
    from .models.betavae import BVAEModel

    if not model_dir:
        raise InputError("--model", "embed needs a β-VAE model folder (napari-stexp bvae train)")
    return {"model": BVAEModel.load(model_dir, device=options.get("device", "cpu")),
            "model_dir": model_dir}


def embed_cells_adata(model, cells, *, model_dir: str | None, source: Path, options: dict,
                      expression: bool = False):
    """The AnnData ``napari-stexp bvae embed`` writes: latent means in ``obsm['X_bvae']``
    (and ``X_bvae_gene`` for aligned models), ``obs`` cell_id / path / label."""
    import anndata
    import pandas as pd

    from . import __version__

    z = model.embed(cells)
    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(len(cells))]))
    obs["cell_id"] = cells.ids
    obs["path"] = (cells.table["path"].astype(str).to_numpy() if "path" in cells.table.columns
                   else str(source))
    labels = cells.labels
    if any(v is not None for v in labels):
        obs["label"] = pd.Categorical([v if v is not None else "unknown" for v in labels])
    X = np.zeros((len(cells), 0), np.float32)
    var = None
    if expression:
        expr = model.expression_from_latent(z)
        X, var = expr.to_numpy(np.float32), pd.DataFrame(index=pd.Index(model.genes))
    adata = anndata.AnnData(X=X, obs=obs, var=var)
    adata.obsm["X_bvae"] = z
    if model.alignment is not None:
        adata.obsm["X_bvae_gene"] = model.alignment.transform(z)
    adata.uns["napari_stexp"] = {
        "model": "bvae", "model_dir": str(model_dir), "version": __version__,
        "command": " ".join(["napari-stexp", *sys.argv[1:]]) if sys.argv else "",
        "parameters": json.dumps(model.config.to_dict()), "seed": model.config.seed,
        "cells": str(source), "skipped_cells": len(cells.skipped), "batch": True,
        "batch_options": json.dumps(options, sort_keys=True, default=str),
    }
    return adata


def run_embed(loaded: dict, input_path: Path, out_dir: Path, stem: str, options: dict) -> list[Path]:
    """β-VAE latents of one input's cells: a crop folder / crop table as ``bvae embed``, or a
    slide / smear image segmented first (``method``, default classical), one crop per cell."""
    from .data.cells import CellCropDataset, load_cells
    from .io.export import write_h5ad
    from .io.open import detect_kind

    model = loaded["model"]
    size = model.config.image_size
    table = None
    if detect_kind(input_path) in ("cell-crops",) or input_path.suffix.lower() == ".csv":
        cells = load_cells(input_path, size=size)
    else:
        img = _open_image(input_path)
        rgb = np.asarray(img.levels[0])
        res = _segment(rgb, options, options.get("segment_model"))
        table = res.table
        if res.n_objects == 0:
            raise InputError(input_path, "no cells found to embed")
        cells = CellCropDataset.from_segmentation(rgb, np.asarray(res.labels), table,
                                                  size=size, on_empty="skip")
    adata = embed_cells_adata(model, cells, model_dir=loaded["model_dir"],
                              source=input_path, options=options,
                              expression=bool(options.get("expression")))
    if table is not None:  # where each cell is on the slide (cell ids are label ids)
        t = table.set_index(table["label"].astype(str))
        rows = t.loc[adata.obs["cell_id"].astype(str)]
        for c in ("label", "y", "x", "area"):
            adata.obs[f"seg_{c}"] = rows[c].to_numpy()
        adata.obsm["spatial"] = rows[["x", "y"]].to_numpy(np.float64)
    return [write_h5ad(adata, out_dir / f"{stem}.bvae.h5ad")]


# --------------------------------------------------------------------------- predict / classify


def load_expression(model_dir: str | None, options: dict):
    """The mclSTExp model bundle (network + retrieval reference), once per worker."""
    from .models.mclstexp import ExpressionModel

    if not model_dir:
        raise InputError("--model", "predict needs an mclSTExp model folder "
                                    "(napari-stexp expression train)")
    return ExpressionModel.load(model_dir, device=options.get("device", "cpu"))


def run_expression(model, input_path: Path, out_dir: Path, stem: str, options: dict
                   ) -> list[Path]:
    """Predicted expression over one slide's tissue (``expression predict``'s computation)."""
    from .analysis.slide_predict import predict_slide
    from .io.export import write_h5ad

    adata = predict_slide(model, input_path, name=options.get("name"),
                          pitch_um=options.get("pitch_um"),
                          layout=options.get("layout", "square"),
                          min_tissue=float(options.get("min_tissue", 0.5)),
                          batch_size=int(options.get("batch_size", 32)),
                          tile=int(options.get("tile", 2048)),
                          device=options.get("device", "cpu"))
    adata.uns["napari_stexp"]["batch"] = True
    return [write_h5ad(adata, out_dir / f"{stem}.expression.h5ad")]


def load_classifier(model_dir: str | None, options: dict):
    raise InputError("classify", "the batch-agnostic classifier is not available yet")


def run_classify(model, input_path: Path, out_dir: Path, stem: str, options: dict
                 ) -> list[Path]:
    raise InputError("classify", "the batch-agnostic classifier is not available yet")
