"""npe2 reader contribution: every kind that :func:`napari_stexp.io.open.open_path` reads."""

from __future__ import annotations

from pathlib import Path


def get_reader(path):
    """Return a reader function when napari-stexp can read ``path`` (else None)."""
    from .io.open import detect_kind

    if isinstance(path, list | tuple):
        if not path or not all(detect_kind(p) for p in path):
            return None
        return read_paths
    if detect_kind(Path(path)) is None:
        return None
    return read_paths


def read_paths(path):
    from .io.open import open_path
    from .viewer.raster import rasterize_large

    paths = path if isinstance(path, list | tuple) else [path]
    layers = []
    for p in paths:
        layers.extend(rasterize_large(open_path(p).layers()))
    return layers
