"""The package's layers hold: no module imports a module of a higher tier.

Every import is read from the source (function-local ones too, since those hide the real graph),
relative imports are resolved, and each internal edge is checked against the tier table below
(docs/architecture.md explains it). A test also feeds the checker an upward edge to show it fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = "napari_stexp"

# Lowest first. A module may import its own tier or lower.
TIERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("napari_stexp", "errors", "progress", "_provenance", "_lazy", "_torch_guard",
              "io._atomic", "io.keys")),
    ("io", ("io",)),
    ("data", ("data",)),
    ("training", ("training",)),
    ("models", ("models", "segmentation")),
    ("evaluation", ("evaluation",)),
    ("analysis", ("analysis",)),
    ("viewer", ("viewer", "session")),
    ("batch", ("batch",)),
    ("app", ("widgets", "commands", "cli", "_reader", "_writer", "_sample_data", "datasets")),
]


def tier_of(module: str) -> int:
    """Tier index of a dotted module name inside the package (the longest matching prefix)."""
    rel = module[len(PKG) + 1:] if module.startswith(PKG + ".") else PKG
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(TIERS):
        for p in prefixes:
            if (rel == p or rel.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise KeyError(f"{module}: not in the tier table of tests/architecture/test_import_layers.py")
    return best


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool,
               known: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, imported module) for every internal import in ``source``, relative ones resolved.

    ``from X import y`` counts as an import of ``X.y`` when that is a module in ``known``.
    """
    out: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in known else target))
    return [(ln, m) for ln, m in out if m == PKG or m.startswith(PKG + ".")]


def upward_edges(files: dict[str, tuple[str, bool]]) -> list[str]:
    """Every edge from a lower tier to a higher one, as readable lines."""
    known = frozenset(files)
    bad: list[str] = []
    seen: dict[str, set] = {}
    for mod, (source, is_pkg) in sorted(files.items()):
        t = tier_of(mod)
        for line, target in imports_of(source, mod, is_pkg, known):
            tt = tier_of(target)
            if tt > t and (line, target) not in seen.setdefault(mod, set()):
                seen[mod].add((line, target))
                bad.append(f"{mod}:{line} imports {target} ({TIERS[t][0]} -> {TIERS[tt][0]})")
    return bad


def package_sources() -> dict[str, tuple[str, bool]]:
    files = {}
    for path in (SRC / PKG).rglob("*.py"):
        files[module_name(path)] = (path.read_text(encoding="utf-8"), path.name == "__init__.py")
    return files


def test_every_module_has_a_tier():
    for mod in package_sources():
        tier_of(mod)


def test_no_upward_import():
    bad = upward_edges(package_sources())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_checker_fails_on_an_upward_edge():
    files = {
        "napari_stexp.io.fake": ("def f():\n    from ..widgets import loader\n", False),
        "napari_stexp.widgets.loader": ("from ..io import fake\n", False),
    }
    bad = upward_edges(files)
    assert bad == ["napari_stexp.io.fake:2 imports napari_stexp.widgets.loader (io -> app)"]


@pytest.mark.parametrize("module", ["napari_stexp.viewer.navigator", "napari_stexp.session"])
def test_tier_table_knows_the_viewer(module):
    assert TIERS[tier_of(module)][0] == "viewer"
