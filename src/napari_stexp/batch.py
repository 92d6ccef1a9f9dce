"""Batch processing of many slides on dask.distributed (no Qt).

Each input slide is one task. Workers load the model once (cached per worker process), write
their outputs atomically, and finish with a completion record ``<stem>.<kind>.done.json`` written
last. A rerun skips every slide whose record is present and whose outputs still exist, so a crash,
a killed worker or an interrupted run resumes without redoing finished slides and without corrupt
files (stale temporaries from a killed run are removed first).
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .io._atomic import atomic_path
from .progress import ProgressFn, report

KINDS = ("predict", "segment", "classify", "embed")


@dataclass
class BatchResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    n_workers: int = 0

    def as_dict(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                "seconds": self.seconds, "n_workers": self.n_workers}


def expand_inputs(spec: str | os.PathLike | list) -> list[Path]:
    """Inputs from a glob, a folder (its readable files), a text file listing paths, or a list."""
    from .io.open import detect_kind

    if isinstance(spec, list | tuple):
        out: list[Path] = []
        for s in spec:
            out.extend(expand_inputs(s))
        return _unique(out)
    s = str(spec)
    p = Path(s)
    if any(ch in s for ch in "*?["):
        paths = [Path(x) for x in sorted(glob.glob(s, recursive=True))]
    elif p.is_dir():
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
            out.append(q)
    return out


def slide_stem(path: Path) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem if path.is_file() else name


def done_record(out_dir: Path, stem: str, kind: str) -> Path:
    return out_dir / f"{stem}.{kind}.done.json"


def is_complete(out_dir: Path, stem: str, kind: str) -> bool:
    rec = done_record(out_dir, stem, kind)
    if not rec.exists():
        return False
    try:
        outputs = json.loads(rec.read_text()).get("outputs", [])
    except (OSError, ValueError):
        return False
    return all((out_dir / o).exists() for o in outputs)


def clean_stale_temporaries(out_dir: Path) -> int:
    """Remove ``.name.tmp-*`` leftovers of a killed run (atomic writers never rename them)."""
    import shutil

    n = 0
    for p in out_dir.glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


# --- tasks -----------------------------------------------------------------------------------
# A task kind maps to "module:function" names resolved on the worker, so the client never
# imports torch. ``load(model_dir, options)`` returns what ``run`` needs; ``run(model, input,
# out_dir, stem, options)`` writes outputs atomically and returns their file names.
TASKS: dict[str, tuple[str, str]] = {
    "predict": ("napari_stexp.batch_tasks:load_expression", "napari_stexp.batch_tasks:run_expression"),
    "segment": ("napari_stexp.batch_tasks:load_segment", "napari_stexp.batch_tasks:run_segment"),
    "classify": ("napari_stexp.batch_tasks:load_classifier", "napari_stexp.batch_tasks:run_classify"),
    "embed": ("napari_stexp.batch_tasks:load_bvae", "napari_stexp.batch_tasks:run_embed"),
}

_MODEL_CACHE: dict[tuple, Any] = {}


def _resolve(name: str) -> Callable:
    import importlib

    mod, attr = name.split(":")
    return getattr(importlib.import_module(mod), attr)


def _load_once(kind: str, model_dir: str | None, options: dict) -> Any:
    key = (kind, model_dir, json.dumps(options, sort_keys=True, default=str))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = _resolve(TASKS[kind][0])(model_dir, options)
    return _MODEL_CACHE[key]


def run_one(kind: str, input_path: str, out_dir: str, model_dir: str | None = None,
            options: dict | None = None) -> dict:
    """Process one slide (runs on a worker, or in-process). Returns its completion record."""
    options = dict(options or {})
    out = Path(out_dir)
    inp = Path(input_path)
    stem = slide_stem(inp)
    t0 = time.perf_counter()
    model = _load_once(kind, model_dir, options)
    outputs = _resolve(TASKS[kind][1])(model, inp, out, stem, options)
    record = {"input": str(inp), "kind": kind, "model": model_dir, "options": options,
              "outputs": [str(Path(o).relative_to(out)) if Path(o).is_absolute() else str(o)
                          for o in outputs],
              "seconds": time.perf_counter() - t0, "pid": os.getpid()}
    with atomic_path(done_record(out, stem, kind)) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def run_batch(kind: str, inputs, out_dir: str | os.PathLike, *, model_dir: str | None = None,
              scheduler: str | None = None, n_workers: int | None = None,
              options: dict | None = None, progress: ProgressFn | None = None,
              retries: int = 2, local: bool = False) -> BatchResult:
    """Run ``kind`` over ``inputs`` on dask.distributed; skip what is already complete.

    Without ``scheduler`` a local cluster sized to the machine (one single-threaded worker
    process per core, capped by the number of slides) is started and closed; with it, the
    existing cluster at that address is used. ``local=True`` runs in-process (no dask), the
    reference that the distributed path is measured against.
    """
    if kind not in TASKS:
        raise InputError(kind, f"unknown batch kind; choose one of {', '.join(TASKS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out)
    paths = expand_inputs(inputs)
    stems = [slide_stem(p) for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise InputError(out, f"several inputs share the output name(s) {sorted(dup)}")
    res = BatchResult()
    todo: list[Path] = []
    for p, s in zip(paths, stems, strict=True):
        if is_complete(out, s, kind):
            res.skipped.append(str(p))
        else:
            todo.append(p)
    total = len(paths)
    report(progress, len(res.skipped), total, f"{len(res.skipped)} already complete")
    t0 = time.perf_counter()
    if not todo:
        return res
    if local:
        res.n_workers = 1
        for p in todo:
            try:
                run_one(kind, str(p), str(out), model_dir, options)
                res.done.append(str(p))
            except Exception as exc:  # one bad slide must not stop the batch
                res.failed[str(p)] = f"{type(exc).__name__}: {exc}"
            report(progress, len(res.skipped) + len(res.done) + len(res.failed), total, p.name)
        res.seconds = time.perf_counter() - t0
        return res

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        n = n_workers or max(1, min(os.cpu_count() or 1, len(todo)))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    try:
        res.n_workers = len(client.scheduler_info().get("workers", {})) or (n_workers or 1)
        futures = {client.submit(run_one, kind, str(p), str(out), model_dir, options,
                                 pure=False, retries=retries, key=f"{kind}-{slide_stem(p)}-{i}"):
                   p for i, p in enumerate(todo)}
        for fut in as_completed(futures):
            p = futures[fut]
            try:
                fut.result()
                res.done.append(str(p))
            except Exception as exc:
                res.failed[str(p)] = f"{type(exc).__name__}: {exc}"
            report(progress, len(res.skipped) + len(res.done) + len(res.failed), total, p.name)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    res.seconds = time.perf_counter() - t0
    return res
