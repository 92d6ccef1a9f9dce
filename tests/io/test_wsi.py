"""Whole-slide / large-image reader and pyramidal TIFF writer (napari_stexp.io.wsi)."""

from __future__ import annotations

import sys
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_stexp.errors import CancelledError, InputError
from napari_stexp.io.wsi import (
    downsample2,
    is_image_file,
    open_image,
    write_pyramidal_tiff,
)


def _synthetic(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: every pixel distinct enough to catch offset bugs."""
    rng = np.random.default_rng(seed)
    y = np.arange(h, dtype=np.int64)[:, None]
    x = np.arange(w, dtype=np.int64)[None, :]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (y * 215) // max(h - 1, 1)
    img[..., 1] = (x * 215) // max(w - 1, 1)
    img[..., 2] = ((y + x) * 7) % 216
    img += rng.integers(0, 40, img.shape, dtype=np.uint8)
    return img[..., 0].copy() if channels == 0 else img[..., :channels].copy()


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    img = _synthetic(3000, 2000)
    path = tmp_path_factory.mktemp("wsi") / "slide.tif"
    write_pyramidal_tiff(path, img, tile=256, mpp=0.5, compression=None)
    return path, img


def test_pyramid_tiff_opens_as_multiscale(pyramid):
    path, img = pyramid
    pyr = open_image(path)
    assert pyr.multiscale
    assert [lv.shape for lv in pyr.levels] == [(3000, 2000, 3), (1500, 1000, 3), (750, 500, 3),
                                              (375, 250, 3), (188, 125, 3)]
    assert pyr.mpp == pytest.approx(0.5)
    assert pyr.name == "slide"
    assert pyr.metadata["format"] == "tiff" and pyr.metadata["tile"] == (256, 256)
    assert pyr.metadata["compression"] == "NONE"
    assert pyr.metadata["layout"] == "rgb" and pyr.rgb
    assert pyr.levels[0].chunks[0][0] == 256 and pyr.levels[0].chunks[1][0] == 256
    np.testing.assert_array_equal(pyr.read_region(1234, 567, 300, 400), img[1234:1534, 567:967])
    # lower levels are the 2x2 means the writer computed
    np.testing.assert_array_equal(pyr.levels[1][:200, :300].compute(),
                                  downsample2(img)[:200, :300])
    assert pyr.best_level(4.5) == 2


def test_region_read_decodes_only_needed_tiles(pyramid):
    path, img = pyramid
    pyr = open_image(path)
    tiles0 = pyr.metadata["_tile_arrays"][0]
    assert tiles0.reads == 0  # opening decodes nothing
    region = pyr.read_region(300, 500, 100, 100)  # rows tile 1, cols tiles 1 and 2
    np.testing.assert_array_equal(region, img[300:400, 500:600])
    assert tiles0.reads == 2
    pyr.thumbnail(128)  # coarse levels never touch level 0
    assert tiles0.reads == 2


def test_tile_function_writer_jpeg(tmp_path):
    def fn(row, col, h, w, ds):
        yy, xx = np.mgrid[row:row + h, col:col + w] * ds
        return np.stack([yy % 256, xx % 256, np.full_like(yy, 40 * ds)], -1).astype(np.uint8)

    calls: list[tuple[int, int]] = []
    out = write_pyramidal_tiff(tmp_path / "fn.tif", fn, shape=(1100, 1500, 3), tile=256,
                               mpp=0.25, compression="jpeg",
                               progress=lambda d, t, m: calls.append((d, t)))
    pyr = open_image(out)
    assert [lv.shape[:2] for lv in pyr.levels] == [(1100, 1500), (550, 750), (275, 375),
                                                   (138, 188)]
    assert pyr.mpp == pytest.approx(0.25)
    assert pyr.metadata["compression"] == "JPEG"
    lvl1 = pyr.levels[1][:64, :64].compute().astype(int)
    assert abs(lvl1[..., 2].mean() - 80) < 3  # level 1 came from fn(..., downsample=2)
    assert calls[-1][0] == calls[-1][1] == 5 * 6 + 3 * 3 + 2 * 2 + 1


def test_ome_tiff_physical_size(tmp_path):
    img = _synthetic(600, 800)
    p = tmp_path / "x.ome.tif"
    tifffile.imwrite(p, img, ome=True, photometric="rgb", tile=(256, 256),
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325,
                               "PhysicalSizeXUnit": "µm"})
    pyr = open_image(p)
    assert pyr.name == "x" and pyr.metadata["format"] == "ome-tiff"
    assert pyr.mpp == pytest.approx(0.325)
    np.testing.assert_array_equal(pyr.levels[0].compute(), img)

    chans = np.stack([img[..., 0], img[..., 1]]).astype(np.uint16)
    p2 = tmp_path / "c.ome.tiff"
    tifffile.imwrite(p2, chans, ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"})
    pyr2 = open_image(p2)
    assert pyr2.mpp == pytest.approx(0.5)
    assert pyr2.shape == (600, 800, 2) and pyr2.metadata["layout"] == "multichannel"
    np.testing.assert_array_equal(pyr2.levels[0][..., 1].compute(), chans[1])


def test_svs_like_mpp_and_main_series(tmp_path):
    img = _synthetic(1024, 768)
    desc = "Aperio Image Library v12.0.15 \r\n1024x768 [0,0 1024x768] (256x256) JPEG/RGB Q=70"
    p = tmp_path / "fake.svs"
    with tifffile.TiffWriter(p) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None,
                 description=desc + "|AppMag = 20|MPP = 0.4990|Filename = fake")
        tw.write(img[::8, ::8], photometric="rgb", metadata=None,
                 description="Aperio Image Library v12.0.15 \r\n1024x768 -> 128x96|MPP = 0.499")
        tw.write(img[::4, ::4], tile=(256, 256), photometric="rgb", compression="jpeg",
                 metadata=None, description="Aperio Image Library v12.0.15 \r\n256x192")
        tw.write(img[:100, :200], photometric="rgb", metadata=None, subfiletype=1,
                 description="Aperio Image Library v12.0.15\r\nlabel 200x100")
        tw.write(img[:300, :900], photometric="rgb", metadata=None, subfiletype=9,
                 description="Aperio Image Library v12.0.15\r\nmacro 900x300")
    pyr = open_image(p)
    assert pyr.metadata["format"] == "svs" and pyr.metadata["series"] == "Baseline"
    assert pyr.mpp == pytest.approx(0.499)
    assert [lv.shape for lv in pyr.levels] == [(1024, 768, 3), (256, 192, 3)]
    assert pyr.downsamples == [1.0, 4.0]


def test_tiff_resolution_units(tmp_path):
    img = _synthetic(64, 64)
    p = tmp_path / "inch.tif"
    tifffile.imwrite(p, img, photometric="rgb", resolution=(25400 / 0.25, 25400 / 0.25),
                     resolutionunit="INCH")
    assert open_image(p).mpp == pytest.approx(0.25)
    p2 = tmp_path / "screen.tif"  # 72 dpi is a screen resolution, not a pixel size
    tifffile.imwrite(p2, img, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert open_image(p2).mpp is None
    p3 = tmp_path / "none.tif"
    tifffile.imwrite(p3, img, photometric="rgb")
    assert open_image(p3).mpp is None


def test_grey_and_rgba_keep_layout(tmp_path):
    grey = (np.arange(700 * 500, dtype=np.uint32).reshape(700, 500) % 60000).astype(np.uint16)
    write_pyramidal_tiff(tmp_path / "g.tif", grey, tile=256, compression="zlib", mpp=1.0)
    g = open_image(tmp_path / "g.tif")
    assert g.shape == (700, 500) and g.dtype == np.uint16 and g.metadata["layout"] == "grey"
    assert [lv.shape for lv in g.levels] == [(700, 500), (350, 250), (175, 125)]
    np.testing.assert_array_equal(g.levels[0].compute(), grey)

    rgba = np.dstack([_synthetic(300, 400), np.full((300, 400), 128, np.uint8)])
    write_pyramidal_tiff(tmp_path / "a.tif", rgba, tile=128, compression="zlib")
    a = open_image(tmp_path / "a.tif")
    assert a.shape == (300, 400, 4) and a.metadata["layout"] == "rgba"
    np.testing.assert_array_equal(a.levels[0].compute(), rgba)

    Image.fromarray(rgba).save(tmp_path / "a.png")
    pa = open_image(tmp_path / "a.png")
    assert pa.shape == (300, 400, 4) and pa.metadata["layout"] == "rgba"
    np.testing.assert_array_equal(pa.levels[0].compute(), rgba)
    Image.fromarray(grey[:50, :60].astype(np.uint8)).save(tmp_path / "g.bmp")
    gb = open_image(tmp_path / "g.bmp")
    assert gb.shape == (50, 60) and gb.metadata["format"] == "bmp"
    np.testing.assert_array_equal(gb.levels[0].compute(), grey[:50, :60].astype(np.uint8))


def test_tiled_tiff_without_pyramid_gets_lazy_levels(tmp_path):
    img = _synthetic(4608, 256, channels=0)
    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, img, tile=(256, 256), compression="zlib")
    pyr = open_image(p)
    assert pyr.metadata["generated_levels"]
    assert [lv.shape for lv in pyr.levels] == [(4608, 256), (2304, 128), (1152, 64),
                                              (576, 32)]
    np.testing.assert_array_equal(pyr.levels[1][:100].compute(), downsample2(img)[:100])


def test_plain_png_jpeg_are_lazy(tmp_path):
    img = _synthetic(200, 300)
    Image.fromarray(img).save(tmp_path / "p.png")
    pyr = open_image(tmp_path / "p.png")
    src = pyr.metadata["_source"]
    assert src.decoded == [] and not pyr.multiscale and pyr.metadata["format"] == "png"
    np.testing.assert_array_equal(pyr.read_region(10, 20, 30, 40), img[10:40, 20:60])
    assert src.decoded == [1]
    Image.fromarray(img).save(tmp_path / "p.jpg", quality=95)
    j = open_image(tmp_path / "p.jpg")
    assert j.metadata["_source"].decoded == []
    np.testing.assert_array_equal(j.levels[0].compute(),
                                  np.asarray(Image.open(tmp_path / "p.jpg")))
    pal = Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png")
    pp = open_image(tmp_path / "pal.png")
    assert pp.shape == (200, 300, 3)
    np.testing.assert_array_equal(pp.levels[0].compute(), np.asarray(pal.convert("RGB")))


def test_large_png_gets_pyramid(tmp_path):
    img = _synthetic(4200, 64, channels=0)
    Image.fromarray(img).save(tmp_path / "tall.png")
    pyr = open_image(tmp_path / "tall.png")
    assert [lv.shape for lv in pyr.levels] == [(4200, 64), (2100, 32), (1050, 16), (525, 8)]
    np.testing.assert_array_equal(pyr.levels[2].compute(), downsample2(downsample2(img)))


@pytest.mark.realdata
def test_her2st_jpeg_coarse_levels_without_full_decode(her2st_dir):
    path = her2st_dir / "ST-imgs" / "B" / "B4" / "BT10737_D2_HE.jpg"
    pyr = open_image(path)
    src = pyr.metadata["_source"]
    assert src.decoded == []
    assert [lv.shape for lv in pyr.levels] == [(9923, 9272, 3), (4962, 4636, 3),
                                              (2481, 2318, 3), (1241, 1159, 3), (621, 580, 3)]
    assert pyr.downsamples == [1.0, 2.0, 4.0, 8.0, 16.0]
    thumb = pyr.levels[-1].compute()
    pyr.levels[3][:100, :100].compute()
    assert 1 not in src.decoded and src.decoded == [8]  # DCT-scaled decode only
    assert 100 < thumb.mean() < 250  # an H&E overview, not blank
    region = pyr.read_region(4000, 3000, 256, 384)
    assert 1 in src.decoded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            full = np.asarray(im)
    np.testing.assert_array_equal(region, full[4000:4256, 3000:3384])
    # the 1/8 DCT-scaled level is close to a box-filtered full decode
    box = full[:1600, :1158 * 8].reshape(200, 8, 1158, 8, 3).mean(axis=(1, 3))
    assert np.abs(pyr.levels[3][:200, :1158].compute().astype(float) - box).mean() < 4


def _expect_input_error(path, *words):
    with pytest.raises(InputError) as info:
        open_image(path)
    msg = str(info.value)
    assert str(path) in msg
    for w in words:
        assert w in msg.lower()
    return msg


def test_corrupt_and_unsupported_inputs(tmp_path, pyramid):
    img = _synthetic(300, 400)
    Image.fromarray(img).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    _expect_input_error(tmp_path / "trunc.jpg", "truncated")

    Image.fromarray(img).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    _expect_input_error(tmp_path / "trunc.png", "truncated")

    tif = pyramid[0].read_bytes()
    (tmp_path / "trunc.tif").write_bytes(tif[: len(tif) * 6 // 10])
    _expect_input_error(tmp_path / "trunc.tif", "truncated")
    (tmp_path / "head.tif").write_bytes(tif[:100])
    _expect_input_error(tmp_path / "head.tif")

    rng = np.random.default_rng(1)
    (tmp_path / "random.tif").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_input_error(tmp_path / "random.tif", "not a valid tiff")
    (tmp_path / "empty.png").write_bytes(b"")
    _expect_input_error(tmp_path / "empty.png", "empty")
    (tmp_path / "notes.txt").write_text("hello")
    _expect_input_error(tmp_path / "notes.txt", "unsupported")
    _expect_input_error(tmp_path / "missing.svs", "not found")


def test_corrupt_jpeg_body_raises_input_error_on_read(tmp_path):
    img = _synthetic(256, 256)
    Image.fromarray(img).save(tmp_path / "ok.jpg")
    data = bytearray((tmp_path / "ok.jpg").read_bytes())
    sos = data.index(b"\xff\xda")
    data[sos + 2:sos + 40] = b"\xff\xd9" * 19  # kill the scan header, keep an end marker
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    try:
        pyr = open_image(tmp_path / "bad.jpg")
    except InputError:
        return  # rejected at open: fine
    with pytest.raises(InputError, match="bad.jpg"):
        pyr.levels[0].compute()


def test_openslide_missing_gives_install_hint(tmp_path, monkeypatch):
    p = tmp_path / "slide.ndpi"
    p.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "openslide", None)
    msg = _expect_input_error(p, "openslide")
    assert "pip install" in msg


def test_openslide_adapter_with_fake_module(tmp_path, monkeypatch):
    full = _synthetic(6000, 300)

    class FakeSlide:
        level_count = 2
        level_dimensions = [(300, 6000), (150, 3000)]
        level_downsamples = [1.0, 2.0]
        properties = {"openslide.mpp-x": "0.23", "openslide.vendor": "hamamatsu"}

        def __init__(self, path):
            self.levels = [full, downsample2(full)]

        def read_region(self, loc, level, size):
            x, y = loc
            ds = int(self.level_downsamples[level])
            w, h = size
            arr = self.levels[level][y // ds:y // ds + h, x // ds:x // ds + w]
            rgba = np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])
            rgba[0, 0, 3] = 0
            return Image.fromarray(rgba, "RGBA")

    fake = types.ModuleType("openslide")
    fake.OpenSlide = FakeSlide
    monkeypatch.setitem(sys.modules, "openslide", fake)
    p = tmp_path / "slide.mrxs"
    p.write_bytes(b"x")
    pyr = open_image(p)
    assert pyr.mpp == pytest.approx(0.23) and pyr.metadata["format"] == "openslide:hamamatsu"
    assert [lv.shape for lv in pyr.levels] == [(6000, 300, 3), (3000, 150, 3)]
    region = pyr.read_region(1024, 0, 50, 60, level=1)  # starts a 512-px chunk
    expected = downsample2(full)[1024:1074, 0:60].copy()
    assert (region[0, 0] == 255).all()  # the fake's transparent pixel became white
    region[0, 0] = expected[0, 0]
    np.testing.assert_array_equal(region, expected)


def test_writer_is_atomic_and_cancellable(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")

    def failing(row, col, h, w, ds):
        if row >= 512:
            raise RuntimeError("boom")
        return np.zeros((h, w, 3), np.uint8)

    with pytest.raises(InputError, match="boom"):
        write_pyramidal_tiff(target, failing, shape=(2048, 1024, 3), tile=256)
    assert target.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.tif"]

    stop = threading.Event()
    seen = []

    def progress(done, total, msg):
        seen.append(done)
        if done == 3:
            stop.set()

    with pytest.raises(CancelledError):
        write_pyramidal_tiff(tmp_path / "c.tif", np.zeros((1024, 1024), np.uint8), tile=256,
                             progress=progress, cancel=stop)
    assert not (tmp_path / "c.tif").exists() and max(seen) == 3


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="shape"):
        write_pyramidal_tiff(tmp_path / "a.tif", lambda *a: None)
    with pytest.raises(InputError, match="JPEG"):
        write_pyramidal_tiff(tmp_path / "b.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(InputError, match="shape"):
        write_pyramidal_tiff(tmp_path / "c.tif", np.zeros((4, 64, 64), np.uint8))
    with pytest.raises(InputError, match="tile"):
        write_pyramidal_tiff(tmp_path / "d.tif", np.zeros((64, 64), np.uint8), tile=100)
    assert list(tmp_path.iterdir()) == []


def test_is_image_file(tmp_path):
    for name in ("a.svs", "b.OME.TIFF", "c.jpg", "d.png", "e.ndpi", "f.tif"):
        assert is_image_file(tmp_path / name)
    for name in ("a.h5ad", "b.csv", "c.tsv.gz"):
        assert not is_image_file(tmp_path / name)
    assert not is_image_file(tmp_path)
    assert isinstance(Path(tmp_path), Path)
