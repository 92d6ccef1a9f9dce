"""Slide navigator dock widget: a list with thumbnails, patient and availability,
Previous/Next buttons, PageUp/PageDown keys, a colour-by box and a grid view, over the Qt-free
:class:`~napari_stexp.viewer.navigator.SlideNavigator`. Reading runs in a worker so the GUI never
freezes.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from qtpy.QtCore import QSize
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..io.collection import FLAGS, SlideCollection, SlideData
from ..session import get_session
from ..viewer.navigator import (
    CAMERA_MODES,
    KEY_NEXT,
    KEY_PREVIOUS,
    SlideNavigator,
    _unwrap,
    face_color_column,
    viewer_grid,
)
from ._common import hbox, notify_error, notify_info, start_worker

__all__ = ["NavigatorWidget", "SlideNavigator", "face_color_column", "viewer_grid"]


# ============================================================================ dock widget


def _icon(arr: np.ndarray) -> QIcon:
    a = np.ascontiguousarray(arr[..., :3] if arr.ndim == 3 else np.repeat(arr[..., None], 3, 2))
    h, w = a.shape[:2]
    img = QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(img))


class NavigatorWidget(QWidget):
    """Click through slides with their overlays (thumbnails, patient, what is available).

    Keys (canvas focused): PageDown = next slide, PageUp = previous slide.
    """

    THUMB = 64

    def __init__(self, napari_viewer, parent=None, *, cache_dir: str | None = None,
                 thumbnails: bool = True):
        super().__init__(parent)
        viewer = napari_viewer
        self.viewer = viewer
        self.session = get_session(_unwrap(viewer))
        self.nav = SlideNavigator(viewer)
        self.nav.changed.connect(self._on_changed)
        self.cache_dir = cache_dir
        self.thumbnails = thumbnails
        self._worker = None
        self._thumb_worker = None
        self._pending: Any = None  # slide index to read once the running read is done
        self._target: int | None = None  # the slide asked for last

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("folder(s) or files, separated by ';' (her2st, "
                                          "Visium, .h5ad, slides, batch output)")
        file_btn, dir_btn = QPushButton("Files…"), QPushButton("Folder…")
        file_btn.clicked.connect(self._choose_files)
        dir_btn.clicked.connect(self._choose_dir)
        self.open_btn = QPushButton("Open")
        self.open_btn.clicked.connect(lambda: self.open())
        self.loaded_btn = QPushButton("From viewer")
        self.loaded_btn.setToolTip("List the sections already loaded (e.g. by 'Open data')")
        self.loaded_btn.clicked.connect(self.use_loaded)

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Slide", "Patient", "Available"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setIconSize(QSize(self.THUMB, self.THUMB))
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.THUMB + 4)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.cellClicked.connect(lambda row, _col: self.go(row))

        self.prev_btn = QPushButton("◀ Previous")
        self.prev_btn.setToolTip(f"Previous slide ({KEY_PREVIOUS})")
        self.prev_btn.clicked.connect(self.previous)
        self.next_btn = QPushButton("Next ▶")
        self.next_btn.setToolTip(f"Next slide ({KEY_NEXT})")
        self.next_btn.clicked.connect(self.next)

        self.camera_box = QComboBox()
        self.camera_box.addItems(["Keep position (same-size slides)", "Fit each slide"])
        self.camera_box.setToolTip("Serial sections of one size: keep the same physical view "
                                   "when switching. Otherwise the new slide is fitted.")
        self.camera_box.currentIndexChanged.connect(
            lambda i: setattr(self.nav, "camera", CAMERA_MODES[i]))
        self.lock_box = QCheckBox("Same colour limits on every slide")
        self.lock_box.setChecked(True)
        self.lock_box.toggled.connect(lambda on: setattr(self.nav, "lock_contrast", bool(on)))

        self.color_edit = QLineEdit()
        self.color_edit.setPlaceholderText("gene, obs column, 'GENE (predicted)', X_model_0")
        self.color_btn = QPushButton("Colour spots")
        self.color_btn.clicked.connect(lambda: self.color_by(self.color_edit.text().strip()))
        self.color_edit.returnPressed.connect(self.color_btn.click)

        self.grid_n = QSpinBox()
        self.grid_n.setRange(2, 36)
        self.grid_n.setValue(4)
        self.grid_btn = QPushButton("Grid view")
        self.grid_btn.setCheckable(True)
        self.grid_btn.setToolTip("Show N slides side by side (linked cameras, same overlay)")
        self.grid_btn.toggled.connect(self._on_grid_toggled)

        self.status = QLabel("")
        self.status.setWordWrap(True)

        row = hbox(self.path_edit, file_btn, dir_btn)
        row2 = hbox(self.open_btn, self.loaded_btn)
        nav_row = hbox(self.prev_btn, self.next_btn)
        color_row = hbox(self.color_edit, self.color_btn)
        grid_row = hbox("Slides:", self.grid_n, self.grid_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addLayout(row2)
        lay.addWidget(self.table)
        lay.addLayout(nav_row)
        lay.addLayout(color_row)
        lay.addWidget(self.camera_box)
        lay.addWidget(self.lock_box)
        lay.addLayout(grid_row)
        lay.addWidget(self.status)
        self._bind_keys()

    # ------------------------------------------------------------------ keys
    def _bind_keys(self) -> None:
        ref = weakref.ref(self)

        def _next(viewer):
            w = ref()
            if w is not None:
                w.next()

        def _previous(viewer):
            w = ref()
            if w is not None:
                w.previous()

        self.viewer.bind_key(KEY_NEXT, _next, overwrite=True)
        self.viewer.bind_key(KEY_PREVIOUS, _previous, overwrite=True)

    # ------------------------------------------------------------------ opening
    def _choose_files(self):
        paths, _ = QFileDialog.getOpenFileNames(self, "Slides, images or .h5ad files")
        if paths:
            self.path_edit.setText("; ".join(paths))

    def _choose_dir(self):
        path = QFileDialog.getExistingDirectory(self, "A dataset or batch output folder")
        if path:
            self.path_edit.setText(path)

    def open(self, paths: str | list | None = None, *, show_first: bool = True):
        """List the slides of ``paths`` in a worker, then show the first. Returns the worker."""
        if paths is None:
            paths = [p.strip() for p in self.path_edit.text().split(";") if p.strip()]
        elif isinstance(paths, str):
            paths = [paths]
        paths = [str(p) for p in paths]
        if not paths:
            notify_error("choose a folder or files first")
            return None
        self.path_edit.setText("; ".join(paths))
        self.status.setText("listing slides …")
        self._worker = start_worker(
            SlideCollection.from_paths, paths, cache_dir=self.cache_dir,
            returned=lambda coll: self.set_collection(coll, show_first=show_first),
            errored=self._on_error, finished=self._on_finished,
            progress={"desc": "List slides"})
        return self._worker

    def use_loaded(self, show_first: bool = True) -> None:
        """A collection of the sections already in the session (loaded by other widgets)."""
        if not self.session.adatas and not self.session.images:
            notify_error("nothing loaded yet: open data first")
            return
        coll = SlideCollection.from_adatas(self.session.adatas, self.session.images,
                                           cache_dir=self.cache_dir)
        self.set_collection(coll, show_first=show_first)

    def set_collection(self, coll: SlideCollection, *, show_first: bool = True) -> None:
        self.nav.set_collection(coll)
        self.table.setRowCount(len(coll))
        for i, item in enumerate(coll):
            name = QTableWidgetItem(item.name)
            name.setToolTip(f"{item.kind}: {item.source or ''}\n"
                            + "\n".join(f"{f}: {'yes' if item.has(f) else 'no'}"
                                        for f in FLAGS))
            self.table.setItem(i, 0, name)
            self.table.setItem(i, 1, QTableWidgetItem(item.patient or item.batch or ""))
            self.table.setItem(i, 2, QTableWidgetItem(item.describe(short=True)))
        self.table.setColumnWidth(0, self.THUMB + 70)  # thumbnail + name
        self.status.setText(f"{len(coll)} slide(s)")
        if self.thumbnails:
            self._load_thumbnails(coll)
        if show_first and len(coll):
            self.go(0)

    def _load_thumbnails(self, coll: SlideCollection):
        def _gen():
            for i, item in enumerate(coll):
                try:
                    yield i, coll.thumbnail(item, max_size=self.THUMB * 2)
                except Exception:  # noqa: BLE001 - a missing thumbnail is not an error
                    continue

        self._thumb_worker = start_worker(
            _gen, yielded=lambda r, c=coll: self._set_thumb(c, *r), errored=lambda e: None,
            progress={"desc": "Thumbnails", "total": len(coll)})
        return self._thumb_worker

    def _set_thumb(self, coll, row: int, arr: np.ndarray) -> None:
        if coll is not self.nav.collection or row >= self.table.rowCount():
            return
        item = self.table.item(row, 0)
        if item is not None:
            item.setIcon(_icon(arr))

    # ------------------------------------------------------------------ navigation
    def next(self):
        return self.go(self._step(+1))

    def previous(self):
        return self.go(self._step(-1))

    def _step(self, step: int) -> int | None:
        """From the slide last asked for (still being read) or else the current one, so
        quick repeated presses move several slides."""
        if self.nav.collection is None or not len(self.nav.collection):
            return None
        if self._target is not None and self._worker is not None:
            return (self._target + step) % len(self.nav.collection)
        return self.nav.step_index(step)

    def go(self, index: int | None):
        """Read slide ``index`` in a worker, then show it (a newer request supersedes)."""

        if index is None or self.nav.collection is None:
            return None
        if self.grid_btn.isChecked():
            self.grid_btn.blockSignals(True)
            self.grid_btn.setChecked(False)
            self.grid_btn.blockSignals(False)
        self._pending = self._target = int(index)
        if self._worker is not None:
            return self._worker  # picked up when the running read finishes
        return self._start_read()

    def _start_read(self):
        index, self._pending = self._pending, None
        coll = self.nav.collection
        item = coll[index]
        self.status.setText(f"reading {item.name} …")
        self._worker = start_worker(coll.load, item, returned=self._on_loaded,
                                    errored=self._on_error, finished=self._on_finished,
                                    progress={"desc": f"Slide {item.name}"})
        return self._worker

    def _on_loaded(self, data: SlideData):
        if data.item.name not in (self.nav.collection.names if self.nav.collection else []):
            return
        try:
            self.nav.apply(data)
        except Exception as exc:  # noqa: BLE001 - a layer napari refuses: report, keep the GUI alive
            notify_error(f"{data.item.name}: cannot show the slide ({exc})")

    def _on_changed(self, name: str):
        coll = self.nav.collection
        if coll is None or name not in coll.names:
            return
        row = coll.index(name)
        self.table.blockSignals(True)
        self.table.selectRow(row)
        self.table.blockSignals(False)
        item = coll[row]
        msg = f"{row + 1}/{len(coll)}: {name} ({item.describe()})"
        if self.nav.missing:
            msg += f" — not available here: {', '.join(self.nav.missing)}"
        self.status.setText(msg)

    def _on_error(self, exc):
        self.status.setText("failed")
        if self.grid_btn.isChecked() and self.nav.grid is None:
            self.grid_btn.blockSignals(True)
            self.grid_btn.setChecked(False)
            self.grid_btn.blockSignals(False)
        notify_error(exc)

    def _on_finished(self):
        self._worker = None
        if self._pending is not None and self.nav.collection is not None:
            self._start_read()

    # ------------------------------------------------------------------ overlays
    def color_by(self, column: str):
        if not column:
            notify_error("type a gene, an obs column, 'GENE (predicted)' or X_model_0")
            return None
        try:
            layer = self.nav.color_by(column)
        except (KeyError, ValueError) as exc:
            notify_error(str(exc).strip("'\""))
            return None
        notify_info(f"{self.nav.current}: spots coloured by {column}; the next slides follow")
        return layer

    # ------------------------------------------------------------------ grid
    def _on_grid_toggled(self, on: bool):
        if on:
            self.show_grid(self.grid_n.value())
        elif self.nav.grid is not None:
            self.nav.leave_grid()

    def show_grid(self, n: int):
        """Read ``n`` slides in a worker, then show them side by side. Returns the worker."""
        if self.nav.collection is None:
            notify_error("open slides first")
            return None
        names = self.nav.grid_names(n)
        coll, cur, data = self.nav.collection, self.nav.current, self.nav._data

        def _read():
            out = []
            for k, nm in enumerate(names):
                out.append(data if (data is not None and nm == cur) else coll.load(nm))
                yield k + 1
            return out

        self.status.setText(f"reading {len(names)} slides …")
        return start_worker(_read, returned=self._on_grid_loaded, errored=self._on_error,
                            progress={"desc": "Grid", "total": len(names)})

    def _on_grid_loaded(self, datas):
        try:
            names = self.nav.apply_grid(datas)
        except Exception as exc:  # noqa: BLE001
            notify_error(f"grid view failed ({exc})")
            return
        self.grid_btn.blockSignals(True)
        self.grid_btn.setChecked(True)
        self.grid_btn.blockSignals(False)
        self.status.setText(f"grid: {', '.join(names)}")

    def closeEvent(self, event):
        self.nav.close()
        super().closeEvent(event)
