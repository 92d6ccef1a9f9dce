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
    add_mpp_arg(p)


def positive_float(text: str) -> float:
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def add_mpp_arg(p) -> None:
    """``--mpp``: the image's µm/px when the file does not say (a JPEG/PNG) or says wrong."""
    p.add_argument("--mpp", type=positive_float, default=None, metavar="UM_PER_PX",
                   help="µm per pixel of the image (default: from the file; unknown for "
                        "JPEG/PNG, then said so)")


def slide_image(args):
    """``args.image`` as given, or opened with the user's ``--mpp`` applied."""
    if getattr(args, "mpp", None) is None:
        return args.image
    from ..io.open import apply_user_mpp
    from ..io.wsi import open_image

    return apply_user_mpp(open_image(args.image), args.mpp)


def add_config_args(group, config_cls, paths, *, flags: dict | None = None) -> None:
    """Flags for the config options ``paths`` (dotted for nested configs), built from the
    dataclass field metadata: one default, one help text (``models/_options.option``).

    Every flag defaults to ``None`` ("not given": the config's default, or the preset's, applies)
    and is checked against the option's bounds/choices (argparse error, exit 2).
    """
    import argparse

    from ..models._options import option_spec

    for path in paths:
        spec = option_spec(config_cls, path)
        flag = _flag(path, flags)
        dest = flag.lstrip("-").replace("-", "_")

        def parse(text, spec=spec):
            try:
                return spec.check(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        default = "none" if spec.default is None else spec.default
        help_ = f"{spec.help} (default {default})"
        if spec.kind is bool:
            group.add_argument(flag, dest=dest, action="store_true", default=None, help=help_)
        else:
            group.add_argument(flag, dest=dest, type=parse, default=None, help=help_,
                               metavar=(None if spec.choices is None
                                        else "{" + ",".join(map(str, spec.choices)) + "}"))


def config_overrides(args, config_cls, paths, *, flags: dict | None = None) -> dict:
    """``{option path: value}`` for the flags of :func:`add_config_args` that were given."""
    out = {}
    for path in paths:
        v = getattr(args, _flag(path, flags).lstrip("-").replace("-", "_"), None)
        if v is not None:
            out[path] = v
    return out


def _flag(path: str, flags: dict | None) -> str:
    return (flags or {}).get(path) or "--" + path.split(".")[-1].replace("_", "-")
