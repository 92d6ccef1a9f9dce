"""io/ome_zarr: one module writes, reads and sniffs OME-Zarr; the other io modules ask it.

The writer/reader behaviour itself is checked in test_export.py (its old home, re-exported);
here: the one sniffer on zarr 2 and zarr 3 layouts, and that the callers go through it.
"""

from __future__ import annotations

import json

import numpy as np

from napari_stexp.io import export, ome_zarr, wsi
from napari_stexp.io.ome_zarr import (
    add_ome_zarr_labels,
    is_ngff,
    ngff_attrs,
    ngff_kind,
    ngff_label_names,
    read_ome_zarr,
    write_ome_zarr,
)


def _image(tmp_path):
    img = np.zeros((64, 48, 3), np.uint8)
    img[10:30, 5:20] = 200
    return write_ome_zarr(tmp_path / "s.ome.zarr", img, axes="yxc", scale_um=(0.5, 0.5))


def test_sniffer_on_what_the_writer_writes(tmp_path):
    root = _image(tmp_path)
    lab = np.zeros((64, 48), np.int32)
    lab[10:30, 5:20] = 3
    add_ome_zarr_labels(root, lab, "cells")
    solo = write_ome_zarr(tmp_path / "cells.ome.zarr", lab, kind="labels")

    assert ngff_kind(root) == "image" and is_ngff(root)
    assert ngff_kind(root / "labels" / "cells") == "labels"
    assert ngff_kind(solo) == "labels"
    assert ngff_label_names(root) == ["cells"]
    assert ngff_label_names(solo) == []
    assert ngff_attrs(root)["multiscales"][0]["version"] == ome_zarr.NGFF_VERSION
    assert read_ome_zarr(root).metadata["labels"] == ["cells"]


def test_sniffer_reads_zarr3_ome_block_and_refuses_non_images(tmp_path):
    v3 = tmp_path / "v3.zarr"
    v3.mkdir()
    (v3 / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "group",
        "attributes": {"ome": {"version": "0.5", "multiscales": [{"datasets": []}],
                               "image-label": {}}}}))
    assert ngff_kind(v3) == "labels" and is_ngff(v3)

    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / ".zattrs").write_text("{}")
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / ".zattrs").write_text("{not json")
    listing = tmp_path / "list.zarr"
    listing.mkdir()
    (listing / ".zattrs").write_text("[1, 2]")
    for p in (plain, broken, listing, tmp_path / "missing.zarr", tmp_path):
        assert ngff_kind(p) is None and not is_ngff(p) and ngff_attrs(p) == {}
        assert ngff_label_names(p) == []
    # a file is never an NGFF folder, whatever its name
    f = tmp_path / "file.zarr"
    f.write_text("x")
    assert not is_ngff(f)


def test_callers_use_the_one_module(tmp_path):
    root = _image(tmp_path)
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / ".zattrs").write_text('{"other": 1}')
    assert wsi.is_image_file(root) and not wsi.is_image_file(plain)
    assert wsi.open_image(root).metadata["format"] == "ome-zarr"
    # io.export keeps the names its callers import
    assert export.write_ome_zarr is write_ome_zarr
    assert export.read_ome_zarr is read_ome_zarr
    assert export.add_ome_zarr_labels is add_ome_zarr_labels
