"""Where the real test/benchmark data live: ``$STEXP_DATA`` (default ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """``$STEXP_DATA`` if set, else ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("STEXP_DATA")
    if env:
        return Path(env).expanduser()
    return (_REPO / ".." / "shared" / "data").resolve()


def data_path(*parts: str) -> Path:
    return data_root().joinpath(*parts)
