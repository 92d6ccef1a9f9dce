"""``napari-stexp batch predict|segment|classify|embed`` (many slides on dask.distributed) and
``napari-stexp ddp COMMAND ...`` (a training command on every torchrun process).

- ``batch KIND --inputs LIST_OR_GLOB --out DIR [--model MODEL_DIR] [--scheduler ADDRESS]
  [--workers N] [--local]``: one task per slide; without ``--scheduler`` a local cluster sized
  to the machine, with it an existing cluster (``dask scheduler`` / ``dask worker``); ``--local``
  runs in this process. A rerun skips complete slides. Exit status 1 when a slide failed.
- ``torchrun --nproc_per_node=2 --no-python napari-stexp ddp bvae train ...`` (or
  ``torchrun ... -m napari_stexp.commands.ddp bvae train ...``): data-parallel training
  (see docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import sys

KINDS = ("predict", "segment", "classify", "embed")


def register(sub) -> None:
    p = sub.add_parser("batch", help="run a model over many slides (dask.distributed)",
                       description="Run one model over many slides: one task per slide, each "
                                   "worker loads the model once, outputs are written "
                                   "atomically and a rerun skips the slides already done.")
    p.add_argument("kind", choices=KINDS,
                   help="predict: mclSTExp expression; segment: cells; classify: "
                        "batch-agnostic classes; embed: β-VAE latents of cells")
    p.add_argument("--inputs", required=True, action="append",
                   help="glob ('slides/*.tif'), folder, .txt list of paths, or one path; "
                        "repeat for more")
    p.add_argument("--out", required=True, help="output folder (per-slide .h5ad / .ome.zarr)")
    p.add_argument("--model", default=None, help="model folder (not needed for classical "
                                                 "segmentation)")
    p.add_argument("--scheduler", default=None,
                   help="address of an existing dask scheduler (tcp://host:8786); default: "
                        "a local cluster")
    p.add_argument("--workers", type=int, default=None,
                   help="local cluster worker processes (default: one per core)")
    p.add_argument("--local", action="store_true",
                   help="no dask: process the slides one after the other in this process")
    p.add_argument("--retries", type=int, default=2, help="extra attempts for a failing slide")
    p.add_argument("--method", default=None,
                   help="segmentation method for segment/embed (classical | maskrcnn | "
                        "cellpose; default classical)")
    p.add_argument("--device", default="cpu", help="device on the workers (cpu | cuda)")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="segmentation backend parameter for segment/embed (as 'napari-stexp "
                        "segment --param'), repeatable")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, e.g. min_tissue=0.3, pitch_um=100, tile_size=2048 "
                        "(value parsed as JSON when possible), repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="only list what would be processed and what is already complete")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)

    d = sub.add_parser("ddp", help="run a training command on every torchrun process (DDP)",
                       description="Use as: torchrun --nproc_per_node=N --no-python "
                                   "napari-stexp ddp [--backend gloo|nccl] COMMAND ... ; "
                                   "'check' runs a tiny self test.")
    d.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="default: nccl on CUDA, gloo on the CPU")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda")
    d.add_argument("--out-option", default="--out",
                   help="the command's output-folder option (only rank 0 writes there)")
    d.add_argument("rest", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                   help="'check' or a napari-stexp training command with its arguments")
    d.set_defaults(func=run_ddp)


def parse_settings(items: list[str], option: str = "--set") -> dict:
    """``['top_k=50', 'tile_size=1024', 'name=x']`` -> options (JSON values when they parse)."""
    from ..errors import InputError

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(option, f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def options_from_args(args) -> dict:
    options = parse_settings(args.settings)
    params = parse_settings(args.params, "--param")
    if params:
        options["params"] = {**(options.get("params") or {}), **params}
    if args.method:
        options["method"] = args.method
    if args.device and args.device != "cpu":
        options["device"] = args.device
    return options


def run(args) -> int:
    from ..batch import plan, run_batch
    from ..progress import terminal_progress

    options = options_from_args(args)
    if args.dry_run:
        todo, complete = plan(args.kind, args.inputs, args.out, model_dir=args.model,
                              options=options)
        for p in todo:
            print(f"todo      {p}")
        for p in complete:
            print(f"complete  {p}")
        print(f"{len(todo)} to do, {len(complete)} already complete")
        return 0
    res = run_batch(args.kind, args.inputs, args.out, model_dir=args.model,
                    scheduler=args.scheduler, n_workers=args.workers, options=options,
                    progress=terminal_progress(sys.stderr), retries=args.retries, local=args.local)
    for path, reason in res.failed.items():
        print(f"napari-stexp: failed: {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(res.as_dict()))
    print(res.summary())
    return 1 if res.failed else 0


def run_ddp(args) -> int:
    from .ddp import main

    argv = ["--device", args.device, f"--out-option={args.out_option}"]
    if args.backend:
        argv += ["--backend", args.backend]
    return main(argv + list(args.rest))
