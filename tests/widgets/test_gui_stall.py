"""A GUI-thread stall probe around user journeys (issue 17.9). The largest stall per journey is
printed and recorded (``record_property``), never asserted: timings are figures, not tests
(``benchmarks/gui_stall.py`` measures them in fresh processes against the previous behaviour).
Asserted: the probe ran while the journey did, and the journey completed."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_stall_probe_measures_a_blocked_gui_thread(qtbot):
    import time

    from napari_stexp.widgets._common import StallProbe

    with StallProbe(20) as probe:
        qtbot.wait(100)
        time.sleep(0.3)  # the GUI thread blocked
        qtbot.wait(60)
    assert probe.ticks >= 3 and probe.max_gap_ms >= 300


def test_largest_stall_per_journey(make_napari_viewer, qtbot, record_property):
    import torch

    from napari_stexp.widgets._common import StallProbe
    from napari_stexp.widgets.expression import ExpressionWidget

    torch.set_num_threads(1)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stexp", "synthetic_slide")
    figures = {}
    with StallProbe(20) as probe:
        w = ExpressionWidget(viewer)
        qtbot.wait(50)
    figures["dock_expression"] = probe.max_stall_ms
    assert probe.ticks >= 1

    w.set_checked(["SYN1"])
    w.preset.setCurrentText("tiny")
    w.field("input_size").setValue(32)
    with StallProbe(20) as probe:
        worker = w.train(device="cpu", cache_dir=False, epochs=1)
        qtbot.waitUntil(lambda: w._worker is None, timeout=300_000)
        assert w.model is not None, w.status.text()
        w.predict("SYN1")
        qtbot.waitUntil(lambda: w._worker is None, timeout=300_000)
    assert worker is not None and "SYN1 predicted" in viewer.layers
    assert probe.ticks > 5
    figures["train_predict_expression"] = probe.max_stall_ms
    for k, v in figures.items():
        record_property(f"max_stall_ms_{k}", round(v, 1))
        print(f"largest GUI-thread stall, {k}: {v:.0f} ms")
