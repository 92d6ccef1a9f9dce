"""``napari-stexp info PATH``: what the readers find (kind, levels, µm/px, sections, spots...)."""

from __future__ import annotations

import json

from ._args import add_mpp_arg


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a slide, image, ST dataset, smear folder or crops")
    p.add_argument("path", help="file or folder")
    p.add_argument("--sections", nargs="+", default=None, help="only these sections")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_mpp_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.open import format_summary, open_path

    opened = open_path(args.path, sections=args.sections, images=True, mpp=args.mpp)
    if args.json:
        print(json.dumps(opened.summary, indent=2, default=str))
    else:
        print(format_summary(opened.summary))
    return 0
