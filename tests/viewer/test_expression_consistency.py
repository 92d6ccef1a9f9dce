"""One measured value per gene and spot: the expression widget's "measured" layer, the
navigator's gene colouring and the explorer's colour-by show the same number (real her2st, the
real functions and widgets in a napari viewer)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_stexp.io.collection import SlideCollection

pytestmark = pytest.mark.gui

GENES = ["ERBB2", "KRT19", "GATA3"]


class _PanelModel:
    """Stands in for a trained mclSTExp model: only its panel and a prediction shape matter
    here (the measured values never depend on the model)."""

    def __init__(self, genes):
        self.genes = list(genes)
        self.config = SimpleNamespace(target_sum=1e4)
        self.reference = SimpleNamespace(section_names=[])

    def predict_sections(self, adatas, images=None, **_):
        return {n: {"predicted": np.zeros((a.n_obs, len(self.genes)), np.float32),
                    "confidence": np.ones(a.n_obs, np.float32),
                    "embeddings": np.zeros((a.n_obs, 4), np.float32)}
                for n, a in adatas.items()}


@pytest.fixture(scope="module")
def her2st_coll(her2st_dir, tmp_path_factory):
    return SlideCollection.from_paths(her2st_dir, cache_dir=tmp_path_factory.mktemp("thumbs"))


def test_measured_gene_is_one_number_in_expression_navigator_and_explorer(
        make_napari_viewer, her2st_coll):
    from napari_stexp.viewer.layer_links import SEP
    from napari_stexp.viewer.navigator import SlideNavigator
    from napari_stexp.widgets.explorer import ExplorerWidget
    from napari_stexp.widgets.expression import ExpressionWidget, predict_for_sections

    viewer = make_napari_viewer()
    nav = SlideNavigator(viewer, her2st_coll)
    nav.show("A1")
    spots = nav.spots_layer()
    adata = spots.metadata["adata"]
    assert set(GENES) <= set(adata.var_names)

    # the expression widget: its prediction path and its layers
    ew = ExpressionWidget(viewer)
    ew._on_predicted(predict_for_sections(_PanelModel(GENES), {"A1": adata}))
    explorer = ExplorerWidget(viewer)
    explorer.refresh_sources()
    key = next(k for k in explorer.sources if k.startswith("obsm:") and "A1" in k)
    explorer.set_source(key)
    explorer.set_method("dims", (0, 1))
    explorer.compute(block=True)
    try:
        for gene in GENES:
            ew.show_gene(gene)
            measured = viewer.layers["A1 measured"].features
            by_spot = pd.Series(measured["value"].to_numpy(), index=measured["spot_id"])

            nav.color_by(gene)
            nav_vals = pd.Series(spots.features[gene].to_numpy(),
                                 index=spots.features["spot_id"].astype(str))

            explorer.set_colour_by(f"gene{SEP}{gene}")
            exp_vals = pd.Series(np.asarray(explorer._values, np.float32),
                                 index=[str(o) for o in adata.obs_names])

            ids = by_spot.index
            assert len(ids) == adata.n_obs and np.ptp(by_spot.to_numpy()) > 0
            np.testing.assert_array_equal(nav_vals[ids].to_numpy(), by_spot.to_numpy())
            np.testing.assert_array_equal(exp_vals[ids].to_numpy(), by_spot.to_numpy())
    finally:
        explorer.cleanup()
