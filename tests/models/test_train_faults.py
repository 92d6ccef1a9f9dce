"""Training into a model folder under faults (issue 16): SIGKILL mid-train, a second training
into the same folder, checkpoints beside (never inside) the finished folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_stexp.data.cells import CellCropDataset, synthetic_cell_images
from napari_stexp.errors import InputError
from napari_stexp.models.betavae import BVAEConfig, BVAEModel, train_bvae

SRC = str(Path(__file__).resolve().parents[2] / "src")
EPOCHS = 6

_TRAIN = """
import sys, time
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from napari_stexp.data.cells import CellCropDataset, synthetic_cell_images
from napari_stexp.models.betavae import BVAEConfig, train_bvae
imgs, labels = synthetic_cell_images(6, 3, size=48, seed=1)
cells = CellCropDataset.from_arrays(imgs, labels, size=32)
open({flag!r}, "w").close()
train_bvae(cells, config=BVAEConfig.tiny(epochs={epochs}), out_dir={out!r},
           progress=lambda d, t, m: time.sleep({sleep}))
"""


def _cells():
    imgs, labels = synthetic_cell_images(6, 3, size=48, seed=1)
    return CellCropDataset.from_arrays(imgs, labels, size=32)


def _start(out: Path, flag: Path, sleep: float) -> subprocess.Popen:
    code = textwrap.dedent(_TRAIN).format(src=SRC, flag=str(flag), out=str(out),
                                          epochs=EPOCHS, sleep=sleep)
    return subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ,
                                                                  OMP_NUM_THREADS="1"))


def _wait_for(cond, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, "the training process ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_mid_train_leaves_no_half_folder_and_resumes(tmp_path):
    """Issue 16: a killed ``bvae train`` left a model folder holding only
    ``checkpoints/image/last.pt``; finished folders kept ``checkpoints/``."""
    out, flag = tmp_path / "m", tmp_path / "flag"
    ckpt = tmp_path / "m.ckpt" / "image" / "last.pt"
    proc = _start(out, flag, sleep=0.2)
    try:
        _wait_for(ckpt.exists, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()  # no half-written model folder
    assert ckpt.is_file()  # the resumable checkpoint, beside it
    # no temporary; at most the dead writer's empty lock file (freed by the kernel, removed by
    # the next writer)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")] in ([], [".m.lock"])
    seen = []
    model = train_bvae(_cells(), config=BVAEConfig.tiny(epochs=EPOCHS), out_dir=out,
                       progress=lambda d, t, m: seen.append(d))
    assert seen[0] > 1  # resumed after the checkpointed epoch(s), not from the start
    assert [e["epoch"] for e in model.history["image"]] == list(range(EPOCHS))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flag", "m"]  # .ckpt removed
    BVAEModel.load(out)


def test_sigkill_during_the_final_save_keeps_the_previous_folder(tmp_path):
    """A kill at any moment leaves either the previous complete folder or the new one."""
    out = tmp_path / "m"
    first = train_bvae(_cells(), config=BVAEConfig.tiny(epochs=1), out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        import napari_stexp.models._folder as F
        real = F.sha256_file
        def slow(p):  # the save stops between writing the weights and config.json
            open({str(tmp_path / 'flag')!r}, "w").close()
            time.sleep(60)
            return real(p)
        F.sha256_file = slow
        from napari_stexp.models.betavae import BVAEModel
        BVAEModel.load({str(out)!r}).save({str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for((tmp_path / "flag").exists, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = BVAEModel.load(out)
    np.testing.assert_array_equal(again.embed(_cells()), first.embed(_cells()))
    again.save(out)  # the next successful write sweeps the killed save's temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flag", "m"]


def test_a_second_training_into_the_same_folder_is_refused(tmp_path):
    """Issue 16: two trainings into one folder both exited 0; the last writer won."""
    out, flag = tmp_path / "m", tmp_path / "flag"
    proc = _start(out, flag, sleep=0.5)
    try:
        _wait_for(lambda: (tmp_path / ".m.lock").exists(), proc)
        with pytest.raises(InputError, match=r"another process \(pid \d+\) is writing it"):
            train_bvae(_cells(), config=BVAEConfig.tiny(epochs=1, seed=5), out_dir=out)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_out_naming_an_existing_file_is_refused_before_training(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    seen = []
    with pytest.raises(InputError, match="exists and is not a folder"):
        train_bvae(_cells(), config=BVAEConfig.tiny(epochs=1), out_dir=target,
                   progress=lambda d, t, m: seen.append(d))
    assert seen == [] and target.read_text() == "keep"
