"""Benchmark: batch throughput on dask.distributed with 1 and 2 workers, and the overhead of the
distributed path against plain in-process processing (``run_batch(local=True)``).

For each kind (``predict``: a tiny mclSTExp model trained here on a synthetic slide, over
synthetic H&E slides; ``segment``: classical segmentation of synthetic smears):

- ``batch_throughput``: slides/s of a warm LocalCluster with 1 and with 2 single-threaded worker
  processes (warm = cluster started and each worker has imported its libraries and loaded the
  model on a warm-up batch first), ``ratio`` = 2 workers / 1 worker; plus the cold wall time of
  a full ``run_batch`` call (cluster start, imports, model loads included);
- ``batch_overhead``: the same slides in-process (``local=True``, warm) vs 1 warm worker:
  ``overhead_s_per_slide`` = the extra seconds per slide the distributed path costs.

Every process uses ``--threads`` BLAS/torch threads (default 1), so 1 worker vs in-process is a
like-for-like comparison. Prints one JSON line per figure (with the machine's 1-minute load
average: on a shared machine other processes take cores away and flatten the 2-worker ratio).

    python benchmarks/batch.py            # 16 slides per kind
    python benchmarks/batch.py --quick    # 4 small slides, predict only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def make_he_slides(d: Path, n: int, size_rows: int) -> tuple[Path, list[Path]]:
    """A tiny trained mclSTExp model and ``n`` synthetic H&E slides (different seeds)."""
    import numpy as np

    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.io.wsi import write_pyramidal_tiff
    from napari_stexp.models.mclstexp import train_expression_model

    train = make_synthetic_slide(n_rows=size_rows, n_cols=size_rows, n_genes=20, mpp=2.0)
    model = train_expression_model({"SYN1": train.adata}, images={"SYN1": train.pyramid},
                                   backbone="tinycnn", patch_size=96, input_size=32, epochs=2,
                                   batch_size=16, top_k=20, mode="cached", device="cpu",
                                   cache_dir=False, top_genes=20)
    model.save(d / "model")
    paths = []
    for i in range(n):
        s = train if i == 0 else make_synthetic_slide(n_rows=size_rows, n_cols=size_rows,
                                                      n_genes=20, mpp=2.0, seed=i)
        paths.append(write_pyramidal_tiff(d / f"he{i:03d}.tif", np.ascontiguousarray(s.image),
                                          mpp=s.mpp, compression="zlib", tile=256))
    return d / "model", paths


def make_smears(d: Path, n: int, shape: tuple[int, int]) -> list[Path]:
    from napari_stexp.data.synthetic_smear import make_synthetic_smear
    from napari_stexp.io.wsi import write_pyramidal_tiff

    paths = []
    for i in range(n):
        img, _, _ = make_synthetic_smear(shape=shape, n_wbc=6, n_rbc=60, seed=i)
        paths.append(write_pyramidal_tiff(d / f"smear{i:03d}.tif", img, mpp=0.5,
                                          compression="zlib", tile=256))
    return paths


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_kind(kind: str, model_dir: str | None, paths: list[Path], work: Path,
               warmup: list[Path], threads: int) -> list[dict]:
    from napari_stexp import batch

    n = len(paths)
    per_s: dict[int, float] = {}
    cold: dict[int, float] = {}
    for workers in (1, 2):
        # cold: one complete run_batch call with its own cluster
        cold[workers], res = _timed(lambda w=workers: batch.run_batch(
            kind, paths, work / f"cold{w}", model_dir=model_dir, n_workers=w))
        assert res.ok, res.failed
        # warm: a running cluster whose workers already imported and loaded the model
        with batch.local_cluster(workers, silence_logs=50) as cluster:
            addr = cluster.scheduler_address
            batch.run_batch(kind, warmup, work / f"warm{workers}-warmup",
                            model_dir=model_dir, scheduler=addr)
            secs, res = _timed(lambda a=addr, w=workers: batch.run_batch(
                kind, paths, work / f"warm{w}", model_dir=model_dir, scheduler=a))
            assert res.ok, res.failed
            per_s[workers] = n / secs
    # in-process reference, warm (model cached and libraries imported by a warm-up slide)
    batch.run_batch(kind, warmup[:1], work / "local-warmup", model_dir=model_dir, local=True)
    secs_local, res = _timed(lambda: batch.run_batch(kind, paths, work / "local",
                                                     model_dir=model_dir, local=True))
    assert res.ok, res.failed
    local_per_s = n / secs_local
    return [
        {"name": "batch_throughput", "kind": kind, "slides": n, "threads_per_worker": threads,
         "workers_1_per_s": round(per_s[1], 3), "workers_2_per_s": round(per_s[2], 3),
         "ratio": round(per_s[2] / per_s[1], 3),
         "cold_run_s_1_worker": round(cold[1], 2), "cold_run_s_2_workers": round(cold[2], 2),
         "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)},
        {"name": "batch_overhead", "kind": kind, "slides": n, "threads": threads,
         "inprocess_per_s": round(local_per_s, 3),
         "distributed_1_worker_per_s": round(per_s[1], 3),
         "ratio": round(per_s[1] / local_per_s, 3),
         "overhead_s_per_slide": round(1 / per_s[1] - 1 / local_per_s, 4),
         "load_average_1min": round(os.getloadavg()[0], 2)},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 small slides, predict only")
    ap.add_argument("--slides", type=int, default=None, help="slides per kind (16)")
    ap.add_argument("--kinds", default=None, help="comma-separated: predict,segment")
    ap.add_argument("--spots", type=int, default=None,
                    help="H&E slide size in spot rows/cols (8; quick 4)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/torch threads per process")
    ap.add_argument("--keep", default=None, help="keep the work folder here")
    args = ap.parse_args(argv)
    _set_threads(args.threads)
    n = args.slides or (4 if args.quick else 16)
    kinds = (args.kinds or ("predict" if args.quick else "predict,segment")).split(",")
    spots = args.spots or (4 if args.quick else 8)

    import torch

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="stexp-bench-batch-")
    root = Path(args.keep) if args.keep else Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        d = root / kind
        d.mkdir(exist_ok=True)
        if kind == "predict":
            model_dir, paths = make_he_slides(d / "in", n + 2, spots)
            model_dir = str(model_dir)
        elif kind == "segment":
            model_dir, paths = None, make_smears(d / "in", n + 2, (512, 640))
        else:
            print(f"unknown kind {kind}", file=sys.stderr)
            return 2
        warmup, paths = paths[-2:], paths[:-2]  # one warm-up slide per worker
        for line in bench_kind(kind, model_dir, paths, d / "out", warmup, args.threads):
            print(json.dumps(line), flush=True)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
