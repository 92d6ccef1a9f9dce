"""Loader dock widget: choose a file or folder, see what was found, add the layers."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..io.open import format_summary
from ..session import get_session
from ._common import add_layer_tuples, hbox, notify_error, start_worker
from ._tooltips import tip


class LoaderWidget(QWidget):
    """Open slides, smears, crops, Visium/her2st folders or .h5ad files (reading runs in a
    worker so the GUI never freezes)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self._worker = None
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("file or folder (slide, .h5ad, Visium, her2st, smears)")
        self.sections_edit = QLineEdit()
        self.sections_edit.setPlaceholderText("sections to load, e.g. B4, C2 (empty: all)")
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setRange(0.0, 1000.0)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setSpecialValueText("µm/px: from the file")
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip(tip("loader.mpp"))
        file_btn, dir_btn = QPushButton("File…"), QPushButton("Folder…")
        file_btn.clicked.connect(self._choose_file)
        dir_btn.clicked.connect(self._choose_dir)
        self.open_btn = QPushButton("Open")
        self.open_btn.clicked.connect(self.open)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.status = QLabel("")

        row = hbox(self.path_edit, file_btn, dir_btn)
        buttons = hbox(self.open_btn, self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.sections_edit)
        lay.addWidget(self.mpp_spin)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.summary)

    def _choose_file(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open a slide, image or .h5ad")
        if path:
            self.path_edit.setText(path)

    def _choose_dir(self):
        path = QFileDialog.getExistingDirectory(self, "Open a Visium/her2st/smear/crops folder")
        if path:
            self.path_edit.setText(path)

    def open(self, path: str | None = None):
        """Read in a worker, then add layers in the main thread. Returns the worker."""
        from ..io.open import open_path

        path = path or self.path_edit.text().strip()
        if not path:
            notify_error("choose a file or folder first")
            return None
        self.path_edit.setText(str(path))
        secs = [s.strip() for s in self.sections_edit.text().split(",") if s.strip()] or None
        self.status.setText(f"reading {Path(path).name} …")
        self.open_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        mpp = float(self.mpp_spin.value()) or None
        self._worker = start_worker(open_path, path, sections=secs, mpp=mpp,
                                    returned=self._on_opened, errored=self._on_error,
                                    finished=self._on_finished, progress={"desc": "Open data"})
        return self._worker

    def cancel(self):
        if self._worker is not None:
            self._worker.quit()
            self.status.setText("cancelled")

    def _on_opened(self, opened):
        try:
            add_layer_tuples(self.viewer, opened.layers())
        except Exception as exc:  # noqa: BLE001 - a layer napari refuses: report, keep the GUI alive
            notify_error(f"{opened.path}: cannot show layers ({exc})")
            return
        for sec, ad in opened.adatas.items():
            self.session.add_adata(sec, ad)
        self.session.images = {**self.session.images, **opened.images}
        if opened.adatas:
            self.session.current_slide = next(iter(opened.adatas))
        self.summary.setPlainText(format_summary(opened.summary))
        unknown = [n for n, pyr in opened.images.items() if not getattr(pyr, "mpp", None)]
        note = (f"; µm/px unknown for {', '.join(unknown)}: placed at 1 unit per pixel "
                "(set µm/px above and open again)" if unknown else "")
        self.status.setText(f"opened {opened.kind}{note}")

    def _on_error(self, exc):
        self.status.setText("failed")
        notify_error(exc)

    def _on_finished(self):
        self.open_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self._worker = None
