"""Batch processing of many slides on dask.distributed (no Qt).

Each input slide is one task. Workers load the model once (cached per worker process), write
their outputs atomically, and finish with a completion record ``<stem>.<kind>.done.json`` written
last. A rerun skips every slide whose record is present, matches the run's settings (kind,
model, options) and whose outputs still exist, so a crash, a killed worker or an interrupted run
resumes without redoing finished slides and without corrupt files (temporaries of a killed
writer are removed at the start and at the end of a run).

- ``scheduler=None``: a local cluster sized to the machine (one single-threaded worker process
  per core, capped by the number of slides), started and closed by the run.
- ``scheduler='tcp://host:8786'``: an existing cluster (``dask scheduler`` + ``dask worker``);
  the workers need napari-stexp installed and must see the inputs and the output folder.
- ``local=True``: everything in this process, no dask: the reference the distributed path is
  checked and measured against.

Task kinds are ``module:function`` names resolved on the worker (:data:`TASKS`), so the client
never imports torch; a run can also pass its own ``task=(load_name, run_name)`` pair.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io._atomic import atomic_path
from ..progress import ProgressFn, report

KINDS = ("predict", "segment", "classify", "embed")
#: Kinds that cannot run without ``--model`` (segment's classical method needs none).
NEEDS_MODEL = {"predict": "an mclSTExp model folder (napari-stexp expression train)",
               "classify": "a classifier folder (napari-stexp classify train)",
               "embed": "a β-VAE model folder (napari-stexp bvae train)"}
RECORD_VERSION = 1


@dataclass
class BatchResult:
    """What a batch run did: inputs done / skipped (already complete) / failed (with reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    n_workers: int = 0
    records: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                "seconds": self.seconds, "n_workers": self.n_workers}

    def summary(self) -> str:
        """One line for the command line."""
        n = len(self.done) + len(self.skipped) + len(self.failed)
        rate = len(self.done) / self.seconds if self.seconds > 0 and self.done else 0.0
        return (f"{n} slide(s): {len(self.done)} done, {len(self.skipped)} already complete, "
                f"{len(self.failed)} failed in {self.seconds:.1f} s on {self.n_workers} "
                f"worker(s)" + (f" ({rate:.2f} slides/s)" if rate else ""))


# --------------------------------------------------------------------------- inputs


def expand_inputs(spec: str | os.PathLike | list) -> list[Path]:
    """Inputs from a glob, a folder (its readable files), a text file listing paths, or a list."""
    from ..io.open import detect_kind

    if isinstance(spec, list | tuple):
        out: list[Path] = []
        for s in spec:
            out.extend(expand_inputs(s))
        return _unique(out)
    s = str(spec)
    p = Path(s)
    if any(ch in s for ch in "*?[") and not p.exists():
        paths = [Path(x) for x in sorted(glob.glob(s, recursive=True))
                 if not Path(x).name.startswith(".")]
    elif p.is_dir() and detect_kind(p) not in ("ome-zarr", "cell-crops"):
        paths = sorted(c for c in p.iterdir() if not c.name.startswith(".")
                       and detect_kind(c) is not None)
    elif p.is_file() and p.suffix.lower() in (".txt", ".lst", ".list"):
        base = p.parent
        paths = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                q = Path(line)
                paths.append(q if q.is_absolute() else base / q)
    elif p.exists():
        paths = [p]
    else:
        raise InputError(s, "no such file, folder or glob match")
    missing = [q for q in paths if not q.exists()]
    if missing:
        raise InputError(missing[0], "listed as a batch input but does not exist")
    if not paths:
        raise InputError(s, "matched no inputs")
    return _unique(paths)


def _unique(paths: list[Path]) -> list[Path]:
    seen, out = set(), []
    for q in paths:
        r = q.resolve()
        if r not in seen:
            seen.add(r)
            out.append(q.absolute())
    return out


def slide_stem(path: Path) -> str:
    """The output name of one input (``slide.ome.tif`` -> ``slide``)."""
    name = Path(path).name
    for suf in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(path).stem if Path(path).is_file() else name


# --------------------------------------------------------------------------- records


def done_record(out_dir: Path, stem: str, kind: str) -> Path:
    return Path(out_dir) / f"{stem}.{kind}.done.json"


def run_signature(kind: str, model_dir: str | None, options: dict | None,
                  task: tuple[str, str] | None = None) -> str:
    """What makes two runs' outputs interchangeable: kind, task, model folder, options."""
    model = str(Path(model_dir).resolve()) if model_dir else None
    blob = json.dumps([kind, list(task or TASKS.get(kind, ())), model, options or {}],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_record(out_dir: Path, stem: str, kind: str) -> dict | None:
    rec = done_record(out_dir, stem, kind)
    try:
        return json.loads(rec.read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: Path, stem: str, kind: str, signature: str | None = None) -> bool:
    """True when the slide's completion record exists, its outputs exist and (if given) it was
    made with the same settings."""
    record = read_record(Path(out_dir), stem, kind)
    if record is None:
        return False
    if signature is not None and record.get("signature") not in (None, signature):
        return False
    outputs = record.get("outputs", [])
    return all((Path(out_dir) / o).exists() for o in outputs)


def clean_stale_temporaries(out_dir: Path) -> int:
    """Remove ``.name.tmp-*`` / ``.name.old-*`` leftovers of a killed writer (atomic writers
    write there and rename; a killed process never renames)."""
    import shutil

    n = 0
    for pattern in (".*.tmp-*", ".*.old-*"):
        for p in Path(out_dir).glob(pattern):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def list_outputs(out_dir: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """The completion records of a batch output folder (one per finished slide and kind),
    with absolute output paths: what a viewer needs to click through the slides."""
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(out, "batch output folder not found")
    rows = []
    for rec_path in sorted(out.glob(f"*.{kind or '*'}.done.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue
        rec["outputs"] = [str(out / o) for o in rec.get("outputs", [])]
        rec["complete"] = all(Path(o).exists() for o in rec["outputs"])
        rows.append(rec)
    return rows


# --------------------------------------------------------------------------- tasks
# A task kind maps to "module:function" names resolved on the worker, so the client never
# imports torch. ``load(model_dir, options)`` returns what ``run`` needs; ``run(model, input,
# out_dir, stem, options)`` writes outputs atomically and returns their file names.
TASKS: dict[str, tuple[str, str]] = {
    "predict": ("napari_stexp.batch.tasks:load_expression",
                "napari_stexp.batch.tasks:run_expression"),
    "segment": ("napari_stexp.batch.tasks:load_segment", "napari_stexp.batch.tasks:run_segment"),
    "classify": ("napari_stexp.batch.tasks:load_classifier",
                 "napari_stexp.batch.tasks:run_classify"),
    "embed": ("napari_stexp.batch.tasks:load_bvae", "napari_stexp.batch.tasks:run_embed"),
}

#: Models loaded in this process (a worker keeps its model for all its slides); the least
#: recently used is dropped beyond ``MODEL_CACHE_SIZE`` (long-lived workers of a shared cluster
#: serve many runs).
_MODEL_CACHE: OrderedDict[tuple, Any] = OrderedDict()
MODEL_CACHE_SIZE = 2


def _resolve(name: str) -> Callable:
    import importlib

    mod, _, attr = name.partition(":")
    if not attr:
        raise InputError(name, "a task function must be named 'module:function'")
    return getattr(importlib.import_module(mod), attr)


def _load_once(kind: str, task: tuple[str, str], model_dir: str | None,
               options: dict) -> tuple[Any, bool, float]:
    key = (kind, tuple(task), model_dir, json.dumps(options, sort_keys=True, default=str))
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key], True, 0.0
    t0 = time.perf_counter()
    model = _resolve(task[0])(model_dir, options)
    _MODEL_CACHE[key] = model
    while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
        _MODEL_CACHE.popitem(last=False)
    return model, False, time.perf_counter() - t0


def clear_model_cache() -> None:
    _MODEL_CACHE.clear()


def run_one(kind: str, input_path: str, out_dir: str, model_dir: str | None = None,
            options: dict | None = None, task: tuple[str, str] | None = None) -> dict:
    """Process one slide (on a worker, or in-process) and write its completion record last.

    Returns the record: input, kind, outputs (names relative to ``out_dir``), settings
    signature, seconds, the process id and whether the model came from the process cache.
    """
    options = dict(options or {})
    task = tuple(task or TASKS[kind])
    # absolute paths: a task may return its outputs relative to the working directory
    out = Path(out_dir).absolute()
    inp = Path(input_path).absolute()
    if not inp.exists():
        raise InputError(inp, "batch input not found (do the workers see this path?)")
    out.mkdir(parents=True, exist_ok=True)
    stem = slide_stem(inp)
    t0 = time.perf_counter()
    import dask

    # Dask arrays (lazy slides) are computed here, in this process: on a worker the default
    # would be the cluster itself (which cannot ship open file handles); the parallelism of
    # a batch is one slide per worker process.
    with dask.config.set(scheduler="synchronous"):
        model, cached, load_s = _load_once(kind, task, model_dir, options)
        outputs = _resolve(task[1])(model, inp, out, stem, options)
    names = [str(Path(o).absolute().relative_to(out)) if Path(o).is_absolute()
             or Path(o).absolute().is_relative_to(out) else str(o) for o in outputs]
    missing = [n for n in names if not (out / n).exists()]
    if missing:
        raise InputError(inp, f"task reported outputs that were not written: {missing}")
    from .. import __version__

    record = {"version": RECORD_VERSION, "input": str(inp.resolve()), "stem": stem,
              "kind": kind, "task": list(task), "model": model_dir, "options": options,
              "signature": run_signature(kind, model_dir, options, task), "outputs": names,
              "seconds": time.perf_counter() - t0, "model_load_seconds": load_s,
              "model_cached": cached, "pid": os.getpid(), "host": platform.node(),
              "napari_stexp": __version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_path(done_record(out, stem, kind)) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str))
    return record


# --------------------------------------------------------------------------- the run


def plan(kind: str, inputs, out_dir: str | os.PathLike, *, model_dir: str | None = None,
         options: dict | None = None, task: tuple[str, str] | None = None
         ) -> tuple[list[Path], list[Path]]:
    """``(todo, complete)``: the inputs a run would process and those it would skip."""
    out = Path(out_dir)
    paths = expand_inputs(inputs)
    stems = [slide_stem(p) for p in paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise InputError(out, f"several inputs share the output name(s) {dup}")
    sig = run_signature(kind, model_dir, options, task)
    todo, complete = [], []
    for p, s in zip(paths, stems, strict=True):
        (complete if is_complete(out, s, kind, sig) else todo).append(p)
    return todo, complete


def run_batch(kind: str, inputs, out_dir: str | os.PathLike, *, model_dir: str | None = None,
              scheduler: str | None = None, n_workers: int | None = None,
              options: dict | None = None, progress: ProgressFn | None = None,
              retries: int = 2, local: bool = False, task: tuple[str, str] | None = None,
              timeout_s: float = 60.0) -> BatchResult:
    """Run ``kind`` over ``inputs`` on dask.distributed; skip what is already complete.

    Without ``scheduler`` a local cluster (one single-threaded worker process per core, capped
    by ``n_workers`` and the number of slides) is started and closed; with it, the existing
    cluster at that address is used. ``local=True`` runs in-process (no dask). ``retries``:
    extra attempts for a slide whose task raised; a slide whose worker died is rescheduled by
    the scheduler (up to ``distributed.scheduler.allowed-failures`` times). One failing slide
    never stops the others: it is reported in ``failed``. A summary ``batch.<kind>.json`` is
    written to ``out_dir``.
    """
    if task is None and kind not in TASKS:
        raise InputError(kind, f"unknown batch kind; choose one of {', '.join(TASKS)}")
    options = dict(options or {})
    out = Path(out_dir).absolute()  # workers may run in another working directory
    out.mkdir(parents=True, exist_ok=True)
    if model_dir is None and task is None and kind in NEEDS_MODEL:
        raise InputError("--model", f"'{kind}' needs {NEEDS_MODEL[kind]}")
    if model_dir is not None and not Path(model_dir).exists():
        raise InputError(model_dir, "model folder not found")
    clean_stale_temporaries(out)
    todo, complete = plan(kind, inputs, out, model_dir=model_dir, options=options, task=task)
    res = BatchResult(skipped=[str(p) for p in complete])
    total = len(todo) + len(complete)
    report(progress, len(complete), total, f"{len(complete)} already complete")
    t0 = time.perf_counter()
    try:
        if todo and local:
            res.n_workers = 1
            _run_local(res, kind, todo, out, model_dir, options, task, progress, total)
        elif todo:
            _run_distributed(res, kind, todo, out, model_dir, options, task, progress, total,
                             scheduler=scheduler, n_workers=n_workers, retries=retries,
                             timeout_s=timeout_s)
    finally:
        res.seconds = time.perf_counter() - t0
        clean_stale_temporaries(out)  # a worker killed mid-write leaves its temporary behind
    _write_summary(res, kind, out, model_dir, options, scheduler, local)
    return res


def _progress_line(res: BatchResult, total: int, progress, name: str) -> None:
    report(progress, len(res.skipped) + len(res.done) + len(res.failed), total, name)


#: dask settings of the workers a batch starts (also recommended for ``dask worker``): the
#: statistical profiler samples every task's stack every 10 ms, which slowed our (Python-heavy)
#: per-slide tasks by up to 2x on a busy machine.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


def local_cluster(n_workers: int, **kwargs: Any):
    """A ``LocalCluster`` of ``n_workers`` single-threaded worker processes (one slide each at
    a time), dashboard on a free port, worker profiling off. Close it (or use ``with``)."""
    import dask
    from distributed import LocalCluster

    opts = {"threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
            "silence_logs": 40, **kwargs}
    with dask.config.set(WORKER_CONFIG):
        return LocalCluster(n_workers=int(n_workers), **opts)


def _run_local(res, kind, todo, out, model_dir, options, task, progress, total) -> None:
    for p in todo:
        try:
            res.records.append(run_one(kind, str(p), str(out), model_dir, options, task))
            res.done.append(str(p))
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
            res.failed[str(p)] = f"{type(exc).__name__}: {exc}"
        _progress_line(res, total, progress, p.name)


def _run_distributed(res, kind, todo, out, model_dir, options, task, progress, total, *,
                     scheduler, n_workers, retries, timeout_s) -> None:
    from distributed import Client, as_completed

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout_s)
        except OSError as exc:
            raise InputError(scheduler, f"cannot reach the dask scheduler ({exc})") from exc
    else:
        cluster = local_cluster(max(1, min(n_workers or os.cpu_count() or 1, len(todo))))
        client = Client(cluster)
    try:
        if scheduler:
            try:
                client.wait_for_workers(1, timeout=timeout_s)
            except TimeoutError as exc:
                raise InputError(scheduler, "the dask scheduler has no workers") from exc
        res.n_workers = len(client.scheduler_info().get("workers", {})) or 1
        token = uuid.uuid4().hex[:8]
        futures = {client.submit(run_one, kind, str(p), str(out), model_dir, options, task,
                                 pure=False, retries=retries,
                                 key=f"stexp-{kind}-{slide_stem(p)}-{token}"): p
                   for p in todo}
        for fut in as_completed(futures):
            p = futures[fut]
            try:
                res.records.append(fut.result())
                res.done.append(str(p))
            except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
                res.failed[str(p)] = f"{type(exc).__name__}: {exc}"
            _progress_line(res, total, progress, p.name)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _write_summary(res: BatchResult, kind: str, out: Path, model_dir, options, scheduler,
                   local) -> None:
    from .._provenance import write_json_atomic

    summary = {**res.as_dict(), "kind": kind, "model": model_dir, "options": options,
               "scheduler": scheduler or ("in-process" if local else "local cluster"),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(summary, out / f"batch.{kind}.json")
