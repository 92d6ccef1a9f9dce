"""Cell and nucleus segmentation behind one interface.

``segment(image, method=...)`` returns a :class:`SegmentationResult` (int32 labels + one table
row per label). Backends: ``classical`` (stain colour + seeded watershed, no weights),
``maskrcnn`` (torchvision Mask R-CNN, trainable) and ``cellpose`` (when installed). Large images
are segmented tile by tile with overlap and stitched without split or duplicated cells.
Importing this package is cheap (no torch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel
from .base import (
    OBJECT_COLUMNS,
    Backend,
    BackendUnavailableError,
    SegmentationResult,
    get_backend,
    list_backends,
    objects_table,
    register_backend,
)

#: Images with more pixels than this are tiled even when no tile size is given.
AUTO_TILE_PIXELS = 4096 * 4096
AUTO_TILE_SIZE = 2048

__all__ = [
    "OBJECT_COLUMNS", "Backend", "BackendUnavailableError", "SegmentationResult", "get_backend",
    "list_backends", "objects_table", "register_backend", "segment", "prepare", "tissue_for",
]


def _as_image(image: Any) -> Any:
    """numpy / dask / ImagePyramid pass through; a path is opened lazily."""
    if isinstance(image, str | os.PathLike):
        from ..io.smears import read_smear

        return read_smear(Path(image))
    if type(image).__name__ == "MultiScaleData":  # napari multiscale layer data: level 0
        return image[0]
    if hasattr(image, "shape") and hasattr(image, "dtype"):
        return image
    from ..io.image import ImagePyramid

    if isinstance(image, ImagePyramid):
        return image
    if isinstance(image, list | tuple) and image and hasattr(image[0], "shape"):
        return image[0]  # a napari multiscale list: level 0
    raise InputError(None, f"cannot segment a {type(image).__name__}; pass an array, "
                           "an ImagePyramid or an image path")


def prepare(image: Any, method: str = "classical", **params: Any) -> dict:
    """The global settings ``method`` would use for ``image`` (thresholds, diameter, model).

    Computed from the whole image when it is small, else from a mosaic of spread-out tiles
    (see :func:`tiling.global_sample`); tiled and untiled runs share them. Whole slides with
    tissue masking on (see :func:`tissue_for`) are sampled inside the tissue.
    """
    image = _as_image(image)
    backend = get_backend(method)
    return _prepare(image, backend, {**backend.defaults, **params},
                    tissue_for(image, backend, {**backend.defaults, **params}))


def tissue_for(image: Any, backend: Backend, params: dict):
    """The tissue mask ``(mask, downsample)`` a whole-slide run of ``backend`` uses, or ``None``.

    ``params['tissue']``: ``True`` always, ``False`` never, ``'auto'`` for RGB images in nuclei
    mode larger than one global sample (whole H&E slides); ``None`` as well when the image shows
    no tissue/glass contrast."""
    from .tiling import SAMPLE_PIXELS, image_shape
    from .tissue import slide_tissue

    want = params.get("tissue", "auto")
    if not backend.tissue_aware or want in (False, "off", "false", None):
        return None
    shape = image_shape(_as_image(image))
    if want == "auto" and (params.get("mode") != "nuclei" or len(shape) != 3
                           or shape[0] * shape[1] <= SAMPLE_PIXELS):
        return None
    return slide_tissue(image)


def _prepare(image: Any, backend: Backend, p: dict, tissue) -> dict:
    from .base import check_image_shape
    from .tiling import global_sample, image_shape
    from .tissue import tissue_sample

    check_image_shape(image_shape(image))
    if not backend.available():
        backend.run(None, p, None, None)  # raises BackendUnavailableError with advice
    if backend.prepare is None:
        return p
    if not backend.needs_sample:
        return backend.prepare(None, p)
    if tissue is not None:
        sample, mask = tissue_sample(image, tissue)
        return backend.prepare(sample, p, mask)
    sample, _ = global_sample(image)
    return backend.prepare(sample, p)


def segment(image: Any, method: str = "classical", *, device: str = "auto",
            tile_size: int | None = None, overlap: int | None = None,
            labels_out: str | os.PathLike | None = None, progress: ProgressFn | None = None,
            cancel: CancelFlag | None = None, **params: Any) -> SegmentationResult:
    """Segment cells in ``image`` with ``method`` ('classical' | 'maskrcnn' | 'cellpose').

    ``image``: (Y, X) grey, (Y, X, 3) RGB or (Y, X, 4) RGBA (alpha dropped) as numpy, dask or
    an :class:`~napari_stexp.io.image.ImagePyramid` (level 0), or a path. ``tile_size``: segment
    in tiles of that size with ``overlap`` pixels of context (default: the backend's halo, about
    1.5 cell diameters); images above ``AUTO_TILE_PIXELS`` are tiled automatically.
    ``labels_out``: write the labels to a zarr array there (tiled runs; bounded memory).
    ``params`` go to the backend (see each backend's ``DEFAULTS``). Progress is per tile.
    """
    from .base import check_image_shape
    from .tiling import image_shape, read_window, segment_tiled

    image = _as_image(image)
    shape = image_shape(image)
    check_image_shape(shape)
    backend = get_backend(method)
    params = {**backend.defaults, **params, "device": device}
    check_cancel(cancel, "segmentation")
    tissue = tissue_for(image, backend, params)
    p = _prepare(image, backend, params, tissue)
    H, W = shape[:2]
    if tile_size is None and (H * W > AUTO_TILE_PIXELS or labels_out is not None):
        tile_size = AUTO_TILE_SIZE
    if tile_size is None:
        arr = read_window(image, 0, 0, H, W)
        if tissue is not None:
            from .tissue import window_mask

            p = {**p, "tissue_window": window_mask(tissue, 0, 0, H, W)}
        res = backend.run(arr, p, progress, cancel)
        res.metadata.setdefault("method", method)
        res.metadata["tiled"] = False
    else:
        res = segment_tiled(image, backend, p, tile_size=int(tile_size), overlap=overlap,
                            labels_out=labels_out, progress=progress, cancel=cancel,
                            tissue=tissue)
        res.metadata.update({"method": method, **{k: v for k, v in p.items()
                                                  if k in ("diameter", "nucleus_threshold",
                                                           "background", "stain", "mode")}})
    res.metadata["tissue_masked"] = tissue is not None
    if tissue is not None:
        res.metadata["tissue_fraction"] = float(tissue[0].mean())
    return res
