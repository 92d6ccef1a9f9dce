"""``batch segment --inputs <relative> --out <relative> --local`` writes its outputs and its
done record, and a rerun skips the slide (issue 16: it reported the outputs as not written)."""

from __future__ import annotations

import json

import numpy as np


def test_batch_segment_relative_paths(tmp_path, monkeypatch, capsys):
    import tifffile

    from napari_stexp.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "s1.tif", (rng.random((96, 96, 3)) * 255).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    assert main(["batch", "segment", "--inputs", "in/s1.tif", "--out", "res", "--local"]) == 0
    done = list((tmp_path / "res").glob("*.done.json"))
    assert len(done) == 1
    for name in json.loads(done[0].read_text())["outputs"]:
        assert (tmp_path / "res" / name).exists()
    capsys.readouterr()
    assert main(["batch", "segment", "--inputs", "in/s1.tif", "--out", "res", "--local",
                 "--json"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert out["skipped"] and not out["done"], out
