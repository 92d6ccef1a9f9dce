"""Packaging contract: one manifest, valid; cheap imports; CLI entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_manifest_is_single_source_of_truth():
    top = REPO / "napari.yaml"
    pkg = REPO / "src" / "napari_stexp" / "napari.yaml"
    assert top.exists() and pkg.exists()
    assert os.path.samefile(top, pkg), "top-level napari.yaml must be the package manifest"


def test_npe2_validate():
    exe = BIN / "npe2"
    res = subprocess.run([str(exe), "validate", "napari-stexp"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_manifest_commands_resolve():
    """Every python_name in the manifest imports (catches typos in module:attr)."""
    import importlib

    from npe2 import PluginManifest

    mf = PluginManifest.from_file(REPO / "napari.yaml")
    for cmd in mf.contributions.commands:
        mod, attr = cmd.python_name.split(":")
        assert hasattr(importlib.import_module(mod), attr), cmd.python_name


def test_import_is_light():
    """Importing the plugin, its reader and writers pulls in neither torch nor a Qt binding."""
    code = ("import sys, napari_stexp, napari_stexp._reader, napari_stexp._writer, "
            "napari_stexp._sample_data, napari_stexp.cli, napari_stexp.io.open; "
            "napari_stexp.cli.build_parser(); "
            "bad=[m for m in ('torch','torchvision','PyQt6','PyQt5','PySide6') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cli_help_lists_subcommands():
    res = subprocess.run([str(BIN / "napari-stexp"), "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for sub in ("demo", "info", "expression", "classify", "segment", "bvae", "batch"):
        assert sub in res.stdout


def test_cli_bad_path_is_one_line_error(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    res = subprocess.run([str(BIN / "napari-stexp"), "info", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in res.stderr


@pytest.mark.parametrize("payload", [b"", b"\x00\x01garbage" * 10])
def test_cli_corrupt_image_is_one_line_error(tmp_path, payload):
    bad = tmp_path / "slide.tif"
    bad.write_bytes(payload)
    res = subprocess.run([str(BIN / "napari-stexp"), "info", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "slide.tif" in res.stderr and "Traceback" not in res.stderr
