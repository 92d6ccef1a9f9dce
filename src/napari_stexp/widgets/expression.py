"""Expression dock widget (mclSTExp): train or load a model, predict sections or an H&E-only
slide, and browse predicted gene maps.

The work is done by GUI-free functions (:func:`predict_for_sections`, :func:`predict_for_slide`,
:func:`gene_layer_tuples`, :func:`confidence_layer_tuple`) that tests call directly; the widget
runs training/prediction in napari worker threads (progress bar, cancel) and applies layers in
the main thread. Layers per section ``S``:

- ``"S mclSTExp"``: spots coloured by retrieval confidence; ``features`` carry the confidence
  and the image embeddings (``mclstexp_0`` …), which also go to the session for the explorer;
- ``"S predicted"``: the chosen gene's prediction; ``"S measured"``: the measured values (when
  the section has counts), placed beside the prediction with the *same* contrast limits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..io.frame import pyramid_from_layer
from ..session import EmbeddingRef, get_session
from ._common import ProgressBridge, WorkerMixin, layer_adata, notify_error, warm_torch

EMBED_PREFIX = "mclstexp_"
SLIDE_PREFIX = "slide: "


# ----------------------------------------------------------------------------- GUI-free part


@dataclass
class SectionPrediction:
    """Predictions for the spots (or pseudo-spots) of one section/slide, in the µm frame."""

    name: str
    coords_um: np.ndarray  # (n, 2) napari (row, col) in µm
    size_um: float
    genes: list
    predicted: np.ndarray  # (n, G)
    confidence: np.ndarray  # (n,)
    embeddings: np.ndarray  # (n, D)
    obs_names: list
    measured: np.ndarray | None = None  # (n, G) normalised measured expression
    pcc: np.ndarray | None = None  # (G,) per-gene PCC
    in_reference: bool = False  # the section is among the model's references (optimistic)
    adata: Any = None  # the slide prediction AnnData (H&E-only slides)

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            from ..errors import InputError

            raise InputError(gene, "not in the model's gene panel") from None


def predict_for_sections(model, adatas: dict, images: dict | None = None, *, progress=None,
                         cancel=None, device: str = "auto") -> list[SectionPrediction]:
    """Predict every spot of ST sections; measured values and per-gene PCC when the section has
    the model's genes."""
    from ..data.genes import DISPLAY_LIBRARY, measured_expression, panel_targets
    from ..evaluation.regression import gene_pcc
    from ..io.frame import layer_spot_size, spots_rc_um

    out = []
    refs = set(model.reference.section_names)
    for name, adata in adatas.items():
        res = model.predict_sections({name: adata}, {name: images[name]} if images and
                                     images.get(name) is not None else None,
                                     device=device, progress=progress, cancel=cancel)[name]
        measured = pcc = None
        if set(model.genes) <= set(adata.var_names):
            # shown: the display library (the same number as the navigator and explorer);
            # scored: the model's own targets (the panel library), as the evaluation does
            measured = measured_expression(adata, model.genes, library=DISPLAY_LIBRARY,
                                           target_sum=model.config.target_sum)
            pcc = gene_pcc(res["predicted"], panel_targets(
                adata, model.genes, model.config.target_sum, library="panel"))
        out.append(SectionPrediction(
            name=name, coords_um=spots_rc_um(adata), size_um=layer_spot_size(adata),
            genes=list(model.genes), predicted=res["predicted"], confidence=res["confidence"],
            embeddings=res["embeddings"], obs_names=list(map(str, adata.obs_names)),
            measured=measured, pcc=pcc, in_reference=name in refs))
    return out


def predict_for_slide(model, pyramid, name: str, *, progress=None, cancel=None,
                      device: str = "auto") -> SectionPrediction:
    """Whole-slide prediction over tissue (pseudo-spots), as a :class:`SectionPrediction`."""
    from ..analysis.slide_predict import predict_slide

    ad = predict_slide(model, pyramid, name=name, progress=progress, cancel=cancel,
                       device=device)
    from ..io.frame import layer_coords, layer_spot_size

    # in the frame of the slide's image layer
    coords, size = layer_coords(ad, pyramid), layer_spot_size(ad, pyramid)
    return SectionPrediction(
        name=name, coords_um=coords, size_um=size, genes=list(model.genes),
        predicted=np.asarray(ad.layers["predicted"]),
        confidence=ad.obs["confidence"].to_numpy(np.float32),
        embeddings=np.asarray(ad.obsm["X_mclstexp"]), obs_names=list(ad.obs_names), adata=ad)


def gene_limits(pred: SectionPrediction, gene: str) -> tuple[float, float]:
    """One contrast range for predicted and measured values of ``gene`` (both layers)."""
    i = pred.gene_index(gene)
    vals = [pred.predicted[:, i]]
    if pred.measured is not None:
        vals.append(pred.measured[:, i])
    v = np.concatenate(vals)
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    if not hi > lo:
        hi = lo + 1e-6
    return lo, hi


def gene_layer_tuples(pred: SectionPrediction, gene: str, colormap: str = "viridis") -> list:
    """Points layer tuples for ``gene``: predicted (and measured beside it, same limits)."""
    i = pred.gene_index(gene)
    lims = gene_limits(pred, gene)
    base = {"size": pred.size_um, "border_width": 0.0, "face_colormap": colormap,
            "face_contrast_limits": lims, "face_color": "value"}
    pcc = None if pred.pcc is None else float(pred.pcc[i])
    feats = pd.DataFrame({"spot_id": pred.obs_names, "value": pred.predicted[:, i],
                          "confidence": pred.confidence})
    layers = [(pred.coords_um, {**base, "name": f"{pred.name} predicted", "features": feats,
                                "metadata": {"kind": "mclstexp_gene", "gene": gene,
                                             "section": pred.name, "what": "predicted",
                                             "pcc": pcc}}, "points")]
    if pred.measured is not None:
        span = np.ptp(pred.coords_um[:, 1]) + 4 * pred.size_um
        mfeats = pd.DataFrame({"spot_id": pred.obs_names, "value": pred.measured[:, i]})
        layers.append((pred.coords_um, {**base, "name": f"{pred.name} measured",
                                        "features": mfeats, "translate": (0.0, float(span)),
                                        "metadata": {"kind": "mclstexp_gene", "gene": gene,
                                                     "section": pred.name, "what": "measured",
                                                     "pcc": pcc}}, "points"))
    return layers


def confidence_layer_tuple(pred: SectionPrediction) -> tuple:
    """The per-section layer: confidence colours + embedding columns in ``features``."""
    feats = pd.DataFrame({"spot_id": pred.obs_names, "confidence": pred.confidence})
    emb = pd.DataFrame(pred.embeddings, columns=[f"{EMBED_PREFIX}{j}"
                                                 for j in range(pred.embeddings.shape[1])])
    feats = pd.concat([feats, emb], axis=1)
    c = pred.confidence
    lims = (float(np.min(c)), float(np.max(c)) if np.ptp(c) > 0 else float(np.min(c)) + 1e-6)
    return (pred.coords_um, {"name": f"{pred.name} mclSTExp", "size": pred.size_um,
                             "features": feats, "face_color": "confidence",
                             "face_colormap": "magma", "face_contrast_limits": lims,
                             "border_width": 0.0, "visible": False,
                             "metadata": {"kind": "mclstexp_confidence",
                                          "section": pred.name}}, "points")


# ----------------------------------------------------------------------------- Qt part




def _train_job(adatas, images, kw, progress, cancel):
    from ..models.mclstexp import train_expression_model

    return train_expression_model(adatas, images=images, progress=progress, cancel=cancel, **kw)


def _load_job(path):
    from ..models import open_model

    return open_model(path, "cpu", kind="mclstexp")


def _predict_job(model, adatas, images, slide, progress, cancel, device):
    if slide is not None:
        name, pyr = slide
        return [predict_for_slide(model, pyr, name, progress=progress, cancel=cancel,
                                  device=device)]
    return predict_for_sections(model, adatas, images, progress=progress, cancel=cancel,
                                device=device)


class ExpressionWidget(WorkerMixin, QWidget):
    """Train/load mclSTExp, predict sections or a slide, show gene maps (searchable gene box)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.model = None
        self.predictions: dict[str, SectionPrediction] = {}
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
        lay.addWidget(QLabel("Training sections (ST with H&E):"))
        self.sections = QListWidget()
        self.sections.setToolTip("check the sections to train on")
        self.sections.setMaximumHeight(110)
        lay.addWidget(self.sections)
        form = QFormLayout()
        self.mode = QComboBox()
        self.mode.addItems(["cached", "finetune"])
        self.mode.setToolTip("cached: frozen backbone, features cached (minutes on a CPU); "
                             "finetune: the whole network (the paper; needs a GPU)")
        self.backbone = QComboBox()
        self.backbone.addItems(["densenet121", "resnet18", "resnet50", "tinycnn"])
        self.weights = QLineEdit("none")
        self.weights.setToolTip("none, imagenet (torchvision; online or cached) or a file path")
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setValue(10)
        self.input_size = QSpinBox()
        self.input_size.setRange(16, 512)
        self.input_size.setValue(224)
        self.input_size.setToolTip("network input px for a 224 px patch at the training µm/px "
                                   "(smaller = faster)")
        self.batch = QSpinBox()
        self.batch.setRange(2, 1024)
        self.batch.setValue(128)
        self.smooth = QDoubleSpinBox()
        self.smooth.setRange(0.0, 1.0)
        self.smooth.setSingleStep(0.05)
        self.smooth.setValue(0.0)
        self.smooth.setToolTip("option beyond the paper (0 = off): each prediction becomes "
                               "(1 - w) · own + w · the mean of its neighbouring spots' "
                               "predictions (image-only; see docs/mclstexp.md)")
        for label, w in (("mode", self.mode), ("backbone", self.backbone),
                         ("weights", self.weights), ("epochs", self.epochs),
                         ("input px", self.input_size), ("batch", self.batch),
                         ("smoothing", self.smooth)):
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
        prow = QHBoxLayout()
        self.target = QComboBox()
        self.target.setToolTip("a section (measured values shown beside) or an H&E-only slide")
        self.predict_btn = QPushButton("Predict")
        prow.addWidget(self.target, 1)
        prow.addWidget(self.predict_btn)
        lay.addLayout(prow)
        grow = QHBoxLayout()
        self.gene_box = QLineEdit()
        self.gene_box.setPlaceholderText("gene (type to search)")
        self.completer = QCompleter([])
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.gene_box.setCompleter(self.completer)
        self.pcc_label = QLabel("PCC: –")
        grow.addWidget(self.gene_box, 1)
        grow.addWidget(self.pcc_label)
        lay.addLayout(grow)
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
        self.predict_btn.clicked.connect(lambda: self.predict())
        self.gene_box.returnPressed.connect(lambda: self.show_gene(self.gene_box.text()))
        self.completer.activated.connect(self.show_gene)

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
            it.setCheckState(Qt.CheckState.Checked if name in checked
                             else Qt.CheckState.Unchecked)
            self.sections.addItem(it)
        current = self.target.currentText()
        self.target.clear()
        self.target.addItems(list(secs) + [SLIDE_PREFIX + n for n in self.slide_layers()])
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
        return {n: self.session.images[n] for n in names if n in self.session.images}

    # ---------------------------------------------------------------- running
    def _action_buttons(self) -> tuple:
        return (self.train_btn, self.load_btn, self.save_btn, self.predict_btn)

    def train_options(self) -> dict:
        w = self.weights.text().strip()
        return {"mode": self.mode.currentText(), "backbone": self.backbone.currentText(),
                "weights": None if w.lower() in ("", "none", "random") else w,
                "epochs": self.epochs.value(), "input_size": self.input_size.value(),
                "batch_size": self.batch.value(), "smooth_neighbours": self.smooth.value()}

    def train(self, **overrides):
        """Train on the checked sections in a worker; returns the worker."""
        names = self.checked_sections()
        if not names:
            notify_error("check at least one training section")
            return None
        secs = self.available_sections()
        kw = {**self.train_options(), **overrides}
        warm_torch()
        return self._run(_train_job, {n: secs[n] for n in names}, self._images_for(names), kw,
                         self._bridge, self._cancel, returned=self.set_model, label="training")

    def load(self, path: str | None = None):
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "mclSTExp model folder")
        if not path:
            return None
        return self._run(_load_job, path, returned=self.set_model, label="loading")

    def save(self, path: str | None = None):
        if self.model is None:
            notify_error("train or load a model first")
            return None
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "save the model into a new folder")
        if not path:
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
        self.session.models = {**self.session.models, "mclstexp": model}
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
        if self.model is None:
            notify_error("train or load a model first")
            return None
        target = target or self.target.currentText()
        if not target:
            notify_error("choose a section or slide to predict")
            return None
        slide = None
        adatas = {}
        if target.startswith(SLIDE_PREFIX):
            lname = target[len(SLIDE_PREFIX):]
            pyr = self.session.images.get(lname)
            if pyr is None:
                pyr = pyramid_from_layer(self.viewer.layers[lname])
            slide = (lname, pyr)
        else:
            secs = self.available_sections()
            if target not in secs:
                notify_error(f"{target}: no such section")
                return None
            adatas = {target: secs[target]}
        warm_torch()
        return self._run(_predict_job, self.model, adatas, self._images_for(adatas), slide,
                         self._bridge, self._cancel, "auto", returned=self._on_predicted,
                         label="predicting")

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
        i = pred.genes.index(gene)
        if pred.pcc is not None and np.isfinite(pred.pcc[i]):
            self.pcc_label.setText(f"PCC: {pred.pcc[i]:.3f}")
        else:
            self.pcc_label.setText("PCC: –")
        return layers
