"""One user journey in a FRESH napari process (run by ``test_fresh_process.py``; not a test).

``python fresh_journey.py <widget display name> [model folder]``: create a viewer, dock the widget
from the manifest, trigger its torch path (load a model / segment with Mask R-CNN / predict),
draw frames (``viewer.screenshot(canvas_only=False)``) while the worker runs, and exit 0. A
segfault ends the process with -11/139, which the test reports.

Nothing here imports torch before Qt/Mesa: that is the point (a user's napari does not either).
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _draw(viewer, n: int = 1) -> None:
    for _ in range(n):
        viewer.screenshot(canvas_only=False)


def _wait(viewer, widget, timeout: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while getattr(widget, "_worker", None) is not None:
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timeout waiting for {type(widget).__name__}")
        QApplication.processEvents()
        _draw(viewer)
        time.sleep(0.02)
    QApplication.processEvents()


def main(name: str, model: str | None = None) -> int:
    import napari

    viewer = napari.Viewer()
    _draw(viewer)
    if name in ("Open data", "Slide navigator", "Latent explorer", "Tissue classifier",
                "Expression (mclSTExp)"):
        viewer.open_sample("napari-stexp", "synthetic_slide")
    _, w = viewer.window.add_plugin_dock_widget("napari-stexp", name)
    print("torch at dock:", "torch" in sys.modules)
    _draw(viewer, 2)
    if name == "Segment cells":
        viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8),
                         name="img", rgb=True)
        w.image_combo.setCurrentText("img")
        w.method_combo.setCurrentText("maskrcnn")
        w.backbone_combo.setCurrentText("tiny")
        w.device_combo.setCurrentText("cpu")
        w.run()
        _wait(viewer, w)
        assert "cells" in w.status.text(), w.status.text()
    elif name in ("Expression (mclSTExp)", "Tissue classifier", "Cell β-VAE"):
        w.load(model)
        _wait(viewer, w)
        assert w.model is not None, w.status.text()
        if name == "Expression (mclSTExp)":
            w.predict("SYN1")
            _wait(viewer, w)
            assert "SYN1 predicted" in viewer.layers, w.status.text()
        elif name == "Tissue classifier":
            w.classify("SYN1")
            _wait(viewer, w)
            assert "SYN1 classes" in viewer.layers, w.status.text()
    _draw(viewer, 3)
    print("torch imported:", "torch" in sys.modules, "| status:",
          getattr(getattr(w, "status", None), "text", lambda: "")())
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
