"""Annotate dock widget (the QuPath habit): draw regions on the slide or pick spots, name a
class, and write them as ``obs['label']`` of the AnnData behind the spots layer, which the
classifier widget then trains and evaluates on.

GUI-free work: :mod:`napari_stexp.analysis.annotations` (labels from polygons / picks) and
:mod:`napari_stexp.viewer.annotations` (layer frames, colours).
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import hbox, layer_adata, notify_error

REGIONS_LAYER = "annotations"


class AnnotateWidget(QWidget):
    """Named regions / picked spots -> labels of a spots layer (see module doc)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.spots_combo = QComboBox()
        self.spots_combo.setToolTip("Spots layer whose AnnData gets the labels (obs['label'])")
        self.regions_combo = QComboBox()
        self.regions_combo.setToolTip("Shapes layer with the regions (polygons, rectangles)")
        self.class_edit = QLineEdit()
        self.class_edit.setPlaceholderText("class name, e.g. invasive cancer")
        self.class_edit.setToolTip("New regions and picked spots get this class")
        self.class_edit.textChanged.connect(self._class_changed)
        self.keep_check = QCheckBox("keep labels outside the regions")
        self.keep_check.setToolTip("Off: spots outside every region become unlabelled")
        self.new_btn = QPushButton("New region layer")
        self.new_btn.setToolTip("Add a Shapes layer in polygon mode: draw regions on the slide")
        self.new_btn.clicked.connect(self.new_regions_layer)
        self.name_btn = QPushButton("Name selected regions")
        self.name_btn.clicked.connect(self.name_selected_regions)
        self.pick_btn = QPushButton("Label picked spots")
        self.pick_btn.setToolTip("Give the spots selected in the spots layer this class")
        self.pick_btn.clicked.connect(self.label_picked_spots)
        self.apply_btn = QPushButton("Apply regions as labels")
        self.apply_btn.clicked.connect(self.apply_regions)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("spots", self.spots_combo)
        form.addRow("regions", self.regions_combo)
        form.addRow("class", self.class_edit)
        row = hbox(self.new_btn, self.name_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.keep_check)
        lay.addWidget(self.apply_btn)
        lay.addWidget(self.pick_btn)
        lay.addWidget(self.status)
        lay.addStretch(1)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    def reset_choices(self, *_):
        from napari.layers import Points, Shapes

        for combo, kind in ((self.spots_combo, Points), (self.regions_combo, Shapes)):
            cur = combo.currentText()
            names = [ly.name for ly in self.viewer.layers if isinstance(ly, kind)
                     and (kind is Shapes or layer_adata(ly) is not None)]
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if cur in names:
                combo.setCurrentText(cur)
            combo.blockSignals(False)

    def _layer(self, combo):
        name = combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _class_changed(self, text: str):
        from ..viewer.annotations import CLASS_FEATURE

        shapes = self._layer(self.regions_combo)
        if shapes is not None:
            shapes.feature_defaults = {CLASS_FEATURE: text.strip()}

    def new_regions_layer(self):
        from napari.layers import Shapes

        from ..viewer.annotations import region_layer_kwargs

        layer = Shapes(**region_layer_kwargs(REGIONS_LAYER, self.class_edit.text().strip()))
        self.viewer.add_layer(layer)
        self.regions_combo.setCurrentText(layer.name)
        layer.mode = "add_polygon"
        return layer

    def name_selected_regions(self):
        from ..viewer.annotations import CLASS_FEATURE, colour_regions

        shapes, name = self._layer(self.regions_combo), self.class_edit.text().strip()
        if shapes is None or not name:
            notify_error("choose a region layer and type a class name")
            return 0
        sel = sorted(shapes.selected_data)
        feats = shapes.features.copy()
        if CLASS_FEATURE not in feats:
            feats[CLASS_FEATURE] = ""
        feats[CLASS_FEATURE] = feats[CLASS_FEATURE].astype(object)
        feats.loc[sel, CLASS_FEATURE] = name
        shapes.features = feats
        colour_regions(shapes)
        self.status.setText(f"{len(sel)} region(s) named '{name}'")
        return len(sel)

    def _spots(self):
        points = self._layer(self.spots_combo)
        adata = layer_adata(points) if points is not None else None
        if adata is None:
            notify_error("choose a spots layer opened from ST data (with its AnnData)")
        return points, adata

    def apply_regions(self):
        """Labels from the named regions; returns the spots per class (None on error)."""
        from ..analysis.annotations import labels_from_annotations
        from ..viewer.annotations import colour_regions, regions_from_shapes, show_labels

        points, adata = self._spots()
        shapes = self._layer(self.regions_combo)
        if adata is None:
            return None
        if shapes is None or not len(shapes.data):
            notify_error("draw regions first (New region layer)")
            return None
        polys, names = regions_from_shapes(shapes, points)
        try:
            counts = labels_from_annotations(adata, polys, names, coords=points.data,
                                             keep_existing=self.keep_check.isChecked())
        except Exception as exc:  # noqa: BLE001 - shown, never a crash
            notify_error(exc)
            return None
        colour_regions(shapes)
        show_labels(points, adata)
        self._report(counts, adata)
        return counts

    def label_picked_spots(self):
        from ..analysis.annotations import labels_from_selection
        from ..viewer.annotations import show_labels

        points, adata = self._spots()
        if adata is None:
            return None
        picked = sorted(points.selected_data)
        if not picked:
            notify_error("select spots in the spots layer first")
            return None
        try:
            counts = labels_from_selection(adata, picked, self.class_edit.text().strip())
        except Exception as exc:  # noqa: BLE001
            notify_error(exc)
            return None
        show_labels(points, adata)
        self._report(counts, adata)
        return counts

    def _report(self, counts: dict, adata):
        n = sum(counts.values())
        self.status.setText(f"{n} of {adata.n_obs} spots labelled: " + ", ".join(
            f"{k} ({v})" for k, v in counts.items()) + " — train the classifier on them")
