"""The ST dispatcher: format detection, combined reads, lazy section images, summaries."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_stexp.errors import InputError
from napari_stexp.io.spatial import spots_rc_um
from napari_stexp.io.st import (
    STWarning,
    detect_st_kind,
    read_st,
    section_image,
    section_summary,
)


@pytest.fixture(scope="module")
def her2st_sub(her2st_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_st(her2st_dir, ["A1", "B4", "B1"])


@pytest.fixture(scope="module")
def visium(visium_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_st(visium_dir)


def test_detect_kinds(her2st_dir, visium_dir, pbmc_path, tmp_path):
    assert detect_st_kind(her2st_dir) == "her2st"
    assert detect_st_kind(her2st_dir / "sections.csv") == "her2st"
    assert detect_st_kind(her2st_dir / "ST-cnts" / "A1.tsv.gz") == "her2st"
    assert detect_st_kind(visium_dir) == "visium"
    assert detect_st_kind(visium_dir / "filtered_feature_bc_matrix.h5") == "visium"
    assert detect_st_kind(visium_dir / "spatial" / "tissue_positions_list.csv") == "visium"
    assert detect_st_kind(pbmc_path) == "h5ad"
    assert detect_st_kind(tmp_path) is None
    assert detect_st_kind(tmp_path / "missing") is None
    (tmp_path / "x.png").write_bytes(b"")
    assert detect_st_kind(tmp_path / "x.png") is None


def test_sections_filter_and_order(her2st_sub):
    assert list(her2st_sub) == ["A1", "B4", "B1"]
    assert [a.n_obs for a in her2st_sub.values()] == [346, 283, 295]


def test_file_inside_her2st_implies_section(her2st_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = read_st(her2st_dir / "ST-cnts" / "C1.tsv.gz", images=False)
    assert list(out) == ["C1"] and out["C1"].n_obs == 176


def test_unknown_section_lists_available(her2st_dir, visium_dir):
    with pytest.raises(InputError) as ei:
        read_st([her2st_dir, visium_dir], ["A1", "Q7"], images=False)
    msg = str(ei.value)
    assert "Q7" in msg and "available:" in msg and "B4" in msg and "custom" in msg


def test_bad_paths(tmp_path, her2st_dir):
    with pytest.raises(InputError, match="does not exist"):
        read_st(tmp_path / "nothing")
    with pytest.raises(InputError, match="not a spatial-transcriptomics dataset"):
        read_st(tmp_path)
    with pytest.raises(InputError, match="given twice"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_st([her2st_dir, her2st_dir], ["C1"], images=False)


def test_combined_datasets_and_duplicate_names(her2st_dir, visium_dir, her2st_sub, tmp_path):
    path = tmp_path / "copy.h5ad"
    her2st_sub["B1"].write_h5ad(path)
    with pytest.warns(STWarning, match="renamed"):
        out = read_st([her2st_dir, visium_dir, path], ["B1", "custom"], images=False)
    assert sorted(out) == ["copy:B1", "custom", "her2st:B1"]
    renamed = out["copy:B1"]
    assert set(renamed.obs["section"]) == {"copy:B1"}
    assert list(renamed.uns["spatial"]) == ["copy:B1"]
    assert (renamed.X != out["her2st:B1"].X).nnz == 0
    assert out["custom"].n_obs == 100


def test_genes_for_visium(visium_dir, visium):
    genes = list(visium["custom"].var_names[[5, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = read_st(visium_dir, genes=genes)
        assert list(out["custom"].var_names) == genes
        with pytest.raises(InputError, match="NOPE"):
            read_st(visium_dir, genes=[genes[0], "NOPE"])


def _grey(a):
    return np.asarray(a)[..., :3].astype(float).mean(-1)


def test_section_image_b4_region_reads_on_tissue(her2st_sub):
    """The lazy full-resolution JPEG and the spots share the µm frame: patches read at the
    spot centres (level with downsample 4) are darker than the slide corners."""
    a = her2st_sub["B4"]
    pyr = section_image(a)
    meta = a.uns["spatial"]["B4"]["metadata"]
    assert (pyr.width, pyr.height) == (9272, 9923)
    assert pyr.mpp == pytest.approx(meta["mpp_fullres"])
    level = pyr.best_level(4.0)
    ds = pyr.downsamples[level]
    assert ds == 4.0
    rc = spots_rc_um(a) / pyr.mpp / ds
    rng = np.random.default_rng(0)
    pick = rng.choice(len(rc), 25, replace=False)
    r = 12  # ~ inner 2/3 of a 145 px spot at 1/4 scale
    spots = [_grey(pyr.read_region(int(y) - r, int(x) - r, 2 * r, 2 * r, level)).mean()
             for y, x in rc[pick]]
    H, W = pyr.levels[level].shape[:2]
    corners = [_grey(pyr.read_region(y, x, 40, 40, level)).mean()
               for y, x in ((0, 0), (0, W - 40), (H - 40, 0), (H - 40, W - 40))]
    assert np.mean(spots) < np.median(corners) - 40
    # transposed spots are clearly brighter
    spots_t = [_grey(pyr.read_region(int(x) - r, int(y) - r, 2 * r, 2 * r, level)).mean()
               for y, x in rc[pick]]
    assert np.mean(spots_t) > np.mean(spots) + 20


def test_section_image_a1_png(her2st_sub):
    a = her2st_sub["A1"]
    pyr = section_image(a)
    assert (pyr.height, pyr.width) == (2138, 2000)
    meta = a.uns["spatial"]["A1"]["metadata"]
    assert pyr.mpp == pytest.approx(meta["mpp_fullres"] / 0.287604)
    assert pyr.mpp == pytest.approx(3.2, abs=0.05)  # SOURCE.md: ~3.2 µm/px
    rc = np.round(spots_rc_um(a) / pyr.mpp).astype(int)
    img = np.asarray(pyr.levels[0])
    assert (img[rc[:, 0], rc[:, 1]].astype(int).sum(-1) > 30).all()  # never on the black


def test_section_image_without_source_uses_lowres(visium):
    a = visium["custom"]
    pyr = section_image(a)
    assert pyr.shape == (600, 600, 3) and pyr.dtype == np.uint8
    sf = a.uns["spatial"]["custom"]["scalefactors"]
    mpp0 = a.uns["spatial"]["custom"]["metadata"]["mpp_fullres"]
    assert pyr.mpp == pytest.approx(mpp0 / sf["tissue_lowres_scalef"])
    px = spots_rc_um(a) / pyr.mpp
    assert np.allclose(px, a.obsm["spatial"][:, ::-1] * sf["tissue_lowres_scalef"])


def test_section_image_float_hires_and_none(her2st_sub):
    a = her2st_sub["B4"].copy()
    entry = a.uns["spatial"]["B4"]
    del entry["metadata"]["source_image_path"]
    entry["images"]["hires"] = entry["images"]["hires"].astype(np.float32) / 255.0
    pyr = section_image(a)
    assert pyr.dtype == np.uint8 and pyr.levels[0].shape[0] == 2000
    assert pyr.mpp == pytest.approx(entry["metadata"]["mpp_fullres"]
                                    / entry["scalefactors"]["tissue_hires_scalef"])
    assert section_image(her2st_sub["B1"]) is None


def test_section_summary(her2st_sub, visium):
    s = section_summary(her2st_sub["A1"])
    assert s["section"] == "A1" and s["patient"] == "A" and s["format"] == "her2st"
    assert (s["n_spots"], s["n_genes"], s["n_labelled"]) == (346, 15045, 341)
    assert s["label_counts"]["invasive cancer"] == 282
    assert s["image"].endswith("A1_HE_image_dark.png") and s["image_size"] == (2138, 2000)
    assert s["image_mpp"] == pytest.approx(3.19, abs=0.02)
    assert s["spot_diameter_um"] == pytest.approx(100.0)
    v = section_summary(visium["custom"])
    assert (v["n_spots"], v["n_genes"], v["n_labelled"], v["image"]) == (100, 100, 0, "lowres")
    assert v["image_size"] == (600, 600)
    assert v["spot_diameter_um"] == pytest.approx(55.0)
    b1 = section_summary(her2st_sub["B1"])
    assert b1["image"] is None and b1["image_mpp"] is None and b1["n_labelled"] == 269
