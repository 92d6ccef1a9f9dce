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
4. ``c5_nuclei_in_tissue``: whole-slide H&E nuclei segmentation of her2st C5 (tiled, tissue
   mask, settings estimated on tissue): nuclei found inside the 2048 px window with the most
   tissue, against the baseline of segmenting that window alone (the "tissue crop") in the
   same run, plus the whole slide without the tissue mask (the old path); count ratio and
   the time ratio (whole slide / crop).
5. The β-VAE figures of ``benchmarks/_bvae_knn.py`` when that module exists (``--no-bvae`` skips).

``--quick`` shrinks everything to about a minute or two.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
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


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; unlike ``ru_maxrss`` it does not inherit the parent's
    peak through fork/exec), else the current RSS."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return _rss_mb()


def _child(job: dict, queue) -> None:
    """One measurement in a fresh process: peak RSS growth is then attributable to the job
    (a long-lived process keeps freed pages and would hide the second run's memory)."""
    try:
        from napari_stexp.segmentation import get_backend, prepare, segment

        image = None
        if job["source"].endswith(".npy"):
            image = np.load(job["source"])
        base = _rss_mb()  # after imports (and the in-memory image, when there is one)
        t0 = time.perf_counter()
        if job["source"].endswith(".zarr"):
            import dask.array as da

            image = da.from_zarr(job["source"])
            if job["mode"] == "untiled":
                image = np.asarray(image)
        if job["mode"] == "untiled":
            params = prepare(image, "classical")
            n = get_backend("classical").run(image, params, None, None).n_objects
        else:
            res = segment(image, "classical", tile_size=job["tile"],
                          labels_out=job.get("labels_out"))
            n = len(res.table)
        secs = time.perf_counter() - t0
        peak = _peak_rss_mb()
        queue.put({"seconds": secs, "cells": n, "peak_mb": max(peak - base, 0.0)})
    except BaseException as exc:  # noqa: BLE001 - report to the parent, never hang it
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(job: dict) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(job, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(f"measurement {job['mode']} failed: {out['error']}")
    return out


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
        except Exception as exc:  # noqa: BLE001 - an optional backend: reported as skipped
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

    n = 2048 if args.quick else args.mid_size
    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "smear.npy")
        np.save(src, np.asarray(synthetic_smear_dask((n, n), block=1024, seed=1).compute()))
        # untiled: global settings + one pass over the whole in-memory image
        u = measure({"source": src, "mode": "untiled"})
        # tiled: same global settings (same sample), tile by tile, labels in memory
        t = measure({"source": src, "mode": "tiled", "tile": args.tile})
    mpx = n * n / 1e6
    rec = {"name": "segment_tiled_vs_untiled", "image": f"{n}x{n}", "tile": args.tile,
           "cells_tiled": t["cells"], "cells_untiled": u["cells"],
           "ours_cells_per_s": t["cells"] / t["seconds"],
           "untiled_cells_per_s": u["cells"] / u["seconds"],
           "ratio": (t["cells"] / t["seconds"]) / (u["cells"] / u["seconds"])
           if u["cells"] else None,
           "ours_peak_mb": t["peak_mb"], "untiled_peak_mb": u["peak_mb"],
           "memory_ratio": t["peak_mb"] / u["peak_mb"] if u["peak_mb"] > 0 else None,
           "untiled_mb_per_mpx": u["peak_mb"] / mpx,
           "note": "peak RSS growth of a fresh process over the in-memory image"}
    emit(rec)
    return rec


def bench_large(args, untiled_mb_per_mpx: float | None) -> None:
    from napari_stexp.data.synthetic_smear import synthetic_smear_dask

    n = 3072 if args.quick else args.large_size
    mpx = n * n / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "smear.zarr")
        t0 = time.perf_counter()
        synthetic_smear_dask((n, n), block=1024, seed=7).to_zarr(src)
        t_gen = time.perf_counter() - t0
        t = measure({"source": src, "mode": "tiled", "tile": args.tile,
                     "labels_out": str(Path(tmp) / "labels.zarr")})
        rec = {"name": "segment_large_smear", "image": f"{n}x{n}", "tile": args.tile,
               "cells": t["cells"], "ours_cells_per_s": t["cells"] / t["seconds"],
               "ours_mpx_per_s": mpx / t["seconds"], "ours_peak_mb": t["peak_mb"],
               "image_mb": n * n * 3 / 2**20, "labels_mb": n * n * 4 / 2**20,
               "generate_seconds": t_gen,
               "note": "image read from zarr on disk, labels written to zarr; peak RSS growth "
                       "of a fresh process (image and labels included)"}
        projected = untiled_mb_per_mpx * mpx + n * n * 3 / 2**20 if untiled_mb_per_mpx \
            else None
        rec["untiled_projected_peak_mb"] = projected
        if projected is not None and projected <= args.max_untiled_mb:
            u = measure({"source": src, "mode": "untiled"})
            rec.update({"untiled_cells": u["cells"],
                        "untiled_cells_per_s": u["cells"] / u["seconds"],
                        "untiled_peak_mb": u["peak_mb"],
                        "ratio": (t["cells"] / t["seconds"]) / (u["cells"] / u["seconds"]),
                        "memory_ratio": t["peak_mb"] / u["peak_mb"] if u["peak_mb"] else None})
        else:
            rec["untiled"] = (f"skipped: projected {projected:.0f} MB > --max-untiled-mb "
                              f"{args.max_untiled_mb:.0f}" if projected else "skipped")
            if projected:
                rec["memory_ratio_vs_projected"] = t["peak_mb"] / projected
        emit(rec)


# --------------------------------------------------------------------------- H&E nuclei


def _best_tissue_window(mask: np.ndarray, ds: float, shape, size: int) -> tuple[int, int]:
    best = (-1.0, 0, 0)
    H, W = shape[:2]
    for r in range(0, max(H - size, 0) + 1, size // 8):
        for c in range(0, max(W - size, 0) + 1, size // 8):
            f = float(mask[int(r / ds):int((r + size) / ds), int(c / ds):int((c + size) / ds)]
                      .mean())
            if f > best[0]:
                best = (f, r, c)
    return best[1], best[2]


def bench_c5_nuclei(args) -> None:
    from napari_stexp.data.tissue import tissue_mask
    from napari_stexp.datasets import data_path
    from napari_stexp.io.smears import read_smear
    from napari_stexp.segmentation import segment

    folder = data_path("her2st", "ST-imgs", "C", "C5")
    jpgs = sorted(folder.glob("*.jpg")) if folder.exists() else []
    if not jpgs:
        emit({"name": "c5_nuclei_in_tissue", "skipped": f"no C5 image under {folder}"})
        return
    pyr = read_smear(jpgs[0])
    mask, ds = tissue_mask(pyr)
    size = 2048
    r0, c0 = _best_tissue_window(mask, ds, pyr.shape, size)
    crop = pyr.read_region(r0, c0, size, size)

    def in_window(tab):
        return int((tab["y"].between(r0, r0 + size, inclusive="left")
                    & tab["x"].between(c0, c0 + size, inclusive="left")).sum())

    def in_tissue(tab):
        r = np.clip((tab["y"] / ds).astype(int), 0, mask.shape[0] - 1)
        c = np.clip((tab["x"] / ds).astype(int), 0, mask.shape[1] - 1)
        return int(mask[r, c].sum())

    for stain in ("auto",) if args.quick else ("auto", "hematoxylin"):
        t0 = time.perf_counter()
        base = segment(crop, mode="nuclei", stain=stain)
        t_crop = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = segment(pyr, mode="nuclei", stain=stain, tile_size=args.tile * 2)
        t_slide = time.perf_counter() - t0
        old = segment(pyr, mode="nuclei", stain=stain, tile_size=args.tile * 2, tissue=False)
        n_ours, n_base = in_window(ours.table), base.n_objects
        emit({"name": "c5_nuclei_in_tissue", "stain": stain, "window": [r0, c0, size, size],
              "slide": list(pyr.shape[:2]), "tissue_fraction": float(mask.mean()),
              "ours_in_window": n_ours, "baseline": "the tissue window segmented alone",
              "baseline_in_window": n_base, "ratio": n_ours / n_base if n_base else None,
              "ours_in_tissue": in_tissue(ours.table), "ours_total": len(ours.table),
              "no_mask_in_tissue": in_tissue(old.table), "no_mask_total": len(old.table),
              "no_mask_in_window": in_window(old.table),
              "ours_seconds": t_slide, "baseline_seconds": t_crop,
              "time_ratio": t_slide / t_crop if t_crop else None,
              "note": "whole slide tiled; the baseline sees only the window"})


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
    p.add_argument("--max-untiled-mb", type=float, default=6000.0,
                   help="run the untiled baseline on the large smear only below this")
    p.add_argument("--no-detection", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--no-bvae", action="store_true")
    p.add_argument("--no-c5", action="store_true", help="skip the her2st C5 nuclei figure")
    p.add_argument("--bvae-args", default="", help="arguments for benchmarks/_bvae_knn.py")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.threads = None
    if not args.no_detection:
        bench_bccd(args)
    if not args.no_c5:
        bench_c5_nuclei(args)
    if not args.no_throughput:
        rec = bench_tiled_vs_untiled(args)
        bench_large(args, rec.get("untiled_mb_per_mpx"))
    if not args.no_bvae and (HERE / "_bvae_knn.py").exists():
        sys.path.insert(0, str(HERE))
        import _bvae_knn

        bargs = _bvae_knn.build_parser().parse_args(shlex.split(args.bvae_args)) \
            if hasattr(_bvae_knn, "build_parser") else argparse.Namespace()
        if args.quick:
            bargs.quick = True
        _bvae_knn.run(bargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
