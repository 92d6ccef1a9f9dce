"""β-VAE dock widget: train or load a model, embed cells, browse latent traversals and
trajectories (with decoded expression when the model is aligned to a gene VAE).

Qt-free functions in :mod:`napari_stexp.viewer.results` (re-exported here) do the work (tests
call them directly); the widget runs long
work in napari worker threads (progress bar, cancel) and touches layers in the main thread only.

- Embedding: latents go to the session (``EmbeddingRef(name='bvae', source='bvae')``) and into
  the features of the cells' layer as ``bvae_0 …`` (a Labels layer from segmentation, or a
  Points layer ``bvae cells`` with one point per crop on a crop-stack Image layer).
- Traversal browser: an Image layer of shape (dims, steps, H, W, 3), so napari's two sliders are
  the latent dimension (top-ranked first) and the step; the expression table follows the sliders.
- Trajectory panel: two cells by index, N steps, linear or GP path -> image stack + trend table.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..session import EmbeddingRef, get_session
from ..viewer.results import (
    CROPS_LAYER,
    POINTS_LAYER,
    TRAJECTORY_LAYER,
    TRAVERSAL_LAYER,
    crops_layer_tuples,
    expression_at,
    labels_features_with_latents,
    latent_columns,
    trajectory_layer_tuple,
    trajectory_trend_table,
    traversal_layer_tuple,
)
from ._common import (
    ProgressBridge,
    WorkerMixin,
    add_layer_tuples,
    notify_error,
    notify_info,
)

__all__ = ["CROPS_LAYER", "POINTS_LAYER", "TRAJECTORY_LAYER", "TRAVERSAL_LAYER", "BVAEWidget",
           "crops_layer_tuples", "expression_at", "labels_features_with_latents",
           "latent_columns", "trajectory_layer_tuple", "trajectory_trend_table",
           "traversal_layer_tuple"]

# --------------------------------------------------------------------------- the widget


def _path_row(edit: QLineEdit, parent, folder: bool, caption: str):
    btn = QPushButton("…")
    btn.setMaximumWidth(30)

    def choose():
        if folder:
            p = QFileDialog.getExistingDirectory(parent, caption)
        else:
            p, _ = QFileDialog.getOpenFileName(parent, caption)
        if p:
            edit.setText(p)

    btn.clicked.connect(choose)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(btn)
    return row

def _spin(lo, hi, val, tip=""):
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setValue(val)
    s.setToolTip(tip)
    return s

def _dspin(lo, hi, val, step, tip=""):
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(val)
    s.setToolTip(tip)
    return s

def fill_table(table: QTableWidget, df) -> None:
    table.clear()
    if df is None:
        table.setRowCount(0)
        table.setColumnCount(0)
        return
    table.setColumnCount(len(df.columns))
    table.setRowCount(len(df))
    table.setHorizontalHeaderLabels([str(c) for c in df.columns])
    table.setVerticalHeaderLabels([str(i) for i in df.index])
    for r in range(len(df)):
        for c in range(len(df.columns)):
            v = df.iat[r, c]
            text = f"{v:.3f}" if isinstance(v, float | np.floating) else str(v)
            table.setItem(r, c, QTableWidgetItem(text))

class BVAEWidget(WorkerMixin, QWidget):
    """Train/load a β-VAE, embed cells, browse traversals and trajectories."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.model = None
        self.cells = None  # CellCropDataset last embedded
        self.latents = None
        self.traversal = None
        self.trajectory = None
        self._worker = None
        self._cancel = threading.Event()
        self._build()
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.viewer.layers.events.inserted.connect(self._refresh_sources)
        self.viewer.layers.events.removed.connect(self._refresh_sources)
        self._refresh_sources()

    def _disconnect(self):
        """Stop listening to the viewer (the widget was closed or deleted)."""
        for emitter, slot in ((self.viewer.dims.events.current_step, self._on_step),
                              (self.viewer.layers.events.inserted, self._refresh_sources),
                              (self.viewer.layers.events.removed, self._refresh_sources)):
            try:
                emitter.disconnect(slot)
            except (RuntimeError, TypeError, ValueError):
                pass

    def closeEvent(self, event):
        self._disconnect()
        super().closeEvent(event)

    # ---------------------------------------------------------------- layout
    def _build(self):
        lay = QVBoxLayout(self)
        # model
        g = QGroupBox("Model")
        f = QFormLayout(g)
        self.cells_edit = QLineEdit()
        self.cells_edit.setPlaceholderText("crop folder (labels.csv or class folders)")
        f.addRow("cells", _path_row(self.cells_edit, self, True, "Cell crop folder"))
        self.genes_edit = QLineEdit()
        self.genes_edit.setPlaceholderText("optional .h5ad (log expression)")
        f.addRow("genes", _path_row(self.genes_edit, self, False, "Expression .h5ad"))
        self.map_edit = QLineEdit()
        self.map_edit.setPlaceholderText("optional CSV image_class,gene_class")
        f.addRow("class map", _path_row(self.map_edit, self, False, "Class map CSV"))
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model directory (written by Train, read by Load)")
        f.addRow("model dir", _path_row(self.model_edit, self, True, "Model directory"))
        self.epochs = _spin(1, 10000, 30, "image β-VAE epochs")
        self.latent = _spin(2, 512, 50, "latent dimensions")
        self.beta = _dspin(0.0, 100.0, 4.0, 0.5, "KL weight β")
        self.tiny = QCheckBox("tiny (quick test)")
        row = QHBoxLayout()
        for w in (QLabel("epochs"), self.epochs, QLabel("latent"), self.latent,
                  QLabel("β"), self.beta):
            row.addWidget(w)
        f.addRow(row)
        f.addRow(self.tiny)
        btns = QHBoxLayout()
        self.train_btn, self.load_btn = QPushButton("Train"), QPushButton("Load")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        for b in (self.train_btn, self.load_btn, self.cancel_btn):
            btns.addWidget(b)
        f.addRow(btns)
        self.progress_bar = QProgressBar()
        self.status = QLabel("no model")
        self.status.setWordWrap(True)
        f.addRow(self.progress_bar)
        f.addRow(self.status)
        lay.addWidget(g)
        # embed
        g = QGroupBox("Embed cells")
        f = QFormLayout(g)
        self.source_combo = QComboBox()
        self.source_combo.setToolTip("crop folder above, a crop-stack image layer, or a "
                                     "Labels layer (with the image layer below)")
        self.image_combo = QComboBox()
        f.addRow("cells from", self.source_combo)
        f.addRow("image (for Labels)", self.image_combo)
        self.embed_btn = QPushButton("Embed")
        f.addRow(self.embed_btn)
        lay.addWidget(g)
        # traversal
        g = QGroupBox("Latent traversal")
        f = QFormLayout(g)
        self.cell_index = _spin(0, 0, 0, "index of the embedded cell")
        self.steps = _spin(2, 41, 7, "steps per dimension")
        self.span = _dspin(0.5, 10.0, 3.0, 0.5, "± span in σ")
        self.top_dims = _spin(0, 512, 10, "rows to show (top-ranked dims; 0 = all)")
        row = QHBoxLayout()
        for w in (QLabel("cell"), self.cell_index, QLabel("steps"), self.steps,
                  QLabel("±σ"), self.span, QLabel("dims"), self.top_dims):
            row.addWidget(w)
        f.addRow(row)
        self.traverse_btn = QPushButton("Traverse")
        f.addRow(self.traverse_btn)
        self.step_label = QLabel("")
        f.addRow(self.step_label)
        self.expr_table = QTableWidget()
        self.expr_table.setMinimumHeight(120)
        f.addRow(self.expr_table)
        lay.addWidget(g)
        # trajectory
        g = QGroupBox("Trajectory")
        f = QFormLayout(g)
        self.cell_a, self.cell_b = _spin(0, 0, 0, "start cell"), _spin(0, 0, 0, "end cell")
        self.traj_steps = _spin(2, 200, 10, "steps")
        self.traj_method = QComboBox()
        self.traj_method.addItems(["linear", "gp"])
        row = QHBoxLayout()
        for w in (QLabel("from"), self.cell_a, QLabel("to"), self.cell_b,
                  QLabel("steps"), self.traj_steps, self.traj_method):
            row.addWidget(w)
        f.addRow(row)
        self.traj_btn = QPushButton("Trajectory")
        f.addRow(self.traj_btn)
        self.traj_table = QTableWidget()
        self.traj_table.setMinimumHeight(120)
        f.addRow(self.traj_table)
        lay.addWidget(g)
        lay.addStretch(1)
        self._bridge = ProgressBridge(self.progress_bar, self.status)
        self.train_btn.clicked.connect(lambda: self.train())
        self.load_btn.clicked.connect(lambda: self.load())
        self.cancel_btn.clicked.connect(self.cancel)
        self.embed_btn.clicked.connect(lambda: self.embed())
        self.traverse_btn.clicked.connect(lambda: self.traverse())
        self.traj_btn.clicked.connect(lambda: self.run_trajectory())

    def _refresh_sources(self, *_):
        try:
            self._fill_sources()
        except RuntimeError:  # the Qt side is gone: stop listening
            self._disconnect()

    def _fill_sources(self):
        keep = self.source_combo.currentText()
        keep_img = self.image_combo.currentText()
        self.source_combo.clear()
        self.image_combo.clear()
        self.source_combo.addItem("crop folder")
        from napari.layers import Image, Labels

        for layer in self.viewer.layers:
            if isinstance(layer, Labels):
                self.source_combo.addItem(f"labels: {layer.name}")
            elif isinstance(layer, Image) and layer.name not in (
                    TRAVERSAL_LAYER, TRAJECTORY_LAYER):
                self.image_combo.addItem(layer.name)
                if (layer.metadata or {}).get("kind") == "cell-crops" and \
                        layer.name != CROPS_LAYER:
                    self.source_combo.addItem(f"crops: {layer.name}")
        for combo, txt in ((self.source_combo, keep), (self.image_combo, keep_img)):
            i = combo.findText(txt)
            if i >= 0:
                combo.setCurrentIndex(i)

    # ---------------------------------------------------------------- running
    def _action_buttons(self) -> tuple:
        return (self.train_btn, self.load_btn, self.embed_btn, self.traverse_btn, self.traj_btn)

    def cancel(self):
        super().cancel()
        if self._worker is not None:  # generator workers stop at their next yield
            self._worker.quit()

    def train(self):
        """Train on the crop folder (+ genes / class map) in a worker; returns the worker."""
        from ..models.betavae import BVAEConfig

        cells = self.cells_edit.text().strip()
        if not cells:
            notify_error("choose a cell crop folder first")
            return None
        kw = dict(epochs=self.epochs.value(), latent_dim=self.latent.value(),
                  beta=self.beta.value())
        config = BVAEConfig.tiny(**kw) if self.tiny.isChecked() else BVAEConfig(**kw)
        genes = self.genes_edit.text().strip() or None
        cmap = self.map_edit.text().strip() or None
        out = self.model_edit.text().strip() or None
        return self._run(_train_job, cells, genes, cmap, config, out, self._bridge,
                         self._cancel, returned=self._on_model, label="training", torch=True)

    def load(self, path: str | None = None):
        path = path or self.model_edit.text().strip()
        if not path:
            notify_error("choose a model directory first")
            return None
        self.model_edit.setText(str(path))
        return self._run(_load_job, path, returned=self._on_model, label="loading", torch=True)

    def set_model(self, model) -> None:
        """Use an already trained/loaded ``BVAEModel`` (tests, scripts)."""
        self._on_model(model)

    def _on_model(self, model):
        self.model = model
        self.session.models = {**self.session.models, "bvae": model}
        aligned = " + expression" if model.has_expression else ""
        self.status.setText(f"model ready: {model.latent_dim}-d latent, "
                            f"{model.latent_stats.get('active_dims', '?')} active dims"
                            f"{aligned}")

    def embed(self):
        """Embed the chosen cells in a worker; layers and session update on return."""
        if self.model is None:
            notify_error("train or load a β-VAE first")
            return None
        src = self.source_combo.currentText()
        model = self.model
        if src.startswith("labels: "):
            lname = src[len("labels: "):]
            iname = self.image_combo.currentText()
            if not iname:
                notify_error("choose the image layer that goes with the Labels layer")
                return None
            labels_layer = self.viewer.layers[lname]
            image = _level0(self.viewer.layers[iname])
            labels = _level0(labels_layer)
            if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
                notify_error(f"{iname}: expected a 2-D grey or RGB image layer")
                return None
            if labels.ndim != 2 or labels.shape != image.shape[:2]:
                notify_error(f"{lname}: labels {labels.shape} do not match image {iname} "
                             f"{image.shape[:2]}")
                return None
            job_args = ("labels", model, image, labels, labels_layer.features.copy())
            ret = lambda res: self._on_embedded(res, labels_layer=lname)  # noqa: E731
        elif src.startswith("crops: "):
            layer = self.viewer.layers[src[len("crops: "):]]
            job_args = ("table", model, layer.metadata["table"])
            ret = self._on_embedded
        else:
            folder = self.cells_edit.text().strip()
            if not folder:
                notify_error("choose a cell crop folder first")
                return None
            job_args = ("folder", model, folder)
            ret = self._on_embedded
        return self._run(_embed_job, *job_args, self._bridge, self._cancel,
                         returned=ret, label="embedding", torch=True)

    def embed_cells(self, cells, labels_layer: str | None = None) -> np.ndarray:
        """Synchronous embedding of a ``CellCropDataset`` (tests, scripts)."""
        z = self.model.embed(cells)
        self._on_embedded((cells, z), labels_layer=labels_layer)
        return z

    def _on_embedded(self, result, labels_layer: str | None = None):
        cells, z = result
        self.cells, self.latents = cells, z
        if labels_layer is not None:
            layer = self.viewer.layers[labels_layer]
            layer.features = labels_features_with_latents(layer.features, cells, z)
            target = labels_layer
        else:
            for name in (CROPS_LAYER, POINTS_LAYER):
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            from ..viewer.palettes import link_crop_class

            link_crop_class(self.viewer, add_layer_tuples(self.viewer,
                                                          crops_layer_tuples(cells, z))[0])
            target = POINTS_LAYER
        self.session.add_embedding(EmbeddingRef(name="bvae", layer=target, data=z,
                                                source="bvae"))
        n = len(cells) - 1
        for s in (self.cell_index, self.cell_a, self.cell_b):
            s.setRange(0, max(n, 0))
        self.cell_b.setValue(max(n, 0))
        msg = f"embedded {len(cells)} cells"
        if cells.skipped:
            msg += f" ({len(cells.skipped)} crops without a cell skipped)"
        self.status.setText(msg)
        notify_info(msg)

    def traverse(self, index: int | None = None, sync: bool = False):
        """Traversal of the chosen embedded cell -> Image layer (dims, steps, H, W, 3)."""
        if self.model is None or self.cells is None:
            notify_error("train/load a model and embed cells first")
            return None
        idx = self.cell_index.value() if index is None else int(index)
        args = (self.model, self.cells, idx, self.steps.value(), self.span.value(),
                self.top_dims.value() or None)
        if sync:
            self._on_traversal(_traverse_job(*args, None, None))
            return self.traversal
        return self._run(_traverse_job, *args, self._bridge, self._cancel,
                         returned=self._on_traversal, label="traversing", torch=True)

    def _on_traversal(self, trav):
        self.traversal = trav
        if TRAVERSAL_LAYER in self.viewer.layers:
            self.viewer.layers.remove(TRAVERSAL_LAYER)
        (layer,) = add_layer_tuples(self.viewer, [traversal_layer_tuple(trav)])
        self.viewer.dims.axis_labels = ("latent dim", "step", "crop", "y", "x")
        self.viewer.dims.set_current_step(0, 0)
        self.viewer.dims.set_current_step(1, len(trav.values) // 2)
        self.status.setText("traversal: rows = dims " + ", ".join(
            map(str, trav.dims[:8])) + (" …" if len(trav.dims) > 8 else ""))
        self._on_step()

    def current_point(self) -> tuple[int, int]:
        """(row, step) of the traversal under napari's sliders."""
        step = self.viewer.dims.current_step
        return int(step[0]), int(step[1])

    def _on_step(self, *_):
        try:
            self._show_step()
        except RuntimeError:  # the Qt side is gone: stop listening
            self._disconnect()

    def _show_step(self):
        trav = self.traversal
        if trav is None or TRAVERSAL_LAYER not in self.viewer.layers:
            return
        if self.viewer.dims.ndim < 4:
            return
        row, step = self.current_point()
        row = min(row, len(trav.dims) - 1)
        step = min(step, len(trav.values) - 1)
        self.step_label.setText(f"dim {int(trav.dims[row])} (rank {row + 1}), "
                                f"{trav.values[step]:+.2f} σ")
        if self.model is not None and self.model.has_expression:
            try:
                fill_table(self.expr_table, expression_at(self.model, trav, row, step))
            except Exception as exc:  # noqa: BLE001 - never crash on a slider move
                notify_error(exc)
        else:
            fill_table(self.expr_table, None)

    def run_trajectory(self, sync: bool = False):
        if self.model is None or self.cells is None:
            notify_error("train/load a model and embed cells first")
            return None
        args = (self.model, self.cells, self.latents, self.cell_a.value(),
                self.cell_b.value(), self.traj_steps.value(), self.traj_method.currentText())
        if sync:
            self._on_trajectory(_trajectory_job(*args))
            return self.trajectory
        return self._run(_trajectory_job, *args, returned=self._on_trajectory,
                         label="trajectory", torch=True)

    def _on_trajectory(self, traj):
        self.trajectory = traj
        if TRAJECTORY_LAYER in self.viewer.layers:
            self.viewer.layers.remove(TRAJECTORY_LAYER)
        add_layer_tuples(self.viewer, [trajectory_layer_tuple(traj)])
        table = trajectory_trend_table(traj)
        fill_table(self.traj_table, None if table is None else table.round(3))
        self.status.setText(f"trajectory: {len(traj.t)} steps ({traj.method})")


# --------------------------------------------------------------------------- worker jobs


def _level0(layer) -> np.ndarray:
    """Full-resolution data of a (possibly multiscale) layer as a numpy array."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def _train_job(cells, genes, cmap, config, out, progress, cancel):
    from ..models.betavae import train_bvae

    return train_bvae(cells, genes=genes, class_map=cmap, config=config, out_dir=out,
                      progress=progress, cancel=cancel)


def _load_job(path):
    from ..models import open_model

    return open_model(path, "cpu", kind="bvae")


def _embed_job(kind, model, *args):
    from ..data.cells import CellCropDataset

    *payload, progress, cancel = args
    size = model.config.image_size
    if kind == "labels":
        image, labels, feats = payload
        cells = CellCropDataset.from_segmentation(image, labels, feats, size=size,
                                                  progress=progress, cancel=cancel)
    elif kind == "table":
        cells = CellCropDataset.from_table(payload[0], size=size, progress=progress,
                                           cancel=cancel)
    else:
        cells = CellCropDataset.from_folder(Path(payload[0]), size=size, progress=progress,
                                            cancel=cancel)
    return cells, model.embed(cells, cancel=cancel)


def _traverse_job(model, cells, index, steps, span, top, progress=None, cancel=None):
    from ..analysis.traversal import latent_traversal

    return latent_traversal(model, cells, index=index, n_steps=steps, span=span, top=top,
                            progress=progress, cancel=cancel)


def _trajectory_job(model, cells, latents, a, b, steps, method):
    from ..analysis.trajectory import latent_trajectory

    if latents is None:
        latents = model.embed(cells)
    return latent_trajectory(model, latents[a], latents[b], n_steps=steps, method=method,
                             reference=latents)
