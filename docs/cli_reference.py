"""Regenerate the flag reference at the end of docs/cli.md from the real parser.

    python docs/cli_reference.py          # rewrites the "## Every flag" section in place

``tests/cli/test_cli_docs.py`` fails when a flag of the parser is missing from docs/cli.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_stexp.cli import build_parser

MARK = "## Every flag"


def walk(parser: argparse.ArgumentParser, prefix: str = "napari-stexp"):
    """(command, [(flags, help)]) for every leaf parser, depth first."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    rows = [(", ".join(a.option_strings) or a.dest, (a.help or "").replace("|", "\\|"))
            for a in parser._actions
            if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction))]
    if not subs:
        yield prefix, rows
        return
    for s in subs:
        for name, p in s.choices.items():
            yield from walk(p, f"{prefix} {name}")


def reference() -> str:
    out = [MARK, "", "Generated from the parser by `python docs/cli_reference.py`.", ""]
    for cmd, rows in walk(build_parser()):
        out += [f"### `{cmd}`", "", "| flag | meaning |", "| --- | --- |"]
        out += [f"| `{f}` | {h.replace(chr(10), ' ')} |" for f, h in rows]
        out.append("")
    return "\n".join(out)


def main() -> None:
    path = Path(__file__).with_name("cli.md")
    text = path.read_text(encoding="utf-8")
    head = text.split(MARK)[0].rstrip() + "\n\n"
    path.write_text(head + reference(), encoding="utf-8")


if __name__ == "__main__":
    main()
