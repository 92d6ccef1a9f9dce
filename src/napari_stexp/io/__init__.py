"""Readers and writers (no Qt, no model code). Importing this package is cheap: each name below
loads its module on first use.

Open anything
    ``open_path(path)`` -> :class:`Opened` (sections, images, boxes, a summary) is the one open
    path (CLI, loader widget and npe2 reader); ``detect_kind(path)`` says what a path is and
    ``build_layers(opened)`` turns the result into napari layer data tuples.
Spatial transcriptomics
    ``read_st`` (dispatches on ``detect_st_kind``), ``read_her2st`` / ``read_her2st_section``,
    ``read_visium``, ``read_visium_hd``, ``read_xenium``, ``read_spatialdata``, ``read_st_h5ad``;
    ``section_image`` opens a section's H&E. Every reader builds its AnnData through
    ``build_st_adata`` (checked by ``validate_st_adata``); ``counts_matrix`` and
    ``split_sections`` work on the result.
Images and smears
    ``open_image`` (TIFF/OME-TIFF/SVS..., PIL formats, OME-Zarr) -> :class:`ImagePyramid`,
    ``is_image_file``; ``read_smear``, ``read_smear_folder``, ``read_voc_boxes``.
The slide frame (:mod:`.frame`: µm/px, spot centres, spot size, grids)
    ``mpp_of``, ``layer_scale``, ``mpp_from_layer``, ``spots_xy_px``, ``spots_rc_px``,
    ``spots_rc_um``, ``spot_diameter_um``, ``spot_diameter_px``, ``spot_pitch_px``,
    ``array_grid``, ``square_grid``, ``hex_grid``, ``neighbour_graph``.
Writers (atomic)
    ``write_h5ad`` (the one h5ad writer, after ``h5ad_safe``), ``write_ome_zarr``,
    ``add_ome_zarr_labels`` and ``read_ome_zarr`` (:mod:`.ome_zarr`, with the sniffers
    ``is_ngff`` / ``ngff_kind``), ``write_pyramidal_tiff``, ``write_sdata``.
napari layers
    ``image_layer``, ``spots_layer``, ``boxes_layer``.
"""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".open": ("open_path", "detect_kind", "build_layers", "Opened"),
    ".st": ("read_st", "detect_st_kind", "section_image"),
    ".her2st": ("read_her2st", "read_her2st_section"),
    ".visium": ("read_visium",),
    ".visium_hd": ("read_visium_hd",),
    ".xenium": ("read_xenium",),
    ".spatialdata": ("read_spatialdata",),
    ".h5ad": ("read_st_h5ad",),
    ".spatial": ("build_st_adata", "validate_st_adata", "counts_matrix", "split_sections"),
    ".image": ("ImagePyramid",),
    ".wsi": ("open_image", "is_image_file", "write_pyramidal_tiff"),
    ".smears": ("read_smear", "read_smear_folder", "read_voc_boxes"),
    ".frame": ("mpp_of", "layer_scale", "mpp_from_layer", "spots_xy_px", "spots_rc_px",
               "spots_rc_um", "spot_diameter_um", "spot_diameter_px", "spot_pitch_px",
               "array_grid", "square_grid", "hex_grid", "neighbour_graph"),
    ".export": ("write_h5ad", "h5ad_safe"),
    ".ome_zarr": ("write_ome_zarr", "add_ome_zarr_labels", "read_ome_zarr", "is_ngff",
                  "ngff_kind"),
    ".sdata_write": ("write_sdata",),
    ".layers": ("image_layer", "spots_layer", "boxes_layer"),
})
