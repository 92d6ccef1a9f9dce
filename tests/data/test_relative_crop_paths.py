"""A crop folder given as a RELATIVE path is read once, not joined to itself (issue 16)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from napari_stexp.errors import InputError


def _copy_crops(bccd_dir, dest, n=4, csv=True):
    """A small BCCD crop folder: ``labels.csv`` + the first ``n`` crops, or class sub-folders."""
    import pandas as pd

    table = pd.read_csv(bccd_dir / "labels.csv").groupby("label").head(1).head(n)
    dest.mkdir(parents=True)
    for rel in table["crop_path"]:
        target = dest / (rel if csv else "/".join(rel.split("/")[1:]))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bccd_dir / rel, target)
    if csv:
        table[["crop_path", "label"]].to_csv(dest / "labels.csv", index=False)


@pytest.mark.parametrize("csv", [True, False], ids=["labels-csv", "class-folders"])
def test_relative_crop_folder(bccd_dir, tmp_path, monkeypatch, csv):
    from napari_stexp.data.cells import crop_table, load_cells

    _copy_crops(bccd_dir, tmp_path / "in" / "crops" / "ok", csv=csv)
    monkeypatch.chdir(tmp_path)
    table = crop_table("in/crops/ok")
    assert len(table) >= 2
    assert all(Path(p).is_file() for p in table.path), list(table.path)
    cells = load_cells("in/crops/ok", size=32)
    assert len(cells) >= 1


def test_labels_csv_pointing_outside_its_folder(bccd_dir, tmp_path):
    import pandas as pd

    from napari_stexp.io.smears import read_cell_crops

    folder = tmp_path / "crops"
    _copy_crops(bccd_dir, folder)
    outside = tmp_path / "secret.png"
    shutil.copy(next(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg",
                                                                           ".jpeg")), outside)
    df = pd.read_csv(folder / "labels.csv")
    df.loc[len(df) - 1, df.columns[0]] = "../secret.png"
    df.to_csv(folder / "labels.csv", index=False)
    with pytest.raises(InputError, match="outside the crop folder"):
        read_cell_crops(folder)


def test_space_ranger_folder_without_matrix_is_not_crops(visium_dir, tmp_path):
    from napari_stexp.io.open import open_path

    folder = tmp_path / "sr"
    shutil.copytree(visium_dir / "spatial", folder / "spatial")
    with pytest.raises(InputError, match="Space Ranger folder"):
        open_path(folder)
