"""Issue 17.7, the explorer as a user meets it after the expression widget: one section with a
``spots`` layer, a ``predicted`` layer and the hidden ``mclSTExp`` layer the embedding names, the
section's AnnData in the session only."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_stexp.analysis.features import gene_expression
from napari_stexp.data.synthetic_slide import make_synthetic_slide
from napari_stexp.session import EmbeddingRef, get_session
from napari_stexp.viewer.layer_links import GROUPS_KEY, SEP

pytestmark = pytest.mark.gui


@pytest.fixture
def journey(make_napari_viewer):
    from napari_stexp.widgets.explorer import ExplorerWidget

    slide = make_synthetic_slide(6, 6, n_genes=12, seed=3, section="S1")
    adata = slide.adata
    ids = [str(o) for o in adata.obs_names]
    xy = np.asarray(adata.obsm["spatial"], np.float64)[:, ::-1]
    viewer = make_napari_viewer()
    meta = {"section": "S1"}
    viewer.add_points(xy, name="S1 spots", metadata={**meta, "kind": "spots"},
                      features=pd.DataFrame({"spot_id": ids}))
    # predicted and the embedding layer list the spots in another order (rows ≠ obs rows)
    order = np.arange(len(ids))[::-1]
    viewer.add_points(xy[order], name="S1 predicted",
                      metadata={**meta, "kind": "mclstexp_gene", "what": "predicted"},
                      features=pd.DataFrame({"spot_id": [ids[i] for i in order],
                                             "value": np.linspace(0, 1, len(ids))}))
    viewer.add_points(xy[order], name="S1 mclSTExp", visible=False,
                      metadata={**meta, "kind": "mclstexp_confidence"},
                      features=pd.DataFrame({"spot_id": [ids[i] for i in order]}))
    session = get_session(viewer)
    session.add_adata("S1", adata)
    emb = np.random.default_rng(0).normal(size=(len(ids), 5)).astype(np.float32)
    session.add_embedding(EmbeddingRef(name="mclstexp S1", layer="S1 mclSTExp", data=emb,
                                       source="mclstexp"))
    w = ExplorerWidget(viewer)
    w.refresh_sources()
    yield viewer, w, adata, order
    w.cleanup()


def _show(w, key, method="dims"):
    w.set_source(key)
    w.set_method(method, (0, 1) if method == "dims" else None)
    w.compute(block=True)
    assert w.projection is not None


def test_lasso_marks_the_spots_in_every_layer_of_the_slide(journey):
    viewer, w, adata, order = journey
    _show(w, "session:mclstexp S1")
    assert w.select_indices([0, 1, 2]) == 3  # scatter points = rows of the mclSTExp layer
    chosen = {str(adata.obs_names[order[i]]) for i in (0, 1, 2)}
    for name in ("S1 mclSTExp", "S1 predicted", "S1 spots"):
        f = viewer.layers[name].features
        assert "selection" in f, name
        marked = set(f.loc[f["selection"].astype(str) == "group 1", "spot_id"].astype(str))
        assert marked == chosen, name
    spots = viewer.layers["S1 spots"]
    rows = np.flatnonzero(spots.features["selection"].astype(str) == "group 1")
    assert (np.asarray(spots.border_width)[rows] > 0).all()  # highlighted, not only written


def test_colour_by_offers_genes_first_and_shows_the_measured_value(journey):
    viewer, w, adata, order = journey
    _show(w, "session:mclstexp S1")
    items = [w.colour_combo.itemText(i) for i in range(w.colour_combo.count())]
    genes = [i for i, t in enumerate(items) if t.startswith(f"gene{SEP}")]
    dims = [i for i, t in enumerate(items) if t.startswith(f"dim{SEP}")]
    assert len(genes) == adata.n_vars and genes[0] < dims[0]
    gene = str(adata.var_names[4])
    w.set_colour_by(f"gene{SEP}{gene}")
    assert w.colour_key == f"gene{SEP}{gene}"
    np.testing.assert_array_equal(np.asarray(w._values), gene_expression(adata, gene)[order])


def test_export_h5ad_uses_the_session_anndata(journey, tmp_path):
    viewer, w, adata, order = journey
    _show(w, "session:mclstexp S1")
    w.select_indices([0, 5])
    out = w.export_h5ad(tmp_path / "groups.h5ad")
    assert len(out) == 1 and out[0].is_file()
    back = ad.read_h5ad(out[0])
    picked = set(back.obs_names[back.obs["selection"].astype(str) == "group 1"])
    assert picked == {str(adata.obs_names[order[i]]) for i in (0, 5)}


def test_expression_pca_of_the_spots_from_the_gui(journey):
    """The expression matrix is a source like any other: PCA here, UMAP via the same combo."""
    viewer, w, adata, order = journey
    assert "expression:S1" in w.sources
    _show(w, "expression:S1", "pca")
    assert w.projection.coords.shape == (adata.n_obs, 2)
    assert w.embedding.links.layer_names  # linked to the slide's layers
    w.select_indices([0])
    f = viewer.layers["S1 spots"].features
    assert list(f.loc[f["selection"].astype(str) == "group 1", "spot_id"]) == \
        [str(adata.obs_names[0])]
    w.set_colour_by(GROUPS_KEY)
