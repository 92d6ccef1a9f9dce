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
    assert [k for _, _, k in out] == ["image"]
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
