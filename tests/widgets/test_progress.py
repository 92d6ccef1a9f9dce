"""One overall progress across a job's phases (issue 17.9): the bar never restarts per phase."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_progress_is_one_bar_across_phases(qtbot):
    from qtpy.QtWidgets import QLabel, QProgressBar

    from napari_stexp.widgets._common import ProgressBridge

    bar, label = QProgressBar(), QLabel()
    qtbot.addWidget(bar)
    bridge = ProgressBridge(bar, label)
    bridge.begin(3)
    seen = []
    for d in range(0, 11):
        bridge(d, 10, "embedding")
        seen.append(bar.value())
    for e in range(1, 6):
        bridge(e, 5, f"epoch {e}/5, loss {1.0 / e:.3f}")
        seen.append(bar.value())
    assert "phase 2/3" in label.text()
    for d in range(0, 4):
        bridge(d, 3, "embedding")
        seen.append(bar.value())
    assert seen == sorted(seen), "the overall bar went backwards"
    assert seen[10] == pytest.approx(bar.maximum() / 3, abs=2)  # phase 1 of 3 done
    assert seen[-1] == bar.maximum()
    assert "phase 3/3" in label.text()
