"""Sample data contributions: generated deterministically offline (no downloads)."""

from __future__ import annotations


def synthetic_slide():
    """A synthetic H&E-like slide with ST spots whose counts depend on the local image."""
    from .data.synthetic_slide import make_synthetic_slide
    from .io.layers import image_layer, spots_layer

    slide = make_synthetic_slide()
    sec = str(slide.adata.obs["section"].iloc[0])
    img = image_layer(slide.pyramid, f"{sec} H&E")
    img[1]["metadata"]["section"] = sec
    spots = spots_layer(slide.adata, section=sec)
    spots[1]["metadata"]["adata"] = slide.adata
    return [img, spots]


def synthetic_smear():
    """A synthetic Giemsa-like blood smear with red cells and a few (touching) white cells."""
    from .data.synthetic_smear import make_synthetic_smear

    image, _labels, _table = make_synthetic_smear()
    return [(image, {"name": "synthetic smear", "rgb": True,
                     "metadata": {"kind": "image", "sample": "synthetic smear"}}, "image")]
