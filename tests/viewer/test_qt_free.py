"""The viewer tier imports, the navigator controller works on a headless ``ViewerModel`` and
the results -> layer data functions run, with Qt blocked (``sys.modules['qtpy'] = None`` in a
fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    for mod in ("qtpy", "PyQt5", "PyQt6", "PySide6"):
        sys.modules[mod] = None  # any import of Qt fails

    import numpy as np
    from napari.components import ViewerModel

    import napari_stexp.session
    import napari_stexp.viewer
    from napari_stexp.analysis import features
    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.io.collection import SlideCollection
    from napari_stexp.viewer import layer_links, navigator
    from napari_stexp.viewer import results

    slide = make_synthetic_slide(6, 6, n_genes=5, seed=0, section="S1")
    coll = SlideCollection.from_adatas({"S1": slide.adata})
    viewer = ViewerModel()
    nav = navigator.SlideNavigator(viewer, coll)
    nav.show("S1")
    gene = str(slide.adata.var_names[0])
    nav.color_by(gene)
    np.testing.assert_array_equal(nav.spots_layer().features[gene],
                                  features.gene_expression(slide.adata, gene))
    assert layer_links.linkable_layers(viewer.layers) is not None

    # results -> layer data: the widgets' Qt-free part
    rc = np.stack([np.arange(4.0), np.arange(4.0)], 1)
    pred = results.SectionPrediction(
        name="S1", coords_um=rc, size_um=2.0, genes=["A", "B"],
        predicted=np.arange(8.0).reshape(4, 2), confidence=np.linspace(0, 1, 4),
        embeddings=np.zeros((4, 3)), obs_names=list("abcd"), measured=np.ones((4, 2)))
    assert [t[1]["name"] for t in results.gene_layer_tuples(pred, "B")] == [
        "S1 predicted", "S1 measured"]
    assert results.confidence_layer_tuple(pred)[1]["features"].shape == (4, 5)
    cpred = results.ClassPrediction(
        name="S1", coords_um=rc, size_um=2.0, classes=["x", "y"],
        proba=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]),
        source=np.array(["image"] * 4, dtype=object), obs_names=list("abcd"))
    cls, conf = results.class_layer_tuples(cpred, threshold=0.7)
    assert cls[1]["shown"].tolist() == [True, True, False, False]
    assert not [m for m in sys.modules if m.split(".")[0] in ("qtpy", "PyQt5", "PyQt6")
                and sys.modules[m] is not None]
    print("qt-free ok")
""")


def test_viewer_tier_imports_and_runs_without_qt():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "qt-free ok" in proc.stdout
