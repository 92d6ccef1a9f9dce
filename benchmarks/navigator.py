"""Slide navigator: time to switch slides and memory after visiting N generated pyramidal slides,
against keeping all of them open in the same viewer (measured in the same run).

Writes N tiled pyramidal TIFFs (``io.wsi.write_pyramidal_tiff``, JPEG tiles) once into a cache
folder, then runs each mode in a fresh Python process (so memory figures do not mix):

- ``navigator``: ``SlideNavigator.show(i)`` for every slide -- reads the slide, recycles or
  replaces the layers, releases the previous pyramid;
- ``keep-all``: every slide opened up front as its own Image layer (same layer settings),
  switching = hide the previous layer, show the next.

Each visit ends with a rendered screenshot, so the tiles a user would see are decoded. Prints
one JSON line per figure with both modes and their ratio. Run under ``xvfb-run -a`` when there
is no display::

    xvfb-run -a python benchmarks/navigator.py            # 50 slides of 8192 x 8192
    xvfb-run -a python benchmarks/navigator.py --quick    # 6 slides of 2048 x 2048
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_slides(folder: Path, n: int, size: int, tile: int) -> list[Path]:
    """N synthetic RGB slides (a textured pattern, tinted per slide), written once."""
    from napari_stexp.io.wsi import write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, size=(tile, tile, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:tile, 0:tile]
    blobs = ((np.sin(yy / 23.0) * np.cos(xx / 17.0)) * 60).astype(np.int16)
    paths = []
    for i in range(n):
        path = folder / f"slide_{i:03d}.tif"
        paths.append(path)
        if path.exists():
            continue
        tint = np.array([200 - 3 * (i % 20), 120 + 4 * (i % 15), 190], np.int16)
        base = np.clip(tint + texture.astype(np.int16) - 30 + blobs[..., None], 0, 255
                       ).astype(np.uint8)

        def tile_fn(r, c, h, w, ds, base=base):
            return base[:h, :w]

        write_pyramidal_tiff(path, tile_fn, shape=(size, size, 3), tile=tile, mpp=0.5)
    return paths


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _open_slide_files(folder: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
                n += 1
        except OSError:
            pass
    return n


def run_mode(mode: str, folder: Path, canvas: tuple[int, int]) -> dict:
    """One mode in this process; returns its figures."""
    import napari

    from napari_stexp.io.collection import SlideCollection
    from napari_stexp.viewer.navigator import SlideNavigator

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*canvas)
    viewer.screenshot(canvas_only=True)
    gc.collect()
    rss0 = _rss_mb()
    coll = SlideCollection.from_paths(folder, cache_dir=folder / "thumbs")
    n = len(coll)
    times = []
    t_open0 = time.perf_counter()
    if mode == "navigator":
        nav = SlideNavigator(viewer, coll, camera="keep")
        nav.show(0)
        viewer.screenshot(canvas_only=True)
        first = time.perf_counter() - t_open0
        rss_first = _rss_mb()
        for i in range(1, n):
            t0 = time.perf_counter()
            nav.show(i)
            viewer.screenshot(canvas_only=True)
            times.append(time.perf_counter() - t0)
    else:
        from napari_stexp.io.layers import image_layer
        from napari_stexp.io.wsi import open_image
        from napari_stexp.widgets._common import add_layer_tuples

        layers = []
        for i, item in enumerate(coll):
            data, attrs, ltype = image_layer(open_image(item.image), item.name, cache=False,
                                             visible=i == 0)
            layers += add_layer_tuples(viewer, [(data, attrs, ltype)])
        viewer.reset_view(layers=[layers[0]])
        viewer.screenshot(canvas_only=True)
        first = time.perf_counter() - t_open0
        rss_first = _rss_mb()
        for i in range(1, n):
            t0 = time.perf_counter()
            layers[i - 1].visible = False
            layers[i].visible = True
            viewer.screenshot(canvas_only=True)
            times.append(time.perf_counter() - t0)
    gc.collect()
    rss1 = _rss_mb()
    out = {"mode": mode, "n_slides": n, "first_s": first,
           "switch_median_s": statistics.median(times) if times else None,
           "switch_p90_s": float(np.percentile(times, 90)) if times else None,
           "rss_before_mb": rss0, "rss_first_mb": rss_first, "rss_after_mb": rss1,
           "rss_growth_mb": rss1 - rss0, "rss_growth_after_first_mb": rss1 - rss_first,
           "open_slide_files": _open_slide_files(folder), "layers": len(viewer.layers)}
    viewer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="number of slides")
    ap.add_argument("--size", type=int, default=8192, help="slide side in pixels (level 0)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--dir", default="/tmp/stexp-navigator-bench",
                    help="where the generated slides are cached")
    ap.add_argument("--canvas", default="1400x900", help="window size WxH")
    ap.add_argument("--quick", action="store_true", help="6 slides of 2048 x 2048")
    ap.add_argument("--mode", choices=["navigator", "keep-all"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.size = 6, 2048
    folder = Path(args.dir) / f"{args.n}x{args.size}"
    canvas = tuple(int(v) for v in args.canvas.lower().split("x"))
    if args.mode:  # child process
        print(json.dumps(run_mode(args.mode, folder, canvas)), flush=True)
        return 0

    t0 = time.perf_counter()
    make_slides(folder, args.n, args.size, args.tile)
    gen_s = time.perf_counter() - t0
    res = {}
    for mode in ("navigator", "keep-all"):
        cmd = [sys.executable, __file__, "--mode", mode, "--n", str(args.n), "--size",
               str(args.size), "--tile", str(args.tile), "--dir", args.dir,
               "--canvas", args.canvas]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        res[mode] = json.loads(lines[-1])
    ours, base = res["navigator"], res["keep-all"]
    common = {"n_slides": args.n, "slide_px": args.size, "generate_s": round(gen_s, 1)}
    print(json.dumps({"name": "navigator_switch_s", **common,
                      "ours_median_s": round(ours["switch_median_s"], 4),
                      "ours_p90_s": round(ours["switch_p90_s"], 4),
                      "keep_all_median_s": round(base["switch_median_s"], 4),
                      "keep_all_p90_s": round(base["switch_p90_s"], 4),
                      "ratio": round(ours["switch_median_s"] / base["switch_median_s"], 3)}))
    print(json.dumps({"name": "navigator_memory_after_visiting_mb", **common,
                      "ours_rss_growth_mb": round(ours["rss_growth_mb"], 1),
                      "keep_all_rss_growth_mb": round(base["rss_growth_mb"], 1),
                      "ours_growth_after_first_mb": round(ours["rss_growth_after_first_mb"], 1),
                      "keep_all_growth_after_first_mb":
                          round(base["rss_growth_after_first_mb"], 1),
                      "ours_rss_mb": round(ours["rss_after_mb"], 1),
                      "keep_all_rss_mb": round(base["rss_after_mb"], 1),
                      "ratio": round(base["rss_growth_mb"] / max(ours["rss_growth_mb"], 1.0),
                                     2)}))
    print(json.dumps({"name": "navigator_open_s", **common,
                      "ours_first_slide_s": round(ours["first_s"], 3),
                      "keep_all_open_all_s": round(base["first_s"], 3),
                      "ratio": round(base["first_s"] / ours["first_s"], 2)}))
    print(json.dumps({"name": "navigator_open_files_and_layers", **common,
                      "ours_open_files": ours["open_slide_files"],
                      "keep_all_open_files": base["open_slide_files"],
                      "ours_layers": ours["layers"], "keep_all_layers": base["layers"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
