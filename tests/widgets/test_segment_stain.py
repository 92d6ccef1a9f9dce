"""Segment widget: the stain and tissue-mask choices reach the backend (issue 17 item 3)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_stain_choice_in_params(make_napari_viewer):
    from napari_stexp.widgets.segment import SegmentWidget

    w = SegmentWidget(make_napari_viewer())
    assert w.stain_combo.currentText() == "auto"
    w.mode_combo.setCurrentText("nuclei")
    w.stain_combo.setCurrentText("hematoxylin")
    w.tissue_combo.setCurrentText("off")
    p = w.params()
    assert p["mode"] == "nuclei" and p["stain"] == "hematoxylin" and p["tissue"] is False
    w.tissue_combo.setCurrentText("auto")
    assert w.params()["tissue"] == "auto"
