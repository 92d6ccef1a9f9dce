"""Nonsense option values are refused by the argument parser (exit 2, a usage line naming the
option), never reach the code (issue 16)."""

from __future__ import annotations

import argparse

import pytest

from napari_stexp.cli import build_parser, main

BAD = [
    ["expression", "train", "--data", "x", "--out", "y", "--epochs", "0"],
    ["expression", "train", "--data", "x", "--out", "y", "--top-genes", "0"],
    ["expression", "train", "--data", "x", "--out", "y", "--lr", "nan"],
    ["expression", "predict", "--model", "m", "--image", "i", "--out", "o", "--pitch-um", "0"],
    ["expression", "predict", "--model", "m", "--image", "i", "--out", "o", "--tile", "0"],
    ["classify", "predict", "--model", "m", "--image", "i", "--out", "o", "--min-tissue", "2"],
    ["segment", "a.png", "--out", "o", "--tile-size", "0"],
    ["segment", "a.png", "--out", "o", "--overlap", "-10"],
    ["segment", "evaluate", "--images", "i", "--out", "o", "--iou", "2"],
    ["bvae", "train", "--cells", "c", "--out", "o", "--lr", "nan"],
    ["bvae", "train", "--cells", "c", "--out", "o", "--epochs", "-1"],
    ["classify", "train", "--data", "x", "--out", "o", "--lr", "inf"],
]


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a[:2] + a[-2:]))
def test_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {argv[-2]}" in err, err


def test_good_values_still_parse():
    args = build_parser().parse_args(["segment", "a.png", "--out", "o", "--tile-size", "512",
                                      "--overlap", "0"])
    assert args.tile_size == 512 and args.overlap == 0
    args = build_parser().parse_args(["segment", "evaluate", "--images", "i", "--out", "o",
                                      "--iou", "0.3"])
    assert args.iou == 0.3


def test_type_helpers_are_reusable():
    from napari_stexp.commands._args import fraction, positive_float, positive_int

    assert positive_int("3") == 3 and positive_float("0.5") == 0.5 and fraction("1") == 1.0
    for f, v in ((positive_int, "0"), (positive_int, "1.5"), (positive_float, "nan"),
                 (fraction, "-0.1")):
        with pytest.raises(argparse.ArgumentTypeError):
            f(v)


def test_unknown_segment_param(tmp_path, capsys):
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((32, 32, 3), np.uint8))
    rc = main(["segment", str(tmp_path / "a.tif"), "--out", str(tmp_path / "o"), "--param",
               "nosuch=1"])
    assert rc == 2
    assert "unknown parameter nosuch for classical" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
