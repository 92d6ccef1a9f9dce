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

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..session import EmbeddingRef, get_session
from ..viewer.palettes import legend_html  # the one legend
from ._common import ProgressBridge, WorkerMixin, layer_adata, notify_error, warm_torch

CLASS_COLUMN = "batch_agnostic_class"
SLIDE_PREFIX = "slide: "


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


def apply_threshold(layers, threshold: float) -> int:
    """Hide rows whose ``confidence`` is below ``threshold`` (``shown`` mask + features column)
    in each layer; returns how many rows are hidden in the first layer."""
    hidden = 0
    for i, layer in enumerate(layers):
        feats = layer.features.copy()
        shown = feats["confidence"].to_numpy(np.float64) >= float(threshold)
        feats["shown"] = shown
        layer.features = feats
        layer.shown = shown
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




class ClassifyWidget(WorkerMixin, QWidget):
    """Train/load the batch-agnostic classifier, classify a slide or sections, threshold."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.model = None
        self.predictions: dict[str, ClassPrediction] = {}
        self._worker = None
        self._cancel = threading.Event()
        self._build()
        self.refresh()
        self.viewer.layers.events.inserted.connect(self.refresh)
        self.viewer.layers.events.removed.connect(self.refresh)
        self.session.events.adatas.connect(self.refresh)

    # ---------------------------------------------------------------- layout
    def _build(self):
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Training sections (ST; labels on sections with H&E):"))
        self.sections = QListWidget()
        self.sections.setToolTip("check the sections to train on: sections with counts train "
                                 "the gene encoder, sections with H&E + labels the classifier")
        self.sections.setMaximumHeight(110)
        lay.addWidget(self.sections)
        form = QFormLayout()
        self.quick = QCheckBox("quick settings (tiny CNN, few epochs)")
        self.quick.setToolTip("trains in seconds on a CPU; for a first look, not for results")
        self.backbone = QComboBox()
        self.backbone.addItems(["resnet18", "densenet121", "resnet50", "tinycnn"])
        self.weights = QLineEdit("none")
        self.weights.setToolTip("none, imagenet (torchvision; online or cached) or a file path")
        self.mode = QComboBox()
        self.mode.addItems(["cached", "finetune"])
        self.mode.setToolTip("cached: frozen backbone, features cached (fast on a CPU); "
                             "finetune: train the backbone too")
        self.loss = QComboBox()
        self.loss.addItems(["infonce", "soft"])
        self.loss.setToolTip("infonce: CLIP-style; soft: BLEEP-style soft targets")
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setValue(30)
        self.gene_epochs = QSpinBox()
        self.gene_epochs.setRange(1, 2000)
        self.gene_epochs.setValue(100)
        self.latent = QSpinBox()
        self.latent.setRange(2, 64)
        self.latent.setValue(16)
        self.batch_cond = QCheckBox("condition the gene decoder on the patient")
        self.batch_cond.setChecked(True)
        self.batch_cond.setToolTip("the batch-agnostic part; off = baseline")
        for label, w in (("", self.quick), ("backbone", self.backbone),
                         ("weights", self.weights), ("mode", self.mode), ("loss", self.loss),
                         ("image epochs", self.epochs), ("gene epochs", self.gene_epochs),
                         ("latent size", self.latent), ("", self.batch_cond)):
            form.addRow(label, w)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.load_btn = QPushButton("Load model…")
        self.save_btn = QPushButton("Save model…")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        for b in (self.train_btn, self.load_btn, self.save_btn, self.cancel_btn):
            row.addWidget(b)
        lay.addLayout(row)
        crow = QHBoxLayout()
        self.target = QComboBox()
        self.target.setToolTip("a section (spots) or an H&E slide (patch grid over tissue)")
        self.classify_btn = QPushButton("Classify")
        crow.addWidget(self.target, 1)
        crow.addWidget(self.classify_btn)
        lay.addLayout(crow)
        trow = QHBoxLayout()
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(0)
        self.threshold.setToolTip("hide patches whose top-class probability is below this")
        self.threshold_label = QLabel("hide below: 0.00")
        trow.addWidget(self.threshold_label)
        trow.addWidget(self.threshold, 1)
        lay.addLayout(trow)
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.legend)
        self.progress_bar = QProgressBar()
        self.status = QLabel("no model")
        self.status.setWordWrap(True)
        lay.addWidget(self.progress_bar)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._bridge = ProgressBridge(self.progress_bar, self.status)
        self.train_btn.clicked.connect(lambda: self.train())
        self.load_btn.clicked.connect(lambda: self.load())
        self.save_btn.clicked.connect(lambda: self.save())
        self.cancel_btn.clicked.connect(self.cancel)
        self.classify_btn.clicked.connect(lambda: self.classify())
        self.threshold.valueChanged.connect(lambda v: self.set_threshold(v / 100.0))

    # ---------------------------------------------------------------- sources
    def available_sections(self) -> dict:
        """Sections from the session and from spots layers that carry their AnnData."""
        out = dict(self.session.adatas)
        for layer in self.viewer.layers:
            ad = layer_adata(layer)
            if ad is not None and "section" in ad.obs and ad.n_obs:
                out.setdefault(str(ad.obs["section"].iloc[0]), ad)
        return out

    def slide_layers(self) -> list[str]:
        from napari.layers import Image

        return [ly.name for ly in self.viewer.layers if isinstance(ly, Image)]

    def refresh(self, *_):
        checked = set(self.checked_sections())
        secs = self.available_sections()
        self.sections.clear()
        for name in secs:
            it = QListWidgetItem(name)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Checked if (name in checked or not checked)
                             else Qt.CheckState.Unchecked)
            self.sections.addItem(it)
        current = self.target.currentText()
        self.target.clear()
        self.target.addItems([SLIDE_PREFIX + n for n in self.slide_layers()] + list(secs))
        if current:
            i = self.target.findText(current)
            if i >= 0:
                self.target.setCurrentIndex(i)

    def checked_sections(self) -> list[str]:
        return [self.sections.item(i).text() for i in range(self.sections.count())
                if self.sections.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, names) -> None:
        names = set(names)
        for i in range(self.sections.count()):
            it = self.sections.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in names
                             else Qt.CheckState.Unchecked)

    def _images_for(self, names) -> dict:
        """Session pyramids, else an image layer tagged with the section (full resolution)."""
        from napari.layers import Image

        from .expression import pyramid_from_layer

        out = {n: self.session.images[n] for n in names if n in self.session.images}
        for layer in self.viewer.layers:
            sec = (layer.metadata or {}).get("section")
            if isinstance(layer, Image) and sec in names and sec not in out:
                out[sec] = pyramid_from_layer(layer)
        return out

    # ---------------------------------------------------------------- running
    def _action_buttons(self) -> tuple:
        return (self.train_btn, self.load_btn, self.save_btn, self.classify_btn)

    def train_config(self, **overrides):
        """The :class:`ClassifierConfig` the form describes (``overrides`` win)."""
        from ..models.batch_agnostic import ClassifierConfig

        cfg = ClassifierConfig.tiny() if self.quick.isChecked() else ClassifierConfig(
            epochs=self.epochs.value())
        cfg.backbone = "tinycnn" if self.quick.isChecked() else self.backbone.currentText()
        w = self.weights.text().strip()
        cfg.weights = None if w.lower() in ("", "none", "random") else w
        cfg.mode = self.mode.currentText()
        cfg.loss = self.loss.currentText()
        if not self.quick.isChecked():
            cfg.gene.epochs = self.gene_epochs.value()
            cfg.gene.n_latent = self.latent.value()
        cfg.gene.batch_conditioning = self.batch_cond.isChecked()
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return cfg

    def train(self, **overrides):
        """Train on the checked sections in a worker; returns the worker."""
        names = self.checked_sections()
        if not names:
            notify_error("check at least one training section")
            return None
        secs = self.available_sections()
        try:
            cfg = self.train_config(**overrides)
            cfg.validate()
        except Exception as exc:  # noqa: BLE001 - bad settings are shown, never a crash
            notify_error(exc)
            return None
        warm_torch()
        return self._run(_train_job, {n: secs[n] for n in names}, self._images_for(names), cfg,
                         self._bridge, self._cancel, returned=self.set_model, label="training")

    def load(self, path: str | None = None):
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "classifier model folder")
        if not path:
            return None
        warm_torch()
        return self._run(_load_job, path, returned=self.set_model, label="loading")

    def save(self, path: str | None = None):
        if self.model is None:
            notify_error("train or load a model first")
            return None
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "save the model into a new folder")
        if not path:
            return None
        from ._save import confirm_overwrite

        if not confirm_overwrite(self, path):
            return None
        try:
            self.model.save(path)
        except Exception as exc:  # noqa: BLE001 - shown, never a crash
            notify_error(exc)
            return None
        self.status.setText(f"saved {path}")
        return path

    def set_model(self, model) -> None:
        self.model = model
        self.session.models = {**self.session.models, "classifier": model}
        colors = class_colors(model.classes)
        self.legend.setText(legend_html(model.classes, colors))
        val = (model.provenance or {}).get("validation") or {}
        extra = (f"; validation accuracy {val['accuracy']:.2f}, ECE {val['ece']:.3f}"
                 if val.get("n") else "")
        self.status.setText(f"model ready: {len(model.classes)} classes{extra}")

    def classify(self, target: str | None = None):
        """Classify the chosen slide or section in a worker; returns the worker."""
        if self.model is None:
            notify_error("train or load a model first")
            return None
        target = target or self.target.currentText()
        if not target:
            notify_error("choose a slide or section to classify")
            return None
        slide = None
        adatas: dict = {}
        if target.startswith(SLIDE_PREFIX):
            from .expression import pyramid_from_layer

            lname = target[len(SLIDE_PREFIX):]
            if lname not in self.viewer.layers:
                notify_error(f"{lname}: no such image layer")
                return None
            pyr = self.session.images.get(lname) or pyramid_from_layer(self.viewer.layers[lname])
            slide = (lname, pyr)
        else:
            secs = self.available_sections()
            if target not in secs:
                notify_error(f"{target}: no such section")
                return None
            adatas = {target: secs[target]}
        warm_torch()
        return self._run(_classify_job, self.model, adatas, self._images_for(list(adatas)),
                         slide, self._bridge, self._cancel, returned=self._on_classified,
                         label="classifying")

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
