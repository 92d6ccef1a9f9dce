"""Trajectories between two cells in the β-VAE latent space, decoded to images and (when the
model is aligned to a gene VAE) to expression trends.

``method='linear'`` interpolates the two latent means. ``method='gp'`` follows the data: the
training latents nearest the segment are projected onto it (position ``t`` in [0, 1]) and a
Gaussian process (RBF in ``t``, endpoints pinned) regresses their offset from the straight line,
so the path bends through the populated part of the latent space (as the reference does for
progenitor → mature cells) instead of cutting through empty regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .traversal import cell_latent


@dataclass
class Trajectory:
    t: np.ndarray  # (S,) positions in [0, 1]
    latents: np.ndarray  # (S, latent_dim)
    images: np.ndarray  # (S, H, W, 3)
    expression: Any = None  # DataFrame steps × genes (log-normalised), or None
    method: str = "linear"

    def top_genes(self, n: int = 10) -> list[str]:
        """Genes whose expected expression changes most along the path."""
        if self.expression is None:
            return []
        return top_changing_genes(self.expression, n)


def top_changing_genes(expression, n: int = 10) -> list[str]:
    rng = expression.max(0) - expression.min(0)
    return [str(g) for g in rng.sort_values(ascending=False).index[:n]]


def gp_path(a: np.ndarray, b: np.ndarray, t: np.ndarray, reference: np.ndarray, *,
            n_neighbours: int = 50, length_scale: float = 0.25, noise: float = 0.1
            ) -> np.ndarray:
    """Latent points at ``t`` on a GP-smoothed path from ``a`` to ``b`` through ``reference``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ref = np.asarray(reference, np.float64)
    u = b - a
    L2 = float(u @ u)
    line = a[None] + t[:, None] * u[None]
    if L2 <= 1e-12 or len(ref) == 0:
        return line.astype(np.float32)
    tj = np.clip((ref - a) @ u / L2, 0.0, 1.0)
    resid = ref - (a[None] + tj[:, None] * u[None])
    near = np.argsort(np.linalg.norm(resid, axis=1))[:max(1, n_neighbours)]
    tj, resid = tj[near], resid[near]
    # pin the endpoints: zero offset at t = 0 and 1 with (almost) no noise
    tt = np.concatenate([[0.0, 1.0], tj])
    rr = np.concatenate([np.zeros((2, len(a))), resid])
    nn = np.concatenate([[1e-6, 1e-6], np.full(len(tj), noise)])

    def k(x, y):
        return np.exp(-0.5 * (x[:, None] - y[None]) ** 2 / length_scale ** 2)

    K = k(tt, tt) + np.diag(nn)
    alpha = np.linalg.solve(K, rr)
    return (line + k(t, tt) @ alpha).astype(np.float32)


def latent_trajectory(model, start: Any, end: Any, *, n_steps: int = 10, method: str = "linear",
                      reference: np.ndarray | None = None, start_index: int = 0,
                      end_index: int = 0, n_neighbours: int = 50, length_scale: float = 0.25,
                      noise: float = 0.1) -> Trajectory:
    """Path from ``start`` to ``end`` (latent vectors, datasets + indices, crop paths or RGB
    arrays), decoded to images and, when the model is aligned, expression (steps × genes).

    ``method='gp'`` needs ``reference`` latents (e.g. the training cells' embedding).
    """
    import pandas as pd

    if n_steps < 2:
        raise InputError("trajectory", "n_steps must be >= 2")
    a, _ = cell_latent(model, start, start_index)
    b, _ = cell_latent(model, end, end_index)
    t = np.linspace(0.0, 1.0, n_steps)
    if method == "linear":
        z = (a[None] + t[:, None] * (b - a)[None]).astype(np.float32)
    elif method == "gp":
        if reference is None:
            raise InputError("trajectory", "method 'gp' needs reference latents (embedded cells)")
        z = gp_path(a, b, t, reference, n_neighbours=n_neighbours, length_scale=length_scale,
                    noise=noise)
    else:
        raise InputError("trajectory", f"unknown method {method!r} (use 'linear' or 'gp')")
    images = model.decode(z)
    expr = None
    if getattr(model, "has_expression", False):
        expr = model.expression_from_latent(z)
        expr.index = pd.Index(np.arange(n_steps), name="step")
    return Trajectory(t=t, latents=z, images=images, expression=expr, method=method)
