"""Largest GUI-thread stall per user journey (issue 17.9), ours against the previous behaviour,
measured in the same run, each journey in a FRESH napari process under the current DISPLAY
(``xvfb-run -a python benchmarks/gui_stall.py``).

A 20 ms QTimer on the GUI thread records the largest gap between its ticks
(``widgets._common.StallProbe``); the stall is that gap minus 20 ms. Journeys:

- ``dock_<widget>``: dock the expression / classifier widget (form built from the config);
- ``train_expression``: the "tiny" preset, Train on the sample slide, then Predict;
- ``train_classify``: the "quick" preset, Train, then Classify.

``baseline``: the previous behaviour, torch imported (``warm_torch``) on the GUI thread when Train
is pressed; ``ours``: torch imported in the worker. One JSON line per journey:
``{"name": "gui_stall_<journey>", "ours_max_stall_ms", "baseline_max_stall_ms", "ratio"}``.
``--quick`` runs only the train journeys once each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

JOURNEYS = ("dock_expression", "dock_classify", "train_expression", "train_classify")
WIDGETS = {"expression": "Expression (mclSTExp)", "classify": "Tissue classifier"}


def _wait(widget, timeout=600.0):
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    t0 = time.monotonic()

    def check():
        if getattr(widget, "_worker", None) is None or time.monotonic() - t0 > timeout:
            loop.quit()

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(check)
    timer.start()
    loop.exec_()
    timer.stop()


def child(journey: str, mode: str) -> dict:
    """One journey in this (fresh) process; returns the probe's figures."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stexp.widgets._common import StallProbe, warm_torch

    viewer = napari.Viewer()
    viewer.open_sample("napari-stexp", "synthetic_slide")
    for _ in range(5):
        QApplication.processEvents()
    kind = journey.split("_", 1)[1]
    probe = StallProbe(20).start()
    marks = [("start", time.perf_counter())]
    _, w = viewer.window.add_plugin_dock_widget("napari-stexp", WIDGETS[kind])
    if journey.startswith("train"):
        w.set_checked(["SYN1"])
        w.preset.setCurrentText("tiny" if kind == "expression" else "quick")
        if kind == "expression":
            w.field("input_size").setValue(32)
        if mode == "baseline":
            warm_torch()  # the previous train(): torch imported on the GUI thread
        marks.append(("train", time.perf_counter()))
        w.train(device="cpu", cache_dir=False) if kind == "expression" else w.train()
        _wait(w)
        marks.append(("trained", time.perf_counter()))
        ok = w.model is not None
        (w.predict if kind == "expression" else w.classify)("SYN1")
        _wait(w)
        marks.append(("predicted", time.perf_counter()))
    else:
        ok = True
        for _ in range(5):
            QApplication.processEvents()
    out = probe.stop()
    t0 = marks[0][1]
    out["marks_s"] = {k: round(t - t0, 2) for k, t in marks}
    out["long_gaps"] = [(round(t - t0, 2), round(g)) for t, g in probe.long_gaps]
    out.update(journey=journey, mode=mode, ok=bool(ok),
               torch_imported="torch" in sys.modules, status=w.status.text()[:120])
    viewer.close()
    return out


def run_child(journey: str, mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, __file__, "--child", journey, mode],
                       capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"journey": journey, "mode": mode, "error": f"exit {r.returncode}",
                "stderr": r.stderr[-500:]}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("JOURNEY", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="train journeys only")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    journeys = [j for j in JOURNEYS if not args.quick or j.startswith("train")]
    for j in journeys:
        ours, base = run_child(j, "ours"), run_child(j, "baseline")
        o, b = ours.get("max_stall_ms"), base.get("max_stall_ms")
        print(json.dumps({"name": f"gui_stall_{j}", "ours_max_stall_ms": o,
                          "baseline_max_stall_ms": b,
                          "ratio": round(o / b, 3) if o is not None and b else None,
                          "ours_ok": ours.get("ok"), "baseline_ok": base.get("ok"),
                          "ours_ticks": ours.get("ticks"), "errors": [
                              r.get("error") for r in (ours, base) if r.get("error")]}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
