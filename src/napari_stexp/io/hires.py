"""The slide image at a "hires" scale for scanpy/squidpy (``sc.pl.spatial``).

scanpy draws spots over ``uns['spatial'][lib]['images']['hires']`` with the spot coordinates
``obsm['spatial']`` (full-resolution px) multiplied by
``uns['spatial'][lib]['scalefactors']['tissue_hires_scalef']``, and sizes them from
``spot_diameter_fullres``. Our writers call :func:`add_hires_image` so their ``.h5ad`` files
plot with ``sc.pl.spatial(adata, color=..., library_id=lib)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .image import ImagePyramid

#: Long side of the hires image (Space Ranger writes 2000 px).
HIRES_MAX = 2000


def hires_image_for(pyramid: ImagePyramid, max_size: int = HIRES_MAX) -> tuple[np.ndarray, float]:
    """``(image, tissue_hires_scalef)``: an 8-bit RGB overview of ``pyramid`` whose long side is
    at most ``max_size`` px (from the coarsest level that is large enough) and the factor from
    level-0 pixels to its pixels."""
    thumb = np.asarray(pyramid.thumbnail(max_size))
    if thumb.ndim == 2:
        thumb = np.repeat(thumb[..., None], 3, axis=2)
    thumb = thumb[..., :3]
    if thumb.dtype != np.uint8:
        hi = float(thumb.max(initial=0)) or 1.0
        top = 1.0 if np.issubdtype(thumb.dtype, np.floating) and hi <= 1.0 else hi
        thumb = np.clip(thumb.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    scalef = 0.5 * (thumb.shape[0] / pyramid.height + thumb.shape[1] / pyramid.width)
    return np.ascontiguousarray(thumb), float(scalef)


def add_hires_image(adata: Any, library_id: str, pyramid: ImagePyramid,
                    max_size: int = HIRES_MAX) -> None:
    """Put :func:`hires_image_for` into ``adata.uns['spatial'][library_id]`` (``images['hires']``
    and ``scalefactors['tissue_hires_scalef']``), creating the entry when absent."""
    img, scalef = hires_image_for(pyramid, max_size)
    spatial = adata.uns.setdefault("spatial", {})
    entry = spatial.setdefault(library_id, {})
    entry.setdefault("images", {})["hires"] = img
    entry.setdefault("scalefactors", {})["tissue_hires_scalef"] = scalef
    entry.setdefault("metadata", {})
