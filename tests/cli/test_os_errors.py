"""OS errors (read-only file system, a folder or file in the way, a full disk) end as one line
``napari-stexp: error: <path>: <reason>`` and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

INJECT = Path(__file__).with_name("_inject.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args, fault=None, target=None, timeout=120):
    if fault:
        cmd = [sys.executable, str(INJECT), fault, str(target), "--", *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "napari_stexp.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def _assert_error(res, *needles):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("napari-stexp: error: "), last
    for n in needles:
        assert n in last, last
    return last


@pytest.fixture()
def small_image(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img)
    return path


def test_read_only_file_system(tmp_path, small_image):
    out = tmp_path / "ro" / "seg"
    res = _run(["segment", small_image, "--out", out], fault="erofs", target=tmp_path / "ro")
    _assert_error(res, str(tmp_path / "ro"), "read-only file system")
    assert not out.exists()


def test_parent_is_a_regular_file(tmp_path, small_image):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = _run(["segment", small_image, "--out", blocker / "seg"])
    _assert_error(res, str(blocker), "not a directory")
    assert blocker.read_text() == "x"


def test_folder_where_a_file_is_expected(tmp_path, small_image):
    # bvae traverse writes one image file: an existing folder there is an OS error
    from napari_stexp.cli import os_error_line

    exc = IsADirectoryError(21, "Is a directory", str(tmp_path / ".x.tmp-1"), None,
                            str(tmp_path / "x"))
    assert os_error_line(exc) == f"{tmp_path / 'x'}: is a directory"
    # through the CLI: the segment output folder holds a folder named like the label file
    (tmp_path / "seg" / "img" / "labels.tif").mkdir(parents=True)
    res = _run(["segment", small_image, "--out", tmp_path / "seg"])
    _assert_error(res, str(tmp_path / "seg" / "img" / "labels.tif"), "is a directory")


def test_disk_full_while_writing(tmp_path, small_image):
    out = tmp_path / "full"
    res = _run(["segment", small_image, "--out", out], fault="enospc", target=out)
    _assert_error(res, "no space left on device")
    assert not list(out.rglob("*.tif")), list(out.rglob("*"))


def test_torch_writer_on_a_full_disk_names_enospc(tmp_path):
    from napari_stexp.cli import _wrapped_write_error

    class Args:
        out = str(tmp_path / "model")

    exc = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 2880 vs 2774")
    line = _wrapped_write_error(exc, Args)
    assert line.startswith(str(tmp_path / "model") + ": ")
    # plenty of space here: the reason says the write failed and quotes the writer
    assert "unexpected pos" in line
    assert _wrapped_write_error(RuntimeError("some bug"), Args) is None


def test_hdf5_error_wrapping_enospc():
    from napari_stexp.cli import os_error_line

    class Args:
        out = "pred.h5ad"

    exc = OSError("Can't write data (file write failed: time = Fri, filename = 'pred.h5ad', "
                  "file descriptor = 5, errno = 28, error message = 'No space left on device')")
    assert os_error_line(exc, Args) == "pred.h5ad: no space left on device"


def test_real_full_tmpfs(tmp_path, small_image):
    """A real 64 kB tmpfs where the machine allows mounting one (root in a container)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "seg").mkdir()
        # fill the disk, leaving the folder entries only
        with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        res = _run(["segment", small_image, "--out", mnt / "seg"])
        _assert_error(res, str(mnt), "no space left on device")
        assert not [p for p in (mnt / "seg").rglob("*") if p.is_file()]
        # read-only: remount it
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        res = _run(["segment", small_image, "--out", mnt / "seg2"])
        _assert_error(res, str(mnt / "seg2"), "read-only file system")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
