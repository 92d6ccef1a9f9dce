"""docs/cli.md lists every subcommand and flag of the real parser (README promises it)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _reference_module():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_flag_is_documented():
    from napari_stexp.cli import build_parser

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = []
    for cmd, rows in _reference_module().walk(build_parser()):
        if f"### `{cmd}`" not in text:
            missing.append(cmd)
        section = text.split(f"### `{cmd}`", 1)[-1].split("### ", 1)[0]
        missing += [f"{cmd} {f}" for f, _ in rows if f"`{f}`" not in section]
    assert not missing, "run `python docs/cli_reference.py`; missing: " + ", ".join(missing)


def test_the_walk_sees_nested_subcommands():
    p = argparse.ArgumentParser(prog="x")
    sub = p.add_subparsers()
    q = sub.add_parser("a").add_subparsers().add_parser("b")
    q.add_argument("--flag", help="h")
    [(cmd, rows)] = list(_reference_module().walk(p, "x"))
    assert cmd == "x a b" and rows == [("--flag", "h")]
