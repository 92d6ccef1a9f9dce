"""Make docs/images/xenium.png and docs/images/napari_spatialdata.png.

    xvfb-run -a -s "-screen 0 1800x1100x24" python docs/sdata_screenshots.py XENIUM_DIR PRED.h5ad

``xenium.png``: the real Xenium mouse ileum sample opened by napari-stexp's reader (DAPI
morphology pyramid at 0.2125 µm/px, 36 cells coloured by transcript counts), zoomed on the
cells. ``napari_spatialdata.png``: a napari-stexp whole-slide prediction (her2st, tiny model)
written as SpatialData with its slide image, opened by napari-spatialdata and coloured by a
predicted gene through its View widget.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def xenium(folder: str) -> None:
    import napari
    import numpy as np

    from napari_stexp._reader import read_paths

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    layers = read_paths(folder)
    added = []
    for data, attrs, kind in layers:
        if kind == "image":
            attrs.update(colormap="gray", contrast_limits=(0, 9000))
        if kind == "points":
            attrs.update(face_color="total_counts", face_colormap="viridis", opacity=0.45,
                         border_width=0.08, border_color="yellow")
        added.append(getattr(viewer, f"add_{kind}")(data, **attrs))
    pts = added[-1]
    added[0].name = added[0].name.replace("H&E", "DAPI")
    # the sample is three cropped 640 px patches: frame the one with most cells
    xy = pts.data
    counts = [(np.linalg.norm(xy - p, axis=1) < 60).sum() for p in xy]
    centre = xy[int(np.argmax(counts))]
    viewer.camera.center = tuple(centre)
    viewer.camera.zoom = 1000 / 110.0  # about 110 µm across the canvas height
    import time

    from qtpy.QtWidgets import QApplication

    for _ in range(30):  # let the pyramid load its finest tiles for this zoom
        QApplication.processEvents()
        time.sleep(0.1)
    viewer.screenshot(str(HERE / "images" / "xenium.png"), canvas_only=False)
    viewer.close()


def napari_spatialdata(pred_h5ad: str) -> None:
    import anndata as ad
    import napari
    import spatialdata as sd
    from napari.utils.events import EventedList
    from napari_spatialdata._model import DataModel
    from napari_spatialdata._view import QtAdataViewWidget
    from napari_spatialdata._viewer import SpatialDataViewer

    from napari_stexp.io.sdata_write import write_sdata

    pred = ad.read_h5ad(pred_h5ad)
    store = Path(tempfile.mkdtemp()) / "pred.zarr"
    write_sdata(pred, store, name="C2_pred", image="copy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.read_zarr(store)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    sdv = SpatialDataViewer(viewer, EventedList([sdata]))
    viewer.add_layer(sdv.get_sdata_image(sdata, "C2_pred_image", "global", False))
    layer = sdv.get_sdata_circles(sdata, "C2_pred", "global", False)
    viewer.add_layer(layer)
    widget = QtAdataViewWidget(viewer, model=DataModel())
    viewer.window.add_dock_widget(widget, name="napari-spatialdata View", area="right")
    viewer.layers.selection.active = layer
    gene = "ERBB2" if "ERBB2" in pred.var_names else str(pred.var_names[0])
    widget.var_widget._onAction([gene])
    layer.opacity = 0.8
    viewer.reset_view()
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(str(HERE / "images" / "napari_spatialdata.png"), canvas_only=False)
    viewer.close()


def main() -> int:
    import torch  # noqa: F401  (before the first Qt/GL context)

    xenium(sys.argv[1])
    napari_spatialdata(sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
