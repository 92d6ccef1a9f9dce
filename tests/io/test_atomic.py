"""io/_atomic.py under faults: concurrent writers, SIGKILL mid-save, stale temporaries, locks."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from napari_stexp.errors import InputError
from napari_stexp.io._atomic import atomic_path, claim_target, release_target, target_lock

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _save_many(args):
    target, n, directory = args
    failures = []
    for i in range(n):
        token = f"{os.getpid()}-{i}"
        try:
            with atomic_path(target, directory=directory) as tmp:
                if directory:
                    (tmp / "a.txt").write_text(token)
                    (tmp / "b.txt").write_text(token)
                else:
                    tmp.write_text(token)
        except Exception as exc:  # noqa: BLE001 - counted and reported by the test
            failures.append(f"{type(exc).__name__}: {exc}")
    return failures


@pytest.mark.parametrize("directory", [True, False])
def test_three_processes_writing_one_target(tmp_path, directory):
    """Issue 16: ~1,480 of 1,500 folder saves per process failed with "Directory not empty"
    and three ``.old-PID`` folders were left."""
    target = tmp_path / ("model" if directory else "table.csv")
    with mp.get_context("spawn").Pool(3) as pool:
        results = pool.map(_save_many, [(str(target), 60, directory)] * 3)
    failures = [f for r in results for f in r]
    assert failures == [], failures[:3]
    assert _leftovers(tmp_path, target.name) == []
    if directory:  # one writer's complete folder, never a mix
        a, b = (target / "a.txt").read_text(), (target / "b.txt").read_text()
        assert a == b and sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]


def test_stale_temporaries_are_swept_on_the_next_write(tmp_path):
    """Issue 16: a kill during the final save left a hidden ``.NAME.tmp-*/`` that survived
    every successful rerun."""
    target = tmp_path / "model"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".model.tmp-{dead}-abc").mkdir()
    (tmp_path / f".model.tmp-{dead}-abc" / "model.pt").write_bytes(b"x" * 100)
    (tmp_path / ".model.tmp-k2j3h4").mkdir()  # an older version's name (no pid)
    (tmp_path / f".model.old-{dead}").mkdir()
    live = tmp_path / f".model.tmp-{os.getppid()}-live"  # a writer still running: kept
    live.mkdir()
    (tmp_path / ".other.tmp-k2j3h4").mkdir()  # another target's: kept
    with atomic_path(target, directory=True) as tmp:
        (tmp / "x").write_text("1")
    assert _leftovers(tmp_path, "model") == [live.name]
    assert (tmp_path / ".other.tmp-k2j3h4").is_dir()


_KILL_MID_SAVE = """
import sys, time
sys.path.insert(0, {src!r})
from napari_stexp.io._atomic import atomic_path
with atomic_path({target!r}, directory=True) as tmp:
    (tmp / "part1").write_text("new")
    open({flag!r}, "w").close()
    time.sleep(60)
    (tmp / "part2").write_text("new")
"""


def test_sigkill_mid_save_keeps_the_old_folder_and_the_rerun_cleans_up(tmp_path):
    target, flag = tmp_path / "model", tmp_path / "flag"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "part1").write_text("old")
        (tmp / "part2").write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_MID_SAVE.format(
        src=SRC, target=str(target), flag=str(flag))])
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert (target / "part1").read_text() == "old" and (target / "part2").read_text() == "old"
    assert len(_leftovers(tmp_path, "model")) == 1  # the killed writer's temporary
    with atomic_path(target, directory=True) as tmp:
        (tmp / "part1").write_text("rerun")
    assert _leftovers(tmp_path, "model") == []
    assert sorted(p.name for p in target.iterdir()) == ["part1"]


_HOLD = """
import sys, time
sys.path.insert(0, {src!r})
from napari_stexp.io._atomic import claim_target
claim_target({target!r})
open({flag!r}, "w").close()
time.sleep(60)
"""


def test_a_second_writer_of_a_claimed_target_is_refused(tmp_path):
    """Issue 16: two trainings into one folder both printed "wrote"; the last one won."""
    target, flag = tmp_path / "model", tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLD).format(
        src=SRC, target=str(target), flag=str(flag))])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(InputError, match=rf"another process \(pid {proc.pid}\) is writing"):
            claim_target(target)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # the holder died: the lock is free again; re-entrant within one process
    lock = claim_target(target)
    with target_lock(target, wait=False), atomic_path(target, directory=True) as tmp:
        (tmp / "x").write_text("1")
    release_target(target)
    lock.release()
    assert _leftovers(tmp_path, "model") == []
