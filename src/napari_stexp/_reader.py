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
    paths = path if isinstance(path, list | tuple) else [path]
    layers = []
    for p in paths:
        try:
            layers.extend(_path_layers(p))
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


def _path_layers(p) -> list:
    """Layers of one path; sections with many bins are a raster (+ its selection overlay)
    built directly, never one Point per bin."""
    from .io.open import open_path
    from .viewer.raster import RASTER_THRESHOLD, raster_layers

    op = open_path(p)
    rasters = {sec: raster_layers(ad, sec, visible=i == 0)
               for i, (sec, ad) in enumerate(op.adatas.items()) if ad.n_obs > RASTER_THRESHOLD}
    rasters = {sec: r for sec, r in rasters.items() if r}
    return [*op.layers(skip_spots=set(rasters)), *(lyr for r in rasters.values() for lyr in r)]
