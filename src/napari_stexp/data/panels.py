"""The ONE default gene panel for expression models (widget and CLI, issue 17.5).

Default = a base panel (the her2st 785-gene panel when the sections come from a her2st folder
and all have it, else the top variable genes) + the tissue's marker genes present in every
section + the genes the user names. The 785-gene panel lacks ERBB2, ESR1, PGR, MKI67, KRT19 and
EPCAM, so without the markers a HER2+ user could not see HER2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Marker genes added by default, per tissue type ("none": no markers).
TISSUE_MARKERS: dict[str, tuple[str, ...]] = {
    "breast": ("ERBB2", "ESR1", "PGR", "MKI67", "KRT19", "EPCAM"),
    "none": (),
}
HER2ST_PANEL_FILE = "her_hvg_cut_1000.npy"
DEFAULT_TOP = 1000


def _her2st_root(adatas: Mapping[str, Any], paths: Sequence[str | os.PathLike] | None):
    """The her2st folder the sections come from (from the CLI paths, else from each section's
    ``source_image_path``), or None."""
    from ..io.her2st import find_her2st_root
    from ..io.spatial import spatial_info

    cands: list[Path] = [Path(p) for p in (paths or [])]
    if not cands:
        for a in adatas.values():
            try:
                src = spatial_info(a)["metadata"].get("source_image_path")
            except Exception:  # noqa: BLE001 - a section without spatial metadata
                src = None
            if src:
                cands.extend(list(Path(src).parents)[:4])
    if paths:  # the CLI: only when every path is a her2st folder
        try:
            roots = [find_her2st_root(c) for c in cands]
        except Exception:  # noqa: BLE001 - a path that is not her2st: no her2st panel
            return None
        return roots[0] if (roots[0] / HER2ST_PANEL_FILE).is_file() else None
    for c in cands:
        try:
            root = find_her2st_root(c)
        except Exception:  # noqa: BLE001 - not a her2st folder: try the next candidate
            continue
        if (root / HER2ST_PANEL_FILE).is_file():
            return root
    return None


def default_panel(adatas: Mapping[str, Any], *, paths: Sequence | None = None,
                  add_genes: Sequence[str] | str | None = None, tissue: str = "breast",
                  top_genes: int | None = None) -> tuple[list[str], str]:
    """``(panel, how)``: the base panel + the tissue's markers present in every section + the
    user's ``add_genes`` (each must be in every section). ``top_genes`` forces the top-N
    variable genes as the base."""
    from ..data.genes import (
        check_panel,
        load_gene_file,
        parse_genes,
        shared_genes,
        top_variable_genes,
    )
    from ..errors import InputError

    if tissue not in TISSUE_MARKERS:
        raise InputError("tissue", f"unknown tissue '{tissue}' (choose from "
                                   f"{', '.join(TISSUE_MARKERS)})")
    shared = set(shared_genes(adatas))
    base: list[str] | None = None
    how = ""
    root = None if top_genes else _her2st_root(adatas, paths)
    if root is not None:
        # a corrupt or pickled panel, or a panel gene missing from a section, is an error:
        # never a silent switch to another panel (issue 16)
        path = root / HER2ST_PANEL_FILE
        panel = load_gene_file(path)
        check_panel(adatas, panel, source=path)
        base, how = list(panel), f"her2st panel ({len(panel)} genes, {HER2ST_PANEL_FILE})"
    if base is None:
        n = top_genes or DEFAULT_TOP
        base, how = top_variable_genes(adatas, n), f"top {n} variable genes"
    markers = [g for g in TISSUE_MARKERS[tissue] if g in shared and g not in base]
    extra = (parse_genes(add_genes) or []) if add_genes else []
    if extra:
        check_panel(adatas, extra, "--add-genes")
    panel = list(dict.fromkeys([*base, *markers, *extra]))
    if markers:
        how += f" + {tissue} markers ({', '.join(markers)})"
    if extra:
        how += f" + {len(extra)} named gene(s)"
    return panel, how
