"""Latent-space explorer: a GPU scatter of any embedding, linked both ways with the slide layers.

The scatter is a view of features tables: lasso/rectangle selections write the categorical
selection column (``session.selection_column``, default ``"selection"``) into every linked
layer's ``features`` and those layers highlight the rows; selecting points/shapes or picking a
label in the slide rings the matching points in the scatter. The work is GUI-free (projection:
``analysis.projection``; geometry and the column: ``analysis.selection``; per layer type:
``napari_stexp.viewer.layer_links``); this module only wires it to Qt.

Missing rows (NaN in the embedding) stay in every table: they are counted in the info line, not
drawn, and can never be selected.
"""

from __future__ import annotations

import threading
from pathlib import Path

import matplotlib.path  # noqa: F401  (the lasso's point-in-polygon: imported up front)
import numpy as np
import pandas as pd
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ..analysis.projection import Projection, project, umap_available
from ..analysis.selection import (
    UNSELECTED,
    assign_group,
    codes_from_column,
    export_groups_csv,
    export_groups_h5ad,
    groups_in,
    points_in_polygon,
    points_in_rectangle,
    selection_categorical,
)
from ..errors import CancelledError, InputError, StexpError
from ..session import get_session
from ..viewer.layer_links import (
    GROUPS_KEY,
    SEP,
    Embedding,
    apply_highlight,
    colour_options,
    colour_values,
    describe_point,
    discover_sources,
    layer_adata,
    link_for,
    n_items,
    resolve_source,
    sibling_rows,
    source_columns,
    write_column,
)
from ._common import notify_error, notify_info, start_worker
from ._scatter_canvas import (
    COLORMAPS,
    SLIDE_SELECTION_COLOR,
    ColourMapping,
    ScatterCanvas,
    categorical_colors,
    colormap_lut,
    continuous_colors,
    group_colors,
    is_categorical,
)

METHOD_LABELS = {"pca": "PCA", "umap": "UMAP", "dims": "Two dimensions"}
TIPS = {
    "source": "Embedding to show: session embeddings, feature columns with a common prefix "
              "(bvae_0, bvae_1, …; the same columns in several layers make one multi-slide "
              "scatter), all numeric features of a layer, or an AnnData obsm matrix.",
    "method": "PCA (exact, deterministic), UMAP (seeded; needs umap-learn) or two chosen "
              "dimensions. Projections are cached: recolouring never recomputes them.",
    "tools": "Pan/zoom: drag and wheel. Lasso/Rectangle: drag to select into the current group "
             "(Shift: add to it, Alt/Ctrl: remove from it); the wheel still zooms.",
    "colour": "Colour by a feature of the linked layers, an obs column, an embedding dimension "
              "or a gene (log-normalised counts, or a stored AnnData layer such as predictions).",
    "group": "Lasso/rectangle selections go to this group; every row is in at most one group.",
    "column": "Name of the categorical column written into the linked layers' features.",
    "from_slide": "Put the items selected in the slide (selected points/shapes, picked label) "
                  "into the current group.",
}


UNSELECTED_GREY = (0.62, 0.62, 0.66, 0.8)


def _default_size(n: int) -> float:
    return 7.0 if n <= 1_000 else 5.0 if n <= 10_000 else 3.0 if n <= 100_000 else 2.0


class _Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int, str)


class ExplorerWidget(QWidget):
    """Scatter of an embedding (PCA/UMAP/two dims) linked two ways with Points/Labels/Shapes."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.embedding: Embedding | None = None
        self.projection: Projection | None = None
        self.groups: list[str] = []
        self.codes = np.zeros(0, np.int16)
        self.slide_indices = np.zeros(0, np.int64)
        self.mapping: ColourMapping | None = None
        self.colour_key: str | None = None  # None: pick a sensible default per embedding
        self.colormap = "viridis"
        self.clim: tuple[float, float] | None = None
        self._values = None
        self._grey: np.ndarray | None = None  # the unselected colour of every point
        self._layer_sizes: dict[str, int] = {}
        self._connections: list[tuple[object, object]] = []
        self._picked: set[str] = set()  # Labels layers where the user picked a label
        self._label_seen: dict[str, int] = {}  # selected_label when linked / last picked
        self._writing = False
        self._worker = None
        self._cancel = threading.Event()
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._build_ui()
        self.refresh_sources()
        self.session.events.embeddings.connect(self._refresh_soon)
        self.session.events.adatas.connect(self._refresh_soon)
        self.session.events.selection_column.connect(self._on_session_column)
        self.viewer.layers.events.inserted.connect(self._refresh_soon)
        self.viewer.layers.events.removed.connect(self._refresh_soon)

    # -- UI -----------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.source_combo = QComboBox()
        self.source_combo.setToolTip(TIPS["source"])
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        refresh = QPushButton("↻")
        refresh.setToolTip("Look for embeddings again")
        refresh.setMaximumWidth(32)
        refresh.clicked.connect(self.refresh_sources)
        self.method_combo = QComboBox()
        self.method_combo.setToolTip(TIPS["method"])
        for key, label in METHOD_LABELS.items():
            self.method_combo.addItem(label, key)
        if not umap_available():
            item = self.method_combo.model().item(1)
            item.setEnabled(False)
            item.setToolTip("UMAP needs the optional package umap-learn "
                            "(pip install 'napari-stexp[umap]')")
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.x_combo, self.y_combo = QComboBox(), QComboBox()
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.compute_btn = QPushButton("Show")
        self.compute_btn.clicked.connect(lambda: self.compute())
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self._cancel.set)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.info_label = QLabel("choose an embedding and press Show")
        self.info_label.setWordWrap(True)

        self.scatter = ScatterCanvas(parent=self)
        self.scatter.on_polygon = self.select_polygon
        self.scatter.on_rectangle = self.select_rectangle
        self.scatter.on_hover = self._on_hover
        self.scatter.native.setMinimumSize(280, 280)

        self.tool_group = QButtonGroup(self)
        tools = QHBoxLayout()
        for i, (key, label) in enumerate((("pan", "Pan/zoom"), ("lasso", "Lasso"),
                                          ("rectangle", "Rectangle"))):
            b = QRadioButton(label)
            b.setToolTip(TIPS["tools"])
            b.setProperty("tool", key)
            self.tool_group.addButton(b, i)
            tools.addWidget(b)
            if key == "pan":
                b.setChecked(True)
        self.tool_group.buttonClicked.connect(lambda b: self.set_tool(b.property("tool")))
        self.size_spin = QDoubleSpinBox()
        self.size_spin.setRange(1.0, 30.0)
        self.size_spin.setValue(3.0)
        self.size_spin.setToolTip("Point size in screen pixels")
        self.size_spin.valueChanged.connect(self.scatter.set_point_size)
        reset = QPushButton("Reset view")
        reset.clicked.connect(self.scatter.reset_view)
        tools.addWidget(self.size_spin)
        tools.addWidget(reset)

        self.colour_combo = QComboBox()
        self.colour_combo.setEditable(True)
        self.colour_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.colour_combo.setToolTip(TIPS["colour"])
        completer = QCompleter(self.colour_combo.model(), self.colour_combo)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.colour_combo.setCompleter(completer)
        self.colour_combo.activated.connect(
            lambda i: self.set_colour_by(self.colour_combo.itemText(i)))
        self.cmap_combo = QComboBox()
        self.cmap_combo.addItems(COLORMAPS)
        self.cmap_combo.currentTextChanged.connect(self.set_colormap)
        self.lo_spin, self.hi_spin = QDoubleSpinBox(), QDoubleSpinBox()
        for s in (self.lo_spin, self.hi_spin):
            s.setDecimals(4)
            s.setRange(-1e12, 1e12)
            s.setKeyboardTracking(False)
            s.setToolTip("Contrast limits of the colormap")
            s.valueChanged.connect(self._on_clim_edited)
        self.colorbar = QLabel()
        self.colorbar.setFixedHeight(12)
        self.colorbar.setScaledContents(True)
        self.legend = QListWidget()

        self.group_combo = QComboBox()
        self.group_combo.setToolTip(TIPS["group"])
        new_group = QPushButton("New group")
        new_group.clicked.connect(lambda: self._ask_new_group())
        clear_group = QPushButton("Clear group")
        clear_group.clicked.connect(lambda: self.clear_group(self.current_group))
        self.column_edit = QLineEdit(self.session.selection_column)
        self.column_edit.setToolTip(TIPS["column"])
        self.column_edit.editingFinished.connect(self._on_column_edited)
        self.from_slide_btn = QPushButton("Slide selection → group")
        self.from_slide_btn.setToolTip(TIPS["from_slide"])
        self.from_slide_btn.clicked.connect(self.add_slide_selection)
        self.export_combo = QComboBox()
        self.export_csv_btn = QPushButton("Export CSV…")
        self.export_csv_btn.clicked.connect(lambda: self._export_dialog("csv"))
        self.export_h5ad_btn = QPushButton("Export h5ad…")
        self.export_h5ad_btn.clicked.connect(lambda: self._export_dialog("h5ad"))
        self.hover_label = QLabel("")
        self.hover_label.setWordWrap(True)

        top = QFormLayout()
        src_row = QHBoxLayout()
        src_row.addWidget(self.source_combo, 1)
        src_row.addWidget(refresh)
        top.addRow("Embedding", src_row)
        top.addRow("Projection", self.method_combo)
        dims = QHBoxLayout()
        dims.addWidget(QLabel("x"))
        dims.addWidget(self.x_combo, 1)
        dims.addWidget(QLabel("y"))
        dims.addWidget(self.y_combo, 1)
        top.addRow("Dimensions", dims)
        top.addRow("Seed", self.seed_spin)
        run = QHBoxLayout()
        run.addWidget(self.compute_btn)
        run.addWidget(self.cancel_btn)
        run.addWidget(self.progress)

        colour_box = QGroupBox("Colour")
        cf = QFormLayout(colour_box)
        cf.addRow("by", self.colour_combo)
        # Continuous controls and the category legend share one fixed-size stack, so switching
        # between them never re-lays out the dock (which would resize and redraw the scatter).
        cont_page = QWidget()
        cl = QVBoxLayout(cont_page)
        cl.setContentsMargins(0, 0, 0, 0)
        cmap_row = QHBoxLayout()
        cmap_row.addWidget(self.cmap_combo)
        cmap_row.addWidget(self.lo_spin)
        cmap_row.addWidget(self.hi_spin)
        cl.addLayout(cmap_row)
        cl.addWidget(self.colorbar)
        cl.addStretch(1)
        self.colour_stack = QStackedWidget()
        self.colour_stack.addWidget(cont_page)
        self.colour_stack.addWidget(self.legend)
        self.colour_stack.setFixedHeight(96)
        cf.addRow(self.colour_stack)

        sel_box = QGroupBox("Selection")
        sf = QFormLayout(sel_box)
        g_row = QHBoxLayout()
        g_row.addWidget(self.group_combo, 1)
        g_row.addWidget(new_group)
        g_row.addWidget(clear_group)
        sf.addRow("group", g_row)
        sf.addRow("column", self.column_edit)
        sf.addRow(self.from_slide_btn)
        e_row = QHBoxLayout()
        e_row.addWidget(self.export_combo, 1)
        e_row.addWidget(self.export_csv_btn)
        e_row.addWidget(self.export_h5ad_btn)
        sf.addRow("export", e_row)

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(run)
        lay.addWidget(self.info_label)
        lay.addWidget(self.scatter.native, 1)
        lay.addLayout(tools)
        lay.addWidget(self.hover_label)
        lay.addWidget(colour_box)
        lay.addWidget(sel_box)
        self._on_method_changed()
        self._update_colour_controls()

    # -- sources ------------------------------------------------------------------------------
    def _refresh_soon(self, *args) -> None:
        QTimer.singleShot(0, self.refresh_sources)

    def refresh_sources(self) -> None:
        """Re-list embeddings (session, layer features, AnnData obsm) keeping the current one."""
        try:
            sources = discover_sources(self.viewer.layers, self.session)
        except RuntimeError:  # widget being deleted
            return
        current = self.source_combo.currentData()
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        for key, label in sources.items():
            self.source_combo.addItem(label, key)
        i = self.source_combo.findData(current) if current else -1
        self.source_combo.setCurrentIndex(max(i, 0) if sources else -1)
        self.source_combo.blockSignals(False)
        if self.source_combo.currentData() != current:
            self._on_source_changed()

    @property
    def sources(self) -> dict[str, str]:
        return {self.source_combo.itemData(i): self.source_combo.itemText(i)
                for i in range(self.source_combo.count())}

    def set_source(self, key: str) -> None:
        i = self.source_combo.findData(key)
        if i < 0:
            self.refresh_sources()
            i = self.source_combo.findData(key)
        if i < 0:
            raise InputError(key, "no such embedding in the viewer or session")
        self.source_combo.setCurrentIndex(i)
        self._on_source_changed()

    def _on_source_changed(self, *args) -> None:
        key = self.source_combo.currentData()
        cols: list[str] = []
        if key:
            try:
                cols = self._peek_columns(key)
            except (InputError, StexpError) as exc:
                notify_error(exc)
        for combo, default in ((self.x_combo, 0), (self.y_combo, 1)):
            combo.clear()
            combo.addItems(cols)
            combo.setCurrentIndex(min(default, len(cols) - 1))

    def _peek_columns(self, key: str) -> list[str]:
        return source_columns(key, self.viewer.layers, self.session)

    def _on_method_changed(self, *args) -> None:
        dims = self.method_combo.currentData() == "dims"
        self.x_combo.setEnabled(dims)
        self.y_combo.setEnabled(dims)
        self.seed_spin.setEnabled(self.method_combo.currentData() == "umap")

    def set_method(self, method: str, dims: tuple[int, int] | None = None) -> None:
        self.method_combo.setCurrentIndex(self.method_combo.findData(method))
        if dims is not None:
            self.x_combo.setCurrentIndex(int(dims[0]))
            self.y_combo.setCurrentIndex(int(dims[1]))

    # -- projection ---------------------------------------------------------------------------
    def compute(self, block: bool = False):
        """Resolve the chosen embedding and project it (in a worker unless ``block``).

        Returns the worker (None when blocking or on error). Bad input becomes a notification
        and leaves the current scatter untouched.
        """
        key = self.source_combo.currentData()
        if not key:
            notify_error("no embedding to show: add a layer with embedding features, a session "
                         "embedding or an AnnData with obsm")
            return None
        try:
            emb = resolve_source(key, self.viewer.layers, self.session)
        except (InputError, StexpError) as exc:
            notify_error(exc)
            return None
        method = self.method_combo.currentData()
        if method == "umap" and not umap_available():
            notify_error("UMAP needs the optional package umap-learn "
                         "(pip install 'napari-stexp[umap]'); use PCA or two dimensions")
            return None
        kwargs = {"dims": (max(self.x_combo.currentIndex(), 0), max(self.y_combo.currentIndex(),
                                                                     0)),
                  "seed": int(self.seed_spin.value()), "column_names": emb.columns,
                  "source": emb.label}
        if block:
            try:
                proj = project(emb.data, method, **kwargs)
            except (InputError, StexpError) as exc:
                notify_error(exc)
                return None
            self._apply_safely(emb, proj)
            return None
        self._cancel.clear()
        self.compute_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)

        def work():
            return project(emb.data, method, progress=self._bridge.progress.emit,
                           cancel=self._cancel, **kwargs)

        self._worker = start_worker(work, returned=lambda p: self._apply_safely(emb, p),
                                    errored=self._on_worker_error, finished=self._on_finished)
        return self._worker

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, max(total, 1) if total > 1 else 0)
        self.progress.setValue(done)
        self.progress.setFormat(message)

    def _on_worker_error(self, exc) -> None:
        if isinstance(exc, CancelledError):
            notify_info("projection cancelled: the scatter is unchanged")
        else:
            notify_error(exc)

    def _on_finished(self) -> None:
        self._worker = None
        try:
            self.compute_btn.setEnabled(True)
            self.cancel_btn.setEnabled(False)
            self.progress.setVisible(False)
        except RuntimeError:  # widget deleted meanwhile
            pass

    def _apply_safely(self, emb: Embedding, proj: Projection) -> None:
        try:
            self._apply_projection(emb, proj)
        except (InputError, StexpError) as exc:  # a layer changed while the worker ran
            notify_error(exc)
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def _apply_projection(self, emb: Embedding, proj: Projection) -> None:
        """Show ``proj`` of ``emb`` (main thread): points, groups from the layers, links."""
        if len(proj) != emb.n:
            notify_error(f"{emb.label}: projection has {len(proj)} rows for {emb.n} items")
            return
        named = {layer.name: layer for layer in self.viewer.layers}
        for k, name in enumerate(emb.links.layer_names):  # did a layer shrink meanwhile?
            rows = emb.links.rows[emb.links.layer_codes == k]
            if name in named and rows.size and rows.max() >= n_items(named[name]):
                raise InputError(name, "changed while the projection ran; press Show again")
        self._disconnect_layers()
        self.embedding, self.projection = emb, proj
        self._layer_sizes = {n: n_items(named[n]) for n in emb.links.layer_names if n in named}
        self._read_groups_from_layers()
        self.slide_indices = np.zeros(0, np.int64)
        self._connect_layers()
        self.size_spin.blockSignals(True)
        self.size_spin.setValue(_default_size(emb.n))
        self.size_spin.blockSignals(False)
        self.scatter.set_point_size(_default_size(emb.n))
        options = colour_options(emb, self.viewer.layers, self.column)
        self.colour_combo.blockSignals(True)
        self.colour_combo.clear()
        self.colour_combo.addItems(options)
        self.colour_combo.blockSignals(False)
        key = self.colour_key if self.colour_key in options else self._default_colour(options)
        self.colour_key, self._values, self.clim = key, None, None
        try:
            mapping = self._make_mapping()
        except (InputError, StexpError) as exc:
            notify_error(exc)
            self.colour_key, self._values = GROUPS_KEY, None
            mapping = self._make_mapping()
        self.scatter.set_points(proj.coords, mapping.colors)
        self._show_mapping(mapping)
        self._update_group_overlay()
        self._highlight_layers()
        axes = f"{proj.axis_names[0]} × {proj.axis_names[1]}"
        if proj.explained_variance_ratio is not None:
            a, b = proj.explained_variance_ratio
            axes += f" ({100 * a:.1f}% + {100 * b:.1f}% of variance)"
        links = ", ".join(emb.links.layer_names) or "no layer"
        self.info_label.setText(
            f"{emb.label}: {emb.n} points · {proj.n_missing} missing (NaN rows: kept in the "
            f"tables, not drawn, never selected) · {axes} · linked to {links}")
        for note in emb.notes:
            notify_info(f"{emb.label}: {note}")

    @staticmethod
    def _default_colour(options: list[str]) -> str:
        for pref in (f"feature{SEP}label", f"obs{SEP}label", f"feature{SEP}class"):
            if pref in options:
                return pref
        return GROUPS_KEY

    # -- colour -------------------------------------------------------------------------------
    def set_colour_by(self, key: str) -> None:
        """Colour the scatter by ``key`` (one of the colour combo's entries)."""
        if self.embedding is None:
            self.colour_key = key
            return
        if self.colour_combo.findText(key) < 0:
            notify_error(f"cannot colour by {key!r}: not a feature, obs column, dimension or gene")
            return
        old = (self.colour_key, self._values, self.clim)
        self.colour_key, self._values, self.clim = key, None, None
        try:
            mapping = self._make_mapping()
        except (InputError, StexpError) as exc:
            self.colour_key, self._values, self.clim = old
            notify_error(exc)
            return
        self.scatter.set_colors(mapping.colors)
        self._show_mapping(mapping)
        self._update_group_overlay()

    def set_colormap(self, name: str) -> None:
        self.colormap = name
        if self.embedding is not None and self.mapping is not None and \
                self.mapping.mode == "continuous":
            self._recolour()

    def set_contrast(self, lo: float, hi: float) -> None:
        self.clim = (float(lo), float(hi))
        if self.embedding is not None and self.mapping is not None and \
                self.mapping.mode == "continuous":
            self._recolour()

    def _on_clim_edited(self, *args) -> None:
        if self.mapping is None or self.mapping.mode != "continuous":
            return
        lo, hi = self.lo_spin.value(), self.hi_spin.value()
        if hi > lo and (lo, hi) != self.clim:
            self.set_contrast(lo, hi)

    def _recolour(self) -> None:
        mapping = self._make_mapping()
        self.scatter.set_colors(mapping.colors)
        self._show_mapping(mapping)
        self._update_group_overlay()

    def _make_mapping(self) -> ColourMapping:
        emb = self.embedding
        if self.colour_key == GROUPS_KEY:
            return self._group_mapping()
        if self._values is None:
            self._values = colour_values(emb, self.colour_key, self.viewer.layers)
        if is_categorical(self._values):
            return categorical_colors(self._values)
        return continuous_colors(self._values, self.colormap, self.clim)

    def _group_mapping(self) -> ColourMapping:
        """Colour by group: every point in the unselected grey (one array, made once per
        scatter size), the groups drawn by the scatter's ring-less "groups" overlay: a selection
        change redraws the selected points only, never the colours of all of them."""
        pal = group_colors(len(self.groups))
        pal[0] = UNSELECTED_GREY
        n = len(self.codes)
        if self._grey is None or len(self._grey) != n:
            self._grey = np.broadcast_to(pal[0], (n, 4))
        colors = self._grey
        counts = np.bincount(self.codes, minlength=len(self.groups) + 1)
        legend = [(UNSELECTED, pal[0], int(counts[0]))]
        legend += [(g, pal[i + 1], int(counts[i + 1])) for i, g in enumerate(self.groups)]
        return ColourMapping("categorical", colors, legend=legend)

    def _show_mapping(self, mapping: ColourMapping) -> None:
        self.mapping = mapping
        if mapping.mode == "continuous":
            self.clim = mapping.clim
        self.colour_combo.setCurrentText(self.colour_key)
        self._update_colour_controls()

    def _update_colour_controls(self) -> None:
        m = self.mapping
        cont = m is not None and m.mode == "continuous"
        self.colour_stack.setCurrentIndex(0 if cont else 1)
        self.legend.clear()
        if m is None:
            return
        if cont:
            for s, v in ((self.lo_spin, m.clim[0]), (self.hi_spin, m.clim[1])):
                s.blockSignals(True)
                s.setValue(v)
                s.blockSignals(False)
            lut = (colormap_lut(m.colormap, 128)[:, :3] * 255).astype(np.uint8)
            strip = np.ascontiguousarray(np.repeat(lut[None], 2, axis=0))
            img = QImage(strip.data, strip.shape[1], 2, strip.strides[0],
                         QImage.Format.Format_RGB888)
            self.colorbar.setPixmap(QPixmap.fromImage(img.copy()))
            rng = m.data_range or m.clim
            self.colorbar.setToolTip(f"{self.colour_key}: data {rng[0]:.4g} – {rng[1]:.4g}, "
                                     f"shown {m.clim[0]:.4g} – {m.clim[1]:.4g}"
                                     + (f", {m.n_missing} missing" if m.n_missing else ""))
            return
        for name, rgba, count in m.legend[:200]:
            pm = QPixmap(12, 12)
            c = (np.asarray(rgba) * 255).astype(int)
            pm.fill(QColor(int(c[0]), int(c[1]), int(c[2]), int(c[3])))
            self.legend.addItem(QListWidgetItem(QIcon(pm), f"{name} ({count})"))

    @property
    def legend_entries(self) -> list[tuple[str, int]]:
        """(category, count) pairs of the current legend (empty for continuous colours)."""
        if self.mapping is None or self.mapping.mode != "categorical":
            return []
        return [(name, count) for name, _, count in self.mapping.legend]

    # -- groups -------------------------------------------------------------------------------
    @property
    def column(self) -> str:
        return self.session.selection_column or "selection"

    @property
    def current_group(self) -> str | None:
        return self.group_combo.currentText() or None

    def _on_session_column(self, *args) -> None:
        """Another widget renamed the selection column: follow it."""
        try:
            if self.column_edit.text() != self.column:
                self.column_edit.setText(self.column)
            if self.embedding is not None:
                self._disconnect_layers()
                self._read_groups_from_layers()
                self._connect_layers()
                self._after_codes_changed(highlight=True)
        except RuntimeError:
            pass

    def _on_column_edited(self) -> None:
        name = self.column_edit.text().strip()
        if not name or name == self.column:
            return
        self.session.selection_column = name  # -> _on_session_column re-reads the groups

    def add_group(self, name: str | None = None) -> str:
        """Add a named group (default "group k") and make it current."""
        if name is None:
            k = len(self.groups) + 1
            while f"group {k}" in self.groups:
                k += 1
            name = f"group {k}"
        name = str(name).strip()
        if not name or name == UNSELECTED:
            raise InputError(name or "group", "choose another group name")
        if name not in self.groups:
            self.groups.append(name)
            self._sync_group_combos()
        self.group_combo.setCurrentText(name)
        return name

    def _ask_new_group(self) -> None:
        name, ok = QInputDialog.getText(self, "New group", "Group name")
        if ok:
            try:
                self.add_group(name or None)
            except InputError as exc:
                notify_error(exc)

    def _sync_group_combos(self) -> None:
        cur, exp = self.group_combo.currentText(), self.export_combo.currentText()
        for combo, items in ((self.group_combo, self.groups),
                             (self.export_combo, ["all groups", *self.groups])):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(items)
            combo.blockSignals(False)
        if cur in self.groups:
            self.group_combo.setCurrentText(cur)
        if exp:
            self.export_combo.setCurrentText(exp)

    def clear_group(self, name: str | None) -> None:
        """Empty group ``name`` (its rows become unselected) and remove it from the list."""
        if self.embedding is None or not name or name not in self.groups:
            return
        g = self.groups.index(name) + 1
        new = self.codes.copy()
        new[new == g] = 0
        new[new > g] -= 1
        groups = [x for x in self.groups if x != name]
        self._write(new, groups)

    def _read_groups_from_layers(self) -> None:
        emb = self.embedding
        named = {layer.name: layer for layer in self.viewer.layers}
        groups = list(self.groups)
        per_layer = {}
        for name in emb.links.layer_names:
            layer = named.get(name)
            if layer is None or self.column not in layer.features:
                continue
            vals = layer.features[self.column]
            for g in groups_in(vals):
                if g not in groups:
                    groups.append(g)
            per_layer[name] = vals
        codes = np.zeros(emb.n, np.int16)
        for name, vals in per_layer.items():
            layer_codes = codes_from_column(vals, groups)
            pts = emb.links.points_of(name)
            rows = emb.links.rows[pts]
            ok = rows < len(layer_codes)
            codes[pts[ok]] = layer_codes[rows[ok]]
        self.groups, self.codes = groups, codes
        self._sync_group_combos()

    # -- selection ----------------------------------------------------------------------------
    def set_tool(self, tool: str) -> None:
        self.scatter.set_tool(tool)
        for b in self.tool_group.buttons():
            if b.property("tool") == tool:
                b.setChecked(True)

    def select_polygon(self, polygon, mode: str = "replace") -> int:
        """Lasso: points inside ``polygon`` (k, 2 scatter coordinates) go to the current group.

        This is the handler the mouse uses. Returns the number of points selected (0: nothing
        changed, with a message).
        """
        if self.projection is None:
            notify_error("show an embedding first")
            return 0
        return self.select_indices(points_in_polygon(self.projection.coords, polygon), mode,
                                   "lasso")

    def select_rectangle(self, corner_a, corner_b, mode: str = "replace") -> int:
        if self.projection is None:
            notify_error("show an embedding first")
            return 0
        return self.select_indices(points_in_rectangle(self.projection.coords, corner_a,
                                                       corner_b), mode, "rectangle")

    def select_indices(self, indices, mode: str = "replace", what: str = "selection") -> int:
        """Assign scatter points ``indices`` (or a mask) to the current group."""
        if self.embedding is None:
            notify_error("show an embedding first")
            return 0
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).ravel()
        if idx.size:
            idx = idx[~self.projection.missing[idx]]
        if idx.size == 0:
            notify_info(f"empty {what}: no point inside, nothing changed")
            return 0
        group = self.current_group or self.add_group()
        try:
            new = assign_group(self.codes, idx, self.groups.index(group) + 1, mode)
            self._write(new, self.groups)
        except (InputError, StexpError) as exc:
            notify_error(exc)
            return 0
        return int(idx.size)

    def _check_layers(self) -> dict:
        """Linked layers that still exist; InputError when one changed its number of items."""
        named = {layer.name: layer for layer in self.viewer.layers}
        live = {}
        for name in self.embedding.links.layer_names:
            layer = named.get(name)
            if layer is None:
                continue
            n = n_items(layer)
            expected = self._layer_sizes.get(name)
            if expected is not None and n != expected:
                raise InputError(name, f"now has {n} items but the scatter was built for "
                                       f"{expected}; press Show again. Nothing was changed")
            live[name] = layer
        return live

    def _write(self, new_codes: np.ndarray, groups: list[str]) -> None:
        """Write the selection column into every linked layer, then highlight (main thread)."""
        emb = self.embedding
        live = self._check_layers()  # raises before anything is written
        colors = group_colors(len(groups))
        self._writing = True
        try:
            for name, layer in live.items():
                f = layer.features
                n = len(f)
                old = codes_from_column(f[self.column], self.groups) if self.column in f else \
                    np.zeros(n, np.int16)
                if groups != self.groups:  # a group was removed: renumber the old codes
                    remap = np.array([0] + [groups.index(g) + 1 if g in groups else 0
                                            for g in self.groups], np.int16)
                    old = remap[old]
                pts = emb.links.points_of(name)
                old[emb.links.rows[pts]] = new_codes[pts]
                write_column(layer, self.column, selection_categorical(old, groups))
                apply_highlight(layer, old, colors, self.viewer.layers)
                # the same spots in the slide's other layers (spots, predicted, measured)
                for sib, rows in sibling_rows(layer, self.viewer.layers, exclude=live):
                    sib_codes = np.where(rows >= 0, old[np.maximum(rows, 0)], 0)
                    write_column(sib, self.column,
                                 selection_categorical(sib_codes.astype(np.int16), groups))
                    apply_highlight(sib, sib_codes.astype(np.int16), colors, self.viewer.layers)
        finally:
            self._writing = False
        self.codes = np.asarray(new_codes, np.int16)
        if groups != self.groups:
            self.groups = list(groups)
            self._sync_group_combos()
        self._after_codes_changed(highlight=False)

    def _after_codes_changed(self, highlight: bool) -> None:
        if highlight:
            self._highlight_layers()
        if self.colour_key == GROUPS_KEY:  # the legend counts; the colours are the overlay's
            self._show_mapping(self._group_mapping())
        self._update_group_overlay()

    def _highlight_layers(self) -> None:
        if self.embedding is None:
            return
        named = {layer.name: layer for layer in self.viewer.layers}
        colors = group_colors(len(self.groups))
        self._writing = True
        try:
            for name in self.embedding.links.layer_names:
                layer = named.get(name)
                if layer is None or self.column not in layer.features:
                    continue
                try:
                    apply_highlight(layer, codes_from_column(layer.features[self.column],
                                                             self.groups), colors,
                                    self.viewer.layers)
                except InputError as exc:
                    notify_error(exc)
        finally:
            self._writing = False

    def _update_group_overlay(self) -> None:
        sel = np.flatnonzero(self.codes > 0)
        colors = group_colors(len(self.groups))[self.codes[sel]] if sel.size else \
            np.zeros((0, 4), np.float32)
        # coloured by group: the selected points drawn in their group colour on top (no ring)
        self.scatter.set_overlay("groups", sel, colors[: sel.size],
                                 ring=self.colour_key != GROUPS_KEY)
        counts = np.bincount(self.codes, minlength=len(self.groups) + 1)
        tip = ", ".join(f"{g}: {int(counts[i + 1])}" for i, g in enumerate(self.groups))
        self.group_combo.setToolTip(f"{TIPS['group']}\n{tip}" if tip else TIPS["group"])

    def group_indices(self, name: str) -> np.ndarray:
        """Scatter indices in group ``name``."""
        if name not in self.groups:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.codes == self.groups.index(name) + 1)

    # -- slide -> scatter ---------------------------------------------------------------------
    def _connect_layers(self) -> None:
        named = {layer.name: layer for layer in self.viewer.layers}
        for name in self.embedding.links.layer_names:
            layer = named.get(name)
            link = link_for(layer) if layer is not None else None
            if link is None:
                continue
            # A Labels layer always has a selected_label (the paint label): it only counts as
            # a selection once the user picks one after the scatter was linked.
            cb = self._on_label_picked if link.kind == "labels" else self._on_slide_selection
            if link.kind == "labels":
                self._label_seen[name] = int(layer.selected_label)
            for emitter in link.selection_emitters(layer):
                emitter.connect(cb)
                self._connections.append((emitter, cb))
            layer.events.features.connect(self._on_layer_features)
            self._connections.append((layer.events.features, self._on_layer_features))

    def _disconnect_layers(self) -> None:
        for emitter, cb in self._connections:
            try:
                emitter.disconnect(cb)
            except Exception:  # noqa: BLE001 - already gone with its layer
                pass
        self._connections = []
        self._picked = set()

    def _on_label_picked(self, event=None) -> None:
        layer = getattr(event, "source", None)
        if self._writing or layer is None:
            return  # our own colormap change can re-emit selected_label: not a pick
        value = int(layer.selected_label)
        if self._label_seen.get(layer.name) == value and layer.name not in self._picked:
            return
        self._label_seen[layer.name] = value
        self._picked.add(layer.name)
        self._on_slide_selection()

    def _on_slide_selection(self, *args) -> None:
        """The user selected points/shapes or picked a label in a linked layer."""
        if self.embedding is None:
            return
        try:
            named = {layer.name: layer for layer in self.viewer.layers}
            parts = []
            for name in self.embedding.links.layer_names:
                layer = named.get(name)
                link = link_for(layer) if layer is not None else None
                if link is None or (link.kind == "labels" and name not in self._picked):
                    continue
                rows = link.read_selection(layer)
                parts.append(self.embedding.links.indices_of(name, rows))
            idx = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            self.slide_indices = idx
            self.scatter.set_overlay("slide", idx, SLIDE_SELECTION_COLOR)
            self.hover_label.setText(f"slide selection: {idx.size} point(s)")
        except RuntimeError:  # widget deleted; the layer outlived it
            self._disconnect_layers()

    def add_slide_selection(self) -> int:
        """Put the current slide selection into the current group (adds to it)."""
        return self.select_indices(self.slide_indices, "add", "slide selection")

    def _on_layer_features(self, event=None) -> None:
        """Another widget (or the user) edited a linked features table: re-read the column."""
        if self._writing or self.embedding is None:
            return
        try:
            self._read_groups_from_layers()
            self._after_codes_changed(highlight=True)
        except RuntimeError:
            self._disconnect_layers()

    # -- hover --------------------------------------------------------------------------------
    def _on_hover(self, index: int | None) -> None:
        if index is None or self.embedding is None:
            return
        extra = {}
        if self.groups:
            c = int(self.codes[index])
            extra["group"] = self.groups[c - 1] if c else UNSELECTED
        if self.colour_key != GROUPS_KEY and self._values is not None:
            v = self._values[index]
            extra[self.colour_key.split(SEP, 1)[-1]] = "missing" if pd.isna(v) else v
        x, y = self.projection.coords[index]
        extra[self.projection.axis_names[0]] = float(x)
        extra[self.projection.axis_names[1]] = float(y)
        text = describe_point(self.embedding, index, self.viewer.layers, extra)
        self.hover_label.setText(text)
        self.scatter.native.setToolTip(text)

    # -- export -------------------------------------------------------------------------------
    def _export_groups(self) -> list[str] | None:
        choice = self.export_combo.currentText()
        return None if not choice or choice == "all groups" else [choice]

    def _tables(self) -> dict[str, pd.DataFrame]:
        emb = self.embedding
        if emb.adata is not None:
            table = pd.DataFrame({"spot_id": np.asarray(emb.adata.obs_names, dtype=str)})
            table[self.column] = selection_categorical(self.codes, self.groups)
            return {emb.label: table}
        named = {layer.name: layer for layer in self.viewer.layers}
        return {n: named[n].features for n in emb.links.layer_names if n in named}

    def export_csv(self, path, groups: list[str] | None = None) -> Path | None:
        """Write ``layer,row,id,group`` for the items in ``groups`` (None: all groups)."""
        if self.embedding is None:
            notify_error("show an embedding first")
            return None
        try:
            out = export_groups_csv(path, self._tables(), column=self.column, groups=groups)
        except (InputError, StexpError, OSError) as exc:
            notify_error(exc)
            return None
        notify_info(f"wrote {out}")
        return out

    def export_h5ad(self, path, groups: list[str] | None = None) -> list[Path]:
        """Store the groups as ``obs[column]`` of the AnnData behind the scatter (or behind each
        linked layer) and write it to ``path`` (``<stem>_<layer>.h5ad`` when several)."""
        from ..analysis.selection import align_to_obs

        if self.embedding is None:
            notify_error("show an embedding first")
            return []
        emb = self.embedding
        jobs = []
        if emb.adata is not None:
            jobs.append((emb.adata, selection_categorical(self.codes, self.groups), None))
        else:
            named = {layer.name: layer for layer in self.viewer.layers}
            for name in emb.links.layer_names:
                layer = named.get(name)
                ad = layer_adata(layer, emb) if layer is not None else None
                if ad is None or self.column not in layer.features:
                    continue
                try:
                    vals = align_to_obs(layer.features, ad.obs_names, self.column, name)
                except InputError as exc:
                    notify_error(exc)
                    return []
                jobs.append((ad, vals, name))
        if not jobs:
            notify_error("no AnnData behind the linked layers: export CSV instead")
            return []
        path = Path(path)
        written = []
        for ad, vals, name in jobs:
            target = path if len(jobs) == 1 else \
                path.with_name(f"{path.stem}_{_safe(name)}{path.suffix or '.h5ad'}")
            try:
                written.append(export_groups_h5ad(target, ad, vals, column=self.column,
                                                  groups=groups))
            except (InputError, StexpError, OSError) as exc:
                notify_error(exc)
        if written:
            notify_info("wrote " + ", ".join(map(str, written)))
        return written

    def _export_dialog(self, kind: str) -> None:
        filt = "CSV (*.csv)" if kind == "csv" else "AnnData (*.h5ad)"
        path, _ = QFileDialog.getSaveFileName(self, f"Export groups ({kind})", "", filt)
        if not path:
            return
        if kind == "csv":
            self.export_csv(path, self._export_groups())
        else:
            self.export_h5ad(path, self._export_groups())

    # -- teardown -----------------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        self.cleanup()
        super().closeEvent(event)

    def cleanup(self) -> None:
        """Disconnect from layers and the session and release the GL canvas (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._cancel.set()
        self._disconnect_layers()
        for emitter, cb in ((self.session.events.embeddings, self._refresh_soon),
                            (self.session.events.adatas, self._refresh_soon),
                            (self.session.events.selection_column, self._on_session_column),
                            (self.viewer.layers.events.inserted, self._refresh_soon),
                            (self.viewer.layers.events.removed, self._refresh_soon)):
            try:
                emitter.disconnect(cb)
            except Exception:  # noqa: BLE001 - already gone with its layer
                pass
        self.scatter.close()


def _safe(name: str | None) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name or "layer"))


__all__ = ["ExplorerWidget"]
