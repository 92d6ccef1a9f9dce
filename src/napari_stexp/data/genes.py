"""Gene panels and expression targets for the expression model.

- A panel is an ordered list of gene names: a user list (names or a file), the top-N highly
  variable genes of the training sections, or the her2st 785-gene panel
  (``her_hvg_cut_1000.npy``, read with ``allow_pickle=False``).
- :func:`expression_transform` is THE expression transform of the package: per-spot
  library-size normalisation to ``1e4`` followed by ``log1p`` (log1p CP10k). The library is an
  explicit argument: ``"all"`` (every gene of the section, the sequencing library: what the
  viewer shows as "measured", :data:`DISPLAY_LIBRARY`) or ``"panel"`` (only the panel genes, as
  the mclSTExp reference does after subsetting, so a spot's targets do not depend on genes outside
  the panel: the model targets, :func:`panel_targets`).
- Every section must contain every panel gene: a missing gene is an :class:`InputError` naming
  the section, never a silent zero column.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..io.spatial import counts_matrix

TARGET_SUM = 1e4
Library = Literal["panel", "all"]
#: the library of every "measured" value the viewer shows (expression widget, navigator, explorer)
DISPLAY_LIBRARY: Library = "all"


def expression_transform(counts, *, library: Library, panel: Sequence[str] | None = None,
                         var_names: Sequence[str] | None = None,
                         target_sum: float = TARGET_SUM) -> np.ndarray:
    """log1p(CP10k): ``log1p(counts / library size * target_sum)``, dense float32 ``(n, G)``.

    ``counts`` is ``(n_spots, n_genes)`` (dense or sparse) with columns ``var_names``. The output
    columns are ``panel`` (looked up in ``var_names``), or every column when ``panel`` is None.
    ``library`` says what the library size sums over: ``"all"`` = every column of ``counts``,
    ``"panel"`` = the output columns only. A spot with an empty library gets zeros.
    """
    if library not in ("panel", "all"):
        raise ValueError(f"library must be 'panel' or 'all', got {library!r}")
    X = counts if sp.issparse(counts) else np.asarray(counts)
    if panel is not None:
        if var_names is None:
            raise ValueError("var_names are needed to pick the panel columns")
        pos = {str(g): i for i, g in enumerate(var_names)}
        missing = [g for g in panel if str(g) not in pos]
        if missing:
            raise InputError(None, f"{len(missing)} genes not in the counts: "
                                   f"{', '.join(map(str, missing[:8]))}")
        idx = np.array([pos[str(g)] for g in panel], dtype=np.int64)
        sel = X[:, idx]
    else:
        sel = X
    sel = sel.toarray() if sp.issparse(sel) else np.asarray(sel)
    sel = sel.astype(np.float32, copy=False)
    src = X if library == "all" else sel
    lib = np.asarray(src.sum(axis=1), dtype=np.float32).reshape(-1, 1)
    lib[lib == 0] = 1.0
    return np.log1p(sel / lib * np.float32(target_sum)).astype(np.float32, copy=False)


def measured_expression(adata, genes: Sequence[str] | None = None, *, library: Library,
                        target_sum: float = TARGET_SUM) -> np.ndarray:
    """:func:`expression_transform` of an AnnData's raw counts (``layers['counts']`` else ``X``)
    for ``genes`` (all genes when None), ``(n_obs, G)`` float32."""
    return expression_transform(counts_matrix(adata), library=library, panel=genes,
                                var_names=[str(g) for g in adata.var_names],
                                target_sum=target_sum)


def load_gene_file(path: str | os.PathLike) -> list[str]:
    """Genes from ``.npy`` (string array, no pickles), or text/CSV (one per line or comma list)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(p, "gene list file not found")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:
            raise InputError(p, f"cannot read gene list ({type(exc).__name__}: {exc}); "
                                "expected a numpy array of strings") from exc
        if arr.dtype.kind not in "US":
            raise InputError(p, f"expected an array of gene names, got dtype {arr.dtype}")
        genes = [str(g) for g in arr.ravel()]
    else:
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or "\0" in text:
            raise InputError(p, "not a text gene list (binary content); expected one gene per "
                                "line, a comma list or a .npy array of strings")
        genes = [g.strip().strip('"') for line in text.splitlines()
                 for g in line.replace("\t", ",").split(",")]
        genes = [g for g in genes if g and not g.startswith("#")]
        if genes and genes[0].lower() in ("gene", "genes", "symbol", "gene_name"):
            genes = genes[1:]
    genes = list(dict.fromkeys(genes))
    if not genes:
        raise InputError(p, "gene list is empty")
    return genes


def parse_genes(value: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    """``None``, a list of names, a file path or a comma-separated string -> list of names."""
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        s = str(value)
        if Path(s).expanduser().is_file():
            return load_gene_file(s)
        genes = [g.strip() for g in s.split(",") if g.strip()]
    else:
        genes = [str(g) for g in value]
    genes = list(dict.fromkeys(genes))
    if not genes:
        raise InputError(str(value), "no genes given")
    return genes


def shared_genes(adatas: Mapping[str, Any]) -> list[str]:
    """Genes present in every section (order of the first section); InputError if none."""
    if not adatas:
        raise InputError(None, "no sections given")
    names = list(adatas)
    common = list(adatas[names[0]].var_names)
    for n in names[1:]:
        have = set(adatas[n].var_names)
        common = [g for g in common if g in have]
    if not common:
        raise InputError(", ".join(names), "the sections share no gene names (check that they "
                                           "use the same gene identifiers, e.g. symbols vs "
                                           "Ensembl ids)")
    return common


def check_panel(adatas: Mapping[str, Any], panel: Sequence[str], source: Any = None) -> None:
    """Raise :class:`InputError` if any section lacks panel genes (names the section)."""
    for name, adata in adatas.items():
        have = set(adata.var_names)
        missing = [g for g in panel if g not in have]
        if not missing:
            continue
        what = f"section {name}" + (f" (for {source})" if source else "")
        if len(missing) == len(panel):
            raise InputError(what, f"shares none of the {len(panel)} panel genes "
                                   f"(e.g. {', '.join(list(panel)[:3])})")
        more = f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
        raise InputError(what, f"{len(missing)} of {len(panel)} panel genes missing: "
                               f"{', '.join(missing[:8])}{more}")


def top_variable_genes(adatas: Mapping[str, Any], n: int, min_spot_fraction: float = 0.05,
                       candidates: Sequence[str] | None = None) -> list[str]:
    """The ``n`` genes with the highest variance of log-normalised expression, pooled over
    sections, among genes shared by all sections (and in ``candidates``, e.g. the genes held-out
    sections have too) and detected in ``min_spot_fraction`` of spots.

    Why pooled variance of log1p(CP10k) and not a dispersion model: with a few hundred spots per
    section it is stable, cheap and close to what the reference's HVG panels select.
    """
    genes = shared_genes(adatas)
    if candidates is not None:
        cand = set(candidates)
        genes = [g for g in genes if g in cand]
        if not genes:
            raise InputError(", ".join(adatas), "no candidate gene is shared by the sections")
    if n <= 0:
        raise InputError(None, f"top genes must be positive, got {n}")
    blocks, detected = [], []
    for adata in adatas.values():
        sub = counts_matrix(adata[:, genes])
        blocks.append(expression_transform(sub, library="panel"))
        det = (sub > 0).sum(axis=0)
        detected.append(np.asarray(det).ravel())
    X = np.concatenate(blocks, axis=0)
    frac = np.sum(detected, axis=0) / X.shape[0]
    var = X.var(axis=0)
    var[frac < min_spot_fraction] = -1.0
    order = np.argsort(-var, kind="stable")[: min(n, len(genes))]
    return [genes[i] for i in order if var[i] > 0] or [genes[i] for i in order]


def resolve_panel(adatas: Mapping[str, Any], genes: Sequence[str] | None = None,
                  top_genes: int | None = None, default_top: int = 1000) -> list[str]:
    """A user panel (checked against every section) or the top-N variable genes."""
    if genes is not None:
        panel = list(dict.fromkeys(str(g) for g in genes))
        check_panel(adatas, panel)
        return panel
    shared_genes(adatas)  # raises when the sections share nothing
    return top_variable_genes(adatas, top_genes or default_top)


def panel_counts(adata, panel: Sequence[str], source: Any = None) -> np.ndarray:
    """Raw counts of the panel genes, dense float32 ``(n_spots, n_genes)``."""
    check_panel({source or _section_name(adata): adata}, panel)
    X = counts_matrix(adata[:, list(panel)])
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    return X.astype(np.float32, copy=False)


def panel_targets(adata, panel: Sequence[str], target_sum: float = TARGET_SUM,
                  source: Any = None, *, library: Library) -> np.ndarray:
    """Model targets: :func:`expression_transform` of the panel genes, ``(n, G)`` float32
    (``library='panel'`` for the mclSTExp targets); InputError names a section that
    lacks panel genes."""
    check_panel({source or _section_name(adata): adata}, panel)
    return measured_expression(adata, list(panel), library=library, target_sum=target_sum)


def _section_name(adata) -> str:
    if "section" in adata.obs and adata.n_obs:
        return str(adata.obs["section"].iloc[0])
    return "AnnData"
