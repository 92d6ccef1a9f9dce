"""Cell segmentation benchmarks (one JSON line per figure, baselines measured in the same run).

1. ``bccd_wbc_detection``: white-cell detection on the BCCD smears (VOC boxes, IoU >= 0.5):
   precision, recall, F1 per backend.
   - ``classical`` on all smears, against a nucleus-only baseline (same thresholds, no
     cytoplasm growth and no lobe merging) to show what the cell model adds;
   - ``maskrcnn`` trained briefly on every other smear (masks derived inside the boxes) and
     tested on the rest, compared with the classical backend on the same test images. No
     pretrained weights can be downloaded here, so it starts from random weights with the
     small ``tiny`` backbone: expect it to be worse; the figure is reported as measured;
   - ``cellpose`` when installed (generic model, no training).
2. ``segment_tiled_vs_untiled``: throughput (cells/s) and peak memory of tiled vs untiled
   classical segmentation of the same generated smear held in memory.
3. ``segment_large_smear``: a large generated smear (default 8192 x 8192) stored as zarr on disk,
   segmented tile by tile into a zarr label image: cells/s and peak memory growth, against an
   untiled run of the same image when its projected memory fits ``--max-untiled-mb``.
4. The β-VAE figures of ``benchmarks/_bvae_knn.py`` when that module exists (``--no-bvae`` skips).

``--quick`` shrinks everything to about a minute or two.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def emit(record: dict) -> None:
    print(json.dumps(record, default=_json_default), flush=True)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


class PeakRSS:
    """Peak resident memory growth (MB) of this process while the block runs (sampled)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20
        return False


# --------------------------------------------------------------------------- BCCD detection


def _bccd_pairs(root: Path, limit: int | None):
    from napari_stexp.io.smears import read_smear_folder

    t = read_smear_folder(root)
    t = t[t["annotation"].notna()].reset_index(drop=True)
    if limit:
        t = t.head(limit)
    return t


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _evaluate(images: list[np.ndarray], gts: dict, ids: list[str], fn) -> tuple[dict, float]:
    from napari_stexp.evaluation.detection import evaluate_predictions

    preds = {}
    t0 = time.perf_counter()
    for name, img in zip(ids, images, strict=True):
        preds[name] = fn(img).table
    secs = time.perf_counter() - t0
    rep = evaluate_predictions(preds, {k: gts[k] for k in ids}, classes=("WBC",))
    tot = rep.iloc[-1].to_dict()
    return tot, secs


def bench_bccd(args) -> None:
    from napari_stexp.datasets import data_path
    from napari_stexp.io.smears import SmearWarning, read_voc_boxes
    from napari_stexp.segmentation import list_backends, segment

    root = Path(args.bccd) if args.bccd else data_path("bccd-wbc", "smears")
    if not root.exists():
        emit({"name": "bccd_wbc_detection", "skipped": f"no BCCD data at {root}"})
        return
    table = _bccd_pairs(root, 40 if args.quick else args.bccd_limit)
    ids = table["image_id"].tolist()
    images = [_read_rgb(p) for p in table["image"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmearWarning)
        gts = {r.image_id: read_voc_boxes(r.annotation) for r in table.itertuples()}

    ours, secs = _evaluate(images, gts, ids, lambda im: segment(im, "classical"))
    nucleus_only = {"max_cytoplasm": 0.0, "min_cytoplasm": 0.0, "neck_ratio": 0.0,
                    "merge_lobes": 0.0}
    base, bsecs = _evaluate(images, gts, ids,
                            lambda im: segment(im, "classical", **nucleus_only))
    emit({"name": "bccd_wbc_detection", "backend": "classical", "images": len(ids),
          "true_boxes": int(ours["n_gt"]), "iou_threshold": 0.5,
          "precision": ours["precision"], "recall": ours["recall"], "f1": ours["f1"],
          "mean_iou": ours["mean_iou"], "images_per_s": len(ids) / secs,
          "baseline": "classical nucleus-only boxes", "baseline_precision": base["precision"],
          "baseline_recall": base["recall"], "baseline_f1": base["f1"],
          "ratio": ours["f1"] / base["f1"] if base["f1"] else None})

    if not args.no_maskrcnn:
        bench_maskrcnn(args, images, gts, ids)
    if "cellpose" in list_backends(only_available=True):
        try:
            cp, csecs = _evaluate(images, gts, ids,
                                  lambda im: segment(im, "cellpose", device=args.device))
            emit({"name": "bccd_wbc_detection", "backend": "cellpose", "images": len(ids),
                  "precision": cp["precision"], "recall": cp["recall"], "f1": cp["f1"],
                  "images_per_s": len(ids) / csecs, "baseline": "classical",
                  "baseline_f1": ours["f1"],
                  "ratio": cp["f1"] / ours["f1"] if ours["f1"] else None})
        except Exception as exc:  # e.g. weights not downloadable offline
            emit({"name": "bccd_wbc_detection", "backend": "cellpose",
                  "skipped": f"{type(exc).__name__}: {exc}"})
    else:
        emit({"name": "bccd_wbc_detection", "backend": "cellpose",
              "skipped": "cellpose not installed (pip install napari-stexp[cellpose])"})


def bench_maskrcnn(args, images, gts, ids) -> None:
    import torch

    from napari_stexp.segmentation import segment
    from napari_stexp.segmentation.maskrcnn import targets_from_boxes, train_maskrcnn

    if args.threads:
        torch.set_num_threads(args.threads)
    train_idx = list(range(0, len(ids), 2))
    test_idx = list(range(1, len(ids), 2))
    n_train = 12 if args.quick else args.maskrcnn_train
    epochs = 2 if args.quick else args.maskrcnn_epochs
    train_idx = train_idx[:n_train]
    t0 = time.perf_counter()
    targets = [targets_from_boxes(images[i], gts[ids[i]], ("WBC",)) for i in train_idx]
    t_targets = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, hist = train_maskrcnn(
            [images[i] for i in train_idx], targets, backbone=args.maskrcnn_backbone,
            weights=None, epochs=epochs, batch_size=2, lr=args.maskrcnn_lr,
            min_size=480, max_size=640, device=args.device, seed=0, out_dir=tmp)
    t_train = time.perf_counter() - t0
    test_ids = [ids[i] for i in test_idx]
    test_imgs = [images[i] for i in test_idx]
    mr, msecs = _evaluate(test_imgs, gts, test_ids,
                          lambda im: segment(im, "maskrcnn", model=model, device=args.device,
                                             score_threshold=args.maskrcnn_score))
    cl, _ = _evaluate(test_imgs, gts, test_ids, lambda im: segment(im, "classical"))
    emit({"name": "bccd_wbc_detection", "backend": "maskrcnn",
          "backbone": args.maskrcnn_backbone, "weights_init": None,
          "train_images": len(train_idx), "test_images": len(test_ids), "epochs": epochs,
          "final_train_loss": hist.losses[-1] if hist.losses else None,
          "train_seconds": t_train, "mask_derivation_seconds": t_targets,
          "precision": mr["precision"], "recall": mr["recall"], "f1": mr["f1"],
          "mean_iou": mr["mean_iou"], "images_per_s": len(test_ids) / msecs,
          "baseline": "classical on the same test images", "baseline_f1": cl["f1"],
          "ratio": mr["f1"] / cl["f1"] if cl["f1"] else None,
          "note": "trained from random weights for a few epochs on CPU (no pretrained "
                  "weights offline); not a tuned detector"})


# --------------------------------------------------------------------------- throughput


def bench_tiled_vs_untiled(args) -> dict:
    from napari_stexp.data.synthetic_smear import synthetic_smear_dask
    from napari_stexp.segmentation import get_backend, prepare, segment

    n = 2048 if args.quick else args.mid_size
    image = np.asarray(synthetic_smear_dask((n, n), block=1024, seed=1).compute())
    backend = get_backend("classical")
    with PeakRSS() as mem_u:  # untiled: global settings + one pass over the whole image
        t0 = time.perf_counter()
        params = prepare(image, "classical")
        full = backend.run(image, params, None, None)
        t_u = time.perf_counter() - t0
    with PeakRSS() as mem_t:  # tiled: same global settings (same sample), tile by tile
        t0 = time.perf_counter()
        tiled = segment(image, "classical", tile_size=args.tile)
        t_t = time.perf_counter() - t0
    mpx = n * n / 1e6
    rec = {"name": "segment_tiled_vs_untiled", "image": f"{n}x{n}", "tile": args.tile,
           "cells_tiled": tiled.n_objects, "cells_untiled": full.n_objects,
           "ours_cells_per_s": tiled.n_objects / t_t, "untiled_cells_per_s": full.n_objects / t_u,
           "ratio": (tiled.n_objects / t_t) / (full.n_objects / t_u) if full.n_objects else None,
           "ours_peak_mb": mem_t.mb, "untiled_peak_mb": mem_u.mb,
           "memory_ratio": mem_t.mb / mem_u.mb if mem_u.mb > 0 else None,
           "untiled_mb_per_mpx": mem_u.mb / mpx}
    emit(rec)
    return rec


def bench_large(args, untiled_mb_per_mpx: float | None) -> None:
    import dask.array as da

    from napari_stexp.data.synthetic_smear import synthetic_smear_dask
    from napari_stexp.segmentation import get_backend, prepare, segment

    n = 3072 if args.quick else args.large_size
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        src = synthetic_smear_dask((n, n), block=1024, seed=7)
        src.to_zarr(str(Path(tmp) / "smear.zarr"))
        t_gen = time.perf_counter() - t0
        image = da.from_zarr(str(Path(tmp) / "smear.zarr"))
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            res = segment(image, "classical", tile_size=args.tile,
                          labels_out=Path(tmp) / "labels.zarr")
            secs = time.perf_counter() - t0
        n_cells = len(res.table)
        mpx = n * n / 1e6
        rec = {"name": "segment_large_smear", "image": f"{n}x{n}", "tile": args.tile,
               "tiles": res.metadata.get("n_tiles"), "cells": n_cells,
               "ours_cells_per_s": n_cells / secs, "ours_mpx_per_s": mpx / secs,
               "ours_peak_mb": mem.mb, "image_mb": n * n * 3 / 2**20,
               "labels_mb": n * n * 4 / 2**20, "generate_seconds": t_gen}
        projected = untiled_mb_per_mpx * mpx if untiled_mb_per_mpx else None
        rec["untiled_projected_peak_mb"] = projected
        if projected is not None and projected <= args.max_untiled_mb:
            arr = np.asarray(image)
            with PeakRSS() as mem_u:
                t0 = time.perf_counter()
                params = prepare(arr, "classical")
                full = get_backend("classical").run(arr, params, None, None)
                t_u = time.perf_counter() - t0
            rec.update({"untiled_cells": full.n_objects,
                        "untiled_cells_per_s": full.n_objects / t_u,
                        "untiled_peak_mb": mem_u.mb + arr.nbytes / 2**20,
                        "ratio": (n_cells / secs) / (full.n_objects / t_u),
                        "memory_ratio": mem.mb / (mem_u.mb + arr.nbytes / 2**20)})
        else:
            rec["untiled"] = (f"skipped: projected {projected:.0f} MB > --max-untiled-mb "
                              f"{args.max_untiled_mb}" if projected else "skipped")
            if projected:
                rec["memory_ratio"] = mem.mb / projected
        emit(rec)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute or two")
    p.add_argument("--bccd", default=None, help="BCCD smears folder (default: $STEXP_DATA)")
    p.add_argument("--bccd-limit", type=int, default=None, help="only the first N smears")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-maskrcnn", action="store_true", help="skip Mask R-CNN training")
    p.add_argument("--maskrcnn-backbone", default="tiny")
    p.add_argument("--maskrcnn-train", type=int, default=60, help="training smears")
    p.add_argument("--maskrcnn-epochs", type=int, default=6)
    p.add_argument("--maskrcnn-lr", type=float, default=1e-3)
    p.add_argument("--maskrcnn-score", type=float, default=0.5)
    p.add_argument("--mid-size", type=int, default=4096, help="tiled-vs-untiled image side")
    p.add_argument("--large-size", type=int, default=8192, help="large smear side")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--max-untiled-mb", type=float, default=3000.0)
    p.add_argument("--no-detection", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--no-bvae", action="store_true")
    p.add_argument("--bvae-args", default="", help="arguments for benchmarks/_bvae_knn.py")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.threads = None
    if not args.no_detection:
        bench_bccd(args)
    if not args.no_throughput:
        rec = bench_tiled_vs_untiled(args)
        bench_large(args, rec.get("untiled_mb_per_mpx"))
    if not args.no_bvae and (HERE / "_bvae_knn.py").exists():
        sys.path.insert(0, str(HERE))
        import _bvae_knn  # noqa: PLC0415

        bargs = _bvae_knn.build_parser().parse_args(shlex.split(args.bvae_args)) \
            if hasattr(_bvae_knn, "build_parser") else argparse.Namespace()
        if args.quick:
            bargs.quick = True
        _bvae_knn.run(bargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
