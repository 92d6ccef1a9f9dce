"""THE fixed colours of named classes (hex strings; no napari, no Qt).

Pathologist labels (her2st) and VOC box classes (BCCD) always get the same colour, in the
loader's spots and boxes, the classifier's maps and the explorer's scatter. Other names take
the next free colour of a 20-colour palette in sorted-name order (so two views of the same
classes agree whatever order they list them in). The napari-facing helpers are in
:mod:`napari_stexp.viewer.palettes`; this table sits in ``io`` so readers can use it.
"""

from __future__ import annotations

from collections.abc import Iterable

#: her2st pathologist labels (and the names the classifier predicts).
LABEL_COLORS = {
    "invasive cancer": "#d62728",
    "cancer in situ": "#ff7f0e",
    "immune infiltrate": "#9467bd",
    "breast glands": "#1f77b4",
    "connective tissue": "#2ca02c",
    "adipose tissue": "#e6c619",
    "undetermined": "#8c8c8c",
}
#: VOC box classes (BCCD smears) and the PBC white-cell types.
BOX_COLORS = {
    "WBC": "#ff3b30",
    "RBC": "#34c3ff",
    "Platelets": "#ffd60a",
    "neutrophil": "#e377c2",
    "eosinophil": "#ff7f0e",
    "basophil": "#9467bd",
    "lymphocyte": "#17becf",
    "monocyte": "#bcbd22",
    "ig": "#8c564b",
    "erythroblast": "#d62728",
    "platelet": "#ffd60a",
}
#: Missing / unknown / unselected.
MISSING = "#737373"
MISSING_NAMES = frozenset({"unknown", "nan", "none", "", "unselected", "missing"})
#: Free colours for other names (tab20-like, ordered for contrast).
SPARE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
         "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
         "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939"]
FIXED = {**LABEL_COLORS, **BOX_COLORS}


def color_map(names: Iterable, fixed: dict[str, str] | None = None) -> dict[str, str]:
    """``{name: hex colour}`` for ``names``: the fixed colour of a known name, grey for
    missing ones, else the next spare colour not used by a known name (sorted-name order)."""
    fixed = FIXED if fixed is None else fixed
    names = list(dict.fromkeys(str(n) for n in names))
    out = {n: fixed[n] for n in names if n in fixed}
    out.update({n: MISSING for n in names if n not in out and n.lower() in MISSING_NAMES})
    used = set(out.values())
    free = [c for c in SPARE if c not in used]
    for i, n in enumerate(sorted(n for n in names if n not in out)):
        out[n] = free[i % len(free)] if free else SPARE[i % len(SPARE)]
    return out
