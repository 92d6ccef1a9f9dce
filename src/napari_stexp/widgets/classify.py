"""Tissue-classification dock widget (ST-guided, batch-agnostic): train or load a model,
classify an H&E slide (patch grid over tissue) or ST sections, hide uncertain patches.

GUI-free functions (:func:`classify_slide_layers`, :func:`classify_section_layers`,
:func:`class_layer_tuples`, :func:`apply_threshold`, :func:`legend_html`) do the work and tests
call them directly; the widget runs training/classification in napari workers (progress bar,
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

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QSlider,
)

from ..models.batch_agnostic import ClassifierConfig
from ..session import EmbeddingRef
from ..viewer.palettes import legend_html  # the one legend
from ._model_widget import NO_PRESET, SLIDE_PREFIX, ModelWidget
from ._tooltips import tip

CLASS_COLUMN = "batch_agnostic_class"
__all__ = ["CLASS_COLUMN", "SLIDE_PREFIX", "ClassifyWidget", "class_colors"]


# ----------------------------------------------------------------------------- GUI-free part


def class_colors(classes: list[str]) -> dict[str, np.ndarray]:
    """A fixed RGBA colour per class (the one palette: viewer.palettes)."""
    from ..viewer.palettes import label_colors

    return label_colors(classes)


@dataclass
class ClassPrediction:
    """Classes of the patches/spots of one slide or section, in the µm frame."""

    name: str
    coords_um: np.ndarray  # (n, 2) napari (row, col)
    size_um: float
    classes: list[str]
    proba: np.ndarray  # (n, k), rows sum to 1
    source: np.ndarray  # (n,) 'image' | 'gene' (which classifier produced the row)
    obs_names: list[str]
    image_embedding: np.ndarray | None = None  # (n, D)
    gene_latent: np.ndarray | None = None  # (n, d)
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)  # patient, section, label
    adata: Any = None  # the slide AnnData (slides)

    @property
    def predicted(self) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[self.proba.argmax(1)]

    @property
    def confidence(self) -> np.ndarray:
        return self.proba.max(1).astype(np.float32)


def classify_slide_layers(model, pyramid, name: str, *, progress=None, cancel=None,
                          device: str | None = None) -> ClassPrediction:
    """Classify a grid of patches over the slide's tissue (streamed, see ``classify_slide``)."""
    from ..analysis.slide_classify import classify_slide
    from ..models.batch_agnostic import PREFIX

    ad = classify_slide(model, pyramid, name=name, progress=progress, cancel=cancel,
                        device=device)
    from ..io.frame import layer_coords, layer_spot_size

    coords, size = layer_coords(ad, pyramid), layer_spot_size(ad, pyramid)  # the slide's layer
    extra = pd.DataFrame({"patient": [name] * ad.n_obs, "section": [name] * ad.n_obs})
    return ClassPrediction(name=name, coords_um=coords, size_um=size,
                           classes=list(model.classes),
                           proba=np.asarray(ad.obsm[f"{PREFIX}_proba"], np.float32),
                           source=np.array(["image"] * ad.n_obs, dtype=object),
                           obs_names=list(ad.obs_names),
                           image_embedding=np.asarray(ad.obsm["X_image"]), extra=extra,
                           adata=ad)


def classify_section_layers(model, adata, name: str, image=None, *, progress=None,
                            cancel=None, device: str | None = None) -> ClassPrediction:
    """Classify the spots of an ST section: from its H&E when it has one, else from its
    expression (the gene encoder's head). The gene latent is added when the model has one."""
    from ..errors import InputError
    from ..io.frame import layer_spot_size, spots_rc_um
    from ..models.batch_agnostic import _image_of
    from ..models.gene_vae import clean_labels

    img = image if image is not None else _image_of(adata, name)
    emb = z = None
    if img is not None:
        p = model.section_patches(adata, name, img, progress=progress, cancel=cancel)
        res = model.predict_patches(p, device=device, progress=progress, cancel=cancel)
        proba, emb = res["proba"], res["embedding"]
        source = np.array(["image"] * adata.n_obs, dtype=object)
    else:
        proba = model.gene_proba({name: adata}) if model.gene_model is not None else None
        if proba is None:
            raise InputError(f"section {name}", "has no H&E image and the model has no gene "
                                                "classifier head: nothing to classify from")
        source = np.array(["gene"] * adata.n_obs, dtype=object)
    if model.gene_model is not None:
        try:
            z = model.gene_embed({name: adata})
        except InputError:
            z = None  # e.g. a section without the model's genes: classes from the image only
    labels = clean_labels(adata.obs["label"]) if "label" in adata.obs else \
        np.full(adata.n_obs, None, dtype=object)
    extra = pd.DataFrame({
        "patient": (adata.obs["patient"].astype(str).to_numpy() if "patient" in adata.obs
                    else [name] * adata.n_obs),
        "section": [name] * adata.n_obs,
        "label": [v if v is not None else "unknown" for v in labels]})
    return ClassPrediction(name=name, coords_um=spots_rc_um(adata), size_um=layer_spot_size(adata),
                           classes=list(model.classes), proba=np.asarray(proba, np.float32),
                           source=source, obs_names=list(map(str, adata.obs_names)),
                           image_embedding=emb, gene_latent=z, extra=extra)


def prediction_features(pred: ClassPrediction, threshold: float = 0.0) -> pd.DataFrame:
    """The features table of the class/confidence layers (one row per patch/spot)."""
    n = len(pred.proba)
    conf = pred.confidence
    feats = pd.DataFrame({"spot_id": pred.obs_names,
                          CLASS_COLUMN: pd.Categorical(pred.predicted, categories=pred.classes),
                          "confidence": conf, "source": pred.source.astype(str)})
    for j, c in enumerate(pred.classes):
        feats[f"proba: {c}"] = pred.proba[:, j]
    extra = pred.extra.reset_index(drop=True)
    for col in extra.columns:
        feats[col] = pd.Categorical(extra[col].astype(str))
    feats["shown"] = conf >= threshold
    blocks = [feats]
    if pred.image_embedding is not None:
        blocks.append(pd.DataFrame(pred.image_embedding, columns=[
            f"img_{j}" for j in range(pred.image_embedding.shape[1])]))
    if pred.gene_latent is not None:
        blocks.append(pd.DataFrame(pred.gene_latent, columns=[
            f"gene_{j}" for j in range(pred.gene_latent.shape[1])]))
    out = pd.concat(blocks, axis=1)
    assert len(out) == n
    return out


def class_layer_tuples(pred: ClassPrediction, threshold: float = 0.0) -> list:
    """Points layer tuples: classes (categorical colours) and confidence (magma)."""
    feats = prediction_features(pred, threshold)
    colors = class_colors(pred.classes)
    face = np.stack([colors[c] for c in pred.predicted]) if len(pred.proba) else \
        np.zeros((0, 4), np.float32)
    shown = feats["shown"].to_numpy(bool)
    face = faded_colors(face, shown)
    meta = {"kind": "batch_agnostic_classes", "section": pred.name, "classes": pred.classes,
            "class_colors": {c: v.tolist() for c, v in colors.items()},
            "legend": legend_html(pred.classes, colors), "threshold": float(threshold)}
    cls = (pred.coords_um, {"name": f"{pred.name} classes", "size": pred.size_um,
                            "features": feats, "face_color": face, "border_width": 0.0,
                            "shown": shown, "opacity": 0.8, "metadata": meta}, "points")
    conf_feats = feats[["spot_id", CLASS_COLUMN, "confidence", "shown"]].copy()
    conf = (pred.coords_um, {"name": f"{pred.name} confidence", "size": pred.size_um,
                             "features": conf_feats, "face_color": "confidence",
                             "face_colormap": "magma", "face_contrast_limits": (0.0, 1.0),
                             "border_width": 0.0, "shown": shown, "visible": False,
                             "metadata": {"kind": "batch_agnostic_confidence",
                                          "section": pred.name, "threshold": float(threshold)}},
            "points")
    return [cls, conf]


#: Face alpha of the points below the confidence threshold: faded, so the threshold is visible
#: on the canvas (napari 0.9.2 ignores ``Points.shown`` when every dimension is displayed).
FADED_ALPHA = 0.08


def faded_colors(colors: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """``colors`` (n, 4) with alpha 1 where ``shown`` and :data:`FADED_ALPHA` elsewhere."""
    out = np.array(colors, dtype=np.float32, copy=True)
    if len(out):
        out[:, 3] = np.where(shown, 1.0, FADED_ALPHA)
    return out


def apply_threshold(layers, threshold: float) -> int:
    """Hide rows whose ``confidence`` is below ``threshold`` (``shown`` mask, features column
    and a faded face colour, which is what the canvas shows) in each layer; returns how many
    rows are hidden in the first layer."""
    hidden = 0
    for i, layer in enumerate(layers):
        feats = layer.features.copy()
        shown = feats["confidence"].to_numpy(np.float64) >= float(threshold)
        feats["shown"] = shown
        layer.features = feats
        layer.shown = shown
        layer.face_color = faded_colors(layer.face_color, shown)
        layer.metadata = {**(layer.metadata or {}), "threshold": float(threshold)}
        if i == 0:
            hidden = int((~shown).sum())
    return hidden


def embedding_refs(pred: ClassPrediction) -> list[EmbeddingRef]:
    """Session entries for the prediction's image embedding and gene latent."""
    layer = f"{pred.name} classes"
    refs = []
    if pred.image_embedding is not None:
        refs.append(EmbeddingRef(name=f"{pred.name} image embedding", layer=layer,
                                 data=pred.image_embedding, source="classifier:image"))
    if pred.gene_latent is not None:
        refs.append(EmbeddingRef(name=f"{pred.name} gene latent", layer=layer,
                                 data=pred.gene_latent, source="classifier:gene"))
    return refs


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


# ----------------------------------------------------------------------------- Qt part




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
