"""errors.py: one base for the errors (StexpError) and one for the warnings (StexpWarning), so a
user can turn every napari-stexp warning into an error, or silence them all, with one filter."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_stexp.errors import StexpWarning

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_stexp"

WARNINGS = [
    ("napari_stexp.io.st", "STWarning"),
    ("napari_stexp.io.her2st", "Her2stWarning"),
    ("napari_stexp.io.visium", "VisiumWarning"),
    ("napari_stexp.io.h5ad", "H5adWarning"),
    ("napari_stexp.io.smears", "SmearWarning"),
    ("napari_stexp.models.gene_vae", "GeneVAEWarning"),
    ("napari_stexp.models.batch_agnostic", "ClassifierWarning"),
    ("napari_stexp.io.spatialdata", "SpatialDataWarning"),
]


@pytest.mark.parametrize("module, name", WARNINGS)
def test_error_filter_on_the_base_catches_each_warning(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, StexpWarning) and issubclass(cls, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StexpWarning)
        with pytest.raises(cls, match="repaired"):
            warnings.warn("something was repaired", cls, stacklevel=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=StexpWarning)
        warnings.warn("something was repaired", cls, stacklevel=1)
    assert not seen


def test_a_reader_warning_becomes_an_error(tmp_path):
    """A real one: an h5ad whose X is normalised and has no counts layer."""
    import anndata as ad

    from napari_stexp.io.h5ad import read_st_h5ad

    a = ad.AnnData(np.full((4, 3), 0.5, np.float32))
    a.obsm["spatial"] = np.arange(8, dtype=float).reshape(4, 2) * 100
    a.write_h5ad(tmp_path / "x.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StexpWarning)
        with pytest.raises(StexpWarning, match="normalised"):
            read_st_h5ad(tmp_path / "x.h5ad")


def test_every_warning_class_derives_from_the_base():
    """No new warning class may skip the base (read from the source, not imported)."""
    direct = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & {"Warning", "UserWarning", "RuntimeWarning", "DeprecationWarning"}:
                    direct.append(f"{path.relative_to(SRC)}:{node.name}")
    assert direct == ["errors.py:StexpWarning"]
    found = {n for _, n in WARNINGS}
    named = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and b.id == "StexpWarning" for b in node.bases):
                named.add(node.name)
    assert named == found
