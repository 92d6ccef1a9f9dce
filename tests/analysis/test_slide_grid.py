"""The one whole-slide grid pipeline (analysis/slide_grid.py): any SlideGridModel adapter runs
over the tissue through one producer thread, one result AnnData and one writer."""

from __future__ import annotations

import types

import numpy as np
import pytest

from napari_stexp.analysis import slide_grid as sg
from napari_stexp.data.patches import PatchSpec
from napari_stexp.errors import InputError
from napari_stexp.io import frame


@pytest.fixture(scope="module")
def slide():
    from napari_stexp.data.synthetic_slide import make_synthetic_slide

    return make_synthetic_slide(8, 8, n_genes=5, seed=3, mpp=2.8, section="S")


class MeanColour:
    """A model adapter: each patch's mean RGB; ``finish`` adds the neighbours' mean."""

    def __init__(self, target_mpp=2.8):
        self.config = types.SimpleNamespace(target_mpp=target_mpp, spot_pitch_um=200.0,
                                            spot_diameter_um=100.0)
        self.patch_spec = PatchSpec(patch_size=32, input_size=16, target_mpp=target_mpp)
        self.batches: list[int] = []
        self.finished = 0

    def embed_batch(self, patches):
        self.batches.append(len(patches))
        return {"rgb": patches.reshape(len(patches), -1, 3).mean(axis=1).astype(np.float32)}

    def finish(self, outputs, grid):
        self.finished += 1
        g = frame.grid_coordinates(grid.array_xy, grid.layout)
        return {**outputs, "context": frame.neighbour_mean(outputs["rgb"], g)}


def test_any_adapter_runs_over_the_tissue(slide):
    model = MeanColour()
    assert isinstance(model, sg.SlideGridModel)
    seen = []
    res = sg.run_slide_grid(model, slide.pyramid, name="S", batch_size=7, tile=300,
                            progress=lambda d, t, m="": seen.append((d, t, m)))
    n = res.grid.n
    assert n > 20 and sum(model.batches) == n and max(model.batches) <= 7
    assert model.finished == 1 and res.outputs["context"].shape == (n, 3)
    # the streamed per-spot output equals reading the same patches directly
    from napari_stexp.data.patches import extract_patches

    geo = res.grid.geometry
    direct = extract_patches(slide.pyramid, res.grid.centres, geo["read_px"], 16)
    np.testing.assert_allclose(res.outputs["rgb"], direct.reshape(n, -1, 3).mean(1), rtol=1e-5)
    assert seen[-1][2] == "slide prediction done"
    # the grid is at the adapter's pitch, centres inside the slide
    steps = np.diff(np.unique(np.round(res.grid.centres[:, 1], 3)))
    np.testing.assert_allclose(steps, 200 / 2.8, atol=1e-2)


def test_result_anndata_records_unknown_mpp_as_unknown(slide, tmp_path):
    from napari_stexp.data.synthetic_slide import pyramid_from_array
    from napari_stexp.io.export import write_h5ad

    pyr = pyramid_from_array(np.asarray(slide.pyramid.levels[0]), mpp=None, name="U")
    res = sg.run_slide_grid(MeanColour(), pyr, batch_size=16)
    assert res.grid.geometry["mpp_source"] == "assumed"
    ad = sg.grid_adata(res, X=res.outputs["rgb"], var_names=["r", "g", "b"], fmt="test",
                       obsm={"X_context": res.outputs["context"]}, provenance={"kind": "t"})
    assert frame.mpp_of(ad) is None
    np.testing.assert_allclose(frame.spots_rc_px(ad), res.grid.centres)
    assert ad.uns["spatial"]["U"]["metadata"]["format"] == "test"
    assert ad.uns["napari_stexp"]["kind"] == "t" and ad.uns["napari_stexp"]["n_spots"] == ad.n_obs
    assert "counts" not in ad.layers and np.asarray(ad.X).dtype == np.float32
    import anndata

    back = anndata.read_h5ad(write_h5ad(ad, tmp_path / "r.h5ad"))
    assert frame.mpp_of(back) is None
    known = sg.run_slide_grid(MeanColour(), slide.pyramid, batch_size=16)
    ad2 = sg.grid_adata(known, X=known.outputs["rgb"], var_names=["r", "g", "b"], fmt="test")
    assert frame.mpp_of(ad2) == pytest.approx(2.8)


def test_one_mask_sizing_rule_and_errors(slide):
    from napari_stexp.data.synthetic_slide import pyramid_from_array

    assert sg.mask_size_for(slide.pyramid, 8.0) == 1024 or max(slide.pyramid.shape[:2]) < 1024
    assert sg.mask_size_for(slide.pyramid, 1e6) == 256
    tiny = pyramid_from_array(np.full((20, 20, 3), 200, np.uint8), mpp=2.8)
    with pytest.raises(InputError, match="smaller than one patch"):
        sg.run_slide_grid(MeanColour(), tiny)
    blank = pyramid_from_array(np.full((300, 300, 3), 245, np.uint8), mpp=2.8)
    with pytest.raises(InputError, match="no tissue found"):
        sg.run_slide_grid(MeanColour(), blank)


def test_a_decode_error_in_the_warm_up_surfaces(slide, monkeypatch):
    def broken(pyramid, read_px, out_size):
        raise InputError("slide.jpg", "cannot decode JPEG image")

    monkeypatch.setattr(sg, "_warm_level", broken)
    with pytest.raises(InputError, match="slide.jpg: cannot decode"):
        sg.run_slide_grid(MeanColour(), slide.pyramid)


def test_models_do_not_import_the_slide_pipeline():
    """classify_slide moved to analysis/: models/batch_agnostic has no import of analysis."""
    import ast
    import inspect

    from napari_stexp.models import batch_agnostic

    tree = ast.parse(inspect.getsource(batch_agnostic))
    mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in mods if "analysis" in m]
    assert not hasattr(batch_agnostic, "write_h5ad_atomic")
