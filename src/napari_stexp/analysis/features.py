"""Feature resolution for display (no Qt): the values of a named feature for every spot.

One place answers "what number does the viewer show for ``column`` at this spot": an ``obs``
column, a predicted gene, a measured gene or an embedding dimension. A measured gene is always
:func:`napari_stexp.data.genes.expression_transform` with the display library
(:data:`~napari_stexp.data.genes.DISPLAY_LIBRARY`, the sequencing library), so the expression
widget, the navigator and the explorer show the same number for the same gene of the same spot.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..data.genes import DISPLAY_LIBRARY, Library, measured_expression
from ..io.spatial import counts_matrix

__all__ = ["gene_column", "gene_expression", "resolve_feature"]


def gene_expression(adata, gene: str, transform: str = "log1p", *,
                    library: Library = DISPLAY_LIBRARY) -> np.ndarray:
    """One gene per spot: log1p CP10k over ``library`` (``transform='log1p'``) or raw counts.

    KeyError when the gene is not in ``adata.var_names``."""
    if gene not in adata.var_names:
        raise KeyError(gene)
    if transform == "raw":
        col = counts_matrix(adata)[:, int(adata.var_names.get_loc(gene))]
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        return np.asarray(col, np.float32).ravel()
    return measured_expression(adata, [gene], library=library)[:, 0]


def gene_column(ad, gene: str, layer_key: str | None = None) -> np.ndarray:
    """One gene for all obs: :func:`gene_expression` (display library), or the AnnData layer
    ``layer_key`` as stored; NaN when the gene is absent."""
    if gene not in ad.var_names:
        return np.full(ad.n_obs, np.nan, np.float32)
    if layer_key is None:
        return gene_expression(ad, gene)
    col = ad.layers[layer_key][:, int(ad.var_names.get_loc(gene))]
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return np.asarray(col, np.float32).ravel()


_OBSM_DIM = re.compile(r"^(?P<key>.+?)(?:\[(?P<i1>\d+)\]|[_ ](?P<i2>\d+))$")
_PREDICTED = re.compile(r"^(?:(?P<g1>.+) \(predicted\)|predicted[:_ ](?P<g2>.+))$")


def resolve_feature(adata, column: str, spec: dict | None = None) -> tuple[np.ndarray, dict] | None:
    """Values of ``column`` for every spot of ``adata``, and how they were found (``spec``).

    Tried in order (or as ``spec`` says): an ``obs`` column; a predicted gene
    (``"<gene> (predicted)"``/``"predicted:<gene>"`` from ``layers['predicted']`` or
    ``obsm['predicted']``); a measured gene (log1p CP10k over the display library unless ``spec``
    says ``transform='raw'``); an embedding dimension ``"X_<model>_<i>"``/``"X_<model>[i]"`` (also
    without the ``X_``). None when the slide has no such feature -- the caller says so.
    """
    spec = dict(spec or {})
    kind = spec.get("type")
    if kind in (None, "obs") and column in adata.obs.columns:
        return adata.obs[column].to_numpy(), {"type": "obs"}
    if kind in (None, "predicted"):
        m = _PREDICTED.match(column)
        gene = spec.get("gene") or (m and (m.group("g1") or m.group("g2")))
        if gene:
            vals = _predicted_values(adata, gene)
            if vals is not None:
                return vals, {"type": "predicted", "gene": gene}
    if kind in (None, "gene") and column in adata.var_names:
        transform = spec.get("transform", "log1p")
        return gene_expression(adata, column, transform), {"type": "gene",
                                                           "transform": transform}
    if kind in (None, "obsm"):
        key, dim = spec.get("key"), spec.get("dim")
        if key is None:
            m = _OBSM_DIM.match(column)
            if m:
                key, dim = m.group("key"), int(m.group("i1") or m.group("i2"))
        if key is not None:
            for k in (key, f"X_{key}"):
                if k in adata.obsm:
                    arr = adata.obsm[k]
                    arr = arr.to_numpy() if isinstance(arr, pd.DataFrame) else np.asarray(arr)
                    if arr.ndim == 2 and int(dim) < arr.shape[1]:
                        return arr[:, int(dim)].astype(np.float32), {"type": "obsm", "key": k,
                                                                     "dim": int(dim)}
    return None


def _predicted_values(adata, gene: str) -> np.ndarray | None:
    if "predicted" in adata.layers and gene in adata.var_names:
        col = adata.layers["predicted"][:, int(adata.var_names.get_loc(gene))]
        col = col.toarray() if hasattr(col, "toarray") else col
        return np.asarray(col, dtype=np.float32).ravel()
    pred = adata.obsm["predicted"] if "predicted" in adata.obsm else None
    if isinstance(pred, pd.DataFrame) and gene in pred.columns:
        return pred[gene].to_numpy(dtype=np.float32)
    return None
