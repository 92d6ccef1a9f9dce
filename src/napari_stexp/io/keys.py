"""String keys of the AnnData conventions (scanpy/squidpy), in one place.

``adata.obsm[SPATIAL]`` spot centres (x, y) in full-resolution px;
``adata.uns[SPATIAL][library][METADATA][MPP_FULLRES]`` µm per full-resolution px (absent when
unknown); ``...[SCALEFACTORS][SPOT_DIAMETER_FULLRES]``; ``...[METADATA][SOURCE_IMAGE_PATH]`` and
``IMAGE_SCALE`` (image px per full-resolution px); ``adata.uns[PROVENANCE]`` what made a result.
"""

from __future__ import annotations

SPATIAL = "spatial"
IMAGES = "images"
SCALEFACTORS = "scalefactors"
METADATA = "metadata"
MPP_FULLRES = "mpp_fullres"
SPOT_DIAMETER_FULLRES = "spot_diameter_fullres"
SOURCE_IMAGE_PATH = "source_image_path"
IMAGE_SCALE = "image_scale"
PROVENANCE = "napari_stexp"
