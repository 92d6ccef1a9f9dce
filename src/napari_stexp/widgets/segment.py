"""Segment dock widget: choose an image layer, a backend, a device and a tile size; run in a
worker thread (progress bar, cancel) and get a Labels layer ``"<image> cells"`` whose
``features`` hold one row per cell (label, centroid, bbox, area, score[, class]).

The Labels layer takes the image layer's ``scale`` and ``translate``, so cells overlay the image
in its physical frame. The GUI-free functions :func:`segment_layer_data` and
:func:`cells_layer_tuple` do the work (tests call them directly).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import CancelledError
from ._common import notify_error, notify_info, start_worker

if TYPE_CHECKING:
    import napari.viewer

CELLS_SUFFIX = " cells"
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Whole-slide labels above this many pixels get a lazy multiscale pyramid in napari.
MULTISCALE_PIXELS = 4096 * 4096

TOOLTIPS = {
    "image": "Image layer to segment (RGB smear/H&E or grey). Level 0 of a multiscale image.",
    "method": "classical: stain colour + watershed (no weights). maskrcnn: torchvision Mask "
              "R-CNN (give trained weights). cellpose: when installed.",
    "device": "auto picks cuda, then mps, then cpu (Mask R-CNN and cellpose only)",
    "tile": "0: whole image (large images are tiled anyway). Else tile size in pixels.",
    "overlap": "0: the backend's default (about 1.5 cell diameters)",
    "mode": "cells: white cells in blood smears (nucleus + cytoplasm). nuclei: H&E nuclei.",
    "stain": "classical: the channel nuclei are found in. auto: purple (B - (R+G)/2) for RGB, "
             "dark for grey. hematoxylin: colour deconvolution with the slide's own H&E "
             "vectors (estimated on tissue); usually finds more H&E nuclei.",
    "tissue": "classical: on whole slides, segment only inside the tissue mask (auto: H&E "
              "nuclei mode on large images); settings are then estimated on tissue.",
    "diameter": "expected cell diameter in pixels; 0 estimates it from the image",
    "min_area": "smallest object kept, in pixels; 0: from the diameter",
    "weights": "Mask R-CNN: empty = untrained, 'coco', 'imagenet' or a trained model file",
    "backbone": "Mask R-CNN backbone (ignored when the weights file says otherwise)",
    "score": "Mask R-CNN: keep detections scoring at least this",
    "roi": "Mask R-CNN: keep each cell's RoI features (for the β-VAE's second branch)",
}


# --------------------------------------------------------------------------- GUI-free helpers


def layer_image(data: Any) -> Any:
    """The array to segment from an Image layer's data (level 0 of a multiscale list or of
    napari's ``MultiScaleData``)."""
    from collections.abc import Sequence

    if isinstance(data, Sequence) and not isinstance(data, str):
        return data[0]
    return data


def segment_layer_data(data: Any, method: str = "classical", *, device: str = "auto",
                       tile_size: int | None = None, overlap: int | None = None,
                       progress=None, cancel=None, **params: Any):
    """Segment an Image layer's data; returns a :class:`SegmentationResult`.

    Whole slides (more than ``MULTISCALE_PIXELS``) write their labels tile by tile to a zarr
    array in a temporary folder, so memory stays bounded; the layer reads it lazily.
    """
    import tempfile
    from pathlib import Path

    from ..segmentation import segment

    img = layer_image(data)
    labels_out = None
    if int(img.shape[0]) * int(img.shape[1]) > MULTISCALE_PIXELS:
        labels_out = Path(tempfile.mkdtemp(prefix="napari-stexp-cells-")) / "labels.zarr"
    return segment(img, method=method, device=device, tile_size=tile_size or None,
                   overlap=overlap or None, labels_out=labels_out, progress=progress,
                   cancel=cancel, **params)


def _labels_pyramid(labels: Any) -> tuple[Any, bool]:
    shape = labels.shape
    if shape[0] * shape[1] <= MULTISCALE_PIXELS:
        return labels, False
    levels, k = [labels], 2
    while max(shape[0], shape[1]) // k >= 512:
        levels.append(labels[::k, ::k])
        k *= 2
    return levels, True


def cells_layer_tuple(image_name: str, result, *, scale=None, translate=None,
                      method: str = "classical") -> tuple:
    """A Labels layer tuple ``"<image> cells"`` in the image's frame with one features row
    per label (the RoI features, when present, go to ``metadata['roi_features']``)."""
    data, multiscale = _labels_pyramid(result.labels)
    if not multiscale:
        data = np.asarray(data)
    table = result.table.reset_index(drop=True)
    meta = {"kind": "cells", "source_image": image_name, "method": method,
            "segmentation": dict(result.metadata)}
    if result.roi_features is not None:
        meta["roi_features"] = result.roi_features
    attrs: dict[str, Any] = {"name": f"{image_name}{CELLS_SUFFIX}", "features": table,
                             "metadata": meta, "opacity": 0.5, "multiscale": multiscale}
    if scale is not None:
        attrs["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        attrs["translate"] = tuple(float(t) for t in translate)
    return data, attrs, "labels"


def add_or_update_cells(viewer, image_layer, result, method: str):
    """Add the cells Labels layer for ``image_layer`` (or replace the data of an existing one
    with the same name). Returns the layer. Main thread only."""
    from napari.layers import Layer

    data, attrs, ltype = cells_layer_tuple(image_layer.name, result,
                                           scale=image_layer.scale[-2:],
                                           translate=image_layer.translate[-2:], method=method)
    name = attrs["name"]
    if name in viewer.layers and viewer.layers[name].__class__.__name__ == "Labels":
        layer = viewer.layers[name]
        layer.data = data
        layer.features = attrs["features"]
        layer.metadata = attrs["metadata"]
        layer.scale, layer.translate = attrs["scale"], attrs["translate"]
        return layer
    layer = Layer.create(data, attrs, ltype)
    viewer.add_layer(layer)
    return layer


# --------------------------------------------------------------------------- widget


class _Emitter(QObject):
    progress = Signal(int, int, str)


class SegmentWidget(QWidget):
    """Dock widget: segment cells in an image layer (see module doc)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        from superqt import QCollapsible

        from ..segmentation import list_backends

        self.viewer = viewer
        self._worker = None
        self._cancel = threading.Event()
        self._emitter = _Emitter()
        self._emitter.progress.connect(self._on_progress)

        self.image_combo = QComboBox()
        self.method_combo = QComboBox()
        self.method_combo.addItems(list_backends(only_available=True))
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 100_000)
        self.tile_spin.setSingleStep(256)
        self.tile_spin.setSpecialValueText("off")

        # advanced settings
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 10_000)
        self.overlap_spin.setSpecialValueText("auto")
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["cells", "nuclei"])
        from ..segmentation.classical import STAINS

        self.stain_combo = QComboBox()
        self.stain_combo.addItems(list(STAINS))
        self.tissue_combo = QComboBox()
        self.tissue_combo.addItems(["auto", "on", "off"])
        self.diameter_spin = QDoubleSpinBox()
        self.diameter_spin.setRange(0, 10_000)
        self.diameter_spin.setSpecialValueText("auto")
        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(0, 10_000_000)
        self.min_area_spin.setSpecialValueText("auto")
        self.weights_edit = QLineEdit()
        self.weights_edit.setPlaceholderText("none (untrained) | coco | imagenet | file")
        weights_btn = QPushButton("…")
        weights_btn.clicked.connect(self._choose_weights)
        self.backbone_combo = QComboBox()
        self.backbone_combo.addItems(["resnet50", "resnet34", "resnet18", "tiny"])
        self.score_spin = QDoubleSpinBox()
        self.score_spin.setRange(0.0, 1.0)
        self.score_spin.setSingleStep(0.05)
        self.score_spin.setValue(0.5)
        self.roi_check = QCheckBox("keep RoI features")

        self.run_btn = QPushButton("Segment")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status = QLabel("")

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("backend", self.method_combo)
        form.addRow("device", self.device_combo)
        form.addRow("tile size", self.tile_spin)
        adv = QWidget()
        af = QFormLayout(adv)
        af.addRow("overlap", self.overlap_spin)
        af.addRow("mode", self.mode_combo)
        af.addRow("stain", self.stain_combo)
        af.addRow("tissue only", self.tissue_combo)
        af.addRow("diameter (px)", self.diameter_spin)
        af.addRow("min area (px)", self.min_area_spin)
        wrow = QHBoxLayout()
        wrow.addWidget(self.weights_edit)
        wrow.addWidget(weights_btn)
        af.addRow("weights", wrow)
        af.addRow("backbone", self.backbone_combo)
        af.addRow("min score", self.score_spin)
        af.addRow("", self.roi_check)
        self.advanced = QCollapsible("Advanced settings")
        self.advanced.addWidget(adv)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.advanced)
        lay.addLayout(buttons)
        lay.addWidget(self.progress_bar)
        lay.addWidget(self.status)
        lay.addStretch(1)
        for w, key in ((self.image_combo, "image"), (self.method_combo, "method"),
                       (self.device_combo, "device"), (self.tile_spin, "tile"),
                       (self.overlap_spin, "overlap"), (self.mode_combo, "mode"),
                       (self.stain_combo, "stain"), (self.tissue_combo, "tissue"),
                       (self.diameter_spin, "diameter"), (self.min_area_spin, "min_area"),
                       (self.weights_edit, "weights"), (self.backbone_combo, "backbone"),
                       (self.score_spin, "score"), (self.roi_check, "roi")):
            w.setToolTip(TOOLTIPS[key])

        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    # -- layer choices
    def reset_choices(self, *_):
        from napari.layers import Image

        current = self.image_combo.currentText()
        names = [ly.name for ly in self.viewer.layers if isinstance(ly, Image)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)

    def _choose_weights(self):
        path, _ = QFileDialog.getOpenFileName(self, "Mask R-CNN weights", filter="*.pt *.pth")
        if path:
            self.weights_edit.setText(path)

    def params(self) -> dict:
        """Backend parameters from the form (only what applies to the chosen backend)."""
        method = self.method_combo.currentText()
        p: dict[str, Any] = {}
        if method == "classical":
            p["mode"] = self.mode_combo.currentText()
            p["stain"] = self.stain_combo.currentText()
            p["tissue"] = {"auto": "auto", "on": True, "off": False}[
                self.tissue_combo.currentText()]
            if self.min_area_spin.value():
                p["min_area"] = int(self.min_area_spin.value())
        if self.diameter_spin.value() and method in ("classical", "cellpose"):
            p["diameter"] = float(self.diameter_spin.value())
        if method == "maskrcnn":
            w = self.weights_edit.text().strip()
            p["weights"] = w or None
            p["backbone"] = self.backbone_combo.currentText()
            p["score_threshold"] = float(self.score_spin.value())
            p["return_roi_features"] = self.roi_check.isChecked()
        if method == "cellpose" and self.weights_edit.text().strip():
            p["pretrained_model"] = self.weights_edit.text().strip()
        return p

    # -- running
    def run(self):
        """Start segmentation in a worker; returns the worker (or None when nothing to do)."""
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            notify_error("choose an image layer to segment")
            return None
        layer = self.viewer.layers[name]
        method = self.method_combo.currentText()
        self._cancel = threading.Event()
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.status.setText(f"segmenting {name} ({method}) …")
        emit = self._emitter.progress.emit
        data, cancel, params = layer.data, self._cancel, self.params()
        device = self.device_combo.currentText()
        tile = int(self.tile_spin.value()) or None
        overlap = int(self.overlap_spin.value()) or None

        def job():
            return segment_layer_data(
                data, method, device=device, tile_size=tile, overlap=overlap, cancel=cancel,
                progress=lambda d, t, m: emit(int(d), int(t), str(m)), **params)

        self._worker = start_worker(job, returned=lambda res: self._on_done(name, method, res),
                                    errored=self._on_error, finished=self._on_finished)
        return self._worker

    def cancel(self):
        self._cancel.set()
        self.status.setText("cancelling …")

    def _on_progress(self, done: int, total: int, message: str):
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(min(done, max(total, 1)))
        self.status.setText(message)

    def _on_done(self, image_name: str, method: str, result):
        if image_name not in self.viewer.layers:
            notify_error(f"image layer '{image_name}' was removed during segmentation")
            return
        try:
            layer = add_or_update_cells(self.viewer, self.viewer.layers[image_name], result,
                                        method)
        except Exception as exc:  # noqa: BLE001 - a layer napari refuses: report, keep the GUI alive
            notify_error(f"cannot show the cells: {exc}")
            return
        self.status.setText(f"{result.n_objects} cells -> '{layer.name}'")

    def _on_error(self, exc):
        if isinstance(exc, CancelledError):
            self.status.setText("cancelled")
            notify_info("segmentation cancelled")
        else:
            self.status.setText("failed")
            notify_error(exc)

    def _on_finished(self):
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self._worker = None
