"""Every dock widget of napari.yaml, in a FRESH napari process under the current DISPLAY: dock
it, run its torch path (load a tiny model folder made here / Mask R-CNN on a tiny image /
predict), draw frames, exit 0. A segfault (issue 17.2: torch's triton LLVM next to Mesa's) is a
failure. The in-process GUI tests cannot catch this: their process imported torch before Qt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

HERE = Path(__file__).parent
MANIFEST = Path(__file__).parents[2] / "src" / "napari_stexp" / "napari.yaml"
NEEDS_MODEL = {"Expression (mclSTExp)": "expression", "Tissue classifier": "classify",
               "Cell β-VAE": "bvae"}


def manifest_widgets() -> list[str]:
    import yaml

    doc = yaml.safe_load(MANIFEST.read_text())
    return [w["display_name"] for w in doc["contributions"]["widgets"]]


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """Tiny model folders of each kind, trained in THIS process (torch already imported here)."""
    import torch

    from napari_stexp.data.cells import CellCropDataset, synthetic_cell_images
    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.models.batch_agnostic import ClassifierConfig, train_classifier
    from napari_stexp.models.betavae import BVAEConfig, train_bvae
    from napari_stexp.models.mclstexp import train_expression_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    slide = make_synthetic_slide()
    sec = str(slide.adata.obs["section"].iloc[0])
    adatas, images = {sec: slide.adata}, {sec: slide.pyramid}
    m = train_expression_model(adatas, images=images, mode="cached", backbone="tinycnn",
                               epochs=1, input_size=32, patch_size=64, batch_size=32, top_k=5,
                               device="cpu", cache_dir=False)
    m.save(root / "expression")
    c = train_classifier(adatas, ClassifierConfig.tiny(epochs=1, classifier_epochs=5,
                                                       device="cpu"), images=images)
    c.save(root / "classify")
    imgs, labels = synthetic_cell_images(3, 2, size=48, seed=7)
    b = train_bvae(CellCropDataset.from_arrays(imgs, labels, size=32),
                   config=BVAEConfig.tiny(epochs=1))
    b.save(root / "bvae")
    return {k: str(root / k) for k in ("expression", "classify", "bvae")}


def test_every_manifest_widget_has_a_journey():
    names = manifest_widgets()
    assert len(names) >= 7
    assert set(NEEDS_MODEL) <= set(names)


@pytest.mark.parametrize("name", manifest_widgets())
def test_widget_torch_path_in_a_fresh_process(name, model_folders):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display (run under xvfb-run)")
    args = [sys.executable, str(HERE / "fresh_journey.py"), name]
    if name in NEEDS_MODEL:
        args.append(model_folders[NEEDS_MODEL[name]])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("QT_QPA_PLATFORM", None)
    src = str(Path(__file__).parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, (f"{name}: exit {r.returncode} (-11/139 = segfault)\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    assert "torch imported:" in r.stdout
    if name in ("Expression (mclSTExp)", "Tissue classifier"):
        # the form comes from torch-free configs: docking imports no torch (issue 17.9)
        assert "torch at dock: False" in r.stdout, r.stdout
