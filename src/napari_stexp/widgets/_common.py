"""Small helpers shared by the dock widgets (Qt lives in widgets/ only)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Signal

from ..viewer._napari import add_layer_tuples, notify_error, notify_info  # noqa: F401 (re-exported)


def layer_adata(layer) -> Any:
    """The AnnData behind a spots layer (set by the readers), or None. Layers of SpatialData
    elements (ours or napari-spatialdata's) give our section AnnData."""
    meta = getattr(layer, "metadata", None) or {}
    if meta.get("sdata") is not None:
        from ..io.spatialdata import section_for_layer

        return section_for_layer(layer)
    return meta.get("adata")


def warm_torch() -> None:
    """Load torch's lazily imported optimiser machinery safely inside napari (GUI thread).

    ``torch.optim`` imports ``torch._dynamo`` on first use, which imports triton; triton's
    bundled LLVM clashes with the LLVM of Mesa's software OpenGL that napari's canvas has already
    loaded, and the process segfaults. Without CUDA triton is never used, so it is hidden
    (``sys.modules['triton'] = None``, which torch reads as "not installed") before the import.
    Every widget that trains calls this before starting its worker.
    """
    import sys

    import torch

    if "triton" not in sys.modules and not torch.cuda.is_available():
        sys.modules["triton"] = None  # type: ignore[assignment]
    import torch._dynamo  # noqa: F401


def start_worker(func, *args, returned=None, errored=None, finished=None, yielded=None,
                 progress: dict | None = None, **kwargs):
    """Run ``func`` in a napari worker thread with our handlers connected *before* it starts.

    Errors go to ``errored`` (default: a notification) instead of being re-raised in the Qt
    event loop, so bad input never crashes the GUI.
    """
    from napari.qt.threading import create_worker

    connect = {"errored": errored or notify_error}
    if returned is not None:
        connect["returned"] = returned
    if finished is not None:
        connect["finished"] = finished
    if yielded is not None:
        connect["yielded"] = yielded
    if progress is not None:
        kwargs["_progress"] = progress
    return create_worker(func, *args, _connect=connect, **kwargs)


class _ProgressSignal(QObject):
    progress = Signal(int, int, str)


class ProgressBridge:
    """A ``progress(done, total, message)`` callback usable from a worker thread: it emits a Qt
    signal that updates ``bar`` and ``label`` in the GUI thread."""

    def __init__(self, bar, label):
        self.sig = _ProgressSignal()
        self.sig.progress.connect(self._update)
        self.bar, self.label = bar, label

    def __call__(self, done: int, total: int, message: str = "") -> None:
        self.sig.progress.emit(int(done), int(total), str(message))

    def _update(self, done, total, message):
        self.bar.setMaximum(max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        if message:
            self.label.setText(message)


class WorkerMixin:
    """Busy buttons, status text and cancel around :func:`start_worker`, for dock widgets.

    The widget provides ``self._cancel`` (a ``threading.Event`` its compute calls check),
    ``self.status`` (a label), ``self.cancel_btn`` and ``_action_buttons()`` (the buttons to
    disable while work runs).
    """

    _worker = None

    def _action_buttons(self) -> tuple:
        return ()

    def _busy(self, busy: bool) -> None:
        for b in self._action_buttons():
            b.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def _run(self, func, *args, returned=None, label: str = "working", **kwargs):
        self._cancel.clear()
        self._busy(True)
        self.status.setText(label + " …")

        def done():
            self._busy(False)
            self._worker = None

        def failed(exc):
            self.status.setText(f"failed: {exc}")
            notify_error(exc)

        self._worker = start_worker(func, *args, returned=returned, errored=failed,
                                    finished=done, **kwargs)
        return self._worker

    def cancel(self) -> None:
        self._cancel.set()
        self.status.setText("cancelling …")
