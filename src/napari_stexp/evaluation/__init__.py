"""Metrics and reports for trained models, on held-out sections. Importing this package is
cheap: each name below loads its module on first use.

Expression (:mod:`.regression`)
    ``gene_pcc``, ``regression_metrics``, ``ridge_predict``, ``evaluate_model`` ->
    ``EvaluationResult``, ``cross_validate``, ``write_report``.
Classification (:mod:`.classification`)
    ``classification_metrics``, ``classification_report``, ``expected_calibration_error``.
Detection (:mod:`.detection`)
    ``match_boxes``, ``evaluate_detection``.
Batch mixing (:mod:`.mixing`)
    ``mixing_report``, ``batch_silhouette``, ``knn_batch_accuracy``.
"""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".regression": ("gene_pcc", "regression_metrics", "ridge_predict", "evaluate_model",
                    "EvaluationResult", "cross_validate", "write_report"),
    ".classification": ("classification_metrics", "classification_report",
                        "expected_calibration_error"),
    ".detection": ("match_boxes", "evaluate_detection"),
    ".mixing": ("mixing_report", "batch_silhouette", "knn_batch_accuracy"),
})
