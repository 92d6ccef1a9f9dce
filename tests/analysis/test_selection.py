"""Selection geometry, the categorical selection column, row links and group export (no Qt)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_stexp.analysis import selection as S
from napari_stexp.errors import InputError


def _grid(n=11):
    yy, xx = np.mgrid[0:n, 0:n]
    return np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float32)


def test_polygon_selects_exactly_the_points_inside():
    xy = _grid()  # integer grid 0..10
    square = [(1.5, 1.5), (4.5, 1.5), (4.5, 3.5), (1.5, 3.5)]
    mask = S.points_in_polygon(xy, square)
    expected = (xy[:, 0] >= 2) & (xy[:, 0] <= 4) & (xy[:, 1] >= 2) & (xy[:, 1] <= 3)
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 6
    tri = [(-0.5, -0.5), (11, -0.5), (-0.5, 11)]  # lower-left triangle: x + y < 10.5
    np.testing.assert_array_equal(S.points_in_polygon(xy, tri), xy.sum(axis=1) < 10.5)


def test_polygon_matches_a_brute_force_test_on_random_points():
    from matplotlib.path import Path

    rng = np.random.default_rng(0)
    xy = rng.normal(size=(100_000, 2)).astype(np.float32)
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    r = 1 + 0.5 * np.sin(5 * t)  # a star: concave, like a real lasso
    poly = np.column_stack([r * np.cos(t) + 0.3, r * np.sin(t)])
    ours = S.points_in_polygon(xy, poly)
    ref = Path(np.vstack([poly, poly[:1]]), closed=True).contains_points(xy.astype(np.float64))
    np.testing.assert_array_equal(ours, ref)
    assert 10_000 < ours.sum() < 90_000


def test_missing_points_and_degenerate_lassos_select_nothing():
    xy = _grid(5)
    xy[0] = np.nan
    big = [(-1, -1), (10, -1), (10, 10), (-1, 10)]
    mask = S.points_in_polygon(xy, big)
    assert not mask[0] and mask[1:].all()
    assert not S.points_in_polygon(xy, [(0, 0), (3, 3)]).any()  # a line encloses nothing
    assert not S.points_in_polygon(xy, [(0, 0), (3, 3), (0, 0), (3, 3)]).any()
    assert not S.points_in_rectangle(xy, (-1, -1), (10, 10))[0]


def test_rectangle_corners_in_any_order():
    xy = _grid()
    a = S.points_in_rectangle(xy, (2, 7), (4, 5))
    b = S.points_in_rectangle(xy, (4, 5), (2, 7))
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 9


def test_write_selection_replace_add_remove():
    f = pd.DataFrame({"spot_id": [f"s{i}" for i in range(6)]})
    assert S.write_selection(f, [0, 1, 2], "A") == 3
    assert list(f["selection"].cat.categories) == [S.UNSELECTED, "A"]
    assert f["selection"].tolist() == ["A", "A", "A", S.UNSELECTED, S.UNSELECTED, S.UNSELECTED]
    S.write_selection(f, [1, 4], "A")  # replace: the group becomes exactly these rows
    assert f["selection"].tolist() == [S.UNSELECTED, "A", S.UNSELECTED, S.UNSELECTED, "A",
                                       S.UNSELECTED]
    S.write_selection(f, [5], "B", mode="add")
    S.write_selection(f, [0], "A", mode="add")
    assert f["selection"].tolist() == ["A", "A", S.UNSELECTED, S.UNSELECTED, "A", "B"]
    changed = S.write_selection(f, [4, 5], "A", mode="remove")  # B's row is not A's: kept
    assert changed == 1
    assert f["selection"].tolist() == ["A", "A", S.UNSELECTED, S.UNSELECTED, S.UNSELECTED, "B"]
    assert list(f["selection"].cat.categories) == [S.UNSELECTED, "A", "B"]
    assert not f["selection"].isna().any()  # never NaN: napari colour cycles stay happy


def test_write_selection_rejects_bad_input():
    f = pd.DataFrame({"x": range(4)})
    with pytest.raises(InputError, match="out of range"):
        S.write_selection(f, [7], "A")
    with pytest.raises(InputError, match="reserved"):
        S.write_selection(f, [1], S.UNSELECTED)
    with pytest.raises(InputError, match="unknown mode"):
        S.write_selection(f, [1], "A", mode="xor")
    assert "selection" not in f  # nothing half-written


def test_codes_from_column_tolerates_nan_and_unknown_categories():
    vals = pd.Categorical(["A", None, "Z", "B", S.UNSELECTED])
    np.testing.assert_array_equal(S.codes_from_column(vals, ["A", "B"]), [1, 0, 0, 2, 0])
    np.testing.assert_array_equal(S.codes_from_column(pd.Series(["B", "A"]), ["A", "B"]), [2, 1])
    assert S.groups_in(vals) == ["A", "B", "Z"]


def test_row_links_across_two_slides():
    links = S.RowLinks.from_lengths(["s1", "s2"], [3, 4])
    assert len(links) == 7
    split = links.split([0, 2, 3, 6])
    assert split["s1"].tolist() == [0, 2] and split["s2"].tolist() == [0, 3]
    assert links.indices_of("s2", [3, 1, 99]).tolist() == [4, 6]
    assert links.indices_of("nope", [0]).size == 0
    mask = np.zeros(7, bool)
    mask[[1, 5]] = True
    assert {k: v.tolist() for k, v in links.split(mask).items()} == {"s1": [1], "s2": [2]}


def _tables():
    a = pd.DataFrame({"spot_id": ["a0", "a1", "a2"]})
    b = pd.DataFrame({"label": [5, 6, 7, 8]})
    S.write_selection(a, [1], "tumour")
    S.write_selection(b, [0, 3], "stroma")
    S.write_selection(b, [2], "tumour", mode="add")
    return {"slide A": a, "cells B": b}


def test_export_csv_round_trip_and_group_filter(tmp_path):
    out = S.export_groups_csv(tmp_path / "groups.csv", _tables())
    back = pd.read_csv(out)
    assert back.to_dict("list") == {
        "layer": ["slide A", "cells B", "cells B", "cells B"],
        "row": [1, 0, 2, 3],
        "id": ["a1", "5", "7", "8"],
        "group": ["tumour", "stroma", "tumour", "stroma"],
    }
    only = pd.read_csv(S.export_groups_csv(tmp_path / "t.csv", _tables(), groups=["tumour"]))
    assert only["id"].astype(str).tolist() == ["a1", "7"]
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp*"))


def test_export_csv_of_nothing_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="nothing to export"):
        S.export_groups_csv(tmp_path / "x.csv", _tables(), groups=["absent"])
    assert not (tmp_path / "x.csv").exists()
    assert list(tmp_path.iterdir()) == []


def test_export_h5ad_writes_an_obs_column(tmp_path):
    import anndata as ad

    adata = ad.AnnData(np.zeros((4, 2), np.float32))
    adata.obs_names = ["o0", "o1", "o2", "o3"]
    feats = pd.DataFrame({"spot_id": ["o2", "o0", "o3"]})  # layer rows in another order
    S.write_selection(feats, [0], "g1")
    S.write_selection(feats, [2], "g2", mode="add")
    vals = S.align_to_obs(feats, adata.obs_names)
    assert list(vals) == [S.UNSELECTED, S.UNSELECTED, "g1", "g2"]
    out = S.export_groups_h5ad(tmp_path / "sel.h5ad", adata, vals, groups=["g2"])
    back = ad.read_h5ad(out)
    assert back.obs["selection"].tolist() == [S.UNSELECTED] * 3 + ["g2"]
    assert list(back.obs["selection"].cat.categories) == [S.UNSELECTED, "g2"]
    with pytest.raises(InputError, match="3 selection values for 4"):
        S.export_groups_h5ad(tmp_path / "bad.h5ad", adata, vals[:3])
    assert not (tmp_path / "bad.h5ad").exists()


def test_align_to_obs_needs_ids_or_equal_lengths():
    feats = pd.DataFrame({"x": [1, 2]})
    S.write_selection(feats, [1], "g")
    assert list(S.align_to_obs(feats, ["a", "b"])) == [S.UNSELECTED, "g"]
    with pytest.raises(InputError, match="no spot_id"):
        S.align_to_obs(feats, ["a", "b", "c"])


def test_lasso_on_a_million_points_is_vectorised():
    """Not a timing assertion: checks the bbox prefilter gives the exact brute-force answer."""
    rng = np.random.default_rng(1)
    xy = rng.random((1_000_000, 2)).astype(np.float32)
    poly = [(0.1, 0.1), (0.3, 0.12), (0.25, 0.3), (0.12, 0.28)]
    mask = S.points_in_polygon(xy, poly)
    from matplotlib.path import Path

    sub = np.flatnonzero((xy[:, 0] < 0.35) & (xy[:, 1] < 0.35))
    ref = np.zeros(len(xy), bool)
    ref[sub] = Path(np.array(poly + [poly[0]]), closed=True).contains_points(xy[sub])
    np.testing.assert_array_equal(mask, ref)
