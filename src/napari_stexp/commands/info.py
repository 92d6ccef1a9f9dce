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
    check_spots_on_images(opened)
    if args.json:
        print(json.dumps(opened.summary, indent=2, default=str))
    else:
        print(format_summary(opened.summary))
    return 0


def check_spots_on_images(opened) -> None:
    """The verdict training gives on spot geometry, given here too: spot centres outside their
    section's image are an error (``data.patches.check_geometry``, the same message)."""
    from ..data.patches import check_geometry
    from ..io.frame import spots_rc_px

    for section, adata in opened.adatas.items():
        pyr = opened.images.get(section)
        if pyr is None or not adata.n_obs:
            continue
        if pyr.metadata.get("affine") is not None:
            # a SpatialData image placed by an affine (offset included): its spots are in the
            # coordinate system, not the image's pixels, and are shown through the affine
            continue
        check_geometry(pyr, spots_rc_px(adata, pyr), 0, f"{opened.path} (section {section})")
