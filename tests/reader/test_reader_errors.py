"""A path the napari reader claims gives layers or the CLI's one-line InputError (issue 16)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_stexp._reader import get_reader, read_paths
from napari_stexp.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from _craft import huge_tiled_tiff


def test_huge_declared_tiff_is_a_clear_error(tmp_path):
    path = huge_tiled_tiff(tmp_path / "huge.tif")
    reader = get_reader(str(path))
    assert reader is not None
    with pytest.raises(InputError, match="huge.tif: declares"):
        reader(str(path))


def test_memory_and_value_errors_become_input_errors(tmp_path, monkeypatch):
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    import napari_stexp.io.open as io_open

    for exc in (MemoryError(), ValueError("cannot reshape array")):
        def boom(*a, _exc=exc, **k):
            raise _exc

        monkeypatch.setattr(io_open, "open_path", boom)
        with pytest.raises(InputError) as info:
            read_paths(str(tmp_path / "a.tif"))
        assert str(info.value).startswith(str(tmp_path / "a.tif") + ": ")


def test_h5ad_with_string_coordinates(tmp_path):
    import anndata as ad

    a = ad.AnnData(np.ones((3, 2), np.float32))
    a.obsm["spatial"] = np.array([["1px", "2px"]] * 3)
    a.write_h5ad(tmp_path / "s.h5ad")
    reader = get_reader(str(tmp_path / "s.h5ad"))
    assert reader is not None
    with pytest.raises(InputError, match=r"s\.h5ad: obsm\['spatial'\] holds"):
        reader(str(tmp_path / "s.h5ad"))
