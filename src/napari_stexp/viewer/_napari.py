"""Small napari helpers of the viewer tier (no Qt): add layer tuples, notify the user."""

from __future__ import annotations


def add_layer_tuples(viewer, layer_tuples) -> list:
    """Add layer data tuples to ``viewer`` through napari's public ``Layer.create``."""
    from napari.layers import Layer

    added = []
    for data, meta, ltype in layer_tuples:
        layer = Layer.create(data, meta, ltype)
        viewer.add_layer(layer)
        added.append(layer)
    from .palettes import show_on_canvas

    show_on_canvas(viewer, added)  # scale bar in µm, legend of the shown value
    return added


def notify_error(exc: BaseException | str) -> None:
    """Show an error as a napari notification (never a crash, never a traceback dialog)."""
    from napari.utils.notifications import show_error

    show_error(str(exc))


def notify_info(msg: str) -> None:
    from napari.utils.notifications import show_info

    show_info(msg)
