"""Tooltips of the dock widgets, in one place (micro-sam's habit).

Config options take their tooltip from the config field's help text
(``models/_options.option``), so the widget and the CLI say the same thing; this module holds
the rest (lists, buttons, controls that are not config options).
"""

from __future__ import annotations

TOOLTIPS: dict[str, str] = {
    # trained-model widgets (widgets/_model_widget.py)
    "preset": "a named option set: 'tiny'/'quick' trains in seconds on a CPU (a first look, "
              "not results); choosing it fills the form, which you can then edit",
    "train": "train on the checked sections (in the background; Cancel stops it)",
    "load": "open a model folder written by Save model… or the CLI",
    "save": "write the model into a new folder",
    "cancel": "stop the running job (reported as cancelled)",
    "genes": "extra genes for the panel, comma-separated (e.g. ERBB2,ESR1); the default panel "
             "is the her2st 785-gene panel (else the top variable genes) plus the tissue's "
             "markers present in the data",
    "tissue": "tissue type whose marker genes are added to the panel by default",
    # loader
    "loader.mpp": "µm per pixel of the image, when the file does not say (JPEG/PNG) or says "
                  "wrong; leave at 'from the file' otherwise. Unknown µm/px is said in the "
                  "status line",
    # expression widget
    "expression.sections": "check the sections to train on",
    "expression.target": "a section (measured values shown beside) or an H&E-only slide",
    "expression.gene": "gene to show (type to search)",
    # classifier widget
    "classify.sections": "check the sections to train on: sections with counts train the gene "
                         "encoder, sections with H&E + labels the classifier",
    "classify.target": "a section (spots) or an H&E slide (patch grid over tissue)",
    "classify.threshold": "fade patches whose top-class probability is below this (they stay "
                          "visible, faintly, so the threshold shows on the canvas)",
}


def tip(key: str) -> str:
    return TOOLTIPS[key]
