"""``napari-stexp segment --stain/--tissue`` reach the classical backend (issue 17 item 3)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def cli_main():
    from napari_stexp.cli import main  # 'segment' is one of cli.COMMAND_MODULES

    return main


def test_stain_and_tissue_flags_reach_segment(cli_main, tmp_path, monkeypatch):
    from PIL import Image

    import napari_stexp.segmentation as seg

    seen = {}
    real = seg.segment

    def spy(image, method="classical", **kw):
        seen.update(kw)
        return real(image, method, **kw)

    monkeypatch.setattr(seg, "segment", spy)
    img = np.full((64, 64, 3), 230, np.uint8)
    img[20:30, 20:30] = (80, 50, 130)
    Image.fromarray(img).save(tmp_path / "a.png")
    rc = cli_main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                   "--mode", "nuclei", "--stain", "hematoxylin", "--tissue", "off"])
    assert rc == 0
    assert seen["stain"] == "hematoxylin" and seen["tissue"] is False
    assert (tmp_path / "o" / "a" / "objects.csv").exists()

