"""The ``napari-stexp`` command line: one subcommand group per capability.

Errors we raise on purpose (:class:`~napari_stexp.errors.StexpError`) print as one readable line
on stderr and exit with status 2; everything heavy is imported by the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
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
    from .commands._args import apply_value_types

    apply_value_types(parser)  # --epochs 0, --iou 2, --lr nan ... are refused by the parser
    return parser


_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)", re.IGNORECASE)


def _output_path(args) -> str | None:
    """The output a command was writing (the path to name when an OS error has none)."""
    for name in ("out", "screenshot"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return None


def _errno_of(exc: BaseException) -> int | None:
    """The errno of ``exc`` or of an error it wraps (h5py and torch put it in the text)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        m = _ERRNO_IN_TEXT.search(str(exc))
        if m:
            return int(m.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_line(exc: OSError, args=None) -> str:
    """``<path>: <reason>`` for an OS error (the reason in lower case, ENOSPC by name)."""
    code = _errno_of(exc)
    reason = os.strerror(code) if code else (exc.strerror or str(exc))
    reason = reason[:1].lower() + reason[1:]
    # a rename names (source, destination): the destination is the user's path
    path = exc.filename2 or exc.filename or _output_path(args)
    return f"{path}: {reason}" if path else reason


def _low_disk(path: str | None) -> bool:
    """True when the file system holding ``path`` has (almost) no free space left."""
    if not path:
        return False
    p = os.path.abspath(path)
    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        st = os.statvfs(p)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def _wrapped_write_error(exc: RuntimeError, args) -> str | None:
    """A writer's RuntimeError that wraps an OS error (torch's zip writer, HDF5), else None."""
    text = str(exc)
    code = _errno_of(exc)
    writer = any(k in text for k in ("PytorchStreamWriter", "file write failed", "unexpected pos",
                                     "Can't write data", "write failed"))
    if not writer and code is None:
        return None
    path = _output_path(args)
    if code is None and _low_disk(path):
        code = errno.ENOSPC
    if code is not None:
        reason = os.strerror(code)
        reason = reason[:1].lower() + reason[1:]
    else:
        reason = "writing failed (" + text.splitlines()[0][:200] + ")"
    return f"{path}: {reason}" if path else reason


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
    except StexpError as exc:
        print(f"napari-stexp: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"napari-stexp: error: {os_error_line(exc, args)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        line = _wrapped_write_error(exc, args)
        if line is None:
            raise
        print(f"napari-stexp: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-stexp: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
