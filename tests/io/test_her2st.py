"""her2st reader: real sections (joins, labels, orientation) and synthetic bad input."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pandas as pd
import pytest

from napari_stexp.errors import InputError
from napari_stexp.io.her2st import (
    Her2stWarning,
    her2st_gene_panel,
    list_her2st_sections,
    read_counts_tsv,
    read_her2st,
)

# From shared/data/her2st/SOURCE.md: per-label row counts of the label files.
SOURCE_LABEL_COUNTS = {
    "A1": {"invasive cancer": 284, "connective tissue": 24, "cancer in situ": 21,
           "adipose tissue": 12, "undetermined": 5, "immune infiltrate": 2},
    "B1": {"connective tissue": 95, "adipose tissue": 70, "invasive cancer": 63,
           "breast glands": 41, "undetermined": 26},
    "C1": {"invasive cancer": 128, "connective tissue": 37, "undetermined": 9,
           "adipose tissue": 3},
    "D1": {"invasive cancer": 140, "connective tissue": 111, "undetermined": 51,
           "immune infiltrate": 7},
    "E1": {"invasive cancer": 340, "immune infiltrate": 177, "undetermined": 53,
           "connective tissue": 17},
    # 27 immune rows include the one with NaN coordinates
    "F1": {"invasive cancer": 577, "connective tissue": 56, "undetermined": 32,
           "immune infiltrate": 27},
}
# Labels of the spots in the AnnData: the label-file counts minus 'undetermined' (-> NaN), minus
# labelled spots that have no count row (A1: 2 invasive, C1: 1 invasive, D1: 1 invasive +
# 2 connective), minus F1's NaN-coordinate row (immune).
ADATA_LABEL_COUNTS = {
    "A1": {"invasive cancer": 282, "connective tissue": 24, "cancer in situ": 21,
           "adipose tissue": 12, "immune infiltrate": 2},
    "B1": {"connective tissue": 95, "adipose tissue": 70, "invasive cancer": 63,
           "breast glands": 41},
    "C1": {"invasive cancer": 127, "connective tissue": 37, "adipose tissue": 3},
    "D1": {"invasive cancer": 139, "connective tissue": 109, "immune infiltrate": 7},
    "E1": {"invasive cancer": 340, "immune infiltrate": 177, "connective tissue": 17},
    "F1": {"invasive cancer": 577, "connective tissue": 56, "immune infiltrate": 26},
}
UNDETERMINED = {"A1": 5, "B1": 26, "C1": 9, "D1": 51, "E1": 53, "F1": 32}


@pytest.fixture(scope="session")
def her2st_read(her2st_dir):
    """All sections read once (with images), plus the warnings the read emitted."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        data = read_her2st(her2st_dir)
    return data, [str(w.message) for w in rec]


@pytest.fixture(scope="session")
def manifest(her2st_dir):
    return pd.read_csv(her2st_dir / "sections.csv", dtype={"image": str, "labels": str})


# ----------------------------------------------------------------------------- real data


def test_list_sections_from_manifest(her2st_dir, manifest):
    table = list_her2st_sections(her2st_dir)
    assert table["section"].tolist() == manifest["section"].tolist()
    assert table["patient"].tolist() == [s[0] for s in manifest["section"]]
    a1 = table.set_index("section").loc["A1"]
    assert a1["image"].endswith("app-imgs/A1_HE_image_dark.png")
    assert a1["pixel_scale"] == pytest.approx(0.287604)
    assert table.set_index("section").loc["B1", "image"] is None
    assert table.set_index("section").loc["B4", "labels"] is None


def test_list_sections_discovered_without_manifest(her2st_dir, tmp_path):
    for sub in ("ST-cnts", "ST-spotfiles", "ST-imgs", "ST-pat"):
        (tmp_path / sub).symlink_to(her2st_dir / sub)
    table = list_her2st_sections(tmp_path).set_index("section")
    assert sorted(table.index) == sorted(pd.read_csv(her2st_dir / "sections.csv")["section"])
    with_image = sorted(table.index[table["image"].notna()])
    assert with_image == ["B4", "C2", "C3", "C4", "C5"]  # the app PNG is only in the manifest
    assert table.loc["C3", "image"].endswith("ST-imgs/C/C3/5714_HE_BT_D1.jpg")
    assert table.loc["B4", "pixel_scale"] == 1.0
    assert sorted(table.index[table["labels"].notna()]) == ["A1", "B1", "C1", "D1", "E1", "F1"]
    assert (table["patient"] == table.index.str[0]).all()


def test_every_section_loads_with_source_numbers(her2st_read, manifest):
    data, _ = her2st_read
    assert list(data) == manifest["section"].tolist()
    for _, m in manifest.iterrows():
        a = data[m["section"]]
        assert a.n_obs == m["n_spots_counts"], m["section"]
        assert a.n_vars == m["n_genes"], m["section"]
        join = a.uns["spatial"][m["section"]]["metadata"]["join"]
        assert join["n_spot_rows"] == m["n_spots_selection"]
        assert join["n_spots_without_counts"] == m["n_spots_selection"] - m["n_spots_counts"]
        assert join["n_count_rows_without_spot"] == 0
        assert set(a.obs["section"]) == {m["section"]}
        assert set(a.obs["patient"]) == {m["patient"]}
        # array coordinates are the count-row ids
        ids = [f"{x}x{y}" for x, y in zip(a.obs["array_x"], a.obs["array_y"], strict=True)]
        assert ids == list(a.obs_names)
        assert a.obsm["spatial"].shape == (a.n_obs, 2)
        assert (a.X != a.layers["counts"]).nnz == 0
        assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.sum() > 0


def test_known_spot_sizes(her2st_read):
    data, _ = her2st_read
    assert {s: data[s].n_obs for s in ("A1", "B4", "C3")} == {"A1": 346, "B4": 283, "C3": 180}


def test_counts_match_pandas(her2st_dir, her2st_read):
    data, _ = her2st_read
    ref = pd.read_csv(her2st_dir / "ST-cnts" / "C1.tsv.gz", sep="\t", index_col=0,
                      usecols=range(3001))  # first 3000 genes keep pandas quick
    a = data["C1"]
    ref = ref.loc[a.obs_names]
    a = a[:, list(ref.columns)]
    assert np.array_equal(a.X.toarray(), ref.to_numpy())


def test_coordinates_are_pixel_x_pixel_y(her2st_dir, her2st_read):
    data, _ = her2st_read
    spots = pd.read_csv(her2st_dir / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    a = data["B4"]
    exp = spots.loc[a.obs_names, ["pixel_x", "pixel_y"]].to_numpy()
    assert np.allclose(a.obsm["spatial"], exp)


def test_labels_match_source(her2st_read):
    data, msgs = her2st_read
    for sec, file_counts in SOURCE_LABEL_COUNTS.items():
        a = data[sec]
        meta = a.uns["spatial"][sec]["metadata"]
        assert meta["join"]["label_file_counts"] == file_counts, sec
        got = {k: int(v) for k, v in a.obs["label"].value_counts().items() if v}
        assert got == ADATA_LABEL_COUNTS[sec], sec
        assert "undetermined" not in set(a.obs["label"].dropna())
        assert int(a.obs["label"].isna().sum()) == UNDETERMINED[sec], sec
    for sec in ("B4", "C2", "C3", "C4", "C5"):
        assert data[sec].obs["label"].isna().all()


def test_f1_nan_row_dropped_with_warning(her2st_read):
    data, msgs = her2st_read
    assert any("F1_labeled_coordinates.tsv" in m and "1 label row" in m and "NaN" in m
               for m in msgs)
    assert data["F1"].uns["spatial"]["F1"]["metadata"]["join"]["n_nan_coordinate_rows"] == 1
    assert data["F1"].n_obs == 691


def test_physical_scale_from_data(her2st_read, manifest):
    data, _ = her2st_read
    for _, m in manifest.iterrows():
        a = data[m["section"]]
        meta = a.uns["spatial"][m["section"]]["metadata"]
        sx, sy = meta["fullres_px_per_array_unit_xy"]
        assert sx == pytest.approx(m["fullres_px_per_array_unit"], abs=0.1)
        assert meta["mpp_fullres"] == pytest.approx(200.0 / ((sx + sy) / 2))
        diam = a.uns["spatial"][m["section"]]["scalefactors"]["spot_diameter_fullres"]
        assert diam * meta["mpp_fullres"] == pytest.approx(100.0)
    assert data["B4"].uns["spatial"]["B4"]["metadata"]["mpp_fullres"] == pytest.approx(0.69, abs=0.01)
    assert data["A1"].uns["spatial"]["A1"]["metadata"]["mpp_fullres"] == pytest.approx(0.92, abs=0.01)


def test_images_metadata(her2st_read):
    data, _ = her2st_read
    a1 = data["A1"].uns["spatial"]["A1"]
    assert a1["metadata"]["source_image_path"].endswith("A1_HE_image_dark.png")
    assert a1["metadata"]["image_scale"] == pytest.approx(0.287604)
    assert a1["images"]["hires"].shape == (2138, 2000, 3)  # the app PNG itself
    assert a1["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.287604)
    b4 = data["B4"].uns["spatial"]["B4"]
    assert b4["metadata"]["image_scale"] == 1.0
    assert (b4["metadata"]["image_width"], b4["metadata"]["image_height"]) == (9272, 9923)
    h, w = b4["images"]["hires"].shape[:2]
    assert max(h, w) == 2000
    assert b4["scalefactors"]["tissue_hires_scalef"] == pytest.approx(w / 9272)
    assert "hires" not in data["B1"].uns["spatial"]["B1"]["images"]
    assert "source_image_path" not in data["B1"].uns["spatial"]["B1"]["metadata"]


def _grey(img):
    return img[..., :3].astype(np.float64).mean(-1)


def _patch_means(grey, rows, cols, r):
    """Mean grey value of (2r+1)^2 patches; patches outside the image count as white (255)."""
    H, W = grey.shape
    out = np.full(len(rows), 255.0)
    for i, (y, x) in enumerate(zip(np.round(rows).astype(int), np.round(cols).astype(int),
                                   strict=True)):
        if r <= y < H - r and r <= x < W - r:
            out[i] = grey[y - r:y + r + 1, x - r:x + r + 1].mean()
    return out


@pytest.mark.parametrize("sec", ["B4", "C2"])
def test_spots_fall_on_tissue(her2st_read, sec):
    a = her2st_read[0][sec]
    entry = a.uns["spatial"][sec]
    grey = _grey(entry["images"]["hires"])
    f = entry["scalefactors"]["tissue_hires_scalef"]
    r = int(entry["scalefactors"]["spot_diameter_fullres"] * f * 0.3)  # inner 60 % of a spot
    x, y = (a.obsm["spatial"] * f).T
    c = 40
    background = np.median([grey[:c, :c].mean(), grey[:c, -c:].mean(),
                            grey[-c:, :c].mean(), grey[-c:, -c:].mean()])
    real = _patch_means(grey, y, x, r)
    assert real.mean() < background - 50
    assert np.mean(real < background - 25) > 0.9
    # negative controls: a transposed (x<->y) or vertically flipped layout is clearly worse
    H = grey.shape[0]
    transposed = _patch_means(grey, x, y, r)
    flipped = _patch_means(grey, H - 1 - y, x, r)
    assert transposed.mean() > real.mean() + 15
    assert flipped.mean() > real.mean() + 15


def test_a1_app_png_spots_on_tissue(her2st_read):
    a = her2st_read[0]["A1"]
    img = a.uns["spatial"]["A1"]["images"]["hires"]
    f = a.uns["spatial"]["A1"]["metadata"]["image_scale"]
    H, W = img.shape[:2]

    def nonblack(rows, cols):
        ri, ci = np.round(rows).astype(int), np.round(cols).astype(int)
        ok = (ri >= 0) & (ri < H) & (ci >= 0) & (ci < W)
        v = np.zeros(len(ri), dtype=bool)
        v[ok] = img[ri[ok], ci[ok]].astype(int).sum(-1) > 30
        return v.mean()

    x, y = (a.obsm["spatial"] * f).T
    assert nonblack(y, x) == 1.0
    assert nonblack(x, y) < 0.8
    assert nonblack(H - 1 - y, x) < 0.9


def test_images_false_and_gene_subset(her2st_dir, her2st_read):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Her2stWarning)
        out = read_her2st(her2st_dir, ["C3", "A1"], images=False, genes=["ERBB2", "GAPDH", "ACTB"])
    assert list(out) == ["C3", "A1"]
    c3 = out["C3"]
    assert list(c3.var_names) == ["ERBB2", "GAPDH", "ACTB"]
    assert c3.uns["spatial"]["C3"]["images"] == {}
    assert c3.uns["spatial"]["C3"]["metadata"]["image_width"] == 9270
    full = her2st_read[0]["C3"]
    assert np.array_equal(c3.X.toarray(), full[:, ["ERBB2", "GAPDH", "ACTB"]].X.toarray())


def test_gene_panel_present_everywhere(her2st_dir, her2st_read):
    panel = her2st_gene_panel(her2st_dir)
    assert len(panel) == 785 and len(set(panel)) == 785
    for sec, a in her2st_read[0].items():
        assert set(panel) <= set(a.var_names), sec


def test_missing_gene_names_section_file(her2st_dir):
    with pytest.raises(InputError) as ei:
        read_her2st(her2st_dir, ["B4"], images=False, genes=["ERBB2", "NOT_A_GENE"])
    msg = str(ei.value)
    assert "B4.tsv.gz" in msg and "B4" in msg and "NOT_A_GENE" in msg


def test_unknown_section_lists_available(her2st_dir):
    with pytest.raises(InputError, match="available: A1, B1, B4"):
        read_her2st(her2st_dir, ["Z9"])


# ----------------------------------------------------------------------------- synthetic


def _write_section(root, sec="X1", *, counts_ids=None, spot_cols=None, labels=None,
                   gz_bytes=None):
    """A tiny her2st folder: 4 spots x 3 genes (ids 1x1, 2x1, 1x2, 2x2)."""
    (root / "ST-cnts").mkdir(parents=True, exist_ok=True)
    (root / "ST-spotfiles").mkdir(exist_ok=True)
    ids = counts_ids or ["1x1", "2x1", "1x2", "2x2"]
    lines = ["\tG1\tG2\tG3"] + [f"{i}\t{k}\t{2 * k}\t0" for k, i in enumerate(ids)]
    data = ("\n".join(lines) + "\n").encode()
    path = root / "ST-cnts" / f"{sec}.tsv.gz"
    path.write_bytes(gz_bytes(data) if gz_bytes else gzip.compress(data))
    spots = pd.DataFrame({
        "x": [1, 2, 1, 2], "y": [1, 1, 2, 2], "new_x": [1.0, 2.0, 1.0, 2.0],
        "new_y": [1.0, 1.0, 2.0, 2.0], "pixel_x": [0.0, 100.0, 0.0, 100.0],
        "pixel_y": [0.0, 0.0, 100.0, 100.0], "selected": 1,
    })
    if spot_cols is not None:
        spots = spots[spot_cols]
    spots.to_csv(root / "ST-spotfiles" / f"{sec}_selection.tsv", sep="\t", index=False)
    if labels is not None:
        (root / "ST-pat" / "lbl").mkdir(parents=True, exist_ok=True)
        labels.to_csv(root / "ST-pat" / "lbl" / f"{sec}_labeled_coordinates.tsv", sep="\t",
                      index=False)
    return path


def test_synthetic_section_reads(tmp_path):
    labels = pd.DataFrame({"x": [1.02, 1.98, np.nan, 1.0], "y": [0.99, 1.0, np.nan, 2.01],
                           "label": ["invasive cancer", "undetermined", "adipose tissue",
                                     "immune infiltrate"]})
    _write_section(tmp_path, labels=labels)
    with pytest.warns(Her2stWarning, match=r"X1_labeled_coordinates.tsv: dropped 1 label row"):
        out = read_her2st(tmp_path)
    a = out["X1"]
    assert a.shape == (4, 3)
    assert a.X.toarray()[:, 1].tolist() == [0, 2, 4, 6]
    assert a.obs["label"].astype(object).where(a.obs["label"].notna(), None).tolist() == [
        "invasive cancer", None, "immune infiltrate", None]
    assert a.uns["spatial"]["X1"]["metadata"]["mpp_fullres"] == pytest.approx(2.0)


def test_float_counts_use_general_parser(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("\tA\tB\n1x1\t1.0\t2\n2x1\t3\t0.0\n")
    ids, genes, mat = read_counts_tsv(path)
    assert ids == ["1x1", "2x1"] and genes == ["A", "B"]
    assert mat.tolist() == [[1, 2], [3, 0]]
    path.write_text("\tA\tB\n1x1\t1\tNA\n")
    with pytest.raises(InputError, match="c.tsv: count table has 1 missing"):
        read_counts_tsv(path)


def test_count_ids_matching_no_spot(tmp_path):
    _write_section(tmp_path, counts_ids=["10x10", "11x10", "12x10", "13x10"])
    with pytest.raises(InputError) as ei:
        read_her2st(tmp_path)
    msg = str(ei.value)
    assert "X1.tsv.gz" in msg and "match" in msg and "10x10" in msg


def test_count_rows_without_spot_warn_and_drop(tmp_path):
    _write_section(tmp_path, counts_ids=["1x1", "2x1", "1x2", "9x9"])
    with pytest.warns(Her2stWarning, match=r"X1.tsv.gz: dropped 1 count row.*9x9"):
        a = read_her2st(tmp_path)["X1"]
    assert list(a.obs_names) == ["1x1", "2x1", "1x2"]
    join = a.uns["spatial"]["X1"]["metadata"]["join"]
    assert join["n_count_rows_without_spot"] == 1 and join["n_spots_without_counts"] == 1


def test_missing_pixel_x_column(tmp_path):
    _write_section(tmp_path, spot_cols=["x", "y", "new_x", "new_y", "pixel_y", "selected"])
    with pytest.raises(InputError) as ei:
        read_her2st(tmp_path)
    msg = str(ei.value)
    assert "X1_selection.tsv" in msg and "pixel_x" in msg and "missing column" in msg


def test_truncated_gzip(tmp_path):
    _write_section(tmp_path, gz_bytes=lambda d: gzip.compress(d * 50)[:-40])
    with pytest.raises(InputError) as ei:
        read_her2st(tmp_path)
    msg = str(ei.value)
    assert "X1.tsv.gz" in msg and "truncated" in msg


def test_not_gzip(tmp_path):
    _write_section(tmp_path, gz_bytes=lambda d: b"\x1f\x8bnot really gzip" + d)
    with pytest.raises(InputError, match=r"X1.tsv.gz: corrupt gzip"):
        read_her2st(tmp_path)


def test_label_file_missing_columns(tmp_path):
    _write_section(tmp_path, labels=pd.DataFrame({"x": [1.0], "y": [1.0], "lab": ["a"]}))
    with pytest.raises(InputError, match=r"X1_labeled_coordinates.tsv: missing column\(s\) label"):
        read_her2st(tmp_path)


def test_not_a_her2st_folder(tmp_path):
    with pytest.raises(InputError, match="not a her2st folder"):
        list_her2st_sections(tmp_path)
