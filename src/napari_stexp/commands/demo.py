"""``napari-stexp demo``: napari with the plugin's dock widgets and the offline sample data."""

from __future__ import annotations

from pathlib import Path

DEMO_WIDGETS = ["Open data", "Latent explorer"]  # display names from napari.yaml, first docked first


def register(sub) -> None:
    p = sub.add_parser("demo", help="open napari with the plugin and synthetic sample data")
    p.add_argument("--screenshot", metavar="PATH", default=None,
                   help="render the demo window to a PNG and exit (needs a display or Xvfb)")
    p.add_argument("--size", default="1600x1000", help="window size WxH for the screenshot")
    p.set_defaults(func=run)


def build_demo_viewer(show: bool = True):
    """A viewer with the sample slide (and a hidden smear) plus the plugin's dock widgets."""
    import napari

    viewer = napari.Viewer(title="napari-stexp demo", show=show)
    viewer.open_sample("napari-stexp", "synthetic_smear")
    for layer in list(viewer.layers):
        layer.visible = False
    viewer.open_sample("napari-stexp", "synthetic_slide")
    docks = []
    for i, name in enumerate(available_widgets()):
        # the demo widgets get their own dock; the others are tabs behind the last of them
        dock, _ = viewer.window.add_plugin_dock_widget("napari-stexp", name,
                                                       tabify=i >= len(DEMO_WIDGETS))
        docks.append(dock)
    if len(docks) >= len(DEMO_WIDGETS):
        docks[len(DEMO_WIDGETS) - 1].raise_()
    viewer.reset_view()
    return viewer


def available_widgets() -> list[str]:
    """Widget display names in the manifest, the demo ones first."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-stexp")
    names = [w.display_name for w in (mf.contributions.widgets or [])]
    return [n for n in DEMO_WIDGETS if n in names] + [n for n in names if n not in DEMO_WIDGETS]


def run(args) -> int:
    import napari

    viewer = build_demo_viewer(show=True)
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        w, h = (int(v) for v in args.size.lower().split("x"))
        viewer.window.resize(w, h)
        for _ in range(10):
            QApplication.processEvents()
        viewer.reset_view()  # fit the slide to the canvas at its final size
        QApplication.processEvents()
        out = Path(args.screenshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out), canvas_only=False)
        viewer.close()
        print(out)
        return 0
    napari.run()
    return 0
