"""``napari-stexp classify``: ST-guided tissue classification with a batch-agnostic gene encoder.

::

    napari-stexp classify train --data PATH [PATH ...] [--sections S ...] --out MODEL_DIR
    napari-stexp classify evaluate --model MODEL_DIR --data PATH [--sections S ...] --out REPORT.csv
    napari-stexp classify embed --model MODEL_DIR --data PATH [--sections S ...] --out EMB.h5ad
    napari-stexp classify predict --model MODEL_DIR --image SLIDE --out CLASSES.h5ad

REPORT.csv has one row per (method, section): ``method, section, n_spots, accuracy, macro_f1``.
See docs/classifier.md.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from ._args import (
    add_cache_args,
    add_config_args,
    add_data_args,
    add_encoder_args,
    add_model_command,
    add_slide_grid_args,
    cache_of,
    config_overrides,
    progress_of,
    slide_image,
)

#: Config options that are plain flags (help, default and bounds from ClassifierConfig).
GENE_FLAGS = ("gene.n_latent", "gene.epochs", "n_top_genes", "gene_sections")
IMAGE_FLAGS = ("mode", "objective", "loss", "temperature", "class_weight", "epochs",
               "batch_size", "lr", "patch_size", "input_size", "min_class_spots",
               "val_fraction")
FLAG_NAMES = {"gene.n_latent": "--latent-dim", "gene.epochs": "--gene-epochs",
              "n_top_genes": "--n-genes"}


def register(sub) -> None:
    ssub = add_model_command(
        sub, "classify", "tissue classes from H&E, guided by batch-agnostic gene expression: "
                         "train, evaluate, embed, predict",
        train_help="train gene encoder, image encoder and classifier",
        checkpoint_help="stage checkpoints",
        evaluate_help="accuracy / macro-F1 per section on labelled sections",
        data_args=_data_args, train_args=_train_args, runtime_args=_runtime_args,
        run_train=run_train, run_evaluate=run_evaluate, report_args=_report_args)

    m = ssub.add_parser("embed", help="gene latent (+ image embedding where images exist) "
                                      "per spot, as .h5ad")
    m.add_argument("--model", required=True, metavar="MODEL_DIR")
    _data_args(m)
    m.add_argument("--out", required=True, metavar="EMB.h5ad")
    _runtime_args(m)
    m.set_defaults(func=run_embed)

    pr = ssub.add_parser("predict", help="classify patches over the tissue of an H&E slide")
    add_slide_grid_args(pr, "CLASSES.h5ad", "patch")
    _runtime_args(pr)
    pr.set_defaults(func=run_predict)


def _data_args(p) -> None:
    add_data_args(p)


def _report_args(p) -> None:
    p.add_argument("--details", default=None, metavar="JSON",
                   help="also write per-class F1 and calibration error (ECE) as JSON")


def _runtime_args(p) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    add_cache_args(p)


def _train_args(p) -> None:
    from ..models.batch_agnostic import ClassifierConfig

    g = p.add_argument_group("gene encoder")
    add_config_args(g, ClassifierConfig, GENE_FLAGS, flags=FLAG_NAMES)
    g.add_argument("--no-batch-conditioning", action="store_true",
                   help="baseline: the gene decoder does not see the patient")
    g.add_argument("--encode-batch", action="store_true",
                   help="condition the gene encoder on the patient too (unseen patients then "
                        "get a zero batch vector)")
    g.add_argument("--library", choices=("observed", "learned"), default=None,
                   help="library size: observed log-library (default) or learned (scVI)")
    g.add_argument("--no-label-head", action="store_true",
                   help="no scANVI-style classifier on the gene latent")
    g.add_argument("--gene-latent", default=None,
                   help="'vae' (default) or 'obsm:KEY' to use an existing latent, e.g. "
                        "obsm:X_scVI")
    g.add_argument("--genes", default=None,
                   help="gene panel: a file (.npy/.txt/.csv) or comma-separated names "
                        "(default: the top --n-genes variable genes shared by all sections)")

    i = p.add_argument_group("image encoder and classifier")
    add_config_args(i, ClassifierConfig, IMAGE_FLAGS, flags=FLAG_NAMES)
    add_encoder_args(i, "resnet18")
    i.add_argument("--mpp", type=float, default=None,
                   help="training µm/px (default: the median of the training images')")
    i.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="fixed class list (other labels are treated as unlabelled)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    i.add_argument("--tiny", action="store_true",
                   help="tiny smoke-test settings (tinycnn, 32 px, few epochs)")
    add_cache_args(i)


# ----------------------------------------------------------------------------- helpers


def _read(args):
    from ..io.st import read_st

    return read_st(args.data, args.sections, images=True)


def build_config(args):
    """A :class:`ClassifierConfig` from the command-line flags (``--tiny`` first, flags win)."""
    from ..models.batch_agnostic import ClassifierConfig
    from ..models.encoders import weights_choice

    cfg = ClassifierConfig.tiny() if args.tiny else ClassifierConfig()
    from ..models._options import set_option

    for path, v in config_overrides(args, ClassifierConfig, GENE_FLAGS + IMAGE_FLAGS,
                                    flags=FLAG_NAMES).items():
        set_option(cfg, path, v)
    for a, c in (("backbone", "backbone"), ("mpp", "target_mpp"), ("classes", "classes"),
                 ("gene_latent", "gene_latent")):
        v = getattr(args, a, None)
        if v is not None:
            setattr(cfg, c, v)
    if args.input_size is None and args.patch_size is not None and not args.tiny:
        cfg.input_size = args.patch_size
    cfg.weights = weights_choice(cfg.backbone, args.weights)
    cfg.seed = args.seed
    cfg.device = args.device
    cfg.gene.seed = args.seed
    cfg.gene.device = args.device
    if args.no_batch_conditioning:
        cfg.gene.batch_conditioning = False
    if args.encode_batch:
        cfg.gene.encode_batch = True
    if args.library:
        cfg.gene.library = args.library
    if args.no_label_head:
        cfg.gene.classifier = False
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- actions


def run_train(args) -> int:
    import shutil

    from ..data.genes import parse_genes
    from ..models._folder import check_model_out
    from ..models.batch_agnostic import train_classifier

    cfg = build_config(args)
    out = check_model_out(args.out, claim=True)  # not a file; one training into it at once
    adatas = _read(args)
    genes = parse_genes(args.genes) if args.genes else None
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name +
                                                                               ".ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        model = train_classifier(adatas, cfg, genes=genes, cache_dir=cache_of(args),
                                 checkpoint_dir=ckpt, progress=progress_of(args))
    model.save(out)
    if args.checkpoint_dir is None:
        shutil.rmtree(ckpt, ignore_errors=True)
    prov = model.provenance
    summary = {"model": str(out), "classes": model.classes,
               "image_sections": prov.get("image_sections"),
               "gene_sections": prov.get("gene_sections"),
               "n_labelled_image_spots": prov.get("n_labelled_image_spots"),
               "validation": prov.get("validation", {}),
               "seconds": round(prov.get("seconds_total", 0.0), 1)}
    print(json.dumps(summary, default=str))
    return 0


def _load(args):
    from ..models import open_model

    model = open_model(args.model, "cpu", kind="batch-agnostic-classifier")
    model.config.device = args.device
    if model.gene_model is not None and hasattr(model.gene_model, "config"):
        model.gene_model.config.device = args.device
    return model


def run_evaluate(args) -> int:
    from ..io._atomic import atomic_path
    from ..models.batch_agnostic import evaluate_classifier

    model = _load(args)
    adatas = _read(args)
    report, details = evaluate_classifier(model, adatas, cache_dir=cache_of(args),
                                          progress=progress_of(args))
    if report.empty:
        from ..errors import InputError

        raise InputError(", ".join(args.data), "no labelled spot of the model's classes "
                                               f"({', '.join(model.classes)}) in "
                                               f"{', '.join(adatas)}: nothing to evaluate")
    out = Path(args.out)
    with atomic_path(out) as tmp:
        report.to_csv(tmp, index=False)
    if args.details:
        from .._provenance import write_json_atomic

        write_json_atomic(details, args.details)
    print(report.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def run_embed(args) -> int:
    from ..io.export import write_h5ad
    from ..models.batch_agnostic import embed_sections

    model = _load(args)
    adatas = _read(args)
    emb = embed_sections(model, adatas, cache_dir=cache_of(args), progress=progress_of(args))
    from ..io.sdata_write import write_result

    write_result(emb, args.out, write_h5ad)
    print(f"{args.out}: {emb.n_obs} spots, X_gene_latent "
          f"{emb.obsm['X_gene_latent'].shape[1] if 'X_gene_latent' in emb.obsm else 0}-d, "
          f"{int(emb.obs['has_image'].sum())} with an image embedding", file=sys.stdout)
    return 0


def run_predict(args) -> int:
    from ..analysis.slide_classify import classify_slide
    from ..io.export import write_h5ad

    model = _load(args)
    adata = classify_slide(model, slide_image(args), name=args.name, pitch_um=args.pitch_um,
                           layout=args.layout, min_tissue=args.min_tissue, tile=args.tile,
                           progress=progress_of(args))
    from ..io.sdata_write import write_result

    write_result(adata, args.out, write_h5ad)
    counts = adata.obs["batch_agnostic_class"].value_counts().to_dict()
    print(f"{args.out}: {adata.n_obs} patches; " +
          ", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0
