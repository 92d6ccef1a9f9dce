"""Batch processing on dask.distributed: same numbers as one-by-one, a killed worker is retried,
an interrupted run resumes without redoing finished slides and leaves no temporary files.

One LocalCluster (2 worker processes) serves the whole module through ``scheduler=address``
(the "existing cluster" path); the interrupted run starts its own cluster in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_stexp.batch import engine as batch
from napari_stexp.errors import InputError

ROOT = Path(__file__).resolve().parents[2]  # the repository: "tests.batch.test_batch" imports from here
THIS = __name__  # workers import the helper tasks below from this module (importlib mode: "tests.batch.test_batch")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Four small smear images as tiled TIFFs (lossless), different seeds."""
    from napari_stexp.data.synthetic_smear import make_synthetic_smear
    from napari_stexp.io.wsi import write_pyramidal_tiff

    d = tmp_path_factory.mktemp("slides")
    for i in range(4):
        img, _, _ = make_synthetic_smear(shape=(256, 320), n_wbc=3, n_rbc=25, seed=i)
        write_pyramidal_tiff(d / f"smear{i}.tif", img, mpp=0.5, compression="zlib", tile=256)
    return sorted(d.glob("*.tif"))


@pytest.fixture(scope="module")
def cluster():
    """One 2-process LocalCluster for the module: its address is passed as ``scheduler``."""
    c = batch.local_cluster(2, silence_logs=50)
    yield c.scheduler_address
    c.close()


def _labels(out: Path, stem: str) -> np.ndarray:
    from napari_stexp.io.export import read_ome_zarr

    return np.asarray(read_ome_zarr(out / f"{stem}.labels.ome.zarr").levels[0])


def _cells(out: Path, stem: str):
    import anndata

    return anndata.read_h5ad(out / f"{stem}.cells.h5ad")


def _mtimes(out: Path, stems) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()
            if p.name.split(".")[0] in stems}


def _no_temporaries(out: Path) -> bool:
    return not [p for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------- helper tasks
# Resolved by name on the workers ("tests.batch.test_batch:run_..."): the workers get the repository
# on sys.path from the pytest process (spawn copies sys.path) or PYTHONPATH (subprocess).


def run_dies_once(model, input_path, out_dir, stem, options):
    """Segment, but the first attempt at ``options['victim']`` kills its worker process
    mid-write (a half-written temporary is left behind, as a real crash would)."""
    flag = Path(options["flag_dir"]) / f"{stem}.attempt"
    if stem == options["victim"] and not flag.exists():
        flag.write_text(str(os.getpid()))
        (Path(out_dir) / f".{stem}.labels.ome.zarr.tmp-crash").mkdir(exist_ok=True)
        os._exit(1)
    from napari_stexp.batch.tasks import run_segment

    return run_segment(model, input_path, out_dir, stem, options)


def run_slow_while_flag(model, input_path, out_dir, stem, options):
    """Segment; while ``options['slow_flag']`` exists the ``slow`` slides hang mid-write."""
    if stem in options["slow"] and Path(options["slow_flag"]).exists():
        (Path(out_dir) / f".{stem}.cells.h5ad.tmp-inflight").write_bytes(b"partial")
        time.sleep(300)
    from napari_stexp.batch.tasks import run_segment

    return run_segment(model, input_path, out_dir, stem, options)


LOAD = "napari_stexp.batch.tasks:load_segment"
LOADS: list = []


def load_counted(model_dir, options):
    LOADS.append(options["n"])
    return {"n": options["n"]}


def run_write(loaded, input_path, out_dir, stem, options):
    target = Path(out_dir) / f"{stem}.n{loaded['n']}.txt"
    target.write_text(str(loaded["n"]))
    return [target]


# --------------------------------------------------------------------------- unit


def test_expand_inputs_glob_folder_list(slides, tmp_path):
    folder = slides[0].parent
    assert batch.expand_inputs(str(folder / "*.tif")) == slides
    assert batch.expand_inputs(folder) == slides
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# two slides\n{slides[1]}\n{slides[0]}\n{slides[1]}\n")
    assert batch.expand_inputs(lst) == [slides[1], slides[0]]  # order kept, duplicates once
    with pytest.raises(InputError, match="no such file"):
        batch.expand_inputs(tmp_path / "nope")
    with pytest.raises(InputError, match="matched no inputs"):
        batch.expand_inputs(str(tmp_path / "*.svs"))
    assert batch.slide_stem(Path("a/b.ome.tif")) == "b"


def test_model_loaded_once_per_process_and_cache_bounded(slides, tmp_path):
    batch.clear_model_cache()
    LOADS.clear()
    task = (f"{THIS}:load_counted", f"{THIS}:run_write")
    res = batch.run_batch("custom", slides, tmp_path / "a", local=True, options={"n": 1},
                          task=task)
    assert res.ok and LOADS == [1]  # 4 slides, one load
    assert [r["model_cached"] for r in res.records] == [False, True, True, True]
    for n in (2, 3, 1):  # a third model evicts the least recently used one
        batch.run_batch("custom", slides[:1], tmp_path / f"b{n}", local=True,
                        options={"n": n}, task=task)
    assert LOADS == [1, 2, 3, 1]
    assert len(batch._MODEL_CACHE) == batch.MODEL_CACHE_SIZE
    batch.clear_model_cache()


# --------------------------------------------------------------------------- equality


def test_distributed_batch_equals_one_by_one(slides, cluster, tmp_path):
    import pandas as pd
    import tifffile

    from napari_stexp.commands.segment import segment_to_folder

    dist, loc = tmp_path / "dist", tmp_path / "local"
    res = batch.run_batch("segment", [str(p) for p in slides], dist, scheduler=cluster)
    assert res.ok and len(res.done) == 4 and res.n_workers == 2
    # each worker process loaded the "model" once and reused it for its next slides
    pids = {r["pid"] for r in res.records}
    assert pids.isdisjoint({os.getpid()})
    assert sum(not r["model_cached"] for r in res.records) == len(pids)
    ref = batch.run_batch("segment", slides, loc, local=True)
    assert ref.ok and len(ref.done) == 4
    for p in slides:
        stem = p.stem
        # one by one: what `napari-stexp segment IMAGE --out DIR` writes
        one = segment_to_folder(p, tmp_path / "one" / stem, method="classical", device="cpu")
        one_labels = tifffile.imread(tmp_path / "one" / stem / "labels.tif")
        one_table = pd.read_csv(tmp_path / "one" / stem / "objects.csv")
        assert len(one) > 0 and one_labels.max() == len(one_table)
        for out in (dist, loc):
            np.testing.assert_array_equal(_labels(out, stem), one_labels)
            cells = _cells(out, stem)
            np.testing.assert_allclose(cells.obs[["y", "x", "area"]].to_numpy(float),
                                       one_table[["y", "x", "area"]].to_numpy(float))
            np.testing.assert_allclose(cells.obsm["spatial"],
                                       one_table[["x", "y"]].to_numpy(float))
            link = cells.uns["spatial"][stem]["metadata"]
            assert link["mpp_fullres"] == pytest.approx(0.5)
            assert Path(link["source_image_path"]) == p.resolve()
        assert _no_temporaries(dist) and _no_temporaries(loc)
    summary = json.loads((dist / "batch.segment.json").read_text())
    assert len(summary["done"]) == 4 and summary["failed"] == {}
    rows = batch.list_outputs(dist, "segment")
    assert len(rows) == 4 and all(r["complete"] for r in rows)

    # a rerun redoes nothing and touches nothing
    stems = {p.stem for p in slides}
    before = _mtimes(dist, stems)
    again = batch.run_batch("segment", slides, dist, scheduler=cluster)
    assert len(again.skipped) == 4 and not again.done and _mtimes(dist, stems) == before
    # ... unless the settings changed (another stain -> other outputs): then it redoes them
    todo, done = batch.plan("segment", slides, dist, options={"params": {"stain": "dark"}})
    assert len(todo) == 4 and not done


# --------------------------------------------------------------------------- faults


def test_killed_worker_is_retried(slides, cluster, tmp_path):
    out, flags = tmp_path / "out", tmp_path / "flags"
    flags.mkdir()
    victim = slides[1].stem
    opts = {"victim": victim, "flag_dir": str(flags)}
    res = batch.run_batch("segment", slides, out, scheduler=cluster, options=opts,
                          task=(LOAD, f"{THIS}:run_dies_once"))
    assert res.ok, res.failed
    assert sorted(Path(p).stem for p in res.done) == [p.stem for p in slides]
    dead_pid = int((flags / f"{victim}.attempt").read_text())
    rec = batch.read_record(out, victim, "segment")
    assert rec["pid"] != dead_pid  # finished by another (or the restarted) worker process
    ref = batch.run_batch("segment", [slides[1]], tmp_path / "ref", local=True)
    np.testing.assert_array_equal(_labels(out, victim), _labels(tmp_path / "ref", victim))
    assert _no_temporaries(out)  # the crashed writer's temporary was cleaned up
    assert ref.ok


def test_interrupted_run_resumes_without_redoing(slides, cluster, tmp_path):
    out, slow_flag = tmp_path / "out", tmp_path / "slow.flag"
    slow_flag.write_text("1")
    fast, slow = [p.stem for p in slides[:2]], [p.stem for p in slides[2:]]
    opts = {"slow": slow, "slow_flag": str(slow_flag)}
    task = (LOAD, f"{THIS}:run_slow_while_flag")
    script = textwrap.dedent(f"""
        from napari_stexp.batch import engine as batch
        if __name__ == "__main__":
            batch.run_batch("segment", {[str(p) for p in slides]!r}, {str(out)!r},
                            n_workers=2, options={opts!r}, task={task!r})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if all(batch.is_complete(out, s, "segment") for s in fast) and all(
                    (out / f".{s}.cells.h5ad.tmp-inflight").exists() for s in slow):
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # the client dies mid-run (its cluster with it)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        # the killed client's worker processes exit by themselves; make sure nothing lingers
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert all(batch.is_complete(out, s, "segment") for s in fast)
    assert not any(batch.is_complete(out, s, "segment") for s in slow)
    assert not _no_temporaries(out)  # the interrupted writes left temporaries behind
    before = _mtimes(out, set(fast))

    slow_flag.unlink()  # the rerun goes at normal speed, same settings
    res = batch.run_batch("segment", slides, out, scheduler=cluster, options=opts, task=task)
    assert res.ok and sorted(Path(p).stem for p in res.done) == slow
    assert sorted(Path(p).stem for p in res.skipped) == fast
    assert _mtimes(out, set(fast)) == before  # finished slides untouched
    assert _no_temporaries(out)
    for s in fast + slow:
        assert batch.is_complete(out, s, "segment")
        assert _cells(out, s).n_obs == len(np.unique(_labels(out, s))) - 1  # readable, whole


def test_failing_slide_is_reported_and_others_finish(slides, tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00not really a tiff")
    res = batch.run_batch("segment", [slides[0], bad], tmp_path / "out", local=True)
    assert res.done == [str(slides[0])] and list(res.failed) == [str(bad)]
    assert "broken.tif" in res.failed[str(bad)]
    assert not batch.is_complete(tmp_path / "out", "broken", "segment")


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    from napari_stexp.commands import batch as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_batch(slides, cluster, tmp_path, capfd):
    out = tmp_path / "cli"
    rc = _cli(["batch", "segment", "--inputs", str(slides[0].parent / "smear[01].tif"),
               "--out", str(out), "--scheduler", cluster, "--json"])
    cap = capfd.readouterr()
    assert rc == 0
    assert "2 slide(s): 2 done, 0 already complete, 0 failed" in cap.out
    assert "[100.0%] 2/2" in cap.err  # progress on the command line
    assert batch.is_complete(out, "smear0", "segment")
    rc = _cli(["batch", "segment", "--inputs", str(slides[0]), "--out", str(out), "--local",
               "--dry-run"])
    assert rc == 0 and "0 to do, 1 already complete" in capfd.readouterr().out
    rc = _cli(["batch", "segment", "--inputs", str(slides[0]), "--out", str(out), "--local",
               "--dry-run", "--param", "stain=dark"])  # other settings: it would be redone
    assert rc == 0 and "1 to do, 0 already complete" in capfd.readouterr().out
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"garbage")
    rc = _cli(["batch", "segment", "--inputs", str(bad), "--out", str(out), "--local"])
    cap = capfd.readouterr()
    assert rc == 1 and "failed: " in cap.err and "1 failed" in cap.out
    with pytest.raises(InputError, match="needs an mclSTExp model folder"):
        _cli(["batch", "predict", "--inputs", str(slides[0]), "--out", str(out), "--local"])
    with pytest.raises(InputError, match="model folder not found"):
        _cli(["batch", "embed", "--inputs", str(slides[0]), "--out", str(out), "--local",
              "--model", str(tmp_path / "nope")])
    with pytest.raises(InputError, match="KEY=VALUE"):
        _cli(["batch", "segment", "--inputs", str(slides[0]), "--out", str(out), "--set", "x"])
