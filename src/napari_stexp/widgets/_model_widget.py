"""One base for the trained-model dock widgets (expression, classifier).

:class:`ModelWidget` owns what both widgets share, once: the training-sections list and the
target combo (one default policy, one order: sections, then slides), the image lookup (one order:
session → image layer tagged with the section → the section's ``source_image_path``),
train/load/save/cancel through :class:`~._common.WorkerMixin`, and a progress bar. Forms are built
from the config dataclass's field metadata (:func:`build_form`), so an option has one default and
one help text for the widget and the CLI.

A subclass declares ``CONFIG``, ``FORM`` (option paths), ``SESSION_KEY``, ``PRESETS`` and the
jobs (``_train_job``, ``_load_job``, ``_predict_job``), and implements ``make_train_args``,
``on_model`` and ``on_results``.
"""

from __future__ import annotations

import threading
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
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

from ..session import get_session
from ._common import ProgressBridge, WorkerMixin, layer_adata, notify_error
from ._tooltips import tip

SLIDE_PREFIX = "slide: "
NO_PRESET = "custom"
#: ``metadata['kind']`` of the per-section result layers of the trained-model widgets.
RESULT_KINDS = frozenset({"mclstexp_gene", "mclstexp_confidence", "batch_agnostic_classes",
                          "batch_agnostic_confidence"})


# ----------------------------------------------------------------------------- forms


def option_widget(spec):
    """A Qt input for one :class:`~napari_stexp.models._options.OptionSpec` (tooltip = help)."""
    if spec.choices:
        w = QComboBox()
        w.addItems([str(c) for c in spec.choices])
        w.setCurrentText(str(spec.default))
    elif spec.kind is bool:
        w = QCheckBox(spec.label or "")
        w.setChecked(bool(spec.default))
    elif spec.kind is int:
        w = QSpinBox()
        w.setRange(int(spec.min if spec.min is not None else -(10**9)),
                   int(spec.max if spec.max is not None else 10**9))
        w.setValue(int(spec.default))
    elif spec.kind is float:
        w = QDoubleSpinBox()
        w.setDecimals(6 if spec.default and abs(spec.default) < 1e-2 else 3)
        w.setRange(float(spec.min if spec.min is not None else -1e9),
                   float(spec.max if spec.max is not None else 1e9))
        if spec.max is not None and spec.min is not None and spec.max - spec.min <= 1:
            w.setSingleStep(0.05)
        w.setValue(float(spec.default))
    else:
        w = QLineEdit("none" if spec.default is None else str(spec.default))
    w.setToolTip(spec.help)
    return w


def get_value(w, spec) -> Any:
    if isinstance(w, QComboBox):
        return spec.kind(w.currentText())
    if isinstance(w, QCheckBox):
        return w.isChecked()
    if isinstance(w, QSpinBox | QDoubleSpinBox):
        return spec.kind(w.value())
    text = w.text().strip()
    return None if text.lower() in ("", "none", "random") else text


def set_value(w, value) -> None:
    if isinstance(w, QComboBox):
        w.setCurrentText(str(value))
    elif isinstance(w, QCheckBox):
        w.setChecked(bool(value))
    elif isinstance(w, QSpinBox | QDoubleSpinBox):
        w.setValue(value)
    else:
        w.setText("none" if value is None else str(value))


def build_form(form: QFormLayout, config_cls, paths) -> dict:
    """Rows for the options ``paths`` of ``config_cls``: ``{path: (widget, spec)}``."""
    from ..models._options import option_spec

    out = {}
    for path in paths:
        spec = option_spec(config_cls, path)
        w = option_widget(spec)
        label = "" if spec.kind is bool else (spec.label or path.split(".")[-1].replace("_", " "))
        form.addRow(label, w)
        out[path] = (w, spec)
    return out


# ----------------------------------------------------------------------------- the base


class ModelWidget(WorkerMixin, QWidget):
    """Train/load a model, run it on a section or slide (see the module doc)."""

    CONFIG: type = object
    FORM: tuple = ()
    SESSION_KEY = "model"
    PRESETS: dict[str, dict] = {}
    KIND = "model"  # tooltips prefix and dialog captions
    SECTIONS_LABEL = "Training sections:"
    ACTION = "Predict"
    RUN_LABEL = "predicting"
    TRAIN_PHASES = 1  # expected phases of a training run (one overall progress bar)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.model = None
        self.predictions: dict = {}
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
        lay.addWidget(QLabel(self.SECTIONS_LABEL))
        self.sections = QListWidget()
        self.sections.setToolTip(tip(f"{self.KIND}.sections"))
        self.sections.setMaximumHeight(110)
        lay.addWidget(self.sections)
        form = QFormLayout()
        self.preset = QComboBox()
        self.preset.addItems([NO_PRESET, *self.PRESETS])
        self.preset.setToolTip(tip("preset"))
        form.addRow("preset", self.preset)
        self.fields = build_form(form, self.CONFIG, self.FORM)
        self._build_form_extra(form)
        self._initial = self.form_options()  # what "custom" goes back to
        lay.addLayout(form)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.load_btn = QPushButton("Load model…")
        self.save_btn = QPushButton("Save model…")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        for b, key in ((self.train_btn, "train"), (self.load_btn, "load"),
                       (self.save_btn, "save"), (self.cancel_btn, "cancel")):
            b.setToolTip(tip(key))
            row.addWidget(b)
        lay.addLayout(row)
        trow = QHBoxLayout()
        self.target = QComboBox()
        self.target.setToolTip(tip(f"{self.KIND}.target"))
        self.action_btn = QPushButton(self.ACTION)
        trow.addWidget(self.target, 1)
        trow.addWidget(self.action_btn)
        lay.addLayout(trow)
        self._build_results(lay)
        self.progress_bar = QProgressBar()
        self.status = QLabel("no model")
        self.status.setWordWrap(True)
        lay.addWidget(self.progress_bar)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._bridge = ProgressBridge(self.progress_bar, self.status)
        self.preset.currentTextChanged.connect(self.apply_preset)
        self.train_btn.clicked.connect(lambda: self.train())
        self.load_btn.clicked.connect(lambda: self.load())
        self.save_btn.clicked.connect(lambda: self.save())
        self.cancel_btn.clicked.connect(self.cancel)
        self.action_btn.clicked.connect(lambda: self.run_on())

    def _build_form_extra(self, form: QFormLayout) -> None:
        """Rows after the generated ones (subclasses)."""

    def _build_results(self, lay: QVBoxLayout) -> None:
        """Result controls below the target row (subclasses)."""

    def field(self, path: str):
        return self.fields[path][0]

    def apply_preset(self, name: str) -> None:
        """Fill the form with the preset's values (the form then shows what will be used)."""
        values = self._initial if name == NO_PRESET else self.PRESETS.get(name, {})
        for path, value in values.items():
            if path in self.fields:
                set_value(self.fields[path][0], value)

    def form_options(self) -> dict:
        """``{option path: value}`` from the form (the preset's values unless edited)."""
        return {p: get_value(w, spec) for p, (w, spec) in self.fields.items()}

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
        """Refill the sections (one policy: checked stay checked; with none checked yet, all
        are) and the targets (one order: sections, then slides)."""
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
        """One lookup order: session pyramids → an image layer tagged with the section → the
        section's ``source_image_path`` (left to the compute, which opens it lazily)."""
        from napari.layers import Image

        from ..io.frame import pyramid_from_layer

        out = {n: self.session.images[n] for n in names if n in self.session.images}
        for layer in self.viewer.layers:
            sec = (layer.metadata or {}).get("section")
            if isinstance(layer, Image) and sec in names and sec not in out:
                out[sec] = pyramid_from_layer(layer)
        return out

    def _slide(self, lname: str):
        from ..io.frame import pyramid_from_layer

        if lname not in self.viewer.layers:
            raise KeyError(f"{lname}: no such image layer")
        return self.session.images.get(lname) or pyramid_from_layer(self.viewer.layers[lname])

    # ---------------------------------------------------------------- running
    def _action_buttons(self) -> tuple:
        return (self.train_btn, self.load_btn, self.save_btn, self.action_btn)

    def make_train_args(self, overrides: dict) -> tuple:
        """The arguments of ``_train_job`` after ``(adatas, images)`` (subclasses)."""
        raise NotImplementedError

    def train(self, **overrides):
        """Train on the checked sections in a worker; returns the worker."""
        names = self.checked_sections()
        if not names:
            notify_error("check at least one training section")
            return None
        secs = self.available_sections()
        try:
            args = self.make_train_args(overrides)
        except Exception as exc:  # noqa: BLE001 - bad settings are shown, never a crash
            notify_error(exc)
            return None
        return self._run(type(self)._train_job, {n: secs[n] for n in names},
                         self._images_for(names), *args, self._bridge, self._cancel,
                         returned=self.set_model, label="training", torch=True,
                         phases=self.TRAIN_PHASES)

    def load(self, path: str | None = None):
        """Open a model folder in a worker (the one load path of the widget)."""
        if path is None:
            path = QFileDialog.getExistingDirectory(self, f"{self.KIND} model folder")
        if not path:
            return None
        return self._run(type(self)._load_job, path, returned=self.set_model, label="loading",
                         torch=True)

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
        self.session.models = {**self.session.models, self.SESSION_KEY: model}
        self.on_model(model)

    def on_model(self, model) -> None:
        """Show the model's summary (subclasses)."""

    def on_results(self, results) -> None:
        """Apply a prediction's layers (subclasses)."""

    def run_on(self, target: str | None = None):
        """Run the model on the chosen section or slide in a worker; returns the worker."""
        if self.model is None:
            notify_error("train or load a model first")
            return None
        target = target or self.target.currentText()
        if not target:
            notify_error("choose a section or slide")
            return None
        slide = None
        adatas: dict = {}
        if target.startswith(SLIDE_PREFIX):
            lname = target[len(SLIDE_PREFIX):]
            try:
                slide = (lname, self._slide(lname))
            except KeyError as exc:
                notify_error(exc.args[0])
                return None
        else:
            secs = self.available_sections()
            if target not in secs:
                notify_error(f"{target}: no such section")
                return None
            adatas = {target: secs[target]}
        return self._run(type(self)._predict_job, self.model, adatas,
                         self._images_for(list(adatas)), slide, self._bridge, self._cancel,
                         returned=self.on_results, label=self.RUN_LABEL, torch=True)

    def show_with_slide(self, section: str, shown=()) -> None:
        """Show ``section``'s results over ITS slide (issue 17.6): its image layer(s) and the
        ``shown`` result layers visible; other sections' images, spots and results hidden.
        A slide prediction's section is the image layer's name."""
        from napari.layers import Image

        def sec_of(ly):
            md = ly.metadata or {}
            if isinstance(ly, Image):
                return md.get("section") or (ly.name if ly.name in self.predictions else None)
            if md.get("kind") in RESULT_KINDS or md.get("kind") == "spots":
                return md.get("section")
            return None

        own = [ly for ly in self.viewer.layers if isinstance(ly, Image) and sec_of(ly) == section]
        if not own and section in self.viewer.layers:
            own = [self.viewer.layers[section]]
        for ly in self.viewer.layers:
            sec = sec_of(ly)
            if ly in own:
                ly.visible = True
            elif sec is not None and sec != section:
                ly.visible = False
        for ly in shown:
            ly.visible = True

    # jobs (run in the worker thread): subclasses set them as staticmethods
    _train_job = None
    _load_job = None
    _predict_job = None
