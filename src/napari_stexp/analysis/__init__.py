"""Analyses on trained models and their results (no Qt). Importing this package is cheap: each
name below loads its module on first use.

Whole slides (:mod:`.slide_grid`, the one grid pipeline)
    ``run_slide_grid`` (tissue mask -> pseudo-spot grid -> streamed patches -> a
    ``SlideGridModel`` -> one result AnnData), ``slide_geometry``; its adapters
    ``predict_slide`` (expression) and ``classify_slide`` (classifier).
Embeddings
    ``project`` -> ``Projection`` (PCA / UMAP); ``latent_traversal``, ``latent_trajectory``.
Selections (:mod:`.selection`)
    ``points_in_polygon``, ``points_in_rectangle``, ``assign_group``, ``export_groups_csv``,
    ``export_groups_h5ad``.
Features for display (:mod:`.features`)
    ``gene_expression``, ``resolve_feature``.
"""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".slide_grid": ("run_slide_grid", "slide_geometry", "SlideGridModel"),
    ".slide_predict": ("predict_slide",),
    ".slide_classify": ("classify_slide",),
    ".projection": ("project", "Projection"),
    ".traversal": ("latent_traversal",),
    ".trajectory": ("latent_trajectory",),
    ".selection": ("points_in_polygon", "points_in_rectangle", "assign_group",
                   "export_groups_csv", "export_groups_h5ad"),
    ".features": ("gene_expression", "resolve_feature"),
})
