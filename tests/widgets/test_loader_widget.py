"""GUI: the loader widget, the npe2 reader, sample data and the demo, driven as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _open(qtbot, widget, path, sections=""):
    widget.sections_edit.setText(sections)
    worker = widget.open(str(path))
    assert worker is not None
    # the worker starts at once; wait on the widget's own "finished" handler (no signal race)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    qtbot.wait(50)


@pytest.fixture
def loader(make_napari_viewer):
    from napari_stexp.widgets.loader import LoaderWidget

    viewer = make_napari_viewer()
    return viewer, LoaderWidget(viewer)


def test_sample_slide_layers_share_a_frame(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stexp", "synthetic_slide")
    img, spots = viewer.layers[0], viewer.layers[1]
    assert img.multiscale and img.rgb
    assert spots.__class__.__name__ == "Points"
    ad = spots.metadata["adata"]
    assert len(spots.data) == ad.n_obs
    # same physical frame: image scale is µm/px, spot coords are pixels × µm/px
    mpp = img.scale[-1]
    np.testing.assert_allclose(spots.data[:, 1], ad.obsm["spatial"][:, 0] * mpp)
    # spot size = 100 µm diameter
    assert np.allclose(spots.size, 100.0)
    assert "label" in spots.features and "total_counts" in spots.features


def test_sample_smear(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stexp", "synthetic_smear")
    layer = viewer.layers[-1]
    assert layer.rgb and layer.data.shape[-1] == 3 and layer.data.shape[0] > 100


def test_loader_her2st_sections(qtbot, loader, her2st_dir):
    viewer, w = loader
    _open(qtbot, w, her2st_dir, sections="B4, A1")
    names = [ly.name for ly in viewer.layers]
    assert names == ["B4 H&E", "B4 spots", "A1 H&E", "A1 spots"] or \
        set(names) == {"B4 H&E", "B4 spots", "A1 H&E", "A1 spots"}
    spots = viewer.layers["B4 spots"]
    assert len(spots.data) == 283
    img = viewer.layers["B4 H&E"]
    assert img.multiscale
    # spots lie inside the image extent in the shared µm frame
    h, w_ = (np.array(img.data[0].shape[:2]) * img.scale[-2:])
    assert spots.data[:, 0].max() < h and spots.data[:, 1].max() < w_
    assert viewer.layers["A1 spots"].visible is False  # only the first section is shown
    assert set(w.session.adatas) == {"B4", "A1"}
    assert "283 spots" in w.summary.toPlainText()
    labelled = viewer.layers["A1 spots"].features["label"].astype(str)
    # the label file has 284 invasive-cancer rows; 2 of those spots have no counts (inner join)
    assert (labelled == "invasive cancer").sum() == 282
    assert (labelled == "cancer in situ").sum() == 21


def test_loader_visium(qtbot, loader, visium_dir):
    viewer, w = loader
    _open(qtbot, w, visium_dir)
    pts = [ly for ly in viewer.layers if ly.__class__.__name__ == "Points"]
    assert len(pts) == 1 and len(pts[0].data) == 100
    assert any(ly.__class__.__name__ == "Image" for ly in viewer.layers)


def test_loader_bad_input_notifies(qtbot, loader, tmp_path, monkeypatch):
    viewer, w = loader
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    shown = []
    monkeypatch.setattr("napari_stexp.widgets.loader.notify_error", lambda e: shown.append(str(e)))
    assert w.open(str(bad)) is not None
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    qtbot.wait(50)
    assert shown and "broken.h5ad" in shown[0]
    assert len(viewer.layers) == 0


def test_npe2_reader_opens_smear_with_boxes(make_napari_viewer, bccd_dir):
    viewer = make_napari_viewer()
    smear = bccd_dir / "smears" / "JPEGImages" / "BloodImage_00001.jpg"
    xml = bccd_dir / "smears" / "Annotations" / "BloodImage_00001.xml"
    viewer.open(str(smear), plugin="napari-stexp")
    viewer.open(str(xml), plugin="napari-stexp")
    img = viewer.layers[0]
    shapes = viewer.layers[1]
    assert img.data.shape[:2] == (480, 640) or img.data[0].shape[:2] == (480, 640)
    wbc = shapes.features["name"].astype(str) == "WBC"
    assert wbc.any()
    # orientation: boxes inside the image, rows ≤ 480 and cols ≤ 640
    allpts = np.concatenate(shapes.data)
    assert allpts[:, 0].max() <= 480 and allpts[:, 1].max() <= 640


@pytest.mark.gui  # a display for the napari subprocess (no Qt fixture here to mark it by)
def test_demo_screenshot(tmp_path):
    out = tmp_path / "demo.png"
    exe = Path(sys.executable).parent / "napari-stexp"
    res = subprocess.run([str(exe), "demo", "--screenshot", str(out), "--size", "1200x800"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    from PIL import Image

    im = np.asarray(Image.open(out).convert("RGB"))
    assert im.shape[0] > 400 and im.shape[1] > 600
    assert im.std() > 10  # not a blank window
