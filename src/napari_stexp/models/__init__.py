"""Trained models: architectures, their model folders and one way to open them.

``open_model(path)`` opens any napari-stexp model folder (mclSTExp expression model,
batch-agnostic classifier, β-VAE, gene VAE) by the ``format`` tag of its ``config.json``
(see :mod:`napari_stexp.models._folder`), as :func:`napari_stexp.io.open` does for data.
Importing this package is cheap: each model's module (and torch) loads on first use.

Expression (mclSTExp, :mod:`.mclstexp`)
    ``ExpressionModel``, ``MclstexpConfig``, ``train_expression_model``.
Batch-agnostic classifier (:mod:`.batch_agnostic`)
    ``BatchAgnosticClassifier``, ``ClassifierConfig``, ``train_classifier``,
    ``evaluate_classifier``.
β-VAE and gene VAE (:mod:`.betavae`, :mod:`.gene_vae`)
    ``BVAEModel``, ``BVAEConfig``, ``train_bvae``; ``FittedGeneVAE``, ``GeneVAEConfig``,
    ``fit_gene_vae``.
Model folders (:mod:`._folder`)
    ``write_model_folder``, ``read_model_folder`` -> ``ModelFolder``; ``LOADERS`` maps a
    folder's kind to the class that loads it.
"""

from __future__ import annotations

import os
from typing import Any

from .._lazy import lazy_exports

_LAZY, __getattr__, __dir__ = lazy_exports(__name__, {
    ".mclstexp": ("ExpressionModel", "MclstexpConfig", "train_expression_model"),
    ".batch_agnostic": ("BatchAgnosticClassifier", "ClassifierConfig", "train_classifier",
                        "evaluate_classifier"),
    ".betavae": ("BVAEModel", "BVAEConfig", "train_bvae"),
    ".gene_vae": ("FittedGeneVAE", "GeneVAEConfig", "fit_gene_vae"),
    "._folder": ("write_model_folder", "read_model_folder", "ModelFolder"),
})

#: model kind (the tag ``napari-stexp/<kind>``) -> (module, class) whose ``load`` opens it
LOADERS = {
    "mclstexp": ("napari_stexp.models.mclstexp", "ExpressionModel"),
    "batch-agnostic-classifier": ("napari_stexp.models.batch_agnostic",
                                  "BatchAgnosticClassifier"),
    "bvae": ("napari_stexp.models.betavae", "BVAEModel"),
    "gene-vae": ("napari_stexp.models.gene_vae", "FittedGeneVAE"),
}


def open_model(path: str | os.PathLike, device: Any = "auto", *, kind: str | None = None
               ) -> Any:
    """Open the model folder at ``path`` on ``device`` (``"auto"``: cuda, mps, then cpu).

    ``kind`` (e.g. ``"mclstexp"``): the kind the caller can use; a folder of another kind is
    refused with an InputError naming both. Folders written by older versions still open; a
    folder of a newer format version, a tampered or truncated weights file, or one holding
    Python objects other than tensors is refused with a one-line InputError.
    """
    import importlib

    from ._folder import read_model_folder

    folder = read_model_folder(path, kind)
    module, cls = LOADERS[folder.kind]
    loader = getattr(importlib.import_module(module), cls)
    if str(device) == "auto":
        from ..training.device import get_device

        device = str(get_device("auto"))
    return loader.load(folder.path, device=device)


__all__ = ["LOADERS", "open_model", *_LAZY]
