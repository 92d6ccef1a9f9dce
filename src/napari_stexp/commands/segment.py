"""``napari-stexp segment``: segment cells in images, or evaluate a backend on VOC boxes.

Two forms share one parser (argparse cannot mix a positional image list with a sub-subcommand):

    napari-stexp segment IMAGE [IMAGE ...] --method classical --out DIR
    napari-stexp segment evaluate --images DIR --boxes DIR --method classical --out REPORT.csv

A first positional argument equal to ``evaluate`` selects the second form (an image file really
called ``evaluate`` can be given as ``./evaluate``). Per input image the first form writes
``DIR/<image stem>/labels.tif`` (or ``labels.ome.zarr`` with ``--format zarr``) and
``DIR/<image stem>/objects.csv`` with columns ``label, y, x, ymin, xmin, ymax, xmax, area,
score`` (plus ``class`` when the backend knows it) and ``DIR/<image stem>/cells.h5ad`` (one
observation per cell: centroids in ``obsm['spatial']`` as (x, y) pixels, morphology in ``obs``,
µm/px and the slide overview in ``uns['spatial']``; ``sc.pl.spatial`` plots it), all written
atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError

METHODS = ("classical", "maskrcnn", "cellpose")
CELLS_H5AD = "cells.h5ad"
EVALUATE = "evaluate"


def register(sub) -> None:
    p = sub.add_parser(
        "segment", help="segment cells (classical | maskrcnn | cellpose) or evaluate on boxes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files to segment, or the word 'evaluate' (see below)")
    p.add_argument("--method", choices=METHODS, default="classical", help="segmentation backend")
    p.add_argument("--out", required=True,
                   help="output folder (segment) or report CSV path (evaluate)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (torch backends)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="segment in tiles of this size (large images are tiled anyway)")
    p.add_argument("--overlap", type=int, default=None,
                   help="tile overlap in pixels (default: the backend's, ~1.5 cell diameters)")
    p.add_argument("--format", choices=("tiff", "zarr"), default="tiff",
                   help="label image format: TIFF or OME-Zarr (segment form)")
    p.add_argument("--weights", default=None,
                   help="maskrcnn: imagenet | coco | PATH to a trained model; "
                        "cellpose: PATH to a custom model")
    p.add_argument("--backbone", default=None, help="maskrcnn backbone (resnet50, resnet18, ...)")
    p.add_argument("--diameter", type=float, default=None, help="expected cell diameter (px)")
    p.add_argument("--mode", choices=("cells", "nuclei"), default=None,
                   help="classical: white cells in smears (default) or nuclei in H&E")
    p.add_argument("--stain", choices=("auto", "purple", "hematoxylin", "dark"), default=None,
                   help="classical: the channel nuclei are found in (auto: purple for RGB, dark "
                        "for grey; hematoxylin: colour deconvolution with the slide's own H&E "
                        "vectors, estimated on tissue)")
    p.add_argument("--tissue", choices=("auto", "on", "off"), default=None,
                   help="classical: segment whole slides only inside the tissue mask (auto: "
                        "H&E nuclei mode on large images)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="maskrcnn: keep detections scoring at least this")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other backend parameter (value parsed as JSON when possible)")
    ev = p.add_argument_group("evaluate form")
    ev.add_argument("--images", default=None, help="folder of smear images (or a VOC folder)")
    ev.add_argument("--boxes", default=None, help="folder of VOC .xml files (same stems)")
    ev.add_argument("--classes", nargs="+", default=["WBC"], help="box classes to score")
    ev.add_argument("--iou", type=float, default=0.5, help="IoU threshold for a match")
    ev.add_argument("--matching", choices=("greedy", "hungarian"), default="greedy")
    ev.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.set_defaults(func=run)


_FLAG_PARAMS = ("weights", "pretrained_model", "backbone", "diameter", "mode", "score_threshold")


def _params(args) -> dict:
    params: dict = {}
    if args.weights is not None:
        key = "pretrained_model" if args.method == "cellpose" else "weights"
        params[key] = args.weights
    for name in ("backbone", "diameter", "mode", "score_threshold", "stain"):
        v = getattr(args, name)
        if v is not None:
            params[name] = v
    if args.tissue is not None:
        params["tissue"] = {"auto": "auto", "on": True, "off": False}[args.tissue]
    for item in args.param:
        if "=" not in item:
            raise InputError(None, f"--param expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        try:
            params[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            params[k.strip()] = v
    if args.param:
        from ..segmentation import get_backend
        from ._args import check_param_keys

        check_param_keys({k: v for k, v in params.items() if k not in _FLAG_PARAMS},
                         get_backend(args.method).defaults, what=args.method)
    return params


def run(args) -> int:
    if args.inputs and args.inputs[0] == EVALUATE:
        return run_evaluate(args)
    if args.images is not None or args.boxes is not None:
        raise InputError(None, "--images/--boxes belong to 'napari-stexp segment evaluate'")
    return run_segment(args)


def run_segment(args) -> int:
    from ..progress import terminal_progress

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "--out must be a folder for 'segment'")
    params = _params(args)
    stems: dict[str, int] = {}
    for path in args.inputs:
        p = Path(path)
        if not p.exists():
            raise InputError(p, "image file not found")
        stem = p.name.split(".")[0] or p.stem
        n = stems.get(stem, 0)
        stems[stem] = n + 1
        dest = out / (stem if n == 0 else f"{stem}_{n + 1}")
        table = segment_to_folder(p, dest, method=args.method, device=args.device,
                                  tile_size=args.tile_size, overlap=args.overlap,
                                  fmt=args.format, progress=terminal_progress(), **params)
        print(f"{p}: {len(table)} object(s) -> {dest}")
    return 0


def segment_to_folder(image_path: str | Path, dest: str | Path, *, method: str = "classical",
                      device: str = "auto", tile_size: int | None = None,
                      overlap: int | None = None, fmt: str = "tiff", progress=None,
                      cancel=None, **params):
    """Segment one image file and write ``labels.tif``/``labels.ome.zarr`` + ``objects.csv``
    into ``dest`` (each file atomically). Returns the objects table."""
    import shutil
    import tempfile

    import numpy as np

    from ..io._atomic import atomic_path
    from ..io.smears import read_smear
    from ..segmentation import OBJECT_COLUMNS, segment

    dest = Path(dest)
    pyr = read_smear(image_path)
    tmpdir = None
    labels_out = None
    if fmt == "zarr" and (tile_size is not None or pyr.height * pyr.width > 4096 * 4096):
        dest.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=".labels-", dir=dest))
        labels_out = tmpdir / "labels.zarr"
    try:
        res = segment(pyr, method=method, device=device, tile_size=tile_size, overlap=overlap,
                      labels_out=labels_out, progress=progress, cancel=cancel, **params)
        dest.mkdir(parents=True, exist_ok=True)
        if fmt == "zarr":
            from ..io.export import write_ome_zarr

            mpp = pyr.mpp  # None (unknown) stays unknown in the file
            write_ome_zarr(dest / "labels.ome.zarr", res.labels, kind="labels",
                           scale_um=(mpp, mpp) if mpp else None, name="cells",
                           progress=progress, cancel=cancel)
        else:
            import tifffile

            labels = np.asarray(res.labels, dtype=np.int32)
            with atomic_path(dest / "labels.tif") as tmp:
                tifffile.imwrite(tmp, labels, compression="zlib",
                                 metadata={"axes": "YX"}, photometric="minisblack")
        cols = OBJECT_COLUMNS + (["class"] if "class" in res.table else [])
        with atomic_path(dest / "objects.csv") as tmp:
            res.table[cols].to_csv(tmp, index=False)
        from ..io.export import write_h5ad
        from ..segmentation.morphology import cells_adata

        write_h5ad(cells_adata(res, library_id=dest.name, mpp=pyr.mpp, pyramid=pyr,
                               source=str(image_path)), dest / CELLS_H5AD)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return res.table


def run_evaluate(args) -> int:
    from ..evaluation.detection import evaluate_detection
    from ..io._atomic import atomic_path
    from ..progress import terminal_progress

    extra = args.inputs[1:]
    if extra:
        raise InputError(None, f"'segment evaluate' takes no image arguments (got {extra[0]}); "
                               "use --images DIR --boxes DIR")
    if args.images is None:
        raise InputError(None, "'segment evaluate' needs --images DIR (and --boxes DIR unless "
                               "DIR is a VOC folder with JPEGImages/ and Annotations/)")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(out, "--out must be a CSV file path for 'segment evaluate'")
    report = evaluate_detection(args.images, args.boxes, args.method, tuple(args.classes),
                                iou_threshold=args.iou, matching=args.matching,
                                limit=args.limit, device=args.device,
                                progress=terminal_progress(), **_params(args))
    with atomic_path(out) as tmp:
        report.to_csv(tmp, index=False)
    tot = report.iloc[-1]
    print(f"{args.method}: {int(tot['n_gt'])} true / {int(tot['n_pred'])} predicted boxes, "
          f"precision {tot['precision']:.3f}, recall {tot['recall']:.3f}, F1 {tot['f1']:.3f} "
          f"(IoU >= {args.iou}) -> {out}", file=sys.stdout)
    return 0
