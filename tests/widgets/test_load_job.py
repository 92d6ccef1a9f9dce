"""The widgets' load jobs go through open_model: the right kind opens, another kind is refused
with one line (the load jobs are plain functions run on a worker thread; no window needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401 - before any Qt import

from napari_stexp.errors import InputError

LEGACY = Path(__file__).resolve().parents[1] / "models" / "data" / "legacy"


@pytest.mark.parametrize("widget, folder, other, cls", [
    ("expression", "mclstexp", "bvae", "ExpressionModel"),
    ("classify", "classifier", "mclstexp", "BatchAgnosticClassifier"),
    ("bvae", "bvae", "classifier", "BVAEModel"),
])
def test_load_job_opens_its_kind_only(widget, folder, other, cls):
    import importlib

    mod = importlib.import_module(f"napari_stexp.widgets.{widget}")
    model = mod._load_job(str(LEGACY / folder))
    assert type(model).__name__ == cls
    with pytest.raises(InputError, match="config.json: not a"):
        mod._load_job(str(LEGACY / other))
