"""The navigator in a real window, in a fresh process: walking A1 (H&E) → B1 → C1 (no H&E)
used to segfault in vispy's draw (issue 17.1: the previous slide's image layer removed, then the
reused points layer given new data). The walk runs in a subprocess so a segfault is an exit code,
not a dead test run; the dock widget is driven with Qt's event loop running, which draws the frames (the crash needs
them: a walk with ``viewer.screenshot`` alone between steps did not crash)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

SCRIPT = textwrap.dedent("""
    import sys
    import time

    import torch  # noqa: F401  (torch before the first Qt/GL context, as every entry point)
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stexp.io.collection import SlideCollection
    from napari_stexp.widgets.navigator import NavigatorWidget

    viewer = napari.Viewer(show=True)
    w = NavigatorWidget(viewer, cache_dir=sys.argv[2])
    viewer.window.add_dock_widget(w, name="navigator")
    coll = SlideCollection.from_paths(sys.argv[1], cache_dir=sys.argv[2])
    w.set_collection(coll, show_first=False)
    app = QApplication.instance()

    def spin(until, seconds):
        t0 = time.time()
        while time.time() - t0 < seconds and not until():
            app.processEvents()
            time.sleep(0.02)

    for name in ("A1", "B1", "C1", "B4", "C1", "A1"):
        w.go(coll.names.index(name))
        spin(lambda: w.nav.current == name and w._worker is None, 60)
        spin(lambda: False, 0.7)  # the event loop draws frames meanwhile
        viewer.screenshot(canvas_only=True, flash=False)
        kinds = sorted(ly.metadata.get("kind") for ly in viewer.layers if ly.visible)
        print(w.nav.current, kinds, flush=True)
    viewer.close()
    print("walked", flush=True)
""")



def test_walk_a1_b1_c1_in_a_real_window_does_not_crash(her2st_dir, tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display (run under xvfb-run)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(her2st_dir), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == 0, f"exit code {proc.returncode} (negative = signal):\n{out}"
    assert "walked" in proc.stdout
    assert "B1 ['spots']" in proc.stdout and "C1 ['spots']" in proc.stdout, out
    assert "B4 ['image', 'spots']" in proc.stdout, out
