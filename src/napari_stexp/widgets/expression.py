"""Expression dock widget (mclSTExp): train or load a model, predict sections or an H&E-only
slide, and browse predicted gene maps.

The work is done by Qt-free functions in :mod:`napari_stexp.viewer.results`
(:func:`predict_for_sections`, :func:`predict_for_slide`, :func:`gene_layer_tuples`,
:func:`confidence_layer_tuple`, re-exported here) that tests call directly; the widget
runs training/prediction in napari worker threads (progress bar, cancel) and applies layers in
the main thread. Layers per section ``S``:

- ``"S mclSTExp"``: spots coloured by retrieval confidence; ``features`` carry the confidence
  and the image embeddings (``mclstexp_0`` …), which also go to the session for the explorer;
- ``"S predicted"``: the chosen gene's prediction; ``"S measured"``: the measured values (when
  the section has counts), placed beside the prediction with the *same* contrast limits.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QCompleter,
    QHBoxLayout,
    QLabel,
    QLineEdit,
)

from ..models.mclstexp_config import PRESETS, MclstexpConfig
from ..session import EmbeddingRef
from ..viewer.results import (
    EMBED_PREFIX,
    SectionPrediction,
    confidence_layer_tuple,
    gene_layer_tuples,
    gene_limits,
    predict_for_sections,
    predict_for_slide,
)
from ._common import notify_error
from ._model_widget import SLIDE_PREFIX, ModelWidget
from ._tooltips import tip

__all__ = ["EMBED_PREFIX", "SLIDE_PREFIX", "ExpressionWidget", "SectionPrediction",
           "confidence_layer_tuple", "gene_layer_tuples", "gene_limits", "predict_for_sections",
           "predict_for_slide"]


def _train_job(adatas, images, kw, progress, cancel):
    from ..models.mclstexp import resolve_mode, train_expression_model

    kw = {**kw, "mode": resolve_mode(kw.get("mode", "auto"), kw.get("device", "auto"))}
    add, tissue = kw.pop("add_genes", None), kw.pop("tissue", "breast")
    how = "user panel"
    if kw.get("genes") is None and kw.get("top_genes") is None:
        from ..data.panels import default_panel  # the CLI's default panel

        kw["genes"], how = default_panel(adatas, add_genes=add, tissue=tissue)
    model = train_expression_model(adatas, images=images, progress=progress, cancel=cancel,
                                   **kw)
    model.provenance["panel"] = how
    return model


def _load_job(path):
    from ..models import open_model

    return open_model(path, "cpu", kind="mclstexp")


def _predict_job(model, adatas, images, slide, progress, cancel, device="auto"):
    if slide is not None:
        name, pyr = slide
        return [predict_for_slide(model, pyr, name, progress=progress, cancel=cancel,
                                  device=device)]
    return predict_for_sections(model, adatas, images, progress=progress, cancel=cancel,
                                device=device)


class ExpressionWidget(ModelWidget):
    """Train/load mclSTExp, predict sections or a slide, show gene maps (searchable gene box)."""

    CONFIG = MclstexpConfig
    FORM = ("mode", "backbone", "weights", "epochs", "input_size", "batch_size",
            "smooth_neighbours")
    PRESETS = PRESETS
    SESSION_KEY = "mclstexp"
    KIND = "expression"
    SECTIONS_LABEL = "Training sections (ST with H&E):"
    ACTION = "Predict"
    RUN_LABEL = "predicting"
    TRAIN_PHASES = 3  # patch features, epochs, reference embeddings
    _train_job = staticmethod(_train_job)
    _load_job = staticmethod(_load_job)
    _predict_job = staticmethod(_predict_job)

    def _build_form_extra(self, form):
        self.mode, self.backbone, self.weights = (self.field(k) for k in
                                                  ("mode", "backbone", "weights"))
        self.epochs, self.input_size, self.batch, self.smooth = (
            self.field(k) for k in ("epochs", "input_size", "batch_size", "smooth_neighbours"))
        # "auto" (the CLI's default too): finetune on a GPU, cached on a CPU
        self.mode.insertItem(0, "auto")
        self.mode.setCurrentIndex(0)
        from ..data.panels import TISSUE_MARKERS

        self.add_genes = QLineEdit()
        self.add_genes.setPlaceholderText("add genes, e.g. ERBB2,ESR1")
        self.add_genes.setToolTip(tip("genes"))
        self.tissue = QComboBox()
        self.tissue.addItems(list(TISSUE_MARKERS))
        self.tissue.setToolTip(tip("tissue"))
        form.addRow("gene panel +", self.add_genes)
        form.addRow("tissue markers", self.tissue)

    def _build_results(self, lay):
        self.predict_btn = self.action_btn
        grow = QHBoxLayout()
        self.gene_box = QLineEdit()
        self.gene_box.setPlaceholderText("gene (type to search)")
        self.gene_box.setToolTip(tip("expression.gene"))
        self.completer = QCompleter([])
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.gene_box.setCompleter(self.completer)
        self.pcc_label = QLabel("PCC: –")
        grow.addWidget(self.gene_box, 1)
        grow.addWidget(self.pcc_label)
        lay.addLayout(grow)
        self.gene_box.returnPressed.connect(lambda: self.show_gene(self.gene_box.text()))
        self.completer.activated.connect(self.show_gene)

    # ---------------------------------------------------------------- running
    def train_options(self) -> dict:
        add = self.add_genes.text().strip()
        return {**self.form_options(), "add_genes": add or None,
                "tissue": self.tissue.currentText()}

    def make_train_args(self, overrides: dict) -> tuple:
        return ({**self.train_options(), **overrides},)

    def on_model(self, model) -> None:
        self.completer = QCompleter(list(model.genes))
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.completer.activated.connect(self.show_gene)
        self.gene_box.setCompleter(self.completer)
        h = model.history
        loss = f", final loss {h[-1]['loss']:.3f}" if h else ""
        self.status.setText(f"model ready: {len(model.genes)} genes, "
                            f"{len(model.reference.embeddings)} reference spots{loss}")

    def predict(self, target: str | None = None):
        """Predict the chosen section or slide in a worker; returns the worker."""
        return self.run_on(target)

    def on_results(self, preds) -> None:
        self._on_predicted(preds)

    def _on_predicted(self, preds: list[SectionPrediction]):
        from ._common import add_layer_tuples

        for p in preds:
            self.predictions[p.name] = p
            self._set_layer(confidence_layer_tuple(p), add_layer_tuples)
            self.session.add_embedding(EmbeddingRef(
                name=f"mclstexp {p.name}", layer=f"{p.name} mclSTExp", data=p.embeddings,
                source="mclstexp"))
        note = " (section is in the training reference: optimistic)" if any(
            p.in_reference for p in preds) else ""
        protos = sorted({p.protocol for p in preds if p.protocol and not p.in_reference})
        if protos:
            note += f"; PCC protocol: {', '.join(protos)}"
        self.status.setText(f"predicted {', '.join(p.name for p in preds)}{note}")
        gene = self.gene_box.text().strip() or (self.model.genes[0] if self.model else "")
        if gene:
            self.show_gene(gene)

    def _set_layer(self, tup, add):
        """Add the layer, or update the existing one of that name in place."""
        data, meta, _ = tup
        name = meta["name"]
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            layer.features = meta["features"]
            layer.size = meta["size"]
            layer.metadata = meta.get("metadata", {})
            if "translate" in meta:
                layer.translate = meta["translate"]
            layer.face_colormap = meta["face_colormap"]
            layer.face_color = meta["face_color"]
            layer.face_contrast_limits = meta["face_contrast_limits"]
            layer.refresh_colors(update_color_mapping=False)
            return layer
        return add(self.viewer, [tup])[0]

    def show_gene(self, gene: str, section: str | None = None):
        """Show ``gene`` for ``section`` (default: the latest prediction); returns the layers."""
        from ._common import add_layer_tuples

        gene = str(gene).strip()
        if not self.predictions:
            notify_error("predict a section or slide first")
            return []
        pred = self.predictions.get(section) if section else list(self.predictions.values())[-1]
        if pred is None:
            notify_error(f"{section}: not predicted yet")
            return []
        if gene not in pred.genes:
            match = [g for g in pred.genes if g.lower() == gene.lower()]
            if not match:
                notify_error(f"{gene}: not in the model's gene panel")
                return []
            gene = match[0]
        self.gene_box.setText(gene)
        layers = [self._set_layer(t, add_layer_tuples) for t in gene_layer_tuples(pred, gene)]
        self.show_with_slide(pred.name, layers)
        i = pred.genes.index(gene)
        if pred.pcc is not None and np.isfinite(pred.pcc[i]):
            self.pcc_label.setText(f"PCC: {pred.pcc[i]:.3f}")
        else:
            self.pcc_label.setText("PCC: –")
        return layers
