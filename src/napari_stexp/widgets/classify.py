"""Tissue-classification dock widget (ST-guided, batch-agnostic): train or load a model,
classify an H&E slide (patch grid over tissue) or ST sections, hide uncertain patches.

Qt-free functions in :mod:`napari_stexp.viewer.results` (:func:`classify_slide_layers`,
:func:`classify_section_layers`, :func:`class_layer_tuples`, :func:`apply_threshold`, re-exported
here) and :func:`~napari_stexp.viewer.palettes.legend_html` do the work and tests call them
directly; the widget runs training/classification in napari workers (progress bar,
cancel) and touches layers in the main thread only. Layers per slide/section ``S``:

- ``"S classes"``: Points coloured by class (fixed categorical colours, legend in the widget);
  ``features``: ``batch_agnostic_class``, ``confidence``, ``proba: <class>`` per class,
  ``patient``, ``section``, ``label`` (when known), ``shown`` and the embedding columns
  (``img_0`` …, ``gene_0`` …);
- ``"S confidence"``: the same points coloured by the top-class probability.

The threshold slider hides patches whose confidence is below it in both layers (``shown`` mask
and ``features['shown']``). Image and gene embeddings go to the session (``EmbeddingRef``,
sources ``classifier:image`` / ``classifier:gene``) so the latent scatter can show them,
coloured by class or by patient.
"""

from __future__ import annotations

import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QSlider,
)

from ..models.batch_agnostic import ClassifierConfig
from ..viewer.palettes import legend_html  # the one legend
from ..viewer.results import (
    CLASS_COLUMN,
    FADED_ALPHA,
    ClassPrediction,
    apply_threshold,
    class_colors,
    class_layer_tuples,
    classify_section_layers,
    classify_slide_layers,
    embedding_refs,
    faded_colors,
    prediction_features,
)
from ._model_widget import NO_PRESET, SLIDE_PREFIX, ModelWidget
from ._tooltips import tip

__all__ = ["CLASS_COLUMN", "FADED_ALPHA", "SLIDE_PREFIX", "ClassPrediction", "ClassifyWidget",
           "apply_threshold", "class_colors", "class_layer_tuples", "classify_section_layers",
           "classify_slide_layers", "embedding_refs", "faded_colors", "prediction_features"]


# ----------------------------------------------------------------------------- worker jobs


def _train_job(adatas, images, config, progress, cancel):
    from ..models.batch_agnostic import train_classifier

    return train_classifier(adatas, config, images=images, progress=progress, cancel=cancel)


def _load_job(path):
    from ..models import open_model

    return open_model(path, "cpu", kind="batch-agnostic-classifier")


def _classify_job(model, adatas, images, slide, progress, cancel):
    if slide is not None:
        name, pyr = slide
        return [classify_slide_layers(model, pyr, name, progress=progress, cancel=cancel)]
    return [classify_section_layers(model, a, n, (images or {}).get(n), progress=progress,
                                    cancel=cancel) for n, a in adatas.items()]


def _quick_preset() -> dict:
    from ..models._options import get_option
    from ..models.batch_agnostic import ClassifierConfig

    tiny = ClassifierConfig.tiny()
    return {p: get_option(tiny, p) for p in ClassifyWidget.FORM}


class ClassifyWidget(ModelWidget):
    """Train/load the batch-agnostic classifier, classify a slide or sections, threshold."""

    CONFIG = ClassifierConfig
    FORM = ("backbone", "weights", "mode", "loss", "epochs", "gene.epochs", "gene.n_latent",
            "gene.batch_conditioning")
    SESSION_KEY = "classifier"
    KIND = "classify"
    SECTIONS_LABEL = "Training sections (ST; labels on sections with H&E):"
    ACTION = "Classify"
    RUN_LABEL = "classifying"
    TRAIN_PHASES = 4  # gene VAE, image features, contrastive epochs, classifier
    QUICK = "quick"
    _train_job = staticmethod(_train_job)
    _load_job = staticmethod(_load_job)
    _predict_job = staticmethod(_classify_job)

    def __init__(self, napari_viewer, parent=None):
        type(self).PRESETS = {self.QUICK: _quick_preset()}
        super().__init__(napari_viewer, parent)

    def _build_form_extra(self, form):
        self.backbone, self.weights, self.mode, self.loss = (
            self.field(k) for k in ("backbone", "weights", "mode", "loss"))
        self.epochs, self.gene_epochs, self.latent, self.batch_cond = (
            self.field(k) for k in ("epochs", "gene.epochs", "gene.n_latent",
                                    "gene.batch_conditioning"))
        self.quick = QCheckBox("quick settings (tiny CNN, few epochs)")
        self.quick.setToolTip(tip("preset"))
        self.quick.toggled.connect(
            lambda on: self.preset.setCurrentText(self.QUICK if on else NO_PRESET))
        self.preset.currentTextChanged.connect(
            lambda name: self.quick.setChecked(name == self.QUICK))
        form.insertRow(0, "", self.quick)

    def _build_results(self, lay):
        self.classify_btn = self.action_btn
        trow = QHBoxLayout()
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(0)
        self.threshold.setToolTip(tip("classify.threshold"))
        self.threshold_label = QLabel("hide below: 0.00")
        trow.addWidget(self.threshold_label)
        trow.addWidget(self.threshold, 1)
        lay.addLayout(trow)
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.legend)
        self.threshold.valueChanged.connect(lambda v: self.set_threshold(v / 100.0))

    # ---------------------------------------------------------------- running
    def train_config(self, **overrides):
        """The :class:`ClassifierConfig` the form describes (the preset first; the form's
        values, which the preset filled, then ``overrides`` win)."""
        from ..models._options import set_option

        cfg = (ClassifierConfig.tiny() if self.preset.currentText() == self.QUICK
               else ClassifierConfig())
        for path, v in self.form_options().items():
            set_option(cfg, path, v)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return cfg

    def make_train_args(self, overrides: dict) -> tuple:
        cfg = self.train_config(**overrides)
        cfg.validate()
        return (cfg,)

    def on_model(self, model) -> None:
        colors = class_colors(model.classes)
        self.legend.setText(legend_html(model.classes, colors))
        val = (model.provenance or {}).get("validation") or {}
        extra = (f"; validation accuracy {val['accuracy']:.2f}, ECE {val['ece']:.3f}"
                 if val.get("n") else "")
        self.status.setText(f"model ready: {len(model.classes)} classes{extra}")

    def classify(self, target: str | None = None):
        """Classify the chosen slide or section in a worker; returns the worker."""
        return self.run_on(target)

    def on_results(self, preds) -> None:
        self._on_classified(preds)

    def _on_classified(self, preds: list[ClassPrediction]):
        from ._common import add_layer_tuples

        t = self.threshold.value() / 100.0
        for p in preds:
            self.predictions[p.name] = p
            for tup in class_layer_tuples(p, t):
                name = tup[1]["name"]
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
                add_layer_tuples(self.viewer, [tup])
            for ref in embedding_refs(p):
                self.session.add_embedding(ref)
        if preds:
            p = preds[-1]
            self.show_with_slide(p.name, [self.viewer.layers[f"{p.name} classes"]])
            counts = pd.Series(p.predicted).value_counts().to_dict()
            self.legend.setText(legend_html(p.classes, class_colors(p.classes), counts))
        self.status.setText(f"classified {', '.join(p.name for p in preds)}")

    def class_layers(self) -> list:
        return [ly for ly in self.viewer.layers
                if (ly.metadata or {}).get("kind") in ("batch_agnostic_classes",
                                                       "batch_agnostic_confidence")]

    def set_threshold(self, value: float) -> int:
        """Hide patches below ``value`` in every class/confidence layer; returns hidden count."""
        self.threshold_label.setText(f"hide below: {value:.2f}")
        if self.threshold.value() != int(round(value * 100)):
            self.threshold.blockSignals(True)
            self.threshold.setValue(int(round(value * 100)))
            self.threshold.blockSignals(False)
        hidden = 0
        by_section: dict[str, list] = {}
        for ly in self.class_layers():
            by_section.setdefault(ly.metadata.get("section"), []).append(ly)
        for layers in by_section.values():
            layers.sort(key=lambda ly: ly.metadata.get("kind") != "batch_agnostic_classes")
            hidden += apply_threshold(layers, value)
        return hidden
