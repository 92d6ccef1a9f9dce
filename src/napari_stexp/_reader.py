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
    from .viewer.raster import RASTER_THRESHOLD, raster_layers

    paths = path if isinstance(path, list | tuple) else [path]
    layers = []
    for p in paths:
        op = open_path(p)
        # many bins: a raster (+ its selection overlay) built directly, never one Point per bin
        rasters = {sec: raster_layers(ad, sec, visible=i == 0)
                   for i, (sec, ad) in enumerate(op.adatas.items())
                   if ad.n_obs > RASTER_THRESHOLD}
        rasters = {sec: r for sec, r in rasters.items() if r}
        layers.extend(op.layers(skip_spots=set(rasters)))
        layers.extend(lyr for r in rasters.values() for lyr in r)
    return layers
