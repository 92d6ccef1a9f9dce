"""The slide frame (io/frame.py): one encoding of unknown µm/px carried through predict → write →
reopen, layers that keep a recorded 1 µm/px, spot size, grids and the neighbour graph."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from napari_stexp.io import frame


def _st(xy, *, mpp=None, diameter=None, array_xy=None, section="S"):
    from napari_stexp.io.spatial import build_st_adata

    xy = np.asarray(xy, np.float64)
    return build_st_adata(np.ones((len(xy), 2)), [f"s{i}" for i in range(len(xy))], ["G1", "G2"],
                          xy, section=section, mpp_fullres=mpp, spot_diameter_fullres=diameter,
                          array_xy=array_xy)


# ----------------------------------------------------------------------------- µm/px


def test_unknown_mpp_prediction_reopens_as_unknown(tmp_path):
    """A prediction of a slide whose µm/px nobody knows, written to .h5ad and reopened, is still
    of unknown µm/px (it used to come back as a known 1 µm/px, or as the training µm/px)."""
    from PIL import Image

    from expression_helpers import synthetic_pair
    from napari_stexp.analysis.slide_predict import predict_slide
    from napari_stexp.io.export import write_h5ad
    from napari_stexp.io.open import open_path
    from napari_stexp.io.wsi import open_image
    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = synthetic_pair(n=8, n_genes=12)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_expression_model({"TRAIN": adatas["TRAIN"]}, images={
            "TRAIN": images["TRAIN"]}, epochs=0, backbone="tinycnn", input_size=32,
            cache_dir=False, device="cpu")
        slide = tmp_path / "slide.png"  # no dpi: µm/px unknown
        Image.fromarray(np.asarray(images["TEST"].levels[0])).save(slide)
        pyr = open_image(slide)
        assert pyr.mpp is None and pyr.mpp_source == "unknown"
        ad = predict_slide(model, pyr, name="SLIDE", device="cpu", batch_size=16)
    finally:
        torch.set_num_threads(old)
    assert ad.uns["napari_stexp"]["mpp_source"] == "assumed"  # the grid assumed training µm/px
    assert frame.mpp_of(ad) is None
    out = write_h5ad(ad, tmp_path / "pred.h5ad")

    opened = open_path(out)
    back = opened.adatas["SLIDE"]
    assert frame.mpp_of(back) is None and frame.frame_unit(back) == "px"
    img = opened.images["SLIDE"]
    assert img.mpp is None and img.mpp_source == "unknown"
    layers = {a["name"]: (d, a) for d, a, _ in opened.layers()}
    image = layers["SLIDE H&E"][1]
    assert image["scale"] == (1.0, 1.0) and image["metadata"]["mpp"] is None
    spots, attrs = layers["SLIDE spots"]
    # the spots sit on the slide's pixels (the frame unit is the pixel)
    np.testing.assert_allclose(spots, np.asarray(ad.obsm["spatial"])[:, ::-1])
    np.testing.assert_allclose(attrs["size"], ad.uns["spatial"]["SLIDE"]["scalefactors"][
        "spot_diameter_fullres"])


def test_layer_at_scale_one_with_recorded_mpp_one_keeps_one_micrometre():
    from napari_stexp.io.image import ImagePyramid
    from napari_stexp.io.layers import image_layer

    arr = np.zeros((8, 8, 3), np.uint8)
    data, attrs, _ = image_layer(ImagePyramid(levels=[arr], mpp=1.0, name="one"))
    assert attrs["scale"] == (1.0, 1.0) and attrs["metadata"]["mpp"] == 1.0
    layer = types.SimpleNamespace(data=data, multiscale=False, name="one", scale=(1.0, 1.0),
                                  metadata=attrs["metadata"])
    assert frame.mpp_from_layer(layer) == 1.0
    pyr = frame.pyramid_from_layer(layer)
    assert pyr.mpp == 1.0 and pyr.mpp_source == "file"
    # the old shim in the expression widget module is the same function
    # (napari metadata of unknown µm/px stays unknown, whatever the scale)
    unknown = types.SimpleNamespace(**{**vars(layer), "metadata": {"mpp": None}})
    assert frame.mpp_from_layer(unknown) is None
    # a layer added by hand: its scale is the user's µm/px; napari's default 1 says nothing
    hand = types.SimpleNamespace(**{**vars(layer), "metadata": {}, "scale": (0.5, 0.5)})
    assert frame.mpp_from_layer(hand) == 0.5 and frame.pyramid_from_layer(hand).mpp_source == "user"
    hand1 = types.SimpleNamespace(**{**vars(layer), "metadata": {}})
    assert frame.mpp_from_layer(hand1) is None


def test_mpp_has_one_encoding_of_unknown():
    from napari_stexp.io.image import ImagePyramid

    for bad in (None, 0, -1.0, float("nan"), float("inf"), "x"):
        assert frame.clean_mpp(bad) is None
        assert ImagePyramid(levels=[np.zeros((4, 4))], mpp=bad).mpp_source == "unknown"
    assert ImagePyramid(levels=[np.zeros((4, 4))], mpp=0.5).mpp_source == "file"
    with pytest.raises(ValueError):
        ImagePyramid(levels=[np.zeros((4, 4))], mpp=0.5, mpp_source="guessed")
    a = _st([[0, 0], [10, 0]])
    assert frame.mpp_of(a) is None and "mpp_fullres" not in a.uns["spatial"]["S"]["metadata"]
    assert frame.mpp_of(_st([[0, 0], [10, 0]], mpp=0.5)) == 0.5
    assert frame.layer_scale(None) == (1.0, 1.0) and frame.layer_scale(0.25) == (0.25, 0.25)


def test_spot_frames_and_downscaled_images_of_unknown_mpp():
    from napari_stexp.io.image import ImagePyramid

    xy = np.array([[10.0, 20.0], [30.0, 20.0], [10.0, 40.0]])
    a = _st(xy, mpp=0.5)
    np.testing.assert_array_equal(frame.spots_xy_px(a), xy)
    np.testing.assert_array_equal(frame.spots_rc_px(a), xy[:, ::-1])
    np.testing.assert_allclose(frame.spots_rc_um(a), xy[:, ::-1] * 0.5)
    # an image at 1 µm/px (half the full resolution): centres in its pixels
    half = ImagePyramid(levels=[np.zeros((40, 40))], mpp=1.0)
    np.testing.assert_allclose(frame.spots_rc_px(a, half), xy[:, ::-1] / 2)
    np.testing.assert_allclose(frame.layer_coords(a, half), frame.spots_rc_um(a))
    # unknown µm/px, image downscaled by image_scale: pixels of the full resolution are the frame
    u = _st(xy)
    small = ImagePyramid(levels=[np.zeros((40, 40))], metadata={"image_scale": 0.5})
    np.testing.assert_allclose(frame.spots_rc_px(u, small), xy[:, ::-1] * 0.5)
    assert frame.layer_scale(small) == (2.0, 2.0)
    np.testing.assert_allclose(frame.layer_coords(u, small), xy[:, ::-1])
    np.testing.assert_allclose(frame.spots_rc_um(u), xy[:, ::-1])


# ----------------------------------------------------------------------------- spot size


def test_spot_diameter_one_fallback_rule():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    assert frame.spot_pitch_px(_st(xy)) == pytest.approx(10.0)
    assert frame.spot_diameter_px(_st(xy, diameter=6.0)) == pytest.approx(6.0)
    assert frame.spot_diameter_px(_st(xy)) == pytest.approx(5.0)  # half the pitch
    assert frame.spot_diameter_um(_st(xy, mpp=2.0)) == pytest.approx(10.0)
    assert frame.spot_diameter_um(_st(xy, mpp=2.0), fallback=False) is None
    assert frame.spot_diameter_um(_st(xy, mpp=2.0, diameter=6.0), fallback=False) == 12.0
    assert frame.spot_diameter_px(_st([[0.0, 0.0]])) is None
    assert frame.layer_spot_size(_st([[0.0, 0.0]])) == 1.0
    assert frame.median_spot_geometry({"a": _st(xy, mpp=2.0, diameter=6.0),
                                       "b": _st(xy, mpp=1.0)}) == (15.0, 12.0)


def test_spots_layer_size_uses_the_same_rule():
    from napari_stexp.io.layers import spots_layer

    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    assert spots_layer(_st(xy, mpp=2.0))[1]["size"] == pytest.approx(10.0)
    assert spots_layer(_st(xy, mpp=2.0, diameter=6.0))[1]["size"] == pytest.approx(12.0)


# ----------------------------------------------------------------------------- grids


def test_array_grid_and_section_grid():
    xy = np.array([[100.0, 50.0], [110.0, 50.0], [100.0, 60.0]])
    a = _st(xy)
    np.testing.assert_array_equal(frame.array_grid(a), [[0, 0], [1, 0], [0, 1]])
    np.testing.assert_allclose(frame.section_grid(a), xy / 10.0)
    b = _st(xy, array_xy=np.array([[0, 0], [2, 0], [1, 1]]))  # hexagonal array coordinates
    np.testing.assert_array_equal(frame.array_grid(b), [[0, 0], [2, 0], [1, 1]])
    np.testing.assert_allclose(frame.section_grid(b), [[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])


def test_square_and_hex_lattices():
    c, g = frame.square_grid((30, 40), 10.0)
    assert len(c) == 12 and c[0].tolist() == [5.0, 5.0] and g[-1].tolist() == [3, 2]
    h, hg = frame.hex_grid((30, 40), 10.0)
    rows = np.unique(h[:, 0])
    np.testing.assert_allclose(np.diff(rows), 10 * np.sqrt(3) / 2)
    odd = h[:, 0] == rows[1]
    assert h[odd][0, 1] == 10.0 and (hg[odd][:, 0] % 2 == 1).all()
    # in pitch units, every hex neighbour is 1 apart
    d = np.linalg.norm(frame.grid_coordinates(hg, "hex")[None] - frame.grid_coordinates(
        hg, "hex")[:, None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(d.min(axis=1), 1.0)
    with pytest.raises(Exception, match="pitch"):
        frame.square_grid((30, 40), 0.0)
    with pytest.raises(Exception, match="layout"):
        frame.pseudo_spot_grid(np.ones((3, 4), bool), 10.0, (30, 40), 10.0, layout="tri")


def test_pseudo_spot_grid_keeps_tissue_spots():
    mask = np.zeros((30, 40), bool)
    mask[:, :20] = True  # left half is tissue
    c, g, f = frame.pseudo_spot_grid(mask, 1.0, (30, 40), 10.0)
    assert (c[:, 1] < 20).all() and len(c) == 6 and (f == 1.0).all()
    assert g.dtype == np.int64


def test_neighbour_graph_rows_and_groups():
    g = np.array([[0, 0], [1, 0], [2, 0], [10, 10]], float)
    A = frame.neighbour_graph(g, 1.5).toarray()
    np.testing.assert_allclose(A.sum(axis=1), 1.0)
    assert A[0, 1] == 1.0 and A[1, 0] == 0.5 and A[1, 2] == 0.5 and A[3, 3] == 1.0
    B = frame.neighbour_graph(g, 1.5, groups=["a", "b", "b", "b"]).toarray()
    assert B[0, 0] == 1.0 and B[1, 2] == 1.0
    v = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(frame.neighbour_mean(v, g, 1.5), [2.0, 2.0, 2.0, 4.0])
    with pytest.raises(Exception, match="group"):
        frame.neighbour_graph(g, groups=["a"])


def test_keys_are_the_scanpy_conventions():
    from napari_stexp.io import keys

    a = _st([[0.0, 0.0], [10.0, 0.0]], mpp=0.5, diameter=4.0)
    entry = a.uns[keys.SPATIAL]["S"]
    assert keys.SPATIAL in a.obsm and entry[keys.METADATA][keys.MPP_FULLRES] == 0.5
    assert entry[keys.SCALEFACTORS][keys.SPOT_DIAMETER_FULLRES] == 4.0
    assert (keys.SPATIAL, keys.MPP_FULLRES, keys.SOURCE_IMAGE_PATH) == (
        "spatial", "mpp_fullres", "source_image_path")


def test_unknown_mpp_survives_an_ome_zarr_round_trip(tmp_path):
    """An image (and labels added under it) of unknown µm/px reopens as unknown; it used to be
    written as 1 µm/px with a micrometre unit and come back as a known 1 µm/px."""
    from napari_stexp._writer import write_image_ome_zarr, write_labels_ome_zarr
    from napari_stexp.io.export import add_ome_zarr_labels, read_ome_zarr, write_ome_zarr

    img = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    lab = np.zeros((64, 48), np.int32)
    lab[10:20, 10:20] = 1
    p = write_ome_zarr(tmp_path / "u.ome.zarr", img, axes="yxc", scale_um=None)
    back = read_ome_zarr(p)
    assert back.mpp is None and back.mpp_source == "unknown"
    add_ome_zarr_labels(p, lab, "cells")
    assert read_ome_zarr(p / "labels" / "cells").mpp is None
    assert read_ome_zarr(write_ome_zarr(tmp_path / "k.ome.zarr", img, axes="yxc",
                                        scale_um=(0.5, 0.5))).mpp == pytest.approx(0.5)
    # the npe2 writers take µm/px from the layer's metadata, not from scale == 1
    write_image_ome_zarr(str(tmp_path / "l.ome.zarr"), img, {
        "name": "l", "rgb": True, "scale": (1.0, 1.0), "metadata": {"mpp": None}})
    assert read_ome_zarr(tmp_path / "l.ome.zarr").mpp is None
    write_labels_ome_zarr(str(tmp_path / "m.ome.zarr"), lab, {
        "name": "m", "scale": (1.0, 1.0), "metadata": {"mpp": 1.0}})
    assert read_ome_zarr(tmp_path / "m.ome.zarr").mpp == pytest.approx(1.0)
