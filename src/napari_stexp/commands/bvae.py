"""``napari-stexp bvae train|embed|traverse``: the multimodal β-VAE from the command line.

- ``train --cells PATH [--genes H5AD --class-map CSV] --out MODEL_DIR``
- ``embed --model MODEL_DIR --cells PATH --out EMB.h5ad`` (``obsm['X_bvae']``, ``obs['label']``)
- ``traverse --model MODEL_DIR --cell IMAGE --out GRID.tif`` (rows = dims, top-ranked first)

``--cells`` is a crop folder (``labels.csv`` or class sub-folders), a CSV table (path, label),
one crop image, or a smear image together with ``--labels LABELS.tif`` (segmentation output).
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("bvae", help="multimodal β-VAE on cell crops (+ single-cell expression)")
    bsub = p.add_subparsers(dest="bvae_command", metavar="ACTION")
    bsub.required = True

    t = bsub.add_parser("train", help="train a β-VAE (and a gene VAE + alignment)")
    t.add_argument("--cells", required=True, help="crop folder, crop table .csv, or image")
    t.add_argument("--labels", default=None, help="label image when --cells is a smear image")
    t.add_argument("--genes", default=None, help="single-cell expression .h5ad (log data)")
    t.add_argument("--class-map", default=None,
                   help="CSV with columns image_class,gene_class (needs --genes)")
    t.add_argument("--gene-label-key", default=None, help="obs column with cell types")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--epochs", type=int, default=None, help="image β-VAE epochs (30)")
    t.add_argument("--gene-epochs", type=int, default=None, help="gene VAE epochs (60)")
    t.add_argument("--latent-dim", type=int, default=None, help="latent size (50)")
    t.add_argument("--beta", type=float, default=None, help="KL weight β (4)")
    t.add_argument("--bg-weight", type=float, default=None,
                   help="loss weight of background pixels (0: only the cell counts)")
    t.add_argument("--image-size", type=int, default=None, help="crop size in px (128)")
    t.add_argument("--base-channels", type=int, default=None, help="conv width (32)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tiny", action="store_true", help="tiny network for tests / smoke runs")
    t.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out")
    t.set_defaults(func=run_train)

    e = bsub.add_parser("embed", help="latent means of cells -> .h5ad")
    e.add_argument("--model", required=True, help="model directory")
    e.add_argument("--cells", required=True, help="crop folder, crop table .csv, or image")
    e.add_argument("--labels", default=None, help="label image when --cells is a smear image")
    e.add_argument("--out", required=True, help="output .h5ad")
    e.add_argument("--expression", action="store_true",
                   help="also store the expected expression as X (aligned models only)")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=run_embed)

    v = bsub.add_parser("traverse", help="latent traversal grid of one cell -> image")
    v.add_argument("--model", required=True, help="model directory")
    v.add_argument("--cell", required=True, help="one cell crop image")
    v.add_argument("--out", required=True, help="grid image (.tif, .png)")
    v.add_argument("--steps", type=int, default=7, help="steps per dimension (7)")
    v.add_argument("--span", type=float, default=3.0, help="± span in σ (3)")
    v.add_argument("--sigma", choices=("posterior", "prior"), default="posterior")
    v.add_argument("--dims", type=int, default=None, help="keep the N top-ranked dims (all)")
    v.add_argument("--ranking", default=None, help="also write the ranking table (.csv)")
    v.add_argument("--device", default="cpu")
    v.set_defaults(func=run_traverse)


def _progress():
    from ..progress import terminal_progress

    return terminal_progress()


def run_train(args) -> int:
    from ..models.betavae import BVAEConfig, train_bvae

    over = {k: getattr(args, a) for k, a in (
        ("epochs", "epochs"), ("gene_epochs", "gene_epochs"), ("latent_dim", "latent_dim"),
        ("beta", "beta"), ("bg_weight", "bg_weight"), ("image_size", "image_size"),
        ("base_channels", "base_channels"), ("batch_size", "batch_size"), ("lr", "lr"),
        ("gene_label_key", "gene_label_key")) if getattr(args, a) is not None}
    over.update(device=args.device, seed=args.seed)
    config = BVAEConfig.tiny(**over) if args.tiny else BVAEConfig(**over)
    config.check()
    from ..data.cells import load_cells

    cells = load_cells(args.cells, size=config.image_size, labels=args.labels,
                       progress=_progress())
    model = train_bvae(cells, genes=args.genes, class_map=args.class_map, config=config,
                       out_dir=args.out, resume=not args.no_resume, progress=_progress())
    model.provenance["cells"] = str(args.cells)
    model.save(args.out)
    summary = {"model": str(args.out), "cells": len(cells), "skipped": len(cells.skipped),
               "active_dims": model.latent_stats.get("active_dims"),
               "final_loss": model.history["image"][-1]["loss"] if model.history.get("image")
               else None,
               "aligned": model.alignment is not None}
    if model.alignment is not None:
        summary["alignment"] = {k: model.alignment.metrics.get(k) for k in
                                ("mean_distance_before", "mean_distance_after")}
    print(json.dumps(summary))
    return 0


def run_embed(args) -> int:
    from ..data.cells import load_cells
    from ..io.export import write_h5ad
    from ..models import open_model

    model = open_model(args.model, args.device, kind="bvae")
    cells = load_cells(args.cells, size=model.config.image_size, labels=args.labels,
                       progress=_progress())
    adata = model.embed_adata(cells, model_dir=args.model, source=args.cells,
                              expression=bool(args.expression))
    z = adata.obsm["X_bvae"]
    write_h5ad(adata, args.out)
    print(json.dumps({"out": str(args.out), "cells": len(cells), "skipped": len(cells.skipped),
                      "latent_dim": int(z.shape[1])}))
    return 0


def run_traverse(args) -> int:
    from pathlib import Path

    from ..analysis.traversal import latent_traversal, traversal_table
    from ..io._atomic import atomic_path
    from ..models import open_model

    model = open_model(args.model, args.device, kind="bvae")
    trav = latent_traversal(model, args.cell, n_steps=args.steps, span=args.span,
                            sigma=args.sigma, top=args.dims)
    grid = trav.grid()
    out = Path(args.out)
    meta = {"dims": trav.dims.tolist(), "steps_sigma": trav.values.tolist(),
            "scores": trav.scores.tolist(), "cell": str(args.cell),
            "tile": list(trav.images.shape[2:4])}
    with atomic_path(out) as tmp:
        if out.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, grid, photometric="rgb",
                             description=json.dumps(meta), metadata=None)
        else:
            from PIL import Image

            Image.fromarray(grid).save(tmp, format=_pil_format(out))
    if args.ranking:
        with atomic_path(args.ranking) as tmp:
            traversal_table(trav).to_csv(tmp, index=False)
    print(json.dumps({"out": str(out), "rows": len(trav.dims), "steps": len(trav.values),
                      "top_dims": trav.dims[:5].tolist()}))
    return 0


def _pil_format(path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP"}.get(ext, "PNG")
