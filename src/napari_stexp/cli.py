"""The ``napari-stexp`` command line: one subcommand group per capability.

Errors we raise on purpose (:class:`~napari_stexp.errors.StexpError`) print as one readable line
on stderr and exit with status 2; everything heavy is imported by the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import CancelledError, StexpError

COMMAND_MODULES = [
    "napari_stexp.commands.demo",
    "napari_stexp.commands.info",
    "napari_stexp.commands.expression",
    "napari_stexp.commands.classify",
    "napari_stexp.commands.segment",
    "napari_stexp.commands.bvae",
    "napari_stexp.commands.batch",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-stexp",
        description="Tissue and blood images with gene expression: readers, models, napari.",
    )
    parser.add_argument("--version", action="version", version=f"napari-stexp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"napari-stexp: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except CancelledError as exc:
        print(f"napari-stexp: {exc}", file=sys.stderr)
        return 130
    except (StexpError, FileNotFoundError) as exc:
        print(f"napari-stexp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-stexp: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
