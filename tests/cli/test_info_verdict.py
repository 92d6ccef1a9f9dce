"""`napari-stexp info` gives the verdict training gives on spot geometry (issue 16): spot
centres outside their section's image are an error naming the file, not a clean summary."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture()
def visium_copy(stexp_data, tmp_path):
    src = stexp_data / "visium-scanpy-testdata"
    if not src.exists():
        pytest.skip(f"real data not found at {src}")
    dst = tmp_path / "visium"
    shutil.copytree(src, dst)
    return dst


def _info(path, capsys):
    from napari_stexp.cli import main

    rc = main(["info", str(path)])
    return rc, capsys.readouterr()


def test_info_accepts_spots_on_the_image(visium_copy, capsys):
    rc, _ = _info(visium_copy, capsys)
    assert rc == 0


def test_info_refuses_spots_outside_the_image(visium_copy, capsys):
    pos = visium_copy / "spatial" / "tissue_positions_list.csv"
    rows = [ln.split(",") for ln in pos.read_text().splitlines() if ln.strip()]
    # pixel row/col far beyond the full-resolution image
    pos.write_text("\n".join(",".join(r[:4] + [str(int(r[4]) * 1000 + 10**7),
                                                str(int(r[5]) * 1000 + 10**7)]) for r in rows))
    rc, out = _info(visium_copy, capsys)
    assert rc == 2
    last = out.err.strip().splitlines()[-1]
    assert last.startswith("napari-stexp: error: ") and "outside" in last
    assert str(visium_copy) in last
