"""Latent traversals: what each β-VAE latent dimension changes in a cell's appearance.

For one cell, every latent dimension is varied over ``±span · σ`` (σ from the training
posterior spread, or 1 for the prior) in ``n_steps`` steps while the others stay at the cell's
latent mean; each point is decoded. Dimensions are ranked by how much they change the image
(mean absolute pixel difference to the cell's own decoding, inside the cell mask), so the
informative factors come first and the collapsed ones (the decoder ignores them) last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report


@dataclass
class Traversal:
    """Decoded traversal: ``images[r, s]`` is row ``r`` (latent dim ``dims[r]``) at step ``s``
    (offset ``values[s]`` σ). ``ranking`` lists *all* dims by ``score`` (largest change first);
    ``scores[r]`` is the change score of row ``r``."""

    images: np.ndarray  # (D, S, H, W, 3) float32 in [0, 1]
    dims: np.ndarray  # (D,) latent index per row
    values: np.ndarray  # (S,) offsets in units of sigma
    latents: np.ndarray  # (D, S, latent_dim)
    scores: np.ndarray  # (D,)
    ranking: np.ndarray  # (latent_dim,) all dims, most influential first
    all_scores: np.ndarray  # (latent_dim,) score per latent dim
    z0: np.ndarray  # (latent_dim,)
    sigma: np.ndarray  # (latent_dim,)
    mask: np.ndarray  # (H, W) weights used for the score

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape)

    def grid(self, gap: int = 2, background: float = 1.0) -> np.ndarray:
        """One RGB ``uint8`` mosaic: rows = dims (in ``dims`` order), columns = steps."""
        return image_grid(self.images, gap, background)

    def expression(self, model, row: int, step: int):
        """Expected expression (Series over genes) decoded at ``images[row, step]``."""
        return model.expression_from_latent(self.latents[row, step][None]).iloc[0]


def image_grid(images: np.ndarray, gap: int = 2, background: float = 1.0) -> np.ndarray:
    """(R, C, H, W, 3) float [0, 1] -> (R·(H+gap)−gap, C·(W+gap)−gap, 3) ``uint8`` mosaic."""
    R, C, H, W, _ = images.shape
    out = np.full((R * (H + gap) - gap, C * (W + gap) - gap, 3), background, np.float32)
    for r in range(R):
        for c in range(C):
            out[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = images[r, c]
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def cell_latent(model, cell: Any, index: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """A cell given as a latent vector, a :class:`CellCropDataset` (+ ``index``), a crop path or
    an RGB array -> (latent mean, soft mask or None)."""
    from ..data.cells import CellCropDataset

    d = model.latent_dim
    if isinstance(cell, np.ndarray) and cell.ndim == 1:
        if cell.shape[0] != d:
            raise InputError("cell", f"latent vector has {cell.shape[0]} dims, model has {d}")
        return cell.astype(np.float32), None
    if isinstance(cell, np.ndarray):
        cell = CellCropDataset.from_arrays([cell], size=model.config.image_size,
                                           on_empty="error")
    if isinstance(cell, CellCropDataset):
        ds = cell.resized(model.config.image_size)
        if not 0 <= index < len(ds):
            raise InputError("cell", f"cell index {index} out of range (0..{len(ds) - 1})")
        sub = ds.subset([index])
        return model.embed(sub)[0], sub.masks[0]
    ds = model._cells(cell)  # a path: one crop image (no cell -> InputError)
    if not 0 <= index < len(ds):
        raise InputError(str(cell), f"cell index {index} out of range (0..{len(ds) - 1})")
    sub = ds.subset([index])
    return model.embed(sub)[0], sub.masks[0]


def latent_traversal(model, cell: Any, *, index: int = 0, n_steps: int = 7, span: float = 3.0,
                     sigma: str | np.ndarray = "posterior", dims: Any = None,
                     top: int | None = None, order: str = "rank", batch_size: int = 128,
                     progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                     ) -> Traversal:
    """Traverse every latent dim of ``model`` (a ``BVAEModel``) around ``cell``.

    ``sigma``: ``'posterior'`` (training spread per dim), ``'prior'`` (1) or an array.
    ``dims`` restricts the dims decoded for display (all are still scored); ``top`` keeps the
    ``top`` best-ranked rows; ``order='rank'`` puts the most influential dims first, ``'index'``
    keeps latent order.
    """
    if n_steps < 2:
        raise InputError("traversal", "n_steps must be >= 2")
    if order not in ("rank", "index"):
        raise InputError("traversal", "order must be 'rank' or 'index'")
    z0, mask = cell_latent(model, cell, index)
    d = model.latent_dim
    if isinstance(sigma, str):
        if sigma not in ("posterior", "prior"):
            raise InputError("traversal", "sigma must be 'posterior', 'prior' or an array")
        sig = model.latent_sigma(sigma)
    else:
        sig = np.broadcast_to(np.asarray(sigma, np.float32), (d,)).copy()
    values = np.linspace(-span, span, n_steps).astype(np.float32)
    latents = np.repeat(z0[None, None], d, 0).repeat(n_steps, 1)  # (d, S, d)
    for j in range(d):
        latents[j, :, j] = z0[j] + values * sig[j]
    centre = model.decode(z0[None])[0]
    if mask is None:
        mask = model.decode_masks(z0[None])[0]
    w = np.asarray(mask, np.float32)
    if w.sum() <= 1e-6:
        w = np.ones_like(w)
    flat = latents.reshape(-1, d)
    imgs = []
    for i in range(0, len(flat), batch_size):
        check_cancel(cancel, "traversal")
        imgs.append(model.decode(flat[i:i + batch_size]))
        report(progress, min(i + batch_size, len(flat)), len(flat), "decoding traversal")
    images = np.concatenate(imgs).reshape(d, n_steps, *centre.shape)
    diff = np.abs(images - centre[None, None]).mean(-1)  # (d, S, H, W)
    all_scores = (diff * w).sum((-1, -2)).mean(1) / w.sum()
    ranking = np.argsort(-all_scores, kind="stable")
    if dims is None:
        rows = ranking if order == "rank" else np.arange(d)
    else:
        rows = np.asarray([int(x) for x in np.atleast_1d(dims)])
        if rows.size == 0 or rows.min() < 0 or rows.max() >= d:
            raise InputError("traversal", f"dims must be in 0..{d - 1}")
        if order == "rank":
            pos = {int(k): i for i, k in enumerate(ranking)}
            rows = np.array(sorted(rows, key=lambda k: pos[int(k)]))
    if top is not None:
        rows = rows[:max(1, int(top))]
    return Traversal(images=images[rows], dims=rows, values=values, latents=latents[rows],
                     scores=all_scores[rows], ranking=ranking, all_scores=all_scores,
                     z0=z0, sigma=sig, mask=w)


def traversal_table(trav: Traversal):
    """One row per traversed dim: rank, latent index, change score, σ."""
    import pandas as pd

    rank = {int(k): i + 1 for i, k in enumerate(trav.ranking)}
    return pd.DataFrame({"row": np.arange(len(trav.dims)), "dim": trav.dims,
                         "rank": [rank[int(k)] for k in trav.dims], "score": trav.scores,
                         "sigma": trav.sigma[trav.dims]})
