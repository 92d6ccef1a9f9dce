"""npe2 reader contribution: every kind that :func:`napari_stexp.io.open.open_path` reads.

A path the reader claims either gives layers or raises the one-line :class:`InputError` the
CLI prints for it (``<file>: <problem>``); never a ``MemoryError``/``ValueError`` of its own.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def get_reader(path):
    """Return a reader function when napari-stexp can read ``path`` (else None)."""
    from .io.open import detect_kind

    try:
        if isinstance(path, list | tuple):
            if not path or not all(detect_kind(p) for p in path):
                return None
            return read_paths
        if detect_kind(Path(path)) is None:
            return None
    except OSError:  # unreadable path: not ours to claim
        return None
    return read_paths


def read_paths(path):
    from .io.open import open_path
    from .viewer.raster import rasterize_large

    paths = path if isinstance(path, list | tuple) else [path]
    layers = []
    for p in paths:
        try:
            layers.extend(rasterize_large(open_path(p).layers()))
        except InputError:
            raise
        except MemoryError as exc:
            raise InputError(p, "too large to read into memory") from exc
        except OSError as exc:
            from .cli import os_error_line

            raise InputError(None, os_error_line(exc) if exc.filename else
                             f"{p}: {os_error_line(exc)}") from exc
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(p, f"cannot read ({type(exc).__name__}: {exc})") from exc
    return layers
