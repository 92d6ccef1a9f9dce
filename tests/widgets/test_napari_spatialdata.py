"""napari-stexp and napari-spatialdata side by side on the real merfish store: each plugin's
widgets work on the other's layers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch  # noqa: F401  (before the first Qt/GL context)

pytest.importorskip("napari_spatialdata")


def _read_zarr(path):
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.read_zarr(path, selection=("images", "shapes", "tables"))


@pytest.mark.realdata
def test_their_view_widget_on_our_layers(make_napari_viewer, merfish):
    from napari.layers import Points
    from napari_spatialdata._model import DataModel
    from napari_spatialdata._view import QtAdataViewWidget

    from napari_stexp._reader import read_paths
    from napari_stexp.widgets._common import add_layer_tuples, layer_adata

    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = add_layer_tuples(viewer, read_paths(str(merfish)))
    pts = next(ly for ly in ours if isinstance(ly, Points))
    ad = layer_adata(pts)
    widget = QtAdataViewWidget(viewer, model=DataModel())
    viewer.layers.selection.active = pts
    assert widget.model.adata is not None and widget.model.system_name == "cells"
    genes = [widget.var_widget.item(i).text() for i in range(widget.var_widget.count())]
    assert genes == list(ad.var_names)
    gene = genes[5]
    widget.var_widget._onAction([gene])  # their "colour by gene" on our Points layer
    np.testing.assert_allclose(pts.features[gene].to_numpy(),
                               ad.X[:, ad.var_names.get_loc(gene)].toarray().ravel())
    assert len(np.unique(pts.face_color, axis=0)) > 1
    assert layer_adata(pts) is ad  # ours still finds its section after their widget ran


@pytest.mark.realdata
def test_our_widget_on_their_layers(make_napari_viewer, merfish):
    from napari.utils.events import EventedList
    from napari_spatialdata._viewer import SpatialDataViewer

    from napari_stexp.io.spatialdata import read_spatialdata
    from napari_stexp.widgets.expression import ExpressionWidget

    viewer = make_napari_viewer()
    sdata = _read_zarr(merfish)
    sdv = SpatialDataViewer(viewer, EventedList([sdata]))
    layer = sdv.get_sdata_circles(sdata, "cells", "global", False)
    viewer.add_layer(layer)
    img = sdv.get_sdata_image(sdata, "rasterized", "global", False)
    viewer.add_layer(img)
    widget = ExpressionWidget(viewer)
    secs = widget.available_sections()
    assert "cells" in secs
    ad = secs["cells"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = read_spatialdata(merfish, images=False).adatas["cells"]
    np.testing.assert_array_equal(ad.X.toarray(), ref.X.toarray())
    np.testing.assert_allclose(ad.obsm["spatial"], ref.obsm["spatial"])
    # their layer's world positions equal ours (same global frame): row, col = y, x
    world = np.asarray([layer._data_to_world(p) for p in layer.data[:20]])
    np.testing.assert_allclose(world, ref.obsm["spatial"][:20, ::-1], atol=1e-6)
    widget.refresh()
    assert "cells" in [widget.sections.item(i).text() for i in range(widget.sections.count())]
