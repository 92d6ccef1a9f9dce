"""Typed errors. Every message names the file (or object) and the problem in one line."""

from __future__ import annotations

import os


class StexpError(Exception):
    """Base class of the errors napari-stexp raises on purpose (shown as one line to users)."""


class InputError(StexpError, ValueError):
    """Bad input: a corrupt, truncated, mis-formatted or inconsistent file or object.

    ``str(err)`` is ``"<source>: <problem>"`` so the CLI and napari notifications can show it as is.
    """

    def __init__(self, source: str | os.PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class CancelledError(StexpError):
    """Long work stopped because the user (or a caller) asked it to."""


class DeviceError(StexpError, RuntimeError):
    """A requested compute device is not available."""


class StexpWarning(UserWarning):
    """Base class of the warnings napari-stexp issues (a repair, a dropped item, a doubtful
    assumption). ``warnings.simplefilter("error", StexpWarning)`` makes them all errors, and
    ``warnings.filterwarnings("ignore", category=StexpWarning)`` silences them all, the way
    ``except StexpError`` catches every error."""
