"""Many bins as a multiscale raster: values, frame, cursor read-out and gene switching."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401  (before the first Qt/GL context)

from napari_stexp.io.spatial import spots_rc_um
from napari_stexp.viewer.raster import (
    RASTER_THRESHOLD,
    BinGrid,
    bin_at,
    raster_layer,
    rasterize_large,
)


@pytest.fixture(scope="module")
def hd_section(tmp_path_factory):
    from napari_stexp.data.synthetic_hd import write_visium_hd
    from napari_stexp.io.visium_hd import read_visium_hd

    root = tmp_path_factory.mktemp("hd")
    write_visium_hd(root, n_bins=120_000, n_genes=40, nnz_per_bin=6, lowres=False)
    return read_visium_hd(root)


def test_raster_values_frame_and_levels(hd_section):
    ad = hd_section
    data, attrs, kind = raster_layer(ad, "Gene00003")
    assert kind == "image" and attrs["multiscale"] and len(data) >= 2
    assert all(hasattr(lvl, "compute") for lvl in data)  # lazy levels
    grid = attrs["metadata"]["bin_grid"]
    lvl0 = np.asarray(data[0])
    # every bin's pixel holds its count of the gene; pixels without a bin are NaN
    col = np.asarray(ad.layers["counts"][:, ad.var_names.get_loc("Gene00003")].toarray()).ravel()
    np.testing.assert_array_equal(lvl0[grid.r, grid.c], col)
    assert np.isnan(lvl0[grid.index < 0]).all()
    # the affine puts each pixel on its bin centre in µm (same frame as the spots)
    rc = spots_rc_um(ad)
    A = attrs["affine"]
    got = np.column_stack([grid.r, grid.c, np.ones(len(grid.r))]) @ A[:2].T
    np.testing.assert_allclose(got, rc, atol=1e-6)
    assert A[0, 0] == pytest.approx(8.0)  # 8 µm bins: one pixel per bin pitch
    i = 1234
    assert bin_at_layer(attrs, rc[i]) == i


def bin_at_layer(attrs, pos):
    class L:
        metadata = attrs["metadata"]

    return bin_at(L, pos)


def test_rasterize_large_replaces_points(hd_section):
    from napari_stexp.io.layers import spots_layer

    ad = hd_section
    assert ad.n_obs > RASTER_THRESHOLD
    pts = spots_layer(ad)
    pts[1]["metadata"]["adata"] = ad
    out = rasterize_large([pts])
    assert [k for _, _, k in out] == ["image", "labels"]  # the raster and its bins overlay
    assert out[1][1]["metadata"]["kind"] == "bin-selection"
    small = ad[:1000].copy()
    p2 = spots_layer(small)
    p2[1]["metadata"]["adata"] = small
    assert [k for _, _, k in rasterize_large([p2])] == ["points"]
    with pytest.raises(ValueError, match="no bin grid"):
        BinGrid(ad.copy().obs.drop(columns=["array_row", "array_col", "array_x", "array_y"])
                .pipe(lambda o: _with_obs(ad, o)))


def _with_obs(ad, obs):
    b = ad[:10].copy()
    b.obs = obs.iloc[:10]
    return b


def test_viewer_value_and_gene_switch(hd_section, make_napari_viewer):
    from napari_stexp.viewer.raster import set_raster_values

    ad = hd_section
    viewer = make_napari_viewer()
    data, attrs, _ = raster_layer(ad, "Gene00001")
    layer = viewer.add_image(data, **attrs)
    grid = layer.metadata["bin_grid"]
    rc = spots_rc_um(ad)
    i = 4321
    val = layer.get_value(rc[i], world=True)
    val = val[1] if isinstance(val, tuple) else val
    g1 = float(ad.layers["counts"][i, ad.var_names.get_loc("Gene00001")])
    assert val == pytest.approx(g1)
    set_raster_values(layer, "Gene00007")
    g7 = float(ad.layers["counts"][i, ad.var_names.get_loc("Gene00007")])
    val = layer.get_value(rc[i], world=True)
    val = val[1] if isinstance(val, tuple) else val
    assert val == pytest.approx(g7) and layer.metadata["key"] == "Gene00007"
    assert grid is layer.metadata["bin_grid"]


@pytest.mark.gui
def test_explorer_selection_highlights_the_bins(hd_section, make_napari_viewer):
    """Issue 14.6: the explorer's linked selection reaches a raster's bins (its overlay)."""
    from napari_stexp.session import get_session
    from napari_stexp.viewer.raster import raster_layers
    from napari_stexp.widgets.explorer import ExplorerWidget

    ad = hd_section[:20_000].copy()  # still a grid; small enough for a quick scatter
    ad.obsm["X_latent"] = np.random.default_rng(1).normal(size=(ad.n_obs, 4)).astype(np.float32)
    viewer = make_napari_viewer()
    for data, attrs, kind in raster_layers(ad, "HD"):
        getattr(viewer, f"add_{kind}")(data, **attrs)
    overlay = viewer.layers["HD bins"]
    assert overlay.metadata["kind"] == "bin-selection"
    get_session(viewer).add_adata("HD", ad)
    w = ExplorerWidget(viewer)
    try:
        w.refresh_sources()
        key = next(k for k in w.sources if "X_latent" in k)
        w.set_source(key)
        w.set_method("dims", (0, 1))
        w.compute(block=True)
        chosen = [5, 17, 1234]
        assert w.select_indices(chosen) == 3
        f = overlay.features
        marked = set(f.loc[f["selection"].astype(str) == "group 1", "spot_id"].astype(str))
        assert marked == {str(ad.obs_names[i]) for i in chosen}
        # the selected bins are drawn in the group's colour, the other bins are not
        grid = overlay.metadata["bin_grid"]
        cmap = overlay.colormap
        for i in chosen:
            lab = int(np.asarray(overlay.data[0])[grid.r[i], grid.c[i]])
            assert lab == i + 1
            assert cmap.map(lab)[3] > 0.5
        other = int(np.setdiff1d(np.arange(ad.n_obs), chosen)[0]) + 1
        assert not np.allclose(cmap.map(other), cmap.map(chosen[0] + 1))
    finally:
        w.cleanup()


def test_reader_builds_the_raster_without_points(tmp_path, monkeypatch):
    """The npe2 reader on a Visium HD folder beyond the threshold: raster + bins overlay, and no
    Points layer is ever built for that section."""
    from napari_stexp import _reader
    from napari_stexp.data.synthetic_hd import write_visium_hd
    from napari_stexp.io import layers as io_layers
    from napari_stexp.io import open as io_open
    from napari_stexp.viewer import raster

    write_visium_hd(tmp_path / "run", n_bins=3000, n_genes=20, nnz_per_bin=4, lowres=False)
    monkeypatch.setattr(raster, "RASTER_THRESHOLD", 1000)

    def no_points(*a, **k):
        raise AssertionError("a Points layer was built for a raster section")

    monkeypatch.setattr(io_open, "spots_layer", no_points)
    monkeypatch.setattr(io_layers, "spots_layer", no_points)
    out = _reader.read_paths(str(tmp_path / "run"))
    kinds = [(k, a["metadata"].get("kind")) for _, a, k in out]
    assert kinds == [("image", "bin-raster"), ("labels", "bin-selection")]
