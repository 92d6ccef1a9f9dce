"""Blood-smear readers: smear images, VOC boxes (orientation on real BCCD smears, quirks), smear
folders and cell-crop folders (BCCD, PBC, class sub-folders), with clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_stexp.errors import InputError
from napari_stexp.io.smears import (
    SmearWarning,
    read_cell_crops,
    read_smear,
    read_smear_folder,
    read_smear_folder_boxes,
    read_voc_boxes,
    smear_layers,
)

VOC = """<annotation><filename>x.jpg</filename>
<size><width>100</width><height>80</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = ("<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
       "<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def _voc(tmp_path: Path, objs: list[tuple], name: str = "a.xml") -> Path:
    body = "".join(OBJ.format(name=n, x0=a, y0=b, x1=c, y1=d) for n, a, b, c, d in objs)
    p = tmp_path / name
    p.write_text(VOC.format(objects=body))
    return p


# --------------------------------------------------------------------------- VOC boxes


def test_voc_boxes_values_and_columns(bccd_dir):
    b = read_voc_boxes(bccd_dir / "smears" / "Annotations" / "BloodImage_00000.xml")
    assert list(b.columns[:5]) == ["name", "xmin", "ymin", "xmax", "ymax"]
    wbc = b[b["name"] == "WBC"]
    assert len(wbc) == 1
    assert wbc[["xmin", "ymin", "xmax", "ymax"]].iloc[0].tolist() == [260, 177, 491, 376]
    assert (b["width"] == 640).all() and (b["height"] == 480).all()
    assert set(b["name"]) <= {"WBC", "RBC", "Platelets"} and (b["name"] == "RBC").sum() > 5


def _purple(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(float) / 255
    return rgb[..., 2] - 0.5 * (rgb[..., 0] + rgb[..., 1])


@pytest.mark.realdata
def test_voc_orientation_on_real_smears(bccd_dir):
    """x = column, y = row, origin top-left: the WBC box holds the dark purple nucleus; the same
    box read with the origin at the bottom-left (flipped rows) does not."""
    folder = read_smear_folder(bccd_dir)
    checked = flips = 0
    for row in folder.head(12).itertuples():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmearWarning)
            boxes = read_voc_boxes(row.annotation)
        wbc = boxes[boxes["name"] == "WBC"]
        if len(wbc) != 1:
            continue
        img = np.asarray(Image.open(row.image).convert("RGB"))
        r = wbc.iloc[0]
        box = img[int(r.ymin):int(r.ymax), int(r.xmin):int(r.xmax)]
        H = img.shape[0]
        pur = _purple(img)
        assert _purple(box).mean() > pur.mean() + 0.03, row.image_id
        nucleus = pur > np.quantile(pur, 0.985)  # the most purple pixels: mostly the nucleus
        inbox = np.zeros_like(nucleus)
        inbox[int(r.ymin):int(r.ymax), int(r.xmin):int(r.xmax)] = True
        assert (nucleus & inbox).sum() > 0.6 * nucleus.sum(), row.image_id
        flipped = np.zeros_like(nucleus)  # the same box read with the origin bottom-left
        flipped[H - int(r.ymax):H - int(r.ymin), int(r.xmin):int(r.xmax)] = True
        if (flipped & inbox).sum() < 0.2 * inbox.sum():
            assert (nucleus & flipped).sum() < 0.3 * nucleus.sum(), row.image_id
            flips += 1
        checked += 1
    assert checked >= 8 and flips >= 2


def test_voc_quirks_are_repaired_with_a_warning(tmp_path):
    p = _voc(tmp_path, [("WBC", 10, 10, 40, 40), ("WBC", 10, 10, 40, 40),      # duplicate
                        ("RBC", -5, 70, 30, 95),                               # out of bounds
                        ("RBC", 50, 50, 50, 50),                               # empty
                        (" Platelets ", 60, 20, 55, 30)])                      # swapped x
    with pytest.warns(SmearWarning) as rec:
        b = read_voc_boxes(p)
    msg = str(rec[0].message)
    assert "clipped" in msg and "empty" in msg and "duplicated" in msg and str(p) in msg
    assert len(b) == 3
    rbc = b[b["name"] == "RBC"].iloc[0]
    assert (rbc.xmin, rbc.ymin, rbc.xmax, rbc.ymax) == (0, 70, 30, 80)
    pl = b[b["name"] == "Platelets"].iloc[0]
    assert (pl.xmin, pl.xmax) == (55, 60)


@pytest.mark.realdata
def test_real_bccd_degenerate_box_dropped(bccd_dir):
    p = bccd_dir / "smears" / "Annotations" / "BloodImage_00338.xml"
    if not p.exists():
        pytest.skip("BloodImage_00338 not staged")
    n_objects = p.read_text().count("<object>")
    with pytest.warns(SmearWarning, match="empty"):
        b = read_voc_boxes(p)
    assert len(b) == n_objects - 1


def test_voc_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(InputError, match="bad.xml.*not valid XML"):
        read_voc_boxes(bad)
    other = tmp_path / "other.xml"
    other.write_text("<svg></svg>")
    with pytest.raises(InputError, match="not a Pascal VOC"):
        read_voc_boxes(other)
    with pytest.raises(InputError, match="not found"):
        read_voc_boxes(tmp_path / "missing.xml")


# --------------------------------------------------------------------------- smear folders


def test_read_smear_and_folder(bccd_dir):
    folder = read_smear_folder(bccd_dir)  # the staging root: finds smears/JPEGImages
    assert len(folder) == 280
    assert folder["annotation"].notna().all()
    assert list(folder.columns) == ["image_id", "image", "annotation"]
    pyr = read_smear(folder["image"].iloc[0])
    assert pyr.shape == (480, 640, 3)
    boxes = read_smear_folder_boxes(bccd_dir / "smears", classes=("WBC",))
    assert set(boxes["name"]) == {"WBC"}
    assert 270 <= len(boxes) <= 290


def test_flat_smear_folder_and_layers(tmp_path):
    img = np.full((80, 100, 3), 200, np.uint8)
    Image.fromarray(img).save(tmp_path / "s1.png")
    Image.fromarray(img).save(tmp_path / "s2.png")
    _voc(tmp_path, [("WBC", 10, 20, 40, 60)], name="s1.xml")
    t = read_smear_folder(tmp_path)
    assert t["image_id"].tolist() == ["s1", "s2"]
    assert t["annotation"].iloc[0].endswith("s1.xml") and t["annotation"].iloc[1] is None
    layers = smear_layers(tmp_path / "s1.png")
    assert [lt[2] for lt in layers] == ["image", "shapes"]
    rect = layers[1][0][0]  # napari (row, col): y first
    assert rect[0].tolist() == [20, 10] and rect[2].tolist() == [60, 40]


def test_empty_smear_folder(tmp_path):
    with pytest.raises(InputError, match="no smear images"):
        read_smear_folder(tmp_path)


# --------------------------------------------------------------------------- crop folders


@pytest.mark.realdata
def test_bccd_crops(bccd_dir):
    t = read_cell_crops(bccd_dir)
    assert len(t) == 283
    assert list(t.columns[:2]) == ["path", "label"]
    assert t["label"].value_counts().to_dict() == {
        "neutrophil": 166, "eosinophil": 71, "lymphocyte": 27, "monocyte": 16, "basophil": 3}
    assert all(Path(p).is_file() for p in t["path"].head(20))
    assert "source_image_id" in t.columns


@pytest.mark.realdata
def test_pbc_crops(pbc_dir):
    t = read_cell_crops(pbc_dir)
    assert len(t) == 480
    assert (t["label"].value_counts() == 60).all() and t["label"].nunique() == 8
    assert "subclass_prefix" in t.columns


def test_crops_from_class_subfolders_and_flat(tmp_path):
    img = np.zeros((20, 20, 3), np.uint8)
    for cls, n in (("mono", 2), ("lympho", 3)):
        (tmp_path / "sub" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(img).save(tmp_path / "sub" / cls / f"{i}.png")
    t = read_cell_crops(tmp_path / "sub")
    assert t["label"].value_counts().to_dict() == {"lympho": 3, "mono": 2}
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(img).save(flat / "a.jpg")
    t2 = read_cell_crops(flat)
    assert len(t2) == 1 and t2["label"].iloc[0] is None


def test_crop_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no cell images"):
        read_cell_crops(empty)
    d = tmp_path / "d"
    d.mkdir()
    pd.DataFrame({"file_name": ["a.jpg"], "label": ["x"]}).to_csv(d / "labels.csv", index=False)
    with pytest.raises(InputError, match=r"labels.csv: no image path column"):
        read_cell_crops(d)
    pd.DataFrame({"image_path": ["a.jpg"], "cls": ["x"]}).to_csv(d / "labels.csv", index=False)
    with pytest.raises(InputError, match="no 'label' column"):
        read_cell_crops(d)
    pd.DataFrame({"image_path": ["a.jpg"], "label": ["x"]}).to_csv(d / "labels.csv", index=False)
    with pytest.raises(InputError, match=r"labels.csv: lists .*a.jpg which does not exist"):
        read_cell_crops(d)
    (d / "labels.csv").write_text("")
    with pytest.raises(InputError, match="empty file"):
        read_cell_crops(d)
