"""Feature-extraction throughput of the encoder registry on this machine (issue 15).

One JSON line per encoder: images/s of ``compute_features`` (the cached-mode path: uint8
patches → normalised floats → frozen encoder → features) at the entry's input size, peak
resident memory while building and running it, and the ratio to DenseNet-121 measured in the
same run (the baseline line comes first). Weights are random in the published architecture
(throughput does not depend on their values; no download). Entries whose fp32 weights exceed
``--max-weights-gb`` are reported as skipped, with the reason, instead of risking the shared
machine's memory (24 GB shared by several processes: the ~4.5 GB giants are skipped by default).

``--quick``: 16 images per encoder, batch 8, one thread.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from expression import PeakRSS


def emit(**kw) -> None:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in kw.items()}),
          flush=True)


def run_one(name: str, n: int, batch: int, seed: int = 0) -> dict:
    import torch

    from napari_stexp.models.encoders import build_encoder, get_spec
    from napari_stexp.models.feature_cache import compute_features

    spec = get_spec(name)
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 256, (n, spec.input_size, spec.input_size, 3), dtype=np.uint8)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        enc, dim = build_encoder(name, None)
        build_s = time.perf_counter() - t0
        compute_features(enc, patches[:batch], batch_size=batch)  # warm-up
        t0 = time.perf_counter()
        feats = compute_features(enc, patches, batch_size=batch)
        secs = time.perf_counter() - t0
    assert feats.shape == (1, n, dim)
    del enc
    gc.collect()
    return {"images_per_s": n / secs, "seconds": secs, "build_seconds": build_s,
            "peak_rss_gb": mem.peak_gb, "added_gb": mem.added_gb, "feature_dim": dim,
            "input_px": spec.input_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=None, help="default: every entry")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-weights-gb", type=float, default=3.0,
                   help="skip entries with more fp32 weights than this (shared machine)")
    p.add_argument("--quick", action="store_true", help="16 images, batch 8, one thread")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.batch_size, args.threads = 16, 8, args.threads or 1
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_stexp.models.encoders import ENCODERS

    names = args.encoders or [n for n in ENCODERS if n != "densenet121"]
    emit(name="setup", torch=torch.__version__, threads=torch.get_num_threads(),
         images=args.images, batch_size=args.batch_size, load_average=list(os.getloadavg()))
    base = run_one("densenet121", args.images, args.batch_size)
    emit(name="encoder_throughput", encoder="densenet121", baseline="densenet121", ratio=1.0,
         **base)
    for name in names:
        spec = ENCODERS[name]
        weights_gb = spec.full_params_m * 4e6 / 1e9
        if weights_gb > args.max_weights_gb:
            emit(name="encoder_throughput", encoder=name, skipped=True,
                 reason=f"{weights_gb:.1f} GB of fp32 weights > --max-weights-gb "
                        f"{args.max_weights_gb} (shared 24 GB machine); run alone with a "
                        "larger limit", params_m=spec.full_params_m,
                 baseline="densenet121", baseline_images_per_s=base["images_per_s"])
            continue
        r = run_one(name, args.images, args.batch_size)
        emit(name="encoder_throughput", encoder=name, params_m=spec.full_params_m,
             baseline="densenet121", baseline_images_per_s=base["images_per_s"],
             ratio=r["images_per_s"] / base["images_per_s"], **r)
    emit(name="done", load_average=list(os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
