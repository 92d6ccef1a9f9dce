"""Argument groups shared by several subcommands (one definition, one help text)."""

from __future__ import annotations


def add_data_args(p, sections_help: str = "sections to use (default: all)") -> None:
    p.add_argument("--data", required=True, nargs="+", metavar="PATH",
                   help="her2st folder, Space Ranger folder or .h5ad (several allowed)")
    p.add_argument("--sections", nargs="+", default=None, metavar="S", help=sections_help)


def add_slide_grid_args(p, out_metavar: str, unit: str) -> None:
    """``--model --image --out`` plus the pseudo-spot/patch grid over a slide's tissue."""
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    p.add_argument("--image", required=True, metavar="SLIDE", help="H&E slide or image")
    p.add_argument("--out", required=True, metavar=out_metavar)
    p.add_argument("--name", default=None, help="slide name in the output (default: file)")
    p.add_argument("--pitch-um", type=float, default=None,
                   help=f"{unit} grid pitch in µm (default: the training spot pitch)")
    p.add_argument("--layout", choices=("square", "hex"), default="square")
    p.add_argument("--min-tissue", type=float, default=0.5,
                   help=f"keep {unit}es at least this fraction tissue" if unit == "patch"
                   else f"keep {unit}s at least this fraction tissue")
    p.add_argument("--tile", type=int, default=2048, help="read tile size (px)")


def add_encoder_args(g, default: str) -> None:
    """``--encoder/--backbone NAME`` (the encoder registry) and ``--weights``."""
    from ..models.encoders import encoder_help

    g.add_argument("--encoder", "--backbone", dest="backbone", default=None, metavar="NAME",
                   help=f"{default} (default); " + encoder_help())
    g.add_argument("--weights", default=None,
                   help="none (random init; the CNNs' default), imagenet (CNNs; torchvision, "
                        "online or cached), pretrained (foundation models' default: "
                        "$STEXP_WEIGHTS/<encoder>/) or a file/folder")
