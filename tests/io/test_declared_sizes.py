"""Headers that declare absurd sizes are refused before anything is decoded (issue 16), and a
big but honest image is opened lazily, in bounded time and memory."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_stexp.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from _craft import huge_tiled_tiff, lying_jpeg


def _cli(*args, timeout=60):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    code = ("import resource, sys, runpy\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))\n"
            "from napari_stexp.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            # VmHWM: this process's own peak (ru_maxrss carries the parent's over fork/exec)
            "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
            "print('maxrss', hwm[0], file=sys.stderr)\n"
            "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_tiff_declaring_a_million_squared(tmp_path):
    path = huge_tiled_tiff(tmp_path / "huge.tif")
    from napari_stexp.io.wsi import open_image

    with pytest.raises(InputError, match="1,000,000 x 1,000,000 px"):
        open_image(path)
    res = _cli("info", path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "huge.tif: declares" in res.stderr


def test_jpeg_header_claiming_65000_squared(tmp_path):
    import tifffile  # noqa: F401  (keeps the import order of the other tests)
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
                    ).save(tmp_path / "small.jpg")
    path = lying_jpeg(tmp_path / "small.jpg", tmp_path / "bomb.jpg")
    from napari_stexp.io.wsi import open_image

    with pytest.raises(InputError, match="decompression bomb"):
        open_image(path)
    res = _cli("segment", path, "--out", tmp_path / "seg")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-2].startswith("napari-stexp: error: ")
    assert not (tmp_path / "seg").exists() or not any((tmp_path / "seg").rglob("*.*"))


def test_limits_are_raised_by_environment(tmp_path, monkeypatch):
    from PIL import Image

    from napari_stexp.io.wsi import check_declared_size, open_image

    Image.fromarray(np.zeros((300, 200), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("STEXP_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(InputError, match="STEXP_MAX_IMAGE_PIXELS"):
        open_image(tmp_path / "a.png")
    monkeypatch.setenv("STEXP_MAX_IMAGE_PIXELS", "1e6")
    assert open_image(tmp_path / "a.png").shape[:2] == (300, 200)
    monkeypatch.delenv("STEXP_MAX_IMAGE_PIXELS")
    with pytest.raises(InputError, match="tiles"):
        check_declared_size(tmp_path / "a.png", 10**5, 10**5, tile=(16, 16), file_size=10**9)
    monkeypatch.setenv("STEXP_MAX_DECODE_RATIO", "nope")
    with pytest.raises(InputError, match="STEXP_MAX_DECODE_RATIO"):
        check_declared_size(tmp_path / "a.png", 10**5, 10**4)


def test_info_on_a_big_honest_png_is_lazy(tmp_path):
    """A 20,000 x 12,000 PNG (mostly blank, ~1 MB): info must not decode it."""
    from PIL import Image

    a = np.full((12000, 20000), 240, np.uint8)
    a[::97] = 10
    Image.fromarray(a).save(tmp_path / "big.png")
    del a
    res = _cli("info", tmp_path / "big.png")
    assert res.returncode == 0, res.stderr
    assert "20000" in res.stdout
    rss_kb = int(res.stderr.split("maxrss")[-1].split()[0])
    assert rss_kb < 1_000_000, rss_kb  # the decoded image alone would be 240 MB + levels


def test_tiled_segmentation_of_a_big_image_keeps_labels_on_disk():
    import dask.array as da

    from napari_stexp.segmentation import tiling

    img = da.zeros((9000, 8200), dtype=np.uint8, chunks=2048)

    class Empty:
        halo = None

        @staticmethod
        def run(window, params, progress, cancel):
            from napari_stexp.segmentation.base import SegmentationResult, empty_table

            return SegmentationResult(labels=np.zeros(window.shape[:2], np.int32),
                                      table=empty_table(), roi_features=None, metadata={})

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = tiling.segment_tiled(img, Empty(), {}, tile_size=4096, overlap=0)
    assert isinstance(res.labels, da.Array), type(res.labels)  # never a 295 MB numpy array
    assert res.labels.shape == (9000, 8200)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 250_000
