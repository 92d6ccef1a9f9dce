"""``torchrun --nproc_per_node=N -m napari_stexp.commands.ddp [opts] COMMAND ...``: run one
``napari-stexp`` training command on N processes (DDP), or ``check`` for a tiny self test.

The distributed machinery (process group, sharding, gathers, :func:`check_run`) lives in
:mod:`napari_stexp.training.distributed`; this module is only the command-line entry, so the
training tier never imports the CLI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from ..training.distributed import DistContext, check_run, gather_probe, init_distributed

log = logging.getLogger("napari_stexp.training")


def _check(ctx: DistContext, argv: list[str]) -> int:
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="... -m napari_stexp.commands.ddp check",
                                description="tiny gather + contrastive training self test")
    p.add_argument("--items", type=int, default=128)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="rank 0 writes last.pt here")
    p.add_argument("--json-dir", default=None, help="every rank writes rank<R>.json here")
    a = p.parse_args(argv)
    res = {"probe": gather_probe(ctx, seed=a.seed),
           **check_run(ctx, n_items=a.items, global_batch=a.global_batch, epochs=a.epochs,
                       seed=a.seed, checkpoint_dir=a.checkpoint_dir)}
    if a.json_dir:
        out = Path(a.json_dir) / f"rank{ctx.rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res))
    if ctx.is_main:
        print(json.dumps({k: res[k] for k in ("world_size", "backend", "global_batch",
                                              "per_process_batch", "similarity_shape",
                                              "losses")}))
    return 0




def _private_out(argv: list[str], option: str, rank: int) -> tuple[list[str], str | None]:
    """Point rank > 0's ``option`` (an output folder) at a private temporary folder."""
    if rank == 0 or not option:
        return argv, None
    out = list(argv)
    for i, a in enumerate(out):
        if a == option and i + 1 < len(out):
            tmp = tempfile.mkdtemp(prefix=f"stexp-rank{rank}-")
            out[i + 1] = tmp
            return out, tmp
        if a.startswith(option + "="):
            tmp = tempfile.mkdtemp(prefix=f"stexp-rank{rank}-")
            out[i] = f"{option}={tmp}"
            return out, tmp
    return out, None


def main(argv: list[str] | None = None) -> int:
    """``torchrun --nproc_per_node=N -m napari_stexp.commands.ddp [opts] COMMAND ...``

    Every process joins the group, then runs the ``napari-stexp`` training COMMAND (e.g.
    ``expression train ...``); the engine trains it data-parallel. Rank 0 writes the results;
    ranks > 0 get a private temporary folder for ``--out`` (``--out-option`` names another
    option), removed at the end, and print nothing. ``check`` runs a tiny self test instead.
    """
    import shutil

    parser = argparse.ArgumentParser(
        prog="python -m napari_stexp.commands.ddp",
        description="Run a napari-stexp training command on every torchrun process (DDP).")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                        help="default: nccl on CUDA, gloo on the CPU")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out-option", default="--out",
                        help="the command's output-folder option (rank 0 only writes there)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="'check' or a napari-stexp command with its arguments")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("give a napari-stexp command (e.g. 'expression train ...') or 'check'")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    ctx = init_distributed(args.backend, args.device)
    try:
        if args.command[0] == "check":
            return _check(ctx, args.command[1:])
        from ..cli import main as cli_main

        cmd, private = _private_out(args.command, args.out_option, ctx.rank)
        try:
            if ctx.is_main:
                return cli_main(cmd)
            with open(os.devnull, "w") as sink:
                old = sys.stdout
                sys.stdout = sink
                try:
                    return cli_main(cmd)
                finally:
                    sys.stdout = old
        finally:
            if private:
                shutil.rmtree(private, ignore_errors=True)
    finally:
        ctx.close()


if __name__ == "__main__":
    # ``-m`` runs this file as ``__main__``: call ``main`` of the imported module so the active
    # context lives where the engine looks for it (a second copy of the module would hold it).
    from napari_stexp.commands.ddp import main as _main

    sys.exit(_main())
