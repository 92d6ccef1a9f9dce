"""Data between the readers and the models: gene panels and the expression transform, patches,
tissue masks, cell crops and synthetic data. Importing this package is cheap (no torch): each
name below loads its module on first use.

Genes (:mod:`.genes`)
    ``expression_transform`` (THE log1p CP10k, library ``"panel"`` or ``"all"`` explicit),
    ``measured_expression``, ``resolve_panel``, ``top_variable_genes``, ``load_gene_file``,
    ``panel_counts``, ``panel_targets``.
Patches (:mod:`.patches`)
    ``PatchSpec``, ``read_size_px``, ``extract_patches``, ``iter_patch_tiles``,
    ``SpotPatchDataset``.
Tissue and cells
    ``tissue_mask``; ``load_cells`` and ``CellCropDataset`` (β-VAE cell crops).
Synthetic data (tests, demos, benchmarks)
    ``make_synthetic_slide``, ``make_synthetic_smear``.
"""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".genes": ("expression_transform", "measured_expression", "resolve_panel",
               "top_variable_genes", "load_gene_file", "panel_counts", "panel_targets"),
    ".patches": ("PatchSpec", "read_size_px", "extract_patches", "iter_patch_tiles",
                 "SpotPatchDataset"),
    ".tissue": ("tissue_mask",),
    ".cells": ("load_cells", "CellCropDataset"),
    ".synthetic_slide": ("make_synthetic_slide",),
    ".synthetic_smear": ("make_synthetic_smear",),
})
