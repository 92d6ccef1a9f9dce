"""Curated public APIs: each subpackage names its public functions in its docstring and
``__all__``, every name resolves (lazily: importing the packages loads neither torch nor Qt), and
``datasets`` finds the data without assuming a source tree."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from napari_stexp import datasets
from napari_stexp._lazy import lazy_exports

PACKAGES = ["io", "data", "models", "training", "evaluation", "analysis"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_is_documented_and_resolves(name):
    pkg = importlib.import_module(f"napari_stexp.{name}")
    assert pkg.__all__ and len(set(pkg.__all__)) == len(pkg.__all__)
    doc = pkg.__doc__ or ""
    undocumented = [n for n in pkg.__all__ if not any(
        form.format(n) in doc for form in ("``{}``", "``{}(", ":class:`{}`"))]
    assert not undocumented, f"napari_stexp.{name}: not named in the docstring: {undocumented}"
    for n in pkg.__all__:
        value = getattr(pkg, n)
        assert n in dir(pkg)
        home = importlib.import_module(getattr(value, "__module__", pkg.__name__))
        assert getattr(home, n, value) is value
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        pkg.not_a_name  # noqa: B018


def test_star_import_gives_the_curated_names():
    ns: dict = {}
    exec("from napari_stexp.io import *", ns)
    assert {"open_path", "write_h5ad", "read_ome_zarr", "mpp_of"} <= set(ns)


def test_packages_import_without_torch_or_qt():
    code = ("import sys\n"
            + "".join(f"import napari_stexp.{p}\n" for p in PACKAGES)
            + "from napari_stexp.io import open_path, read_st, write_h5ad\n"
            + "from napari_stexp.data import expression_transform\n"
            + "bad = [m for m in ('torch', 'torchvision', 'PyQt6', 'PyQt5', 'PySide6', 'qtpy')"
            + " if m in sys.modules]\n"
            + "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_io_docstring_names_the_real_dispatcher():
    import napari_stexp.io as io

    assert "open_any" not in io.__doc__ and "``open_path(path)``" in io.__doc__
    assert callable(io.open_path)


def test_a_name_exported_twice_is_refused():
    with pytest.raises(ValueError, match="'x' exported by .a and .b"):
        lazy_exports("napari_stexp", {".a": ("x",), ".b": ("x",)})


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("STEXP_DATA", str(tmp_path / "mine"))
    assert datasets.data_root() == tmp_path / "mine"
    assert datasets.data_path("her2st", "x") == tmp_path / "mine" / "her2st" / "x"
    monkeypatch.delenv("STEXP_DATA")
    # this checkout: the developers' ../shared/data, as before
    repo = Path(__file__).resolve().parents[1]
    assert datasets.data_root() == (repo / ".." / "shared" / "data").resolve()
    # an installed package: its parents are site-packages, not a repository
    site = tmp_path / "lib" / "python3" / "site-packages"
    (site / "napari_stexp").mkdir(parents=True)
    (tmp_path / "lib" / "pyproject.toml").write_text("")  # a stray file two levels up is ignored
    monkeypatch.setattr(datasets, "_PACKAGE", site / "napari_stexp")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert datasets.data_root() == tmp_path / "xdg" / "napari-stexp" / "data"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.data_root() == tmp_path / "home" / ".local" / "share" / "napari-stexp" / "data"
