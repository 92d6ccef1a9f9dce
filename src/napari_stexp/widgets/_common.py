"""Small helpers shared by the dock widgets (Qt lives in widgets/ only)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel

from .._torch_guard import guard_torch
from ..viewer._napari import add_layer_tuples, notify_error, notify_info  # noqa: F401 (re-exported)


def layer_adata(layer) -> Any:
    """The AnnData behind a spots layer (set by the readers), or None. Layers of SpatialData
    elements (ours or napari-spatialdata's) give our section AnnData."""
    meta = getattr(layer, "metadata", None) or {}
    if meta.get("sdata") is not None:
        from ..io.spatialdata import section_for_layer

        return section_for_layer(layer)
    return meta.get("adata")


_warm_lock = None
_warm_thread = None


def warm_torch() -> None:
    """Import torch and its lazily imported optimiser machinery (idempotent, any thread).

    Called by the workers of every torch path (never needed for safety: :func:`guard_torch`
    already ran when the widgets package was imported).
    """
    guard_torch()
    import torch
    import torch._dynamo
    import torch.optim

    del torch


def warm_torch_in_background():
    """Start importing torch in a daemon thread (once per process), so that the first Train
    does not import it on the GUI thread; returns the thread."""
    global _warm_lock, _warm_thread
    import sys
    import threading

    if _warm_lock is None:
        _warm_lock = threading.Lock()
    with _warm_lock:
        if _warm_thread is None and "torch._dynamo" not in sys.modules:
            _warm_thread = threading.Thread(target=_quiet_warm, name="stexp-warm-torch",
                                            daemon=True)
            _warm_thread.start()
    return _warm_thread


def _quiet_warm() -> None:
    try:
        warm_torch()
    except Exception:  # noqa: BLE001 - torch missing/broken: the torch path reports it itself
        pass


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


def _with_torch(func):
    """``func`` preceded by :func:`warm_torch`, in the thread that runs it."""
    import functools

    @functools.wraps(func)
    def run(*args, **kwargs):
        warm_torch()
        return func(*args, **kwargs)

    return run


class _ProgressSignal(QObject):
    progress = Signal(int, int, str)


def _phase_key(message: str) -> str:
    """What stays the same within one phase of a message ("epoch 3/10, loss 0.41" -> "epoch,
    loss"): numbers and punctuation removed."""
    import re

    return " ".join(re.sub(r"[\d.,:;/%()+\-=]+", " ", message).split())


class ProgressBridge:
    """A ``progress(done, total, message)`` callback usable from a worker thread: it emits a Qt
    signal that updates ``bar`` and ``label`` in the GUI thread.

    One overall bar across phases: a job's compute reports each phase (features, epochs,
    reference …) from 0 to its total; a new phase starts when the message changes kind or the
    count goes back. The bar shows ``(finished phases + this phase's fraction) / phases`` and
    never moves backwards; the label says which phase runs. :meth:`begin` takes the expected
    number of phases (grown when a job reports more)."""

    SCALE = 1000

    def __init__(self, bar, label):
        self.sig = _ProgressSignal()
        self.sig.progress.connect(self._update)
        self.bar, self.label = bar, label
        self.begin(1)

    def begin(self, phases: int = 1) -> None:
        self.expected, self.phase = max(int(phases), 1), 0
        self._key: str | None = None
        self._done = 0
        self.bar.setMaximum(self.SCALE)
        self.bar.setValue(0)

    def finish(self) -> None:
        self.bar.setValue(self.SCALE)

    def __call__(self, done: int, total: int, message: str = "") -> None:
        self.sig.progress.emit(int(done), int(total), str(message))

    def _update(self, done, total, message):
        key = _phase_key(message)
        if self._key is not None and (key != self._key or done < self._done):
            self.phase += 1
        self._key, self._done = key, done
        expected = max(self.expected, self.phase + 1)
        frac = min(max(done / max(total, 1), 0.0), 1.0)
        overall = (self.phase + frac) / expected
        self.bar.setValue(max(self.bar.value(), int(round(overall * self.SCALE))))
        if message:
            self.label.setText(f"{message} (phase {self.phase + 1}/{expected})"
                               if expected > 1 else message)


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

    def _run(self, func, *args, returned=None, label: str = "working", torch: bool = False,
             phases: int = 1, **kwargs):
        """Start ``func(*args)`` in a worker. ``torch=True``: the worker imports torch first
        (:func:`warm_torch`), never the GUI thread. A :class:`CancelledError` is reported as
        "cancelled" (an info), not as a failure."""
        from ..errors import CancelledError

        self._cancel.clear()
        self._busy(True)
        self.status.setText(label + " …")
        bridge = getattr(self, "_bridge", None)
        if bridge is not None:
            bridge.begin(phases)
        if torch:
            func = _with_torch(func)

        def done():
            self._busy(False)
            self._worker = None
            if bridge is not None and not self._cancel.is_set():
                bridge.finish()

        def failed(exc):
            if isinstance(exc, CancelledError):
                self.status.setText("cancelled")
                notify_info(f"{label}: cancelled")
                return
            self.status.setText(f"failed: {exc}")
            notify_error(exc)

        self._worker = start_worker(func, *args, returned=returned, errored=failed,
                                    finished=done, **kwargs)
        return self._worker

    def cancel(self) -> None:
        self._cancel.set()
        self.status.setText("cancelling …")


class StallProbe:
    """Measures how long the GUI thread stalls: a QTimer ticks every ``interval_ms`` and the
    largest gap between ticks is recorded (a benchmark figure, never a timed assertion).

    ``with StallProbe() as probe: ...`` then ``probe.max_stall_ms`` / ``probe.ticks``. The
    stall is the gap minus the interval (0 when the event loop kept up).
    """

    def __init__(self, interval_ms: int = 20):
        from qtpy.QtCore import QTimer

        self.interval_ms = int(interval_ms)
        self.timer = QTimer()
        self.timer.setInterval(self.interval_ms)
        self.timer.timeout.connect(self._tick)
        self.ticks = 0
        self.max_gap_ms = 0.0
        self.long_gaps: list[tuple[float, float]] = []  # (end time, gap ms) of gaps > 200 ms
        self._last: float | None = None

    def _tick(self) -> None:
        import time

        now = time.perf_counter()
        if self._last is not None:
            gap = (now - self._last) * 1000.0
            self.max_gap_ms = max(self.max_gap_ms, gap)
            if gap > 200:
                self.long_gaps.append((now, gap))
        self._last = now
        self.ticks += 1

    @property
    def max_stall_ms(self) -> float:
        return max(0.0, self.max_gap_ms - self.interval_ms)

    def start(self) -> StallProbe:
        import time

        self._last = time.perf_counter()
        self.timer.start()
        return self

    def stop(self) -> dict:
        self._tick()
        self.timer.stop()
        return {"max_stall_ms": round(self.max_stall_ms, 1), "ticks": self.ticks}

    def __enter__(self) -> StallProbe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def hbox(*items) -> QHBoxLayout:
    """A row of widgets (a ``str`` becomes a label), for the dock widgets' button rows."""
    row = QHBoxLayout()
    for it in items:
        row.addWidget(QLabel(it) if isinstance(it, str) else it)
    return row
