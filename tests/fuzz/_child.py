"""Child process of the fuzz suite: ``_child.py SPEC.json RESULT.json`` runs each command of
the spec through the CLI entry point (``napari_stexp.cli.main``) in turn, then probes the napari
reader, and writes one result per run (exit status, stderr, traceback or not, peak memory so
far). One process per input keeps the imports' cost to one per input. ``STEXP_FUZZ_AS``
(bytes) caps the address space (RLIMIT_AS), so a runaway allocation fails fast, never swaps."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import traceback

limit = int(os.environ.get("STEXP_FUZZ_AS", "0"))
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _peak_mb() -> float:
    """This process's own peak resident memory (VmHWM of its address space, reset at exec).

    ``ru_maxrss`` is not used: Linux carries the parent's high-water mark over fork and exec,
    so a child of a large pytest process would report the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cli(argv: list[str]) -> dict:
    import warnings

    from napari_stexp.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), \
            warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - what escapes the CLI is what we look for
            traceback.print_exc()
            rc = 1
    return {"argv": argv, "rc": rc, "stderr": err.getvalue(), "peak_mb": _peak_mb()}


def probe_reader(path: str) -> dict:
    from napari_stexp._reader import get_reader
    from napari_stexp.errors import InputError

    err = io.StringIO()
    res: dict = {"argv": ["reader", path]}
    with contextlib.redirect_stderr(err):
        try:
            fn = get_reader(path)
            if fn is None:
                res["result"] = {"reader": "declined"}
            else:
                res["result"] = {"reader": "layers", "n": len(fn(path))}
        except InputError as exc:
            res["result"] = {"reader": "error", "message": str(exc)}
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            res["result"] = {"reader": "crashed"}
    res["stderr"] = err.getvalue()
    res["peak_mb"] = _peak_mb()
    return res


if __name__ == "__main__":
    spec_path, result_path = sys.argv[1:3]
    spec = json.loads(open(spec_path).read())
    results = []

    def flush():
        with open(result_path, "w") as fh:
            json.dump(results, fh)

    for argv in spec["commands"]:
        results.append(run_cli(argv))
        flush()
    if spec.get("reader"):
        results.append(probe_reader(spec["reader"]))
        flush()
