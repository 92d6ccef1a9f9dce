"""Where the real test/benchmark data live.

``data_root()`` is, in this order:

1. ``$STEXP_DATA`` when set (the documented way: ``export STEXP_DATA=/path/to/shared/data``);
2. in a source checkout (``src/napari_stexp`` beside the repository's ``pyproject.toml``, as with
   ``pip install -e .``), the developers' layout ``<checkout>/../shared/data``;
3. otherwise (an installed wheel, where the package's parent folders are ``site-packages``,
   not a repository): ``$XDG_DATA_HOME/napari-stexp/data``, default
   ``~/.local/share/napari-stexp/data``.

The folder may not exist; callers check (the test fixtures skip with a clear reason).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _checkout() -> Path | None:
    """The repository this package is imported from, or ``None`` for an installed package."""
    src = _PACKAGE.parent
    repo = src.parent
    if src.name == "src" and (repo / "pyproject.toml").is_file():
        return repo
    return None


def data_root() -> Path:
    """The data folder (see the module docstring for the order); it may not exist."""
    env = os.environ.get("STEXP_DATA")
    if env:
        return Path(env).expanduser()
    repo = _checkout()
    if repo is not None:
        return (repo / ".." / "shared" / "data").resolve()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "napari-stexp" / "data"


def data_path(*parts: str) -> Path:
    """``data_root() / parts``."""
    return data_root().joinpath(*parts)
