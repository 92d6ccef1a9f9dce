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


def add_model_command(sub, name: str, help: str, *, train_help: str, checkpoint_help: str,
                      evaluate_help: str, data_args, train_args, runtime_args, run_train,
                      run_evaluate, report_args=None):
    """A trained-model command group ``name`` with its ``train`` and ``evaluate`` actions (one
    layout for every model); returns the action subparsers so the caller adds the others.

    ``train``: the data flags, ``--out MODEL_DIR``, ``--checkpoint-dir`` (``checkpoint_help``
    says what is checkpointed), then ``train_args``. ``evaluate``: ``--model MODEL_DIR``, the data
    flags, ``--out REPORT.csv``, then ``report_args`` (the command's report options) and
    ``runtime_args``.
    """
    p = sub.add_parser(name, help=help)
    ssub = p.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    ssub.required = True

    t = ssub.add_parser("train", help=train_help)
    data_args(t)
    t.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    t.add_argument("--checkpoint-dir", default=None,
                   help=f"{checkpoint_help} for resume (default MODEL_DIR.ckpt; removed after "
                        "success)")
    train_args(t)
    t.set_defaults(func=run_train)

    e = ssub.add_parser("evaluate", help=evaluate_help)
    e.add_argument("--model", required=True, metavar="MODEL_DIR")
    data_args(e)
    e.add_argument("--out", required=True, metavar="REPORT.csv")
    if report_args is not None:
        report_args(e)
    runtime_args(e)
    e.set_defaults(func=run_evaluate)
    return ssub


def add_cache_args(p) -> None:
    """``--cache-dir``, ``--no-cache`` and ``--quiet`` (the disk cache, the progress output)."""
    p.add_argument("--cache-dir", default=None, help="feature/patch cache folder")
    p.add_argument("--no-cache", action="store_true", help="do not use the disk cache")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def progress_of(args):
    """Terminal progress, or None with ``--quiet``."""
    from ..progress import terminal_progress

    return None if getattr(args, "quiet", False) else terminal_progress()


def cache_of(args):
    """The models' ``cache_dir`` argument: False with ``--no-cache``, else ``--cache-dir``."""
    return False if getattr(args, "no_cache", False) else args.cache_dir


# --------------------------------------------------------------------------- value types
# argparse ``type=`` callables: a bad value is refused by the parser (usage line, exit 2).


def _number(text: str, kind: type) -> float:
    import argparse
    import math

    try:
        value = kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}"
                                         f", got {text!r}") from exc
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _checked(kind: type, ok, what: str):
    import argparse

    def parse(text: str):
        value = _number(text, kind)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {what}"  # argparse names the type in its messages
    return parse


positive_int = _checked(int, lambda v: v > 0, "> 0")
non_negative_int = _checked(int, lambda v: v >= 0, ">= 0")
finite_float = _checked(float, lambda v: True, "finite")
positive_float = _checked(float, lambda v: v > 0, "> 0")
non_negative_float = _checked(float, lambda v: v >= 0, ">= 0")
fraction = _checked(float, lambda v: 0 <= v <= 1, "between 0 and 1")
open_fraction = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]")

#: Option destinations and the value type they need, applied to every subcommand's ``type=int``
#: / ``type=float`` options by :func:`apply_value_types` (an option declared with another type
#: keeps it). Integers/floats not listed still refuse NaN and inf.
VALUE_TYPES = {
    **dict.fromkeys(("epochs", "gene_epochs", "tile", "tile_size", "top_genes", "n_genes",
                     "batch_size", "latent_dim", "image_size", "base_channels", "patch_size",
                     "input_size", "steps", "workers", "limit", "dims", "min_class_spots"),
                    positive_int),
    **dict.fromkeys(("overlap", "retries"), non_negative_int),
    **dict.fromkeys(("pitch_um", "lr", "mpp", "diameter", "temperature", "span"),
                    positive_float),
    **dict.fromkeys(("weight_decay", "beta", "bg_weight", "class_weight"), non_negative_float),
    **dict.fromkeys(("min_tissue", "val_fraction", "score_threshold"), fraction),
    "iou": open_fraction,
}


def apply_value_types(parser) -> None:
    """Give every ``int``/``float`` option of ``parser`` and its subparsers the checked type
    named in :data:`VALUE_TYPES` (plain int/float options get ``finite_float`` for floats)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                apply_value_types(sub)
        elif action.type in (int, float):
            checked = VALUE_TYPES.get(action.dest)
            if checked is None and action.type is float:
                checked = finite_float
            if checked is not None:
                action.type = checked


def check_param_keys(params: dict, known, *, option: str = "--param", what: str = "") -> None:
    """Refuse ``KEY=VALUE`` items whose key is not a parameter of ``what`` (one line)."""
    from ..errors import InputError

    known = set(known)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise InputError(option, f"unknown parameter{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(unknown)}" + (f" for {what}" if what else "")
                                 + f" (known: {', '.join(sorted(known))})")


def add_encoder_args(g, default: str) -> None:
    """``--encoder/--backbone NAME`` (the encoder registry) and ``--weights``."""
    from ..models.encoders import encoder_help

    g.add_argument("--encoder", "--backbone", dest="backbone", default=None, metavar="NAME",
                   help=f"{default} (default); " + encoder_help())
    g.add_argument("--weights", default=None,
                   help="none (random init; the CNNs' default), imagenet (CNNs; torchvision, "
                        "online or cached), pretrained (foundation models' default: "
                        "$STEXP_WEIGHTS/<encoder>/) or a file/folder")


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

        def parse(text, spec=spec, dest=dest):
            # the parser-wide value rules first (--epochs 0, --lr nan ...), then the option's
            # own bounds and choices
            checked = VALUE_TYPES.get(dest) or (finite_float if spec.kind is float else None)
            try:
                return spec.check(checked(text) if checked is not None else text)
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
