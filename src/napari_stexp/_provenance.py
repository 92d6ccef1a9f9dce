"""Provenance helpers shared by every tier (core tier: imports only errors and io._atomic).

- :func:`json_default`: the one ``json.dumps(default=...)`` encoder (numpy, paths, sets).
- :func:`write_json_atomic`: a JSON file written through :func:`~napari_stexp.io._atomic.atomic_path`.
- :func:`version`: the installed napari-stexp version.
- :func:`clean_provenance`: a provenance dict made h5ad-writable.
- :func:`run_signature`: the short digest that tells a resumable checkpoint of *this* run from
  one of another run (configuration, data, panel).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .io._atomic import atomic_path


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` with :func:`json_default` (the one encoder of model folders and reports)."""
    return json.dumps(obj, default=json_default, **kw)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(obj, indent=2))
    return path


def version() -> str:
    """The napari-stexp version string (``"unknown"`` if the package metadata is missing)."""
    try:
        from . import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def clean_provenance(d: dict) -> dict:
    """A provenance dict made h5ad-writable as plain values: ``None`` becomes ``""`` (also in
    lists), tuples become lists, numpy scalars Python scalars, nested dicts likewise."""
    out = {}
    for k, v in d.items():
        if v is None:
            v = ""
        elif isinstance(v, dict):
            v = clean_provenance(v)
        elif isinstance(v, tuple | list):
            v = ["" if x is None else x for x in v]
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def run_signature(payload: Any, *arrays: np.ndarray, length: int = 24) -> str:
    """sha256 (first ``length`` hex digits) of ``payload`` as sorted-key JSON, then of the
    bytes of ``arrays``: equal for the same run, different for another configuration/data."""
    h = hashlib.sha256(json.dumps(payload, sort_keys=True, default=json_default).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:length]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
