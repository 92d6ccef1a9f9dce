"""Classification evaluation: the metrics (:mod:`napari_stexp.models.classification_metrics`,
accuracy, macro-F1, per-class F1, ECE) applied to held-out sections."""

from __future__ import annotations

from ..models.classification_metrics import (
    classification_metrics,
    classification_report,
    expected_calibration_error,
)

__all__ = ["classification_metrics", "classification_report", "expected_calibration_error"]
