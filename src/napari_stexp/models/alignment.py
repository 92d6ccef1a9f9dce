"""Align the image β-VAE latent space to the gene VAE latent space over shared cell classes.

The user gives a class map (``image_class, gene_class`` rows, e.g. PBC ``monocyte`` ↔
``CD14+ Monocyte``; several gene classes may map to one image class and are pooled). The map
``T(z) = M z + c`` is fitted in two steps (numpy only):

1. CORAL-style second-order matching: the pooled within-class covariance of the image latents is
   whitened and re-coloured with that of the gene latents (``A = C_g^{1/2} C_i^{-1/2}``, both
   shrunk towards a scaled identity so 50-d covariances from a few hundred cells stay stable),
   around the class-balanced means.
2. First-order matching of the class means: a linear map ``W`` fitted by ridge least squares on
   the (centred, coloured) class means, shrunk towards the identity, so directions the classes
   do not span are left as CORAL put them.

``M = W A``; a cell image then decodes to an expected expression profile through the gene
decoder (``BVAEModel.expression_from_latent``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


@dataclass
class LatentAlignment:
    """Affine map image latent -> gene latent, with the fit's class groups and metrics."""

    matrix: np.ndarray  # (d_gene, d_image)
    offset: np.ndarray  # (d_gene,)
    groups: dict[str, list[str]] = field(default_factory=dict)  # image class -> gene classes
    metrics: dict = field(default_factory=dict)

    def transform(self, z: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(np.asarray(z, np.float64))
        if z.shape[1] != self.matrix.shape[1]:
            raise InputError("latent", f"expected {self.matrix.shape[1]} dims, got {z.shape[1]}")
        return (z @ self.matrix.T + self.offset).astype(np.float32)

    def to_dict(self) -> dict:
        return {"matrix": np.asarray(self.matrix).tolist(),
                "offset": np.asarray(self.offset).tolist(),
                "groups": self.groups, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, d: dict) -> LatentAlignment:
        return cls(np.asarray(d["matrix"], np.float64), np.asarray(d["offset"], np.float64),
                   dict(d.get("groups") or {}), dict(d.get("metrics") or {}))


# --------------------------------------------------------------------------- class maps


def read_class_map(src: Any):
    """A class map as ``DataFrame(image_class, gene_class)`` from a CSV path, a DataFrame, a
    dict (image class -> gene class or list of them) or a list of pairs."""
    import pandas as pd

    if isinstance(src, str | os.PathLike):
        p = Path(src)
        if not p.is_file():
            raise InputError(p, "class map file not found")
        try:
            df = pd.read_csv(p, dtype=str, skipinitialspace=True)
        except Exception as exc:
            raise InputError(p, f"cannot read class map ({exc})") from exc
        source = str(p)
    elif isinstance(src, pd.DataFrame):
        df, source = src.astype(str), "class map"
    elif isinstance(src, Mapping):
        rows = [(k, g) for k, v in src.items()
                for g in ([v] if isinstance(v, str) else list(v))]
        df, source = pd.DataFrame(rows, columns=["image_class", "gene_class"]), "class map"
    elif isinstance(src, Sequence):
        df = pd.DataFrame([tuple(r) for r in src], columns=["image_class", "gene_class"])
        source = "class map"
    else:
        raise InputError("class map", f"unsupported class map type {type(src).__name__}")
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("image_class", "gene_class") if c not in df.columns]
    if missing:
        raise InputError(source, f"class map needs columns image_class,gene_class "
                                 f"(missing: {', '.join(missing)}; found: {', '.join(df.columns)})")
    df = df[["image_class", "gene_class"]].dropna()
    df = df.apply(lambda s: s.astype(str).str.strip())
    df = df[(df["image_class"] != "") & (df["gene_class"] != "")].drop_duplicates()
    if df.empty:
        raise InputError(source, "class map has no rows")
    return df.reset_index(drop=True)


def check_class_map(cmap, image_classes: Sequence[str], gene_classes: Sequence[str],
                    source: str = "class map") -> None:
    """``InputError`` listing the known classes when the map names a class that is not there."""
    known_i, known_g = set(map(str, image_classes)), set(map(str, gene_classes))
    bad_i = sorted(set(cmap["image_class"]) - known_i)
    bad_g = sorted(set(cmap["gene_class"]) - known_g)
    problems = []
    if bad_i:
        problems.append(f"unknown image classes {bad_i} (known: {sorted(known_i)})")
    if bad_g:
        problems.append(f"unknown gene classes {bad_g} (known: {sorted(known_g)})")
    if problems:
        raise InputError(source, "class map names " + "; ".join(problems))


# --------------------------------------------------------------------------- fitting


def _shrunk_cov(groups: list[np.ndarray], shrinkage: float) -> np.ndarray:
    """Pooled within-class covariance, shrunk towards ``tr(C)/d · I``."""
    centred = np.concatenate([g - g.mean(0) for g in groups])
    d = centred.shape[1]
    dof = max(len(centred) - len(groups), 1)
    cov = centred.T @ centred / dof
    mu = np.trace(cov) / d
    cov = (1 - shrinkage) * cov + shrinkage * mu * np.eye(d)
    return cov + 1e-6 * max(mu, 1e-12) * np.eye(d)


def _sym_pow(c: np.ndarray, p: float) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    w = np.clip(w, 1e-12, None)
    return (v * w ** p) @ v.T


def fit_alignment(z_image: np.ndarray, image_labels: Sequence, z_gene: np.ndarray,
                  gene_labels: Sequence, class_map, *, ridge: float = 0.1,
                  shrinkage: float = 0.1, min_cells: int = 2) -> LatentAlignment:
    """Fit ``T(z) = M z + c`` mapping image latents to gene latents (see module doc).

    ``class_map`` is anything :func:`read_class_map` accepts; classes it names must exist in the
    labels (``InputError`` listing the known ones otherwise). Each mapped class needs at least
    ``min_cells`` cells on both sides.
    """
    zi = np.asarray(z_image, np.float64)
    zg = np.asarray(z_gene, np.float64)
    li = np.array([None if v is None else str(v) for v in image_labels], dtype=object)
    lg = np.array([str(v) for v in gene_labels], dtype=object)
    if len(li) != len(zi) or len(lg) != len(zg):
        raise InputError("alignment", "latents and labels differ in length")
    cmap = read_class_map(class_map)
    check_class_map(cmap, sorted({v for v in li if v is not None}), sorted(set(lg)))
    groups = {ic: sorted(cmap.loc[cmap["image_class"] == ic, "gene_class"].unique())
              for ic in cmap["image_class"].unique()}
    gi, gg, names = [], [], []
    for ic, gcs in groups.items():
        a, b = zi[li == ic], zg[np.isin(lg, gcs)]
        if len(a) < min_cells or len(b) < min_cells:
            raise InputError("class map", f"class {ic!r} ↔ {gcs} has {len(a)} image and "
                                          f"{len(b)} expression cells (need {min_cells} each)")
        gi.append(a)
        gg.append(b)
        names.append(ic)
    mi = np.stack([a.mean(0) for a in gi])
    mg = np.stack([b.mean(0) for b in gg])
    m_img, m_gene = mi.mean(0), mg.mean(0)
    A = _sym_pow(_shrunk_cov(gg, shrinkage), 0.5) @ _sym_pow(_shrunk_cov(gi, shrinkage), -0.5)
    U = (mi - m_img) @ A.T
    V = mg - m_gene
    d_img, d_gene = zi.shape[1], zg.shape[1]
    lam = ridge * max(float((U ** 2).sum(1).mean()), 1e-8)
    eye = np.eye(d_gene, d_img)
    W = (V.T @ U + lam * eye) @ np.linalg.inv(U.T @ U + lam * np.eye(d_img))
    M = W @ A
    c = m_gene - M @ m_img
    after = np.linalg.norm(mi @ M.T + c - mg, axis=1)
    before = np.linalg.norm(mi[:, :d_gene] - mg, axis=1) if d_img == d_gene else None
    metrics = {
        "classes": names,
        "mean_distance_after": float(after.mean()),
        "distance_after": after.tolist(),
        "n_image_cells": [len(a) for a in gi], "n_gene_cells": [len(b) for b in gg],
    }
    if before is not None:
        metrics["mean_distance_before"] = float(before.mean())
        metrics["distance_before"] = before.tolist()
    return LatentAlignment(M, c, {k: list(v) for k, v in groups.items()}, metrics)


def class_mean_distances(z_a: np.ndarray, labels_a: Sequence, z_b: np.ndarray,
                         labels_b: Sequence, class_map) -> dict[str, float]:
    """Distance between matched class means of two latent sets (for checking an alignment)."""
    cmap = read_class_map(class_map)
    la = np.array([str(v) for v in labels_a], dtype=object)
    lb = np.array([str(v) for v in labels_b], dtype=object)
    out = {}
    for ic in cmap["image_class"].unique():
        gcs = cmap.loc[cmap["image_class"] == ic, "gene_class"].unique()
        a, b = np.asarray(z_a)[la == ic], np.asarray(z_b)[np.isin(lb, gcs)]
        if len(a) and len(b):
            out[str(ic)] = float(np.linalg.norm(a.mean(0) - b.mean(0)))
    return out
