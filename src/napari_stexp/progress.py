"""Progress and cancel plumbing shared by every long computation (no Qt).

Compute functions take ``progress: ProgressFn | None`` (called as ``progress(done, total, message)``)
and ``cancel: CancelFlag | None`` (a ``threading.Event`` or any zero-argument callable returning
True when the user asked to stop). Widgets pass a worker's emitter and cancel flag; the CLI passes a
terminal printer; tests pass nothing or a list appender.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from .errors import CancelledError

ProgressFn = Callable[[int, int, str], None]
CancelFlag = threading.Event | Callable[[], bool]


def is_cancelled(cancel: CancelFlag | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def check_cancel(cancel: CancelFlag | None, what: str = "work") -> None:
    """Raise :class:`CancelledError` if ``cancel`` is set (call between batches/tiles)."""
    if is_cancelled(cancel):
        raise CancelledError(f"{what} cancelled")


def report(progress: ProgressFn | None, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(int(done), int(total), message)


class Steps:
    """Counts steps of one stage: ``steps.advance()`` reports progress and checks cancel."""

    def __init__(self, total: int, progress: ProgressFn | None = None,
                 cancel: CancelFlag | None = None, what: str = "work"):
        self.total, self.done = int(total), 0
        self.progress, self.cancel, self.what = progress, cancel, what

    def advance(self, n: int = 1, message: str = "") -> None:
        check_cancel(self.cancel, self.what)
        self.done += n
        report(self.progress, min(self.done, self.total), self.total, message or self.what)


def terminal_progress(stream=sys.stderr, min_interval: float = 0.5) -> ProgressFn:
    """A progress printer for the command line (rate-limited, one line per update)."""
    last = [0.0]

    def _print(done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if done < total and now - last[0] < min_interval:
            return
        last[0] = now
        pct = 100.0 * done / total if total else 100.0
        print(f"[{pct:5.1f}%] {done}/{total} {message}", file=stream, flush=True)

    return _print
