"""The per-slide work of ``napari-stexp batch``: one ``load_*`` / ``run_*`` pair per kind.

``load_<kind>(model_dir, options)`` runs once per worker process (the batch engine caches what
it returns); ``run_<kind>(loaded, input_path, out_dir, stem, options)`` processes one slide,
writes its outputs atomically (``write_h5ad`` / ``write_ome_zarr``) and returns their paths.
Each adapter calls the same functions as the matching one-slide command, so a batch gives the
same numbers as running the slides one by one.

Outputs per slide (``<stem>`` = input name without extension), named the way the slide
navigator groups files into one slide ``<stem>``: ``<stem>.h5ad`` is the slide's spot table,
``.labels`` marks cell masks, ``.cells`` / ``.embeddings`` / ``.classes`` result tables; every
table links its input image (``uns['spatial'][<stem>]['metadata']['source_image_path']``):

- ``segment``: ``<stem>.labels.ome.zarr`` (Labels, µm scale) + ``<stem>.cells.h5ad`` (one row
  per cell ``cell<label>``: centroid/bbox/area/score[/class] in ``obs``,
  ``obsm['spatial']`` = centroid (x, y) in slide pixels);
- ``embed``: ``<stem>.embeddings.h5ad`` (``obsm['X_bvae']`` latent means, as ``bvae embed``;
  for slides also where each cell is);
- ``predict``: ``<stem>.h5ad`` (mclSTExp expression over the tissue's pseudo-spots,
  as ``expression predict``);
- ``classify``: ``<stem>.classes.h5ad`` (the batch-agnostic classifier's classes and
  probabilities).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError

# --------------------------------------------------------------------------- helpers


def _open_image(path: Path):
    from ..io.wsi import open_image

    return open_image(path)


def _provenance(task: str, model: str, model_dir: str | None, options: dict, source: Path,
                **extra) -> dict:
    from .. import __version__

    return {"task": task, "model": model, "model_dir": str(model_dir) if model_dir else "",
            "version": __version__, "source": str(Path(source).resolve()), "batch": True,
            "parameters": json.dumps(options, sort_keys=True, default=str), **extra}


def link_image(adata, stem: str, image_path: Path, mpp: float | None,
               diameter_px: float | None = None) -> None:
    """ST-style ``uns['spatial'][stem]`` pointing at the slide (coordinates are level-0 px), so
    readers and the navigator show the results over their image."""
    meta = {"source_image_path": str(Path(image_path).resolve()), "image_scale": 1.0}
    if mpp:
        meta["mpp_fullres"] = float(mpp)
    scale = {"spot_diameter_fullres": float(diameter_px)} if diameter_px else {}
    adata.uns["spatial"] = {stem: {"images": {}, "metadata": meta, "scalefactors": scale}}
    adata.obs["section"] = stem
    adata.obs["section"] = adata.obs["section"].astype("category")


def cells_adata(table, *, stem: str, image_path: Path, mpp: float | None, provenance: dict):
    """AnnData with one row per cell of a segmentation table (no genes), linked to its slide."""
    import anndata
    import pandas as pd

    obs = table.reset_index(drop=True).copy()
    obs.index = pd.Index([f"cell{int(v)}" for v in obs["label"]], name="cell")
    adata = anndata.AnnData(X=np.zeros((len(obs), 0), np.float32), obs=obs)
    adata.obsm["spatial"] = obs[["x", "y"]].to_numpy(np.float64)
    diam = float(np.median(np.sqrt(4 * obs["area"].to_numpy(float) / np.pi))) if len(obs) \
        else None
    link_image(adata, stem, image_path, mpp, diam)
    adata.uns["napari_stexp"] = {**provenance, "n_cells": int(len(obs))}
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


def _segment(image, options: dict, model_dir: str | None = None):
    """``segmentation.segment`` with the batch options (the call ``napari-stexp segment``
    makes)."""
    from ..segmentation import segment

    return segment(image, options.get("method", "classical"),
                   device=options.get("device", "cpu"), tile_size=options.get("tile_size"),
                   overlap=options.get("overlap"), **segment_params(options, model_dir))


# --------------------------------------------------------------------------- segment


def load_segment(model_dir: str | None, options: dict) -> dict:
    """Check the method once per worker (a missing optional backend fails fast; torch
    backends keep their loaded network in their own per-process cache)."""
    from ..segmentation import get_backend

    method = options.get("method", "classical")
    backend = get_backend(method)
    if not backend.available():
        backend.run(None, {}, None, None)  # raises BackendUnavailableError with advice
    return {"method": method, "model_dir": model_dir}


def run_segment(loaded: dict, input_path: Path, out_dir: Path, stem: str, options: dict
                ) -> list[Path]:
    """Segment one slide: labels -> OME-Zarr (µm scale), cells table -> h5ad."""
    from ..io.export import write_h5ad, write_ome_zarr

    img = _open_image(input_path)
    res = _segment(img, options, loaded["model_dir"])
    mpp = img.mpp
    scale = (mpp, mpp) if mpp else None  # None: µm/px unknown stays unknown
    labels_path = write_ome_zarr(out_dir / f"{stem}.labels.ome.zarr", np.asarray(res.labels),
                                 kind="labels", scale_um=scale, name=f"{stem} cells")
    prov = _provenance("segment cells", loaded["method"], loaded["model_dir"], options,
                       input_path)
    adata = cells_adata(res.table, stem=stem, image_path=input_path, mpp=mpp, provenance=prov)
    return [labels_path, write_h5ad(adata, out_dir / f"{stem}.cells.h5ad")]


# --------------------------------------------------------------------------- embed (β-VAE)


def load_bvae(model_dir: str | None, options: dict) -> dict:
    from ..models import open_model

    if not model_dir:
        raise InputError("--model", "embed needs a β-VAE model folder (napari-stexp bvae train)")
    return {"model": open_model(model_dir, options.get("device", "cpu"), kind="bvae"),
            "model_dir": model_dir}


def embed_cells_adata(model, cells, *, model_dir: str | None, source: Path,
                      expression: bool = False, obs_names=None):
    """The AnnData ``napari-stexp bvae embed`` writes (``BVAEModel.embed_adata``), marked batch."""
    adata = model.embed_adata(cells, model_dir=model_dir, source=source, expression=expression,
                              obs_names=obs_names, provenance={"task": "embed cells"})
    adata.uns["napari_stexp"]["batch"] = True
    return adata


def run_embed(loaded: dict, input_path: Path, out_dir: Path, stem: str, options: dict
              ) -> list[Path]:
    """β-VAE latents of one input's cells: a crop folder / crop table as ``bvae embed``, or a
    slide / smear image segmented first (``method``, default classical) with one crop per
    cell, as ``segment`` + ``bvae embed --labels``."""
    from ..data.cells import CellCropDataset, load_cells
    from ..io.export import write_h5ad
    from ..io.open import detect_kind

    model = loaded["model"]
    size = model.config.image_size
    expression = bool(options.get("expression"))
    if detect_kind(input_path) == "cell-crops" or input_path.suffix.lower() == ".csv":
        cells = load_cells(input_path, size=size)
        adata = embed_cells_adata(model, cells, model_dir=loaded["model_dir"],
                                  source=input_path, expression=expression)
        return [write_h5ad(adata, out_dir / f"{stem}.embeddings.h5ad")]
    img = _open_image(input_path)
    rgb = np.asarray(img.levels[0])
    res = _segment(img, options, options.get("segment_model"))
    if res.n_objects == 0:
        raise InputError(input_path, "no cells found to embed")
    table = res.table
    cells = CellCropDataset.from_segmentation(rgb, np.asarray(res.labels), table, size=size,
                                              on_empty="skip")
    rows = table.set_index(table["label"].astype(str)).loc[list(cells.ids)]
    adata = embed_cells_adata(model, cells, model_dir=loaded["model_dir"], source=input_path,
                              expression=expression,
                              obs_names=[f"cell{v}" for v in cells.ids])
    for c in ("y", "x", "area"):  # where each cell is (cell ids are label ids)
        adata.obs[f"cell_{c}"] = rows[c].to_numpy()
    adata.obsm["spatial"] = rows[["x", "y"]].to_numpy(np.float64)
    diam = float(np.median(np.sqrt(4 * rows["area"].to_numpy(float) / np.pi)))
    link_image(adata, stem, input_path, img.mpp, diam)
    adata.uns["napari_stexp"]["segmentation"] = options.get("method", "classical")
    return [write_h5ad(adata, out_dir / f"{stem}.embeddings.h5ad")]


# --------------------------------------------------------------------------- predict (mclSTExp)


def load_expression(model_dir: str | None, options: dict):
    """The mclSTExp model bundle (network + retrieval reference), once per worker."""
    from ..models import open_model

    if not model_dir:
        raise InputError("--model", "predict needs an mclSTExp model folder "
                                    "(napari-stexp expression train)")
    return open_model(model_dir, options.get("device", "cpu"), kind="mclstexp")


def _run_slide_grid(fn, model, input_path: Path, out: Path, options: dict, batch_size: int
                    ) -> list[Path]:
    """One slide-grid adapter (``predict_slide`` / ``classify_slide``, the one-slide commands'
    computation) with the batch options, written by ``io.export.write_h5ad``."""
    from ..io.export import write_h5ad

    adata = fn(model, input_path, name=options.get("name"), pitch_um=options.get("pitch_um"),
               layout=options.get("layout", "square"),
               min_tissue=float(options.get("min_tissue", 0.5)),
               batch_size=int(options.get("batch_size", batch_size)),
               tile=int(options.get("tile", 2048)), device=options.get("device", "cpu"))
    adata.uns["napari_stexp"]["batch"] = True
    return [write_h5ad(adata, out)]


def run_expression(model, input_path: Path, out_dir: Path, stem: str, options: dict
                   ) -> list[Path]:
    """Predicted expression over one slide's tissue (``expression predict``'s computation)."""
    from ..analysis.slide_predict import predict_slide

    return _run_slide_grid(predict_slide, model, input_path, out_dir / f"{stem}.h5ad", options,
                           32)


# --------------------------------------------------------------------------- classify


def load_classifier(model_dir: str | None, options: dict):
    """The batch-agnostic classifier (image encoder + calibrated head), once per worker."""
    from ..models import open_model

    if not model_dir:
        raise InputError("--model", "classify needs a batch-agnostic classifier folder")
    return open_model(model_dir, options.get("device", "cpu"), kind="batch-agnostic-classifier")


def run_classify(model, input_path: Path, out_dir: Path, stem: str, options: dict
                 ) -> list[Path]:
    """Classes and calibrated probabilities on a grid over one slide's tissue
    (``classify_slide``, the computation of the one-slide command)."""
    from ..analysis.slide_classify import classify_slide

    return _run_slide_grid(classify_slide, model, input_path,
                           out_dir / f"{stem}.classes.h5ad", options, 64)
