"""The fuzz suite: every malformed input from ``_inputs.build_cases`` goes through the CLI
(``info`` plus the relevant command, in subprocesses) and the napari reader.

For an input expected to be refused, every command must exit 2 with a last stderr line
``napari-stexp: error: <file>: <problem>`` naming the file and the problem, print no traceback,
leave nothing in its output location, stay under a peak-memory bound and finish before a
timeout; the reader, when it claims the path, must raise the same kind of one-line error.
The session prints one summary line (inputs tried, clear errors, repaired, accepted,
tracebacks, hangs, partial files, largest peak memory and its input).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _inputs import OUT, build_cases  # noqa: E402

SRC = HERE.parents[1] / "src"
TIMEOUT_S = 150.0  # per input (all its commands); typical inputs take 2-10 s
PEAK_RSS_MB = 1500  # per child (torch's import alone is ~400 MB)
ADDRESS_SPACE = 12 * 2**30  # RLIMIT_AS of a child: a runaway allocation fails, never swaps
WORKERS = min(4, (os.cpu_count() or 2) + 1)  # children wait on imports and I/O too


def _data_root() -> Path | None:
    from napari_stexp.datasets import data_root

    root = data_root()
    return root if (root / "visium-scanpy-testdata").exists() else None


_ROOT = _data_root()
_TMP = Path(tempfile.mkdtemp(prefix="stexp-fuzz-"))
atexit.register(shutil.rmtree, _TMP, True)
CASES = build_cases(_TMP / "in", _ROOT) if _ROOT else []
if os.environ.get("STEXP_FUZZ_ONLY"):  # a comma list of name fragments, for debugging
    CASES = [c for c in CASES if any(k in c.name for k in os.environ["STEXP_FUZZ_ONLY"]
                                     .split(","))]
_RESULTS: dict[str, dict] = {}
_LOCK = threading.Lock()


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               STEXP_FUZZ_AS=str(ADDRESS_SPACE), PYTHONWARNINGS="ignore::DeprecationWarning")
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _child(spec: dict, workdir: Path) -> dict:
    """One child process runs the spec (see _child.py); os.wait4 gives its peak memory."""
    t0 = time.perf_counter()
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec))
    with open(workdir / "child.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / "_child.py"), str(spec_path),
                                 str(result_path)], stdout=out, stderr=subprocess.STDOUT,
                                env=_env(), start_new_session=True)
        hung = threading.Event()

        def kill():
            hung.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(TIMEOUT_S, kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
    runs = json.loads(result_path.read_text()) if result_path.exists() else []
    for r in runs:
        lines = [ln for ln in r["stderr"].strip().splitlines() if ln.strip()]
        r["last"] = lines[-1] if lines else ""
        r["traceback"] = "Traceback (most recent call last)" in r["stderr"]
        r["hung"] = False
    crashed = len(runs) < len(spec["commands"]) + bool(spec.get("reader"))
    return {"runs": runs, "hung": hung.is_set(), "crashed": crashed and not hung.is_set(),
            "exit": os.waitstatus_to_exitcode(status),
            # the child's own peak (VmHWM); wait4's ru_maxrss includes the parent's size at fork
            "rss_mb": max([r.get("peak_mb", 0.0) for r in runs] or [usage.ru_maxrss / 1024]),
            "seconds": time.perf_counter() - t0,
            "output": (workdir / "child.out").read_text(errors="replace")[-3000:]}


def _leftovers(out: Path) -> list[str]:
    """Files a refused command left where its output would go (temporaries included)."""
    found = []
    for p in out.parent.glob(out.name + "*"):
        found += [str(p)] if p.is_file() else [str(q) for q in p.rglob("*") if q.is_file()]
    for p in out.parent.glob("." + out.name + "*"):  # hidden atomic-write temporaries
        found.append(str(p))
    return found


def _run_case(case) -> dict:
    outdir = _TMP / "out" / case.name
    outdir.mkdir(parents=True, exist_ok=True)
    outs = [outdir / f"out{i}" for i in range(len(case.commands))]
    commands = [[a.replace(OUT, str(o)) for a in cmd] for cmd, o in zip(case.commands, outs,
                                                                         strict=True)]
    spec = {"commands": commands, "reader": str(case.path) if case.reader else None}
    res = _child(spec, outdir)
    n = len(commands)
    for r, o in zip(res["runs"][:n], outs, strict=False):
        r["leftovers"] = _leftovers(o)
    res["reader"] = res["runs"][n] if len(res["runs"]) > n else None
    res["runs"] = res["runs"][:n]
    return res


@pytest.fixture(scope="module")
def results(request):
    if not CASES:
        pytest.skip("real data not found (set STEXP_DATA to the shared data folder)")
    with ThreadPoolExecutor(WORKERS) as pool:
        for case, res in zip(CASES, pool.map(_run_case, CASES), strict=True):
            _RESULTS[case.name] = res
    yield _RESULTS
    line = summary_line(CASES, _RESULTS)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)
        else:
            print(line)


def _verdict(case, res) -> str:
    runs = res["runs"]
    if all(r["rc"] == 2 and r["last"].startswith("napari-stexp: error: ")
           and not r["traceback"] for r in runs):
        return "error"
    if all(r["rc"] == 0 for r in runs):
        warned = any("napari-stexp: warning:" in r["stderr"] for r in runs)
        return "warning" if warned else "accepted"
    return "other"


def summary_line(cases, results) -> str:
    verdicts = [_verdict(c, results[c.name]) for c in cases if c.name in results]
    done = [(c.name, results[c.name]) for c in cases if c.name in results]
    all_runs = [(name, r) for name, res in done
                for r in res["runs"] + ([res["reader"]] if res["reader"] else [])]
    peak = max(done, key=lambda t: t[1]["rss_mb"]) if done else ("-", {"rss_mb": 0})
    return (f"fuzz: {len(verdicts)} inputs tried, {verdicts.count('error')} clear errors, "
            f"{verdicts.count('warning')} repaired with a warning, "
            f"{verdicts.count('accepted')} accepted, {verdicts.count('other')} other; "
            f"tracebacks {sum(r['traceback'] for _, r in all_runs)}, "
            f"hangs {sum(res['hung'] for _, res in done)}, "
            f"crashes {sum(res['crashed'] for _, res in done)}, "
            f"partial files {sum(bool(r.get('leftovers')) for _, r in all_runs)}; "
            f"largest peak memory {peak[1]['rss_mb']:.0f} MB ({peak[0]})")


def test_enough_inputs():
    if not CASES:
        pytest.skip("real data not found (set STEXP_DATA to the shared data folder)")
    if not os.environ.get("STEXP_FUZZ_ONLY"):
        assert len(CASES) >= 60, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case, results):
    res = results[case.name]
    assert not res["hung"], f"no answer in {TIMEOUT_S:.0f} s\n{res['output']}"
    assert not res["crashed"], f"child died (exit {res['exit']})\n{res['output']}"
    assert res["rss_mb"] < PEAK_RSS_MB, f"peak memory {res['rss_mb']:.0f} MB"
    for r in res["runs"]:
        cmd = " ".join(r["argv"][:2])
        assert not r["traceback"], f"{cmd}: traceback\n{r['stderr'][-3000:]}"
        if case.expect == "error":
            assert r["rc"] == 2, f"{cmd}: exit {r['rc']}\n{r['stderr'][-2000:]}"
            last = r["last"]
            assert last.startswith("napari-stexp: error: "), last
            assert case.names.lower() in last.lower(), f"{cmd}: does not name {case.names}: {last}"
            assert case.problem.lower() in last.lower(), f"{cmd}: not '{case.problem}': {last}"
            assert not r["leftovers"], f"{cmd}: left {r['leftovers'][:3]}"
        else:
            assert r["rc"] == 0, f"{cmd}: exit {r['rc']}\n{r['stderr'][-2000:]}"
            if case.expect == "warning":
                assert "napari-stexp: warning:" in r["stderr"]
    probe = res["reader"]
    if probe is not None:
        assert not probe["traceback"], f"reader raised\n{probe['stderr'][-3000:]}"
        got = probe["result"]
        assert got["reader"] in ("declined", "error", "layers"), got
        if got["reader"] == "error":
            assert case.names.lower() in got["message"].lower() or \
                str(case.path).lower() in got["message"].lower(), got
            info = next((r for r in res["runs"] if r["argv"][0] == "info"), None)
            if info is not None and info["rc"] == 2:
                assert info["last"].endswith(got["message"]), (info["last"], got)
