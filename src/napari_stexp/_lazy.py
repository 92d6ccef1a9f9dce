"""Lazy public names for a subpackage's ``__init__`` (PEP 562 module ``__getattr__``).

A subpackage lists its public names once, by the module that defines them::

    __all__, __getattr__, __dir__ = lazy_exports(__name__, {
        ".open": ("open_path", "detect_kind"),
        ".wsi": ("open_image",),
    })

``from napari_stexp.io import open_path`` then imports ``napari_stexp.io.open`` on first use
(and caches the name in the package), so importing the package stays cheap (no torch, no Qt)
and the subpackage's ``__init__`` cannot start an import cycle.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` exporting ``exports``
    (relative module name -> the names it defines)."""
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} exported by {where[name]} and {module}")
            where[name] = module

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return list(where), __getattr__, __dir__
