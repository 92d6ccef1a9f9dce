"""Make docs/images/navigator.png and navigator_grid.png from the real her2st sections.

    xvfb-run -a -s "-screen 0 1800x1100x24" python docs/navigator_screenshots.py [HER2ST_DIR]

Opens the navigator on the her2st folder (thumbnails in the list), clicks to C2, colours the
spots by ERBB2 (viridis, limits 3-5.5), clicks Next to C3 (the overlay follows) and takes a screenshot
of the whole window; then shows C2-C5 in the grid view.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _wait(app, cond, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("gave up waiting")


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stexp.datasets import data_path
    from napari_stexp.widgets.navigator import NavigatorWidget

    her2st = Path(sys.argv[1]) if len(sys.argv) > 1 else data_path("her2st")
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    viewer = napari.Viewer()
    viewer.window.resize(1700, 1000)
    w = NavigatorWidget(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Slide navigator")
    app = QApplication.instance()
    w.open(str(her2st), show_first=False)
    _wait(app, lambda: w.nav.collection is not None and w._worker is None)
    _wait(app, lambda: all(not w.table.item(r, 0).icon().isNull()
                           for r in range(w.table.rowCount())))
    w.go(w.nav.collection.index("C2"))
    _wait(app, lambda: w.nav.current == "C2" and w._worker is None)
    w.nav.color_by("ERBB2", colormap="viridis", contrast_limits=(3.0, 5.5))
    w.color_edit.setText("ERBB2")
    w.next_btn.click()
    _wait(app, lambda: w.nav.current == "C3" and w._worker is None)
    viewer.reset_view(layers=[w.nav.spots_layer()], margin=0.15)
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(out / "navigator.png"), canvas_only=False)
    w.grid_n.setValue(4)
    w.go(w.nav.collection.index("C2"))
    _wait(app, lambda: w.nav.current == "C2" and w._worker is None)
    w.grid_btn.setChecked(True)
    _wait(app, lambda: w.nav.grid is not None)
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(out / "navigator_grid.png"), canvas_only=False)
    viewer.close()
    print(out / "navigator.png", out / "navigator_grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
