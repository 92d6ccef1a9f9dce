"""``napari-stexp expression``: train, evaluate, cross-validate and apply mclSTExp.

::

    napari-stexp expression train --data PATH [PATH ...] [--sections S ...] --out MODEL_DIR
    napari-stexp expression evaluate --model MODEL_DIR --data PATH [--sections S ...] --out REPORT.csv
    napari-stexp expression cross-validate --data PATH --by section|patient --out REPORT.csv
    napari-stexp expression predict --model MODEL_DIR --image SLIDE --out PRED.h5ad

REPORT.csv has one row per (method, section): ``method, section, n_spots, pcc_acg, pcc_heg,
mse, mae``. See docs/mclstexp.md.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

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

#: The config options that are plain flags (help, default and bounds from MclstexpConfig).
CONFIG_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "temperature", "top_k",
                "distance", "patch_size", "input_size", "cache_views", "context_neighbours",
                "context_radius", "smooth_neighbours", "tta_views", "dropout")


def __getattr__(name):  # TINY lives with the config (one preset for the CLI and the widget)
    if name == "TINY":
        from ..models.mclstexp_config import PRESETS

        return PRESETS["tiny"]
    raise AttributeError(name)


def register(sub) -> None:
    ssub = add_model_command(
        sub, "expression", "spatial gene-expression prediction from H&E (mclSTExp): train, "
                           "evaluate, cross-validate, predict",
        train_help="train a model on ST sections with H&E images",
        checkpoint_help="per-epoch checkpoints",
        evaluate_help="evaluate a model (and baselines) on held-out sections",
        data_args=_data_args, train_args=_train_args, runtime_args=_runtime_args,
        run_train=run_train, run_evaluate=run_evaluate, report_args=_report_args)

    c = ssub.add_parser("cross-validate", help="leave-one-section/patient-out with baselines")
    _data_args(c)
    c.add_argument("--by", choices=("section", "patient"), default="section")
    c.add_argument("--out", required=True, metavar="REPORT.csv")
    c.add_argument("--per-gene", default=None, metavar="CSV")
    c.add_argument("--no-baselines", action="store_true")
    _train_args(c)
    c.set_defaults(func=run_cross_validate)

    pr = ssub.add_parser("predict", help="predict expression over an H&E slide's tissue")
    add_slide_grid_args(pr, "PRED.h5ad", "pseudo-spot")
    pr.add_argument("--raster", action="store_true",
                    help="also write the predicted genes over the pseudo-spot grid as an "
                         "OME-Zarr multiscale image (PRED_raster.ome.zarr; square layout)")
    pr.add_argument("--baseline", choices=("ridge", "pca_ridge"), default=None,
                    help="also write that baseline's prediction (same frozen features, fitted "
                         "on the model's training spots) as layers['baseline_<name>']: show it "
                         "beside the model's when the report says it is the better predictor")
    _runtime_args(pr)
    pr.set_defaults(func=run_predict)


def _data_args(p) -> None:
    add_data_args(p, "sections to use (default: every section that has an H&E image)")


def _report_args(p) -> None:
    p.add_argument("--per-gene", default=None, metavar="CSV",
                   help="also write per-gene PCC (method, section, gene, pcc)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip ridge, pca_ridge and training mean")


def _runtime_args(p) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=None, help="inference batch (default 64)")
    add_cache_args(p)


def _train_args(p) -> None:
    from ..data.panels import TISSUE_MARKERS
    from ..models.mclstexp_config import MclstexpConfig

    g = p.add_argument_group("model and training")
    g.add_argument("--mode", choices=("auto", "finetune", "cached"), default="auto",
                   help="finetune: the whole network (the paper); cached: frozen backbone, "
                        "features cached on disk (minutes on a CPU); auto: finetune on a GPU, "
                        "cached on a CPU")
    add_encoder_args(g, "densenet121, the paper's")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    genes = g.add_mutually_exclusive_group()
    genes.add_argument("--genes", default=None,
                       help="the whole gene panel: a file (.npy/.txt/.csv) or comma-separated "
                            "names (default: the her2st 785-gene panel for her2st data, else "
                            "the top 1000 variable genes; + --tissue markers + --add-genes)")
    genes.add_argument("--top-genes", type=int, default=None,
                       help="base panel: the N most variable genes of the training sections")
    g.add_argument("--add-genes", default=None, metavar="G1,G2",
                   help="genes added to the default panel (e.g. ERBB2,ESR1)")
    g.add_argument("--tissue", choices=tuple(TISSUE_MARKERS), default="breast",
                   help="tissue whose marker genes present in the data are added to the "
                        "default panel (breast: ERBB2 ESR1 PGR MKI67 KRT19 EPCAM)")
    g.add_argument("--normalize-embeddings", action="store_true",
                   help="L2-normalise embeddings in the loss (option; paper: off)")
    g.add_argument("--learn-temperature", action="store_true",
                   help="learn the temperature, CLIP-style (option; paper: fixed)")
    add_config_args(g, MclstexpConfig, CONFIG_FLAGS)
    g.add_argument("--mpp", type=float, default=None,
                   help="training µm/px (default: the median of the training images')")
    g.add_argument("--no-augment", action="store_true", help="finetune mode: no augmentation")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CPU")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--preset", choices=("auto", "paper"), default="auto",
                   help="paper: the faithful paper settings; auto (default): on a CPU in "
                        "cached mode, the setting chosen by leave-one-patient-out "
                        "(docs/mclstexp.md, selection table); explicit flags win")
    g.add_argument("--tiny", action="store_true",
                   help="tiny smoke-test settings (tinycnn, 48 px input, 2 epochs, batch 32)")
    add_cache_args(g)


# ----------------------------------------------------------------------------- helpers


def load_sections(paths, sections=None, *, need_images: bool = True, genes=None,
                  quiet: bool = False) -> dict[str, Any]:
    """Read ST sections; without ``sections``, keep those with an H&E image (say which not)."""
    from ..errors import InputError
    from ..io.spatial import spatial_info
    from ..io.st import read_st

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adatas = read_st(paths, sections, images=True, genes=genes)
    if not need_images:
        return adatas

    def has_image(a) -> bool:
        info = spatial_info(a)
        src = info["metadata"].get("source_image_path")
        return bool((src and Path(src).is_file()) or info["images"])

    missing = [n for n, a in adatas.items() if not has_image(a)]
    if missing and sections is not None:
        raise InputError(", ".join(missing), "no H&E image for these section(s); the "
                                             "expression model needs one per section")
    if missing:
        if not quiet:
            print(f"skipping section(s) without an H&E image: {', '.join(missing)}",
                  file=sys.stderr)
        adatas = {n: a for n, a in adatas.items() if n not in missing}
    if not adatas:
        raise InputError(", ".join(map(str, paths)), "no section with an H&E image")
    return adatas


def _config_overrides(args) -> dict[str, Any]:
    from ..models.encoders import weights_choice
    from ..models.mclstexp_config import CPU_AUTO_DEFAULTS, PRESETS, MclstexpConfig, resolve_mode

    kw: dict[str, Any] = dict(PRESETS["tiny"]) if args.tiny else {"backbone": "densenet121"}
    if args.backbone is not None:
        kw["backbone"] = args.backbone
    kw["mode"] = resolve_mode(args.mode, args.device)
    if args.mode == "auto" and kw["mode"] == "cached" and args.preset != "paper" \
            and not args.tiny:
        kw.update(CPU_AUTO_DEFAULTS)  # the setting chosen by leave-one-patient-out
    kw["weights"] = weights_choice(kw["backbone"], args.weights)
    kw.update(config_overrides(args, MclstexpConfig, CONFIG_FLAGS))
    if args.mpp is not None:
        kw["target_mpp"] = args.mpp
    if args.patch_size is not None and args.input_size is None and not args.tiny:
        kw["input_size"] = args.patch_size
    kw["seed"] = args.seed
    kw["device"] = args.device
    if args.normalize_embeddings:
        kw["normalize_embeddings"] = True
    if args.learn_temperature:
        kw["learn_temperature"] = True
    if args.no_augment:
        kw["augment"] = False
    if args.bf16:
        kw["bf16"] = True
    if args.channels_last:
        kw["channels_last"] = True
    return kw


def _panel_args(args, adatas):
    """The panel: ``--genes`` as given, else THE default panel (``data.panels.default_panel``,
    the widget's too): base panel + the tissue's markers + ``--add-genes``."""
    from ..data.genes import parse_genes
    from ..data.panels import default_panel

    if args.genes:
        return parse_genes(args.genes), None, "user panel"
    panel, how = default_panel(adatas, paths=args.data, add_genes=args.add_genes,
                               tissue=args.tissue, top_genes=args.top_genes)
    return panel, None, how


def _print_table(table, file=None) -> None:
    from ..evaluation.regression import baseline_verdict, summarise

    file = file if file is not None else sys.stdout  # resolved at call time (capture-friendly)
    with_pd = table.copy()
    print(with_pd.to_string(index=False, float_format=lambda v: f"{v:.4f}"), file=file)
    print("\nmean over sections, by protocol (unseen patient = the patient-level figure, "
          "first):", file=file)
    print(summarise(table).to_string(float_format=lambda v: f"{v:.4f}"), file=file)
    verdict = baseline_verdict(table)
    if verdict["text"]:
        print(("" if verdict["beats"] else "WARNING: ") + verdict["text"], file=file)


# ----------------------------------------------------------------------------- actions


def run_train(args) -> int:
    import shutil

    from ..models._folder import check_model_out
    from ..models.mclstexp import train_expression_model

    check_model_out(args.out, claim=True)  # before any work: not a file, one writer at once
    adatas = load_sections(args.data, args.sections, quiet=args.quiet)
    genes, top, how = _panel_args(args, adatas)
    kw = _config_overrides(args)
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else Path(f"{args.out}.ckpt")
    if not args.quiet:
        print(f"training mclSTExp ({kw['mode']} mode, {kw['backbone']}) on "
              f"{', '.join(adatas)} with the {how}", file=sys.stderr)
    model = train_expression_model(adatas, genes=genes, top_genes=top, checkpoint_dir=ckpt,
                                   cache_dir=cache_of(args), progress=progress_of(args), **kw)
    model.provenance["command"] = " ".join(sys.argv)
    model.provenance["panel"] = how
    model.save(args.out)
    if not args.checkpoint_dir:
        shutil.rmtree(ckpt, ignore_errors=True)
    h = model.history
    print(f"wrote {args.out}: {len(model.genes)} genes, {len(model.reference.embeddings)} "
          f"reference spots, {len(h)} epochs" + (f", final loss {h[-1]['loss']:.4f}" if h else ""))
    return 0


def run_evaluate(args) -> int:
    from ..evaluation.regression import BASELINES, evaluate_model
    from ..models import open_model

    model = open_model(args.model, "cpu", kind="mclstexp")
    adatas = load_sections(args.data, args.sections, quiet=args.quiet)
    model.check_genes(adatas)
    res = evaluate_model(model, adatas, baselines=() if args.no_baselines else
                         BASELINES, batch_size=args.batch_size or 64,
                         device=args.device, cache_dir=cache_of(args), progress=progress_of(args))
    _finish(args, res)
    return 0


def run_cross_validate(args) -> int:
    from ..evaluation.regression import BASELINES, cross_validate

    adatas = load_sections(args.data, args.sections, quiet=args.quiet)
    genes, top, how = _panel_args(args, adatas)
    kw = _config_overrides(args)
    if not args.quiet:
        print(f"leave-one-{args.by}-out over {', '.join(adatas)} ({kw['mode']} mode, "
              f"{kw['backbone']}, {how})", file=sys.stderr)
    res = cross_validate(adatas, by=args.by, genes=genes, top_genes=top,
                         baselines=() if args.no_baselines else BASELINES,
                         cache_dir=cache_of(args), progress=progress_of(args), **kw)
    _finish(args, res)
    return 0


def _finish(args, res) -> None:
    from ..evaluation.regression import write_report
    from ..io._atomic import atomic_path

    write_report(res.table, args.out)
    if args.per_gene:
        with atomic_path(args.per_gene) as tmp:
            res.per_gene.to_csv(tmp, index=False, float_format="%.6g")
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    _print_table(res.table)
    print(f"wrote {args.out}")


def run_predict(args) -> int:
    from ..analysis.slide_predict import predict_slide
    from ..errors import InputError
    from ..io.export import write_h5ad
    from ..models import open_model

    if getattr(args, "raster", False) and args.layout != "square":
        raise InputError(args.out, "--raster needs the square pseudo-spot layout "
                                   "(--layout square)")
    model = open_model(args.model, "cpu", kind="mclstexp")
    adata = predict_slide(model, slide_image(args), name=args.name, pitch_um=args.pitch_um,
                          layout=args.layout, min_tissue=args.min_tissue,
                          batch_size=args.batch_size or 32, tile=args.tile, device=args.device,
                          baseline=args.baseline, progress=progress_of(args))
    from ..io.sdata_write import write_result

    write_result(adata, args.out, write_h5ad)
    if getattr(args, "raster", False):
        from ..viewer.raster import raster_path, write_raster

        print(f"wrote {write_raster(adata, raster_path(args.out))}")
    prov = adata.uns["napari_stexp"]
    print(f"wrote {args.out}: {adata.n_obs} pseudo-spots × {adata.n_vars} genes "
          f"({prov['mpp_handling']}; {prov['seconds']:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="napari-stexp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)
