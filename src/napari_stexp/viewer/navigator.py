"""The slide navigator's controller (no Qt): click through the slides of a collection with their
overlays kept in step, or compare N of them side by side in napari's grid mode.

:class:`SlideNavigator` shows one slide of a :class:`~napari_stexp.io.collection.SlideCollection`
in a viewer -- its layers are added (or, when another widget already made them, shown), every
other slide's layers are removed (the navigator's own: their pyramids are released) or hidden
(other widgets' layers: their results are kept); the overlay shown on the previous slide (the
spots' colour column with its colormap and contrast limits, predicted-gene or class layers,
visibility and opacity) is applied to the new one; the camera fits the new slide or keeps its
physical position when the slides have the same size; the session's ``current_slide`` follows.
Tests and scripts call it directly; :mod:`napari_stexp.widgets.navigator` is its dock widget.

Layers are matched on ``layer.metadata['section']`` and ``layer.metadata['kind']`` (and
``'gene'``/``'column'`` when present), never on names alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from psygnal import Signal

from ..analysis.features import resolve_feature
from ..io.collection import (
    CATEGORY_COLORS,
    SlideCollection,
    SlideData,
)
from ..session import get_session
from ._napari import add_layer_tuples, notify_error

#: Drawing order inside one slide (lower = further below).
KIND_RANK = {"image": 0, "cells": 1, "spots": 2}
_OTHER_RANK = 3
_TITLE_RANK = 9
#: Kinds the navigator makes for one slide; other kinds are overlays made by other widgets.
BASE_KINDS = ("image", "cells", "spots")
#: Default keys (viewer key bindings, active while the canvas has focus).
KEY_NEXT, KEY_PREVIOUS = "PageDown", "PageUp"
CAMERA_MODES = ("keep", "fit")


def section_of(layer) -> str | None:
    meta = getattr(layer, "metadata", None) or {}
    sec = meta.get("section")
    return None if sec is None else str(sec)


def kind_of(layer) -> str | None:
    return (getattr(layer, "metadata", None) or {}).get("kind")


def face_color_column(layer) -> str | None:
    """The features column a Points layer is coloured by (None for direct colours).

    ``metadata['color_by']`` (set by napari-stexp widgets) wins; otherwise napari's colour
    manager is asked (no public accessor exists in napari 0.9 for this).
    """
    if str(getattr(layer, "face_color_mode", "direct")) == "direct":
        return None
    col = (layer.metadata or {}).get("color_by")
    if col and col in layer.features:
        return str(col)
    import warnings

    try:  # napari private API, guarded: only used to read the column name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # plugin proxies warn on '_' names
            props = layer._face.color_properties
        return None if props is None else str(props.name)
    except AttributeError:
        return None


def _unwrap(viewer):
    """The viewer behind napari's plugin proxy: one session per viewer, whichever widget
    (each gets its own proxy) asks."""
    return getattr(viewer, "__wrapped__", viewer)


@dataclass
class OverlayState:
    """What the current slide shows, to be shown the same way on the next one."""

    spots: dict | None = None
    base: dict[str, dict] = field(default_factory=dict)  # kind -> visible/opacity/...
    extras: list[dict] = field(default_factory=list)  # other widgets' overlays


def _layer_type(layer) -> str:
    return type(layer).__name__.lower()


def _points_colour(layer) -> dict:
    col = face_color_column(layer)
    out: dict[str, Any] = {"column": col, "mode": str(layer.face_color_mode),
                           "visible": bool(layer.visible), "opacity": float(layer.opacity)}
    if col is None:
        return out
    out["spec"] = ((layer.metadata or {}).get("feature_specs") or {}).get(col)
    if out["mode"] == "colormap":
        out["colormap"] = layer.face_colormap
        lims = layer.face_contrast_limits
        out["contrast_limits"] = None if lims is None else tuple(float(v) for v in lims)
    else:  # categorical: keep each category's colour
        values = layer.features[col].astype(str).to_numpy()
        colors = np.asarray(layer.face_color)
        cycle: dict[str, tuple] = {}
        for v, c in zip(values, colors, strict=False):
            cycle.setdefault(v, tuple(float(x) for x in c))
        out["cycle"] = cycle
    return out


def _apply_points_colour(layer, st: dict, *, lock: bool, values: np.ndarray | None = None,
                         spec: dict | None = None) -> None:
    col = st.get("column")
    if values is not None:
        feats = layer.features.copy()
        feats[col] = values
        layer.features = feats
    if spec is not None:
        specs = dict(layer.metadata.get("feature_specs") or {})
        specs[col] = spec
        layer.metadata["feature_specs"] = specs
    if st.get("mode") == "colormap":
        _set_face_column(layer, col)
        if st.get("colormap") is not None:
            layer.face_colormap = st["colormap"]
        if lock and st.get("contrast_limits") is not None:
            layer.face_contrast_limits = st["contrast_limits"]
        elif not lock:
            layer.refresh_colors(update_color_mapping=True)
    else:
        if st.get("cycle"):
            present = set(layer.features[col].astype(str))
            cycle = {k: v for k, v in st["cycle"].items() if k in present} or st["cycle"]
            feats = layer.features.copy()
            feats[col] = feats[col].astype(str)
            layer.features = feats
            layer.face_color_cycle = cycle
        _set_face_column(layer, col)
    layer.metadata["color_by"] = col


def _set_face_column(layer, col: str) -> None:
    """Colour by a column; napari validates the new column against the old colour mode
    (strings through a colormap fail), so go through 'direct' first."""
    layer.face_color_mode = "direct"
    layer.face_color = col


class SlideNavigator:
    """Shows one slide of a collection at a time in ``viewer`` (GUI-free; see module doc).

    ``camera``: ``'keep'`` keeps the physical view when the new slide has the same size as
    the previous one (serial sections), else fits; ``'fit'`` always fits. ``lock_contrast``:
    the colour limits of the previous slide are reused (comparable maps); off, each slide is
    autoscaled. ``image_cache``: whether napari's global dask cache may hold image tiles
    (off by default: the readers cache themselves, and that goes away with the slide).
    """

    changed = Signal(str)

    def __init__(self, viewer, collection: SlideCollection | None = None, *,
                 camera: str = "keep", lock_contrast: bool = True, image_cache: bool = False,
                 same_size_tolerance: float = 0.1):
        self.viewer = viewer
        self.session = get_session(_unwrap(viewer))
        self.collection = collection
        self.camera = camera
        self.lock_contrast = lock_contrast
        self.image_cache = image_cache
        self.same_size_tolerance = same_size_tolerance
        self.current: str | None = None
        self.missing: list[str] = []  # overlays the last shown slide could not show
        self.grid: list[str] | None = None
        self._data: SlideData | None = None
        self._grid_data: list[SlideData] = []
        self._parked: list = []  # image layers of slides left, hidden until released (_park)
        self._grid_hidden: list[Any] = []
        self._state = OverlayState()
        self._setting_session = False
        self.session.events.current_slide.connect(self._on_session_slide)

    # ------------------------------------------------------------------ collection
    def set_collection(self, collection: SlideCollection | None) -> None:
        """Use another collection; the navigator's layers of the old one are removed."""
        if self.grid is not None:
            self.leave_grid()
        self._remove([ly for ly in self.viewer.layers if ly.metadata.get("navigator")])
        self._drop_session_image(self.current)
        self.collection = collection
        self.current = None
        self._data = None

    def index(self, key: int | str | None = None) -> int | None:
        if self.collection is None or not len(self.collection):
            return None
        if key is None:
            return self.collection.index(self.current) if self.current in \
                self.collection.names else None
        if isinstance(key, str):
            return self.collection.index(key)
        return int(key) % len(self.collection)

    def step_index(self, step: int) -> int | None:
        """Index of the slide ``step`` away from the current one (wrapping around)."""
        i = self.index()
        if self.collection is None or not len(self.collection):
            return None
        return 0 if i is None else (i + step) % len(self.collection)

    # ------------------------------------------------------------------ navigation
    def show(self, key: int | str) -> list:
        """Read slide ``key`` (index or name) and show it; returns its layers."""
        self._need_collection()
        data = self.collection.load(self.index(key))
        return self.apply(data)

    def next(self) -> list:
        return self.show(self.step_index(+1))

    def previous(self) -> list:
        return self.show(self.step_index(-1))

    def apply(self, data: SlideData) -> list:
        """Show an already-read slide (main thread): the step that touches layers."""
        name = data.item.name
        self._tag_sections()
        if self.grid is not None:
            self.leave_grid(keep=name)
        state = self.capture() if self.current is not None else self._state
        prev_extent = self._extent(self.section_layers(self.current)) if self.current else None
        prev = self.current
        reusable = {} if prev == name else {
            kind_of(ly): ly for ly in self.section_layers(prev)
            if ly.metadata.get("navigator") and kind_of(ly) in BASE_KINDS}
        layers = self._ensure_layers(data, reuse=reusable)
        self._release_others(keep=[name])
        if any(kind_of(ly) == "image" for ly in layers):  # safe to remove them now (_park)
            self.release_parked()
        if prev != name:
            self._drop_session_image(prev)
        self._data = data
        self.current = name
        self.apply_overlay(state, name)
        self._order_section(name)
        self._place_camera(prev_extent, self._extent(self.section_layers(name)))
        self._update_session(data)
        self._state = state
        self.changed.emit(name)
        return layers

    def section_layers(self, name: str | None) -> list:
        """Layers of slide ``name``: ``metadata['section']``, or for layers made from an image
        (``metadata['source_image']``, e.g. cell masks) the section of that image layer."""
        if name is None:
            return []
        return [ly for ly in self.viewer.layers if self._section(ly) == name]

    def _section(self, layer) -> str | None:
        sec = section_of(layer)
        if sec is not None:
            return sec
        src = (layer.metadata or {}).get("source_image")
        if src and src != layer.name and src in self.viewer.layers:
            sec = section_of(self.viewer.layers[src])
            if sec is not None:  # remember it: the image layer may be renamed or reused
                layer.metadata["section"] = sec
            return sec
        return None

    def _tag_sections(self) -> None:
        for ly in self.viewer.layers:
            self._section(ly)

    def spots_layer(self, name: str | None = None):
        """The spots (Points) layer of slide ``name`` (default: the current one), or None."""
        for ly in self.section_layers(name or self.current):
            if kind_of(ly) == "spots":
                return ly
        return None

    # ------------------------------------------------------------------ overlays
    def color_by(self, column: str, *, colormap: str | None = None,
                 contrast_limits: tuple[float, float] | None = None) -> Any:
        """Colour the current slide's spots by a features column, an obs column, a gene
        (log1p CP10k over the display library, added as a column), a predicted gene or an embedding dimension.
        Returns the layer; ``KeyError`` when the slide has no such feature."""
        layer = self.spots_layer()
        if layer is None:
            raise KeyError(f"slide {self.current!r} has no spots layer")
        values = spec = None
        if column not in layer.features:
            adata = self._adata(self.current, layer)
            found = None if adata is None else resolve_feature(adata, column)
            if found is None:
                raise KeyError(f"{self.current}: no obs column, gene, predicted gene or "
                               f"embedding dimension named {column!r}")
            values, spec = found
        vals = layer.features[column] if values is None else pd.Series(values)
        numeric = pd.api.types.is_numeric_dtype(vals) and not isinstance(
            vals.dtype, pd.CategoricalDtype)
        st = {"column": column, "mode": "colormap" if numeric else "cycle",
              "colormap": colormap or (layer.face_colormap if numeric and
                                       str(layer.face_color_mode) == "colormap" else "viridis")}
        if numeric and contrast_limits is None:
            v = np.asarray(vals, dtype=float)
            v = v[np.isfinite(v)]
            contrast_limits = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
            if contrast_limits[0] == contrast_limits[1]:
                contrast_limits = (contrast_limits[0], contrast_limits[0] + 1.0)
        st["contrast_limits"] = contrast_limits
        if not numeric:
            layer.face_color_cycle = CATEGORY_COLORS
        _apply_points_colour(layer, st, lock=True, values=values, spec=spec)
        return layer

    def capture(self, name: str | None = None) -> OverlayState:
        """The overlay state of slide ``name`` (default: the current one)."""
        state = OverlayState()
        for ly in self.section_layers(name or self.current):
            kind = kind_of(ly)
            base = {"visible": bool(ly.visible), "opacity": float(ly.opacity)}
            if kind == "spots":
                state.spots = _points_colour(ly)
            elif kind in ("image", "cells"):
                if kind == "image" and not getattr(ly, "rgb", True):
                    base.update(colormap=ly.colormap, contrast_limits=tuple(ly.contrast_limits))
                state.base[kind] = base
            elif kind in ("title", "placeholder"):
                continue
            else:
                meta = ly.metadata or {}
                extra = {"kind": kind, "type": _layer_type(ly), "gene": meta.get("gene"),
                         "column": meta.get("column"), "what": meta.get("what"), **base,
                         "translate": tuple(float(t) for t in ly.translate),
                         "suffix": ly.name.removeprefix(f"{self._section(ly)} ").strip()}
                if extra["type"] == "points":
                    extra["points"] = _points_colour(ly)
                elif extra["type"] == "image" and not getattr(ly, "rgb", True):
                    extra.update(colormap=ly.colormap, contrast_limits=tuple(ly.contrast_limits))
                state.extras.append(extra)
        return state

    def apply_overlay(self, state: OverlayState, name: str) -> list[str]:
        """Show ``state`` on slide ``name``; returns (and stores in ``missing``) what it lacks."""
        missing: list[str] = []
        layers = self.section_layers(name)
        spots = next((ly for ly in layers if kind_of(ly) == "spots"), None)
        for ly in layers:
            kind = kind_of(ly)
            if kind in state.base:
                b = state.base[kind]
                ly.visible, ly.opacity = b["visible"], b["opacity"]
                if "contrast_limits" in b and not getattr(ly, "rgb", True):
                    ly.colormap = b["colormap"]
                    if self.lock_contrast:
                        ly.contrast_limits = b["contrast_limits"]
            elif kind not in ("spots", "title", "placeholder"):
                ly.visible = True  # the slide's own overlays; matched ones follow the state
        if spots is not None and state.spots is not None:
            st = state.spots
            spots.visible, spots.opacity = st["visible"], st["opacity"]
            col = st.get("column")
            if col:
                if not self._colour_layer(spots, name, st):
                    missing.append(col)
        for extra in state.extras:
            match = next((ly for ly in layers if _same_overlay(extra, ly)), None)
            if match is None:
                match = self._build_overlay(extra, name, spots)
            if match is None:
                missing.append(extra["suffix"] or str(extra["kind"]))
                continue
            match.visible, match.opacity = extra["visible"], extra["opacity"]
            if extra["type"] == "points" and extra["points"].get("column"):
                self._colour_layer(match, name, extra["points"])
            elif "contrast_limits" in extra and not getattr(match, "rgb", True):
                match.colormap = extra["colormap"]
                if self.lock_contrast:
                    match.contrast_limits = extra["contrast_limits"]
        self.missing = missing
        return missing

    def _colour_layer(self, layer, name: str, st: dict) -> bool:
        col = st["column"]
        values = spec = None
        if col not in layer.features:
            adata = self._adata(name, layer)
            found = None if adata is None else resolve_feature(adata, col, st.get("spec"))
            if found is None or len(found[0]) != len(layer.data):
                return False
            values, spec = found
        _apply_points_colour(layer, st, lock=self.lock_contrast, values=values, spec=spec)
        return True

    def _build_overlay(self, extra: dict, name: str, spots) -> Any:
        """Rebuild another widget's per-spot overlay from the slide's AnnData when it holds
        the same thing (a prediction, an obs column, an embedding dimension); never invents
        a prediction from measured counts."""
        if extra["type"] != "points" or spots is None:
            return None
        adata = self._adata(name, spots)
        if adata is None:
            return None
        pts = extra.get("points") or {}
        gene = extra.get("gene")
        col = pts.get("column") or extra.get("column") or gene
        if "predict" in str(extra["kind"]).lower() or extra.get("what") == "predicted":
            target = gene or col
            found = resolve_feature(adata, f"{target} (predicted)", {"type": "predicted"}) \
                if target else None
        elif extra.get("what") == "measured" and not pts.get("spec"):
            found = None  # unknown normalisation: the limits would not mean the same
        else:
            source = extra.get("column") or col
            found = resolve_feature(adata, source, pts.get("spec")) if source else None
        if found is None or len(found[0]) != len(spots.data):
            return None
        values, spec = found
        feats = pd.DataFrame({"spot_id": adata.obs_names.astype(str), col: values})
        meta = {"section": name, "kind": extra["kind"], "navigator": True,
                "feature_specs": {col: spec}}
        for key in ("gene", "column", "what"):
            if extra.get(key) is not None:
                meta[key] = extra[key]
        attrs = {"name": f"{name} {extra['suffix']}".strip(), "size": spots.size.copy(),
                 "features": feats, "border_width": 0.0, "metadata": meta,
                 "scale": tuple(spots.scale),
                 "translate": extra.get("translate") or tuple(spots.translate)}
        (layer,) = add_layer_tuples(self.viewer, [(np.asarray(spots.data).copy(), attrs,
                                                   "points")])
        return layer

    # ------------------------------------------------------------------ grid view
    def show_grid(self, n: int, *, start: int | str | None = None,
                  shape: tuple[int, int] | None = None) -> list[str]:
        """Read ``n`` slides from ``start`` (default: the current one) and show them side by
        side with the current overlay (see :meth:`apply_grid`). Returns their names."""
        self._need_collection()
        names = self.grid_names(n, start)
        datas = [self._data if (self._data is not None and nm == self.current)
                 else self.collection.load(nm) for nm in names]
        return self.apply_grid(datas, shape=shape)

    def grid_names(self, n: int, start: int | str | None = None) -> list[str]:
        """``n`` consecutive slide names from ``start`` (clipped to the collection size)."""
        total = len(self.collection)
        n = max(1, min(int(n), total))
        i0 = self.index(start) if start is not None else (self.index() or 0)
        return [self.collection.names[(i0 + k) % total] for k in range(n)]

    def apply_grid(self, datas: list[SlideData], *, shape: tuple[int, int] | None = None
                   ) -> list[str]:
        """napari grid mode, one viewbox per slide, cameras linked (zooming into a region shows
        the same region of every slide). Each slide gets the same number of layers (padded
        with hidden empty layers) so ``grid.stride`` groups exactly one slide per viewbox."""
        self._tag_sections()
        state = self.capture() if self.current is not None else self._state
        if self.grid is not None:
            self.leave_grid(keep=self.current)
        names = [d.item.name for d in datas]
        self._release_others(keep=names, hide_only=True)
        for d in datas:
            self._ensure_layers(d)
            self.apply_overlay(state, d.item.name)
        missing = list(self.missing)
        self._grid_hidden = [ly for ly in self.viewer.layers
                             if ly.visible and self._section(ly) not in names]
        for ly in self._grid_hidden:
            ly.visible = False
        groups = []
        for d in datas:
            lays = sorted(self.section_layers(d.item.name), key=_rank)
            lays.append(self._title_layer(d.item.name, self._extent(lays)))
            groups.append(lays)
        stride = max(len(g) for g in groups)
        for d, g in zip(datas, groups, strict=True):
            while len(g) < stride:
                g.insert(-1, self._placeholder(d.item.name))
        self._reorder([ly for g in groups for ly in g], 0)
        n = len(datas)
        if shape is None:
            cols = math.ceil(math.sqrt(n))
            shape = (math.ceil(n / cols), cols)
        grid = viewer_grid(self.viewer)
        grid.stride = stride
        grid.shape = tuple(int(v) for v in shape)
        grid.enabled = True
        self.grid = names
        self._grid_data = datas
        real = [ly for g in groups for ly in g if kind_of(ly) not in ("title", "placeholder")]
        if real:
            self.viewer.reset_view(layers=real)
        self.missing = missing
        return names

    def leave_grid(self, keep: str | None = None) -> None:
        """Back to one slide (``keep``, default: the current one); grid-only layers go."""
        keep = keep or self.current
        viewer_grid(self.viewer).enabled = False
        self._remove([ly for ly in self.viewer.layers
                      if kind_of(ly) in ("title", "placeholder") and ly.metadata.get("navigator")])
        for ly in self._grid_hidden:
            if ly in self.viewer.layers:
                ly.visible = True
        self._grid_hidden = []
        self._grid_data = []
        self.grid = None
        self._release_others(keep=[keep] if keep else [])

    def _title_layer(self, name: str, extent: np.ndarray | None):
        """The slide's name in the top-left corner of its grid box (text sits above the
        point, so the point goes a little inside the slide)."""
        if extent is None:
            y0, x0 = 0.0, 0.0
        else:
            (ya, xa), (yb, xb) = extent[0, -2:], extent[1, -2:]
            y0, x0 = float(ya + 0.05 * (yb - ya)), float(xa + 0.02 * (xb - xa))
        attrs = {"name": f"{name} title", "features": pd.DataFrame({"slide": [name]}),
                 "text": {"string": "{slide}", "size": 14, "color": "orange",
                          "anchor": "upper_left"},
                 "size": 1.0, "face_color": "transparent", "border_width": 0.0,
                 "metadata": {"section": name, "kind": "title", "navigator": True}}
        (layer,) = add_layer_tuples(self.viewer, [(np.array([[y0, x0]]), attrs, "points")])
        return layer

    def _placeholder(self, name: str):
        attrs = {"name": f"{name} (empty)", "visible": False, "ndim": 2,
                 "metadata": {"section": name, "kind": "placeholder", "navigator": True}}
        (layer,) = add_layer_tuples(self.viewer, [(None, attrs, "points")])
        return layer

    # ------------------------------------------------------------------ internals
    def _need_collection(self) -> None:
        if self.collection is None or not len(self.collection):
            raise ValueError("no slides: open a folder or files first")

    def _adata(self, name: str | None, layer=None) -> Any:
        ad = (layer.metadata or {}).get("adata") if layer is not None else None
        if ad is None and self._data is not None and self._data.item.name == name:
            ad = self._data.adata
        if ad is None:
            for d in self._grid_data:
                if d.item.name == name:
                    ad = d.adata
        return ad if ad is not None else self.session.adatas.get(name)

    def _release_others(self, keep: list[str], hide_only: bool = False) -> None:
        """Remove the navigator's layers of other slides (pyramids released) and hide other
        widgets' slide layers (their results are kept)."""
        drop = []
        for ly in self.viewer.layers:
            sec = self._section(ly)
            if sec is None or sec in keep:
                continue
            if ly.metadata.get("navigator") and not hide_only:
                if not self._park(ly):
                    drop.append(ly)
            else:
                ly.visible = False
        self._remove(drop)

    def _park(self, layer) -> bool:
        """Hide (not remove) the navigator's image layer of a slide being left, with its
        pyramid released (a tiny placeholder of the same kind); it is removed when a slide
        with an image is shown. False: not an image (removed as before).

        Why: removing the image layer when the next slide has none crashes vispy/Mesa
        (segfault in ``glir.draw``, issue 17.1: every step to a section without H&E, also when
        the removal waits for a frame). Removing it while another image layer is shown is what
        every image-to-image step does, and draws fine."""
        if kind_of(layer) != "image" or _layer_type(layer) != "image":
            return False
        tail = (3,) if layer.rgb else ()
        dtype = np.dtype((layer.data[0] if layer.multiscale else layer.data).dtype)
        tiny = [np.zeros((2 ** k, 2 ** k) + tail, dtype) for k in (1, 0)]
        layer.visible = False
        layer.metadata = {**layer.metadata, "kind": "parked", "section": None}
        layer.name = "released image (navigator)"
        layer.data = tiny if layer.multiscale else tiny[1]
        self._parked.append(layer)
        return True

    def release_parked(self) -> None:
        """Remove the image layers hidden by the last steps (their pyramids are released)."""
        parked, self._parked = self._parked, []
        self._remove([ly for ly in parked if ly in self.viewer.layers])

    def _remove(self, layers: list) -> None:
        """Remove layers in one batch (napari runs a full garbage collection per batch)."""
        if not layers:
            return
        with self.viewer.layers.batched_update():
            for ly in layers:
                self.viewer.layers.remove(ly)

    def _ensure_layers(self, data: SlideData, reuse: dict | None = None) -> list:
        """Add the slide's missing base layers. ``reuse``: the previous slide's own layers by
        kind; a compatible one gets the new data instead of a new layer (the old data are
        released all the same, and napari skips the costly layer removal and creation)."""
        name = data.item.name
        reuse = dict(reuse or {})
        have = {kind_of(ly) for ly in self.section_layers(name)}
        todo = []
        for t in data.layers(image_cache=self.image_cache):
            kind = t[1]["metadata"].get("kind")
            if kind in have:
                continue
            t[1]["metadata"]["navigator"] = True
            old = reuse.pop(kind, None)
            if old is not None and _recycle(old, t):
                continue
            todo.append(t)
        add_layer_tuples(self.viewer, todo)
        for ly in self.section_layers(name):
            if kind_of(ly) in BASE_KINDS:
                ly.visible = True
        return self.section_layers(name)

    def _order_section(self, name: str) -> None:
        lays = self.section_layers(name)
        if lays:
            start = min(self.viewer.layers.index(ly) for ly in lays)
            self._reorder(sorted(lays, key=_rank), start)

    def _reorder(self, layers: list, start: int) -> None:
        """Put ``layers`` at ``start``, ``start + 1``, ... in that order (single moves)."""
        for k, ly in enumerate(layers, start=start):
            i = self.viewer.layers.index(ly)
            if i != k:
                self.viewer.layers.move(i, k)

    @staticmethod
    def _extent(layers: list) -> np.ndarray | None:
        ext = [np.asarray(ly.extent.world)[:, -2:] for ly in layers
               if kind_of(ly) not in ("title", "placeholder")]
        ext = [e for e in ext if np.isfinite(e).all()]
        if not ext:
            return None
        return np.array([np.min([e[0] for e in ext], axis=0), np.max([e[1] for e in ext],
                                                                     axis=0)])

    def same_size(self, a: np.ndarray | None, b: np.ndarray | None) -> bool:
        if a is None or b is None:
            return False
        sa, sb = a[1] - a[0], b[1] - b[0]
        return bool(np.all(np.abs(sa - sb) <= self.same_size_tolerance * np.maximum(sa, sb)))

    def _place_camera(self, prev_extent, new_extent) -> None:
        if self.camera == "keep" and self.same_size(prev_extent, new_extent):
            return
        lays = [ly for ly in self.section_layers(self.current) if ly.visible
                and kind_of(ly) not in ("title", "placeholder")]
        if lays:
            self.viewer.reset_view(layers=lays)

    def _update_session(self, data: SlideData) -> None:
        name = data.item.name
        if data.adata is not None and self.session.adatas.get(name) is not data.adata:
            self.session.add_adata(name, data.adata)
        if data.image is not None and data.item.kind != "memory":
            self.session.images = {**self.session.images, name: data.image}
        self._setting_session = True
        try:
            self.session.current_slide = name
        finally:
            self._setting_session = False

    def _drop_session_image(self, name: str | None) -> None:
        if name is None or self.collection is None or name not in self.collection.names:
            return
        if self.collection[name].kind == "memory":
            return
        if name in self.session.images:
            self.session.images = {k: v for k, v in self.session.images.items() if k != name}

    def _on_session_slide(self, name: str | None) -> None:
        """Another widget (e.g. the latent scatter) chose a slide: follow it."""
        if self._setting_session or name is None or name == self.current:
            return
        if self.collection is not None and name in self.collection.names:
            try:
                self.show(name)
            except Exception as exc:  # noqa: BLE001 - never crash a signal handler
                notify_error(exc)

    def close(self) -> None:
        self.session.events.current_slide.disconnect(self._on_session_slide)


def viewer_grid(viewer):
    """napari's grid model (``viewer.canvas.grid`` since 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _recycle(layer, t) -> bool:
    """Give ``layer`` the data and attributes of layer tuple ``t`` if it can take them
    (same layer type; images: same multiscale/rgb). False: the caller adds a new layer."""
    import warnings

    data, attrs, ltype = t
    if _layer_type(layer) != ltype:
        return False
    if ltype in ("image", "labels"):
        if bool(layer.multiscale) != bool(attrs.get("multiscale", False)):
            return False
        if ltype == "image" and bool(layer.rgb) != bool(attrs.get("rgb", False)):
            return False
        ndim = len(data[0].shape if attrs.get("multiscale") else data.shape)
        if ndim - (1 if attrs.get("rgb") else 0) != layer.ndim:
            return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # napari warns when the colour column goes away
        layer.metadata = dict(attrs["metadata"])
        layer.name = attrs["name"]
        layer.scale = attrs.get("scale", (1.0,) * layer.ndim)
        layer.translate = attrs.get("translate", (0.0,) * layer.ndim)
        if ltype == "points":
            layer.selected_data = set()
            layer.data = data
            layer.features = attrs.get("features", pd.DataFrame(index=range(len(data))))
            layer.size = attrs.get("size", 10)
            fc = attrs.get("face_color")
            if attrs.get("face_color_cycle") is not None:
                layer.face_color_cycle = attrs["face_color_cycle"]
            if fc is not None and fc in layer.features:
                _set_face_column(layer, fc)
            elif fc is not None:
                layer.face_color = fc
                if attrs.get("face_colormap"):
                    layer.face_colormap = attrs["face_colormap"]
            layer.opacity = attrs.get("opacity", 1.0)
        else:
            layer.data = data
            if ltype == "image" and not layer.rgb:
                layer.reset_contrast_limits()
            layer.opacity = attrs.get("opacity", 1.0)
    return True


def _rank(layer) -> int:
    kind = kind_of(layer)
    if kind == "title":
        return _TITLE_RANK
    return KIND_RANK.get(kind, _OTHER_RANK)


def _same_overlay(extra: dict, layer) -> bool:
    meta = layer.metadata or {}
    if meta.get("kind") != extra["kind"] or _layer_type(layer) != extra["type"]:
        return False
    for key in ("gene", "column", "what"):
        if extra.get(key) is not None and meta.get(key) != extra.get(key):
            return False
    return True
