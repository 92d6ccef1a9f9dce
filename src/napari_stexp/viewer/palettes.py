"""Colours, legends and on-canvas overlays (Qt-free; napari model objects only).

- :func:`label_colors` / :func:`label_cycle`: THE fixed class palette
  (:mod:`napari_stexp.io.palette`) as RGBA arrays / a napari Points colour-cycle mapping;
- :func:`legend_html`: a coloured-square legend for widgets;
- :func:`show_value_legend`: a colour bar for a numeric colour, or a text legend for classes,
  on the canvas;
- :func:`show_crop_class`: the class of the crop under the slider;
- :func:`scale_bar_on`: napari's scale bar in µm when µm/px is known.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..io.layers import fixed_cycle as label_cycle
from ..io.palette import BOX_COLORS, FIXED, LABEL_COLORS, MISSING, color_map

__all__ = ["BOX_COLORS", "FIXED", "LABEL_COLORS", "MISSING", "color_map", "label_colors",
           "label_cycle", "legend_html", "show_value_legend", "show_crop_class", "scale_bar_on",
           "legend_text", "show_on_canvas", "link_crop_class"]


def _overlay(viewer, name: str):
    """napari's canvas overlay ``name`` ('text', 'scale_bar'): ``viewer.canvas.overlays`` from
    napari 0.9, the viewer attribute before."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    if overlays is not None and name in overlays:
        return overlays[name]
    return getattr(viewer, "text_overlay" if name == "text" else name)


def _show_text(viewer, text: str) -> None:
    ov = _overlay(viewer, "text")
    ov.text = text
    ov.visible = True


def _rgba(hexc: str) -> np.ndarray:
    h = hexc.lstrip("#")
    return np.array([int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4)] + [1.0], np.float32)


def label_colors(classes: Iterable) -> dict[str, np.ndarray]:
    """``{class: RGBA float32}`` from the fixed palette."""
    return {k: _rgba(v) for k, v in color_map(classes).items()}


def legend_html(classes: list[str], colors: dict[str, np.ndarray] | None = None,
                counts: dict[str, int] | None = None) -> str:
    """An HTML legend: a coloured square and the class name (and count) per class."""
    colors = colors or label_colors(classes)
    rows = []
    for c in classes:
        r, g, b = (np.asarray(colors[c])[:3] * 255).astype(int)
        n = f" ({counts.get(c, 0)})" if counts is not None else ""
        rows.append(f'<span style="color: rgb({r},{g},{b})">&#9632;</span> {c}{n}')
    return "<br>".join(rows)


def legend_text(layer) -> str | None:
    """A one-line text legend for a Points layer coloured by a categorical feature, or a
    colormap layer's value range; ``None`` when the layer is not coloured by a feature."""
    import pandas as pd

    mode = str(getattr(layer, "face_color_mode", "direct"))
    col = (layer.metadata or {}).get("color_by") if hasattr(layer, "metadata") else None
    prop = getattr(getattr(layer, "_face", None), "color_properties", None)
    if prop is not None and getattr(prop, "name", None):
        col = prop.name
    meta = getattr(layer, "metadata", None) or {}
    if meta.get("classes") and meta.get("class_colors"):  # direct colours of known classes
        return f"{layer.name}: " + ", ".join(map(str, meta["classes"]))
    if col is None or col not in getattr(layer, "features", {}):
        return None
    vals = layer.features[col]
    if mode == "cycle":
        cats = vals.cat.categories if isinstance(vals.dtype, pd.CategoricalDtype) else \
            pd.unique(vals.dropna())
        counts = vals.astype(str).value_counts()
        return f"{layer.name} — {col}: " + ", ".join(
            f"{c} ({int(counts.get(str(c), 0))})" for c in cats)
    if mode == "colormap":
        lo, hi = layer.face_contrast_limits
        return f"{layer.name} — {col}: {lo:.3g} … {hi:.3g} ({layer.face_colormap.name})"
    return None


def show_value_legend(viewer, layer) -> str | None:
    """Show what ``layer``'s colours mean on the canvas: napari's colour bar for a colormap
    (Points ``face_colorbar`` / Image ``colorbar`` overlays) and the text overlay with the
    classes or the range. Returns the text shown (``None``: nothing to explain)."""
    text = legend_text(layer)
    overlays = getattr(layer, "_overlays", {})
    mode = str(getattr(layer, "face_color_mode", ""))
    for key in ("face_colorbar", "colorbar"):
        if key not in overlays:
            continue
        on = mode == "colormap" or (key == "colorbar" and layer.__class__.__name__ == "Image"
                                    and not layer.rgb)
        lims = (getattr(layer, "face_contrast_limits", None) if key == "face_colorbar"
                else getattr(layer, "contrast_limits", None))
        if on and lims is not None and not float(lims[1]) > float(lims[0]):
            on = False  # napari's colour bar cannot draw an empty range
        overlays[key].visible = on
    if text is None and layer.__class__.__name__ == "Image" and not getattr(layer, "rgb", True):
        lo, hi = layer.contrast_limits
        text = f"{layer.name}: {lo:.3g} … {hi:.3g} ({layer.colormap.name})"
    if text is not None:
        _show_text(viewer, text)
    return text


def show_crop_class(viewer, table: Any, index: int, *, column: str = "label") -> str:
    """Write "crop i/N: <class>" on the canvas (text overlay) for the crop under the slider."""
    n = len(table)
    i = int(min(max(index, 0), max(n - 1, 0)))
    cls = ""
    if n and column in getattr(table, "columns", []):
        v = table[column].iloc[i]
        cls = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
    text = f"crop {i + 1}/{n}: {cls or 'no label'}"
    _show_text(viewer, text)
    return text


def show_on_canvas(viewer, layers: Iterable) -> None:
    """After adding ``layers``: the scale bar in µm when one of them knows its µm/px, and the
    legend of the last one coloured by a value."""
    layers = list(layers)
    for ly in layers:
        scale_bar_on(viewer, (getattr(ly, "metadata", None) or {}).get("mpp"), ly)
    for ly in reversed(layers):
        if legend_text(ly) is not None:
            show_value_legend(viewer, ly)
            break


def link_crop_class(viewer, layer, *, column: str = "label"):
    """Keep "crop i/N: <class>" on the canvas for the crop stack ``layer`` (an (N, H, W[, 3])
    Image whose ``metadata['table']`` holds ``column``) as its slider moves. Returns the
    callback (disconnect it with ``viewer.dims.events.current_step.disconnect``)."""
    table = (layer.metadata or {}).get("table")
    if table is None:
        return None
    spatial = 3 if getattr(layer, "rgb", False) else 2
    n_axes = np.asarray(layer.data).ndim - spatial + 2 if not isinstance(layer.data, list) \
        else layer.data[0].ndim - spatial + 2

    def update(*_):
        if layer not in viewer.layers:
            return
        axis = viewer.dims.ndim - n_axes  # the crop axis (layers are right-aligned)
        show_crop_class(viewer, table, int(viewer.dims.current_step[axis]), column=column)

    viewer.dims.events.current_step.connect(update)
    update()
    return update


def scale_bar_on(viewer, mpp: float | None, layer=None) -> bool:
    """Turn napari's scale bar on in µm when µm/px is known (layers are in µm then; from napari
    0.9 the unit comes from ``layer.units``); leave it as it is otherwise. Returns whether it
    is on."""
    bar = _overlay(viewer, "scale_bar")
    if not mpp:
        return bool(bar.visible)
    if layer is not None and hasattr(layer, "units"):
        layer.units = ("um",) * int(layer.ndim)
    elif "unit" in type(bar).model_fields if hasattr(type(bar), "model_fields") else False:
        bar.unit = "um"
    bar.visible = True
    return True
