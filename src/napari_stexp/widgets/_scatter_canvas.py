"""A vispy scatter canvas for a million points, with lasso/rectangle tools and hover (Qt).

Two renderers behind one interface, chosen when the first frame is drawn:

- ``"gl"``: every point is one GL point sprite (a five-line shader; colours are one vertex
  buffer, so recolouring uploads 16 MB for 1e6 points and nothing else). On a GPU a frame of 1e6
  points takes milliseconds.
- ``"raster"``: with a software OpenGL (Mesa llvmpipe under Xvfb, remote desktops, VMs) vertex
  processing of 1e6 sprites costs seconds per frame, so the points are rasterised in numpy
  instead: the index of the top-most point per screen pixel (one scatter-assignment), dilated to
  the point size with a maximum filter (higher index = drawn later = on top), then looked up in
  the colour table; the frame is one texture. A view change re-rasterises (tens of ms for 1e6).

Set ``NAPARI_STEXP_SCATTER_RENDERER=gl|raster`` to force one. The colour helpers at the top are
GUI-free (napari colormaps, numpy) and tested without Qt.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

MISSING_COLOR = np.array([0.45, 0.45, 0.45, 0.55], np.float32)
BACKGROUND = "#262930"  # napari's dark canvas
# 20 distinct colours for categories (ColorBrewer/Tableau-like, hand-ordered for contrast).
CATEGORY_PALETTE = np.array([
    (0.12, 0.47, 0.71), (1.00, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81), (0.68, 0.78, 0.91), (1.00, 0.73, 0.47), (0.60, 0.87, 0.54),
    (1.00, 0.60, 0.59), (0.77, 0.69, 0.84), (0.77, 0.61, 0.58), (0.97, 0.71, 0.82),
    (0.86, 0.86, 0.55), (0.62, 0.85, 0.90), (0.40, 0.40, 0.40), (0.90, 0.90, 0.20),
], np.float32)
# Selection groups: saturated colours that stand out on any colormap.
GROUP_PALETTE = np.array([
    (1.00, 0.90, 0.00), (0.20, 0.90, 1.00), (1.00, 0.23, 0.19), (1.00, 0.25, 0.90),
    (0.45, 1.00, 0.25), (1.00, 0.58, 0.00), (0.55, 0.45, 1.00), (1.00, 1.00, 1.00),
], np.float32)
SLIDE_SELECTION_COLOR = np.array([1.0, 1.0, 1.0, 1.0], np.float32)
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "twilight", "gray", "PiYG", "bwr")


# -- colour mapping (no Qt) -------------------------------------------------------------------

@dataclass
class ColourMapping:
    """The colours of the points and how they were made (for the legend and tests)."""

    mode: str  # "continuous" | "categorical"
    colors: np.ndarray  # (n, 4) float32
    colormap: str | None = None
    clim: tuple[float, float] | None = None
    data_range: tuple[float, float] | None = None
    legend: list[tuple[str, np.ndarray, int]] = field(default_factory=list)  # name, rgba, count
    n_missing: int = 0


def is_categorical(values) -> bool:
    """Category/object/string/bool values are categories; numbers are continuous."""
    if isinstance(values, pd.Categorical):
        return True
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        return True
    return isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "OUSb" or \
        pd.api.types.is_string_dtype(dtype)


def default_clim(values: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of the finite values (min/max when that collapses)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    if v.size > 200_000:  # percentiles of a strided sample: same answer, 10x cheaper
        v = v[:: v.size // 200_000]
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def colormap_lut(name: str, n: int = 256) -> np.ndarray:
    """(n, 4) float32 colours of a napari colormap."""
    from napari.utils.colormaps import ensure_colormap

    return np.asarray(ensure_colormap(name).map(np.linspace(0, 1, n)), np.float32)


def continuous_colors(values, colormap: str = "viridis",
                      clim: tuple[float, float] | None = None) -> ColourMapping:
    v = np.asarray(values, np.float32)
    finite = np.isfinite(v)
    rng = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 1.0)
    lo, hi = clim if clim is not None else default_clim(v)
    if hi <= lo:
        hi = lo + 1e-6
    lut = colormap_lut(colormap)
    with np.errstate(invalid="ignore"):
        t = np.clip((v - lo) * ((len(lut) - 1) / (hi - lo)), 0, len(lut) - 1)
    idx = np.where(finite, t, 0).astype(np.int32)
    colors = lut[idx]
    colors[~finite] = MISSING_COLOR
    return ColourMapping("continuous", colors, colormap, (float(lo), float(hi)), rng,
                         n_missing=int((~finite).sum()))


def categorical_colors(values) -> ColourMapping:
    cat = pd.Categorical(values)
    codes = cat.codes.astype(np.int64)
    cats = [str(c) for c in cat.categories]
    pal = np.ones((len(cats) + 1, 4), np.float32)
    from ..viewer.palettes import FIXED, label_colors

    fixed = label_colors([c for c in cats if c in FIXED])  # pathologist labels, box classes
    for i, c in enumerate(cats):
        pal[i, :3] = fixed[c][:3] if c in fixed else CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)]
    for i, c in enumerate(cats):  # explicit "unknown"/"unselected" stay grey
        if c.lower() in ("unknown", "nan", "none", "unselected"):
            pal[i] = MISSING_COLOR
    pal[-1] = MISSING_COLOR  # code -1 (NaN)
    colors = pal[codes]
    counts = np.bincount(codes + 1, minlength=len(cats) + 1)
    legend = [(c, pal[i], int(counts[i + 1])) for i, c in enumerate(cats)]
    n_missing = int(counts[0])
    if n_missing:
        legend.append(("missing", pal[-1], n_missing))
    return ColourMapping("categorical", colors, legend=legend, n_missing=n_missing)


def group_colors(n_groups: int) -> np.ndarray:
    """(n_groups + 1, 4): row 0 (unselected) transparent, then one colour per group."""
    out = np.zeros((n_groups + 1, 4), np.float32)
    for g in range(n_groups):
        out[g + 1, :3] = GROUP_PALETTE[g % len(GROUP_PALETTE)]
        out[g + 1, 3] = 1.0
    return out


def _to_u8(colors: np.ndarray) -> np.ndarray:
    tmp = np.multiply(colors, 255.0, dtype=np.float32)
    tmp += 0.5
    np.clip(tmp, 0, 255, out=tmp)
    return tmp.astype(np.uint8)


def _disc(size: float) -> np.ndarray:
    r = max(float(size) / 2.0, 0.5)
    k = int(np.ceil(r - 0.5))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    fp = (xx * xx + yy * yy) <= r * r
    fp[k, k] = True
    return fp


def rasterize(xy: np.ndarray, valid: np.ndarray, rect: tuple[float, float, float, float],
              shape: tuple[int, int], size: float, indices: np.ndarray | None = None
              ) -> np.ndarray:
    """(H, W) int32 image of the index of the top-most point covering each pixel (-1: none).

    ``rect`` = (x0, y0, width, height) of the view in data units; row r of the image is
    y = y0 + (r + 0.5) * height / H. ``indices`` restricts to a subset (drawn in index order).
    NaN coordinates fall outside every pixel, so missing points need no special case.
    """
    H, W = int(shape[0]), int(shape[1])
    img = np.full(H * W, -1, np.int32)
    if indices is None:
        pts, idx = xy, None
    else:
        idx = np.asarray(indices, np.int64)
        idx = idx[valid[idx]]
        pts = xy[idx]
    if len(pts) and H > 0 and W > 0:
        x0, y0, w, h = rect
        with np.errstate(invalid="ignore"):
            fx = (pts[:, 0] - np.float32(x0)) * np.float32(W / w)
            fy = (pts[:, 1] - np.float32(y0)) * np.float32(H / h)
            inside = (fx >= 0) & (fx < W) & (fy >= 0) & (fy < H)  # False for NaN
        sel = np.flatnonzero(inside)
        lin = fy[sel].astype(np.int32) * np.int32(W) + fx[sel].astype(np.int32)
        img[lin] = sel if idx is None else idx[sel]  # later (higher) index wins
    img = img.reshape(H, W)
    fp = _disc(size)
    if fp.shape[0] > 1:
        img = ndi.maximum_filter(img, footprint=fp, mode="constant", cval=-1)
    return img


# -- the Qt/vispy canvas ----------------------------------------------------------------------

_VERT = """
attribute vec2 a_pos;
attribute vec4 a_color;
uniform float u_size;
varying vec4 v_color;
void main() {
    gl_Position = $transform(vec4(a_pos, 0.0, 1.0));
    gl_PointSize = u_size;
    v_color = a_color;
}
"""
_FRAG = """
varying vec4 v_color;
uniform float u_inner;
void main() {
    vec2 d = gl_PointCoord - vec2(0.5);
    float r2 = dot(d, d);
    if (r2 > 0.25 || r2 < u_inner * u_inner * 0.25) discard;
    gl_FragColor = v_color;
}
"""


def _make_points_node():
    from vispy import gloo
    from vispy.scene.visuals import create_visual_node
    from vispy.visuals import Visual

    class PointSpritesVisual(Visual):
        """Minimal GL point sprites: one position and one colour per point."""

        def __init__(self, size: float = 3.0, inner: float = 0.0):
            super().__init__(vcode=_VERT, fcode=_FRAG)
            self._draw_mode = "points"
            self.set_gl_state("translucent", depth_test=False)
            self.shared_program["u_size"] = float(size)
            self.shared_program["u_inner"] = float(inner)
            self._bounds = None
            self._n = 0
            self.freeze()

        def set_data(self, pos: np.ndarray, colors: np.ndarray) -> None:
            pos = np.ascontiguousarray(pos, np.float32)
            self._n = len(pos)
            if self._n == 0:
                pos = np.zeros((1, 2), np.float32)
                colors = np.zeros((1, 4), np.float32)
            self.shared_program["a_pos"] = gloo.VertexBuffer(pos)
            self.set_colors(colors)
            fin = pos[np.isfinite(pos).all(axis=1)]
            self._bounds = (fin.min(axis=0), fin.max(axis=0)) if len(fin) else None

        def set_colors(self, colors: np.ndarray) -> None:
            c = np.ascontiguousarray(colors, np.float32)
            if len(c) == 0:
                c = np.zeros((1, 4), np.float32)
            self.shared_program["a_color"] = gloo.VertexBuffer(c)
            self.update()

        def set_size(self, size: float, inner: float = 0.0) -> None:
            self.shared_program["u_size"] = float(size)
            self.shared_program["u_inner"] = float(inner)
            self.update()

        def _compute_bounds(self, axis, view):
            if self._bounds is None or axis > 1:
                return None
            return float(self._bounds[0][axis]), float(self._bounds[1][axis])

        def _prepare_transforms(self, view):
            view.view_program.vert["transform"] = view.get_transform()

    return create_visual_node(PointSpritesVisual)


_POINTS_NODE = None


def _points_node_class():
    global _POINTS_NODE
    if _POINTS_NODE is None:
        _POINTS_NODE = _make_points_node()
    return _POINTS_NODE


def _query_gl_renderer() -> str:
    """GL_RENDERER of the current context (e.g. "llvmpipe (LLVM 15...)"), or "unknown"."""
    try:
        from vispy.gloo import gl

        return str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception:  # noqa: BLE001 - no GL context: renderer unknown
        return "unknown"


_SOFTWARE_GL = ("llvmpipe", "softpipe", "swrast", "software", "swiftshader", "lavapipe")


class ScatterCanvas:
    """The scatter view: points, two ring overlays (groups, slide selection), tools, hover.

    Callbacks (set by the owner): ``on_polygon(poly (k,2), mode)``, ``on_rectangle(a, b, mode)``,
    ``on_hover(index or None)``. ``mode`` comes from the modifiers of the drag: none = replace,
    Shift = add, Alt/Ctrl = remove.
    """

    def __init__(self, parent=None, renderer: str | None = None):
        from vispy import scene

        self.renderer_request = (renderer or os.environ.get("NAPARI_STEXP_SCATTER_RENDERER")
                                 or "auto").lower()
        self.renderer = "raster" if self.renderer_request != "gl" else "gl"
        self.gl_renderer_name: str | None = None
        self.canvas = scene.SceneCanvas(keys=None, size=(420, 420), bgcolor=BACKGROUND,
                                        parent=parent, show=False)
        self.native = self.canvas.native
        self.view = self.canvas.central_widget.add_view()
        self.view.camera = scene.PanZoomCamera(aspect=None)
        self.view.camera.interactive = True
        self.xy = np.zeros((0, 2), np.float32)
        self.valid = np.zeros(0, bool)
        self.colors = np.zeros((0, 4), np.float32)
        self._colors_u8 = np.zeros((0, 4), np.uint8)
        self.point_size = 3.0
        self.overlays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.ringless: set[str] = set()  # overlays drawn as points on top, without a ring
        # raster renderer: the base layer (all points) is cached and redrawn only when the
        # view, the points, their size or their colours change; an overlay change (a
        # selection) re-rasterises only the overlay's points
        self._base_key = None
        self._base_index: np.ndarray | None = None
        self._base_frame: np.ndarray | None = None
        self._colors_version = 0
        self.tool = "pan"
        self.on_polygon: Callable | None = None
        self.on_rectangle: Callable | None = None
        self.on_hover: Callable | None = None
        self._drag: list[np.ndarray] = []
        self._drag_mode = "replace"
        self._line = scene.visuals.Line(np.zeros((2, 2), np.float32), color="white", width=1.5,
                                        parent=self.view.scene, method="gl")
        self._line.visible = False
        self._line.order = 10
        self._image = None
        self._gl_nodes: dict[str, object] = {}
        self._raster_due = False
        self.canvas.events.mouse_press.connect(self._on_press)
        self.canvas.events.mouse_move.connect(self._on_move)
        self.canvas.events.mouse_release.connect(self._on_release)
        self.canvas.events.mouse_wheel.connect(self._on_wheel)
        self.canvas.events.draw.connect(self._on_draw)
        self.canvas.events.resize.connect(lambda e: self._schedule_raster())
        self.view.camera.transform.changed.connect(lambda e: self._schedule_raster())
        self._timer = None

    # -- data --------------------------------------------------------------------------------
    def set_points(self, xy: np.ndarray, colors: np.ndarray, *, reset_view: bool = True) -> None:
        """Show ``xy`` (n, 2) (NaN rows are missing: not drawn, never selectable)."""
        self.xy = np.ascontiguousarray(xy, np.float32)
        self.valid = np.isfinite(self.xy).all(axis=1)
        self.overlays = {}
        self._base_index = None
        self.set_colors(colors, redraw=False)
        if self.renderer == "gl":
            self._gl_upload_all()
        if reset_view:
            self.reset_view()
        self._schedule_raster()
        self.canvas.update()

    def set_colors(self, colors: np.ndarray, *, redraw: bool = True) -> None:
        c = np.asarray(colors, np.float32)
        if not self.valid.all():
            c = c.copy()
            c[~self.valid] = 0.0  # missing rows: invisible (they also sit at NaN/0)
        self.colors = c
        self._colors_u8 = None  # made when the raster renderer needs it
        self._colors_version += 1
        if self.renderer == "gl" and "base" in self._gl_nodes:
            self._gl_nodes["base"].set_colors(c)
        if redraw:
            self._schedule_raster()
            self.canvas.update()

    def set_overlay(self, name: str, indices, colors, *, ring: bool = True) -> None:
        """Ring the points ``indices`` with ``colors`` ((k, 4) or one rgba); empty = remove.

        ``ring=False`` draws the points themselves in ``colors`` on top of the others (the
        selection groups when the scatter is coloured by them). Only the overlay is redrawn:
        the buffers (gl) or the cached raster (raster) of all points are not touched.
        """
        idx = np.asarray(indices, np.int64).ravel()
        idx = idx[(idx >= 0) & (idx < len(self.xy))]
        idx = idx[self.valid[idx]]
        col = np.asarray(colors, np.float32)
        if col.ndim == 1:
            col = np.broadcast_to(col, (idx.size, 4))
        elif len(col) != idx.size:  # colours were given for the unfiltered indices
            col = np.asarray(colors, np.float32)[np.isin(np.asarray(indices).ravel(), idx)]
        if idx.size == 0:
            self.overlays.pop(name, None)
        else:
            self.overlays[name] = (idx, np.ascontiguousarray(col, np.float32))
        if ring:
            self.ringless.discard(name)
        else:
            self.ringless.add(name)
        if self.renderer == "gl":
            self._gl_upload_overlay(name)
        self._schedule_raster()
        self.canvas.update()

    def set_point_size(self, size: float) -> None:
        self.point_size = float(max(size, 1.0))
        if self.renderer == "gl":
            self._gl_sizes()
        self._schedule_raster()
        self.canvas.update()

    def reset_view(self) -> None:
        fin = self.xy if self.valid.all() else self.xy[self.valid]
        if len(fin) == 0:
            self.view.camera.set_range(x=(-1, 1), y=(-1, 1))
            return
        lo, hi = fin.min(axis=0), fin.max(axis=0)
        pad = np.maximum((hi - lo) * 0.04, 1e-6)
        self.view.camera.set_range(x=(float(lo[0] - pad[0]), float(hi[0] + pad[0])),
                                   y=(float(lo[1] - pad[1]), float(hi[1] + pad[1])), margin=0)

    # -- GL renderer --------------------------------------------------------------------------
    def _gl_upload_all(self) -> None:
        node_cls = _points_node_class()
        if "base" not in self._gl_nodes:
            self._gl_nodes["base"] = node_cls(parent=self.view.scene)
            self._gl_nodes["base"].order = 0
        pos = np.where(self.valid[:, None], self.xy, 0).astype(np.float32)
        self._gl_nodes["base"].set_data(pos, self.colors)
        for name in list(self._gl_nodes):
            if name not in ("base",) and not name.endswith(":top"):
                self._gl_upload_overlay(name)
        self._gl_sizes()

    def _gl_upload_overlay(self, name: str) -> None:
        node_cls = _points_node_class()
        for key, order in ((name, 1), (f"{name}:top", 2)):
            if key not in self._gl_nodes:
                self._gl_nodes[key] = node_cls(parent=self.view.scene)
                self._gl_nodes[key].order = order + (2 if name == "slide" else 0)
        idx, col = self.overlays.get(name, (np.zeros(0, np.int64), np.zeros((0, 4), np.float32)))
        if name in self.ringless:  # the points themselves in the overlay colour
            self._gl_nodes[name].set_data(self.xy[:0], col[:0])
            self._gl_nodes[f"{name}:top"].set_data(self.xy[idx], col)
        else:
            self._gl_nodes[name].set_data(self.xy[idx], col)  # ring in the overlay colour
            self._gl_nodes[f"{name}:top"].set_data(self.xy[idx], self.colors[idx])  # on top
        self._gl_sizes()

    def _ring_size(self, name: str) -> float:
        return self.point_size + (6.0 if name == "slide" else 4.0)

    def _gl_sizes(self) -> None:
        for key, node in self._gl_nodes.items():
            if key == "base" or key.endswith(":top"):
                node.set_size(self.point_size)
            else:
                ring = self._ring_size(key)
                node.set_size(ring, inner=max(self.point_size - 1.0, 0.0) / ring)

    def _switch_to_gl(self) -> None:
        self.renderer = "gl"
        if self._image is not None:
            self._image.parent = None
            self._image = None
        self._gl_upload_all()
        for name in self.overlays:
            self._gl_upload_overlay(name)

    # -- raster renderer ----------------------------------------------------------------------
    def _schedule_raster(self) -> None:
        if self.renderer != "raster":
            return
        self._raster_due = True
        if self._timer is None:
            from qtpy.QtCore import QTimer

            self._timer = QTimer()
            self._timer.setSingleShot(True)
            self._timer.setInterval(0)
            self._timer.timeout.connect(self.update_raster)
        self._timer.start()

    def _raster_shape_rect(self):
        w, h = self.canvas.physical_size
        w, h = max(int(w), 1), max(int(h), 1)
        rect = self.view.camera.rect
        return (h, w), (float(rect.left), float(rect.bottom), float(rect.width),
                        float(rect.height))

    def _raster_base(self, shape, rect, scale) -> np.ndarray:
        """The frame of all points (no overlay), cached: rasterised again only when the view,
        the points or their size changed, looked up again only when their colours changed."""
        geom = (shape, rect, self.point_size * scale, id(self.xy))
        if self._base_index is None or self._base_key is None or self._base_key[0] != geom:
            self._base_index = rasterize(self.xy, self.valid, rect, shape,
                                         self.point_size * scale)
            self._base_key = None
        if self._base_key != (geom, self._colors_version):
            if self._colors_u8 is None or len(self._colors_u8) != len(self.colors):
                self._colors_u8 = _to_u8(self.colors)
            base = self._base_index
            frame = np.zeros(shape + (4,), np.uint8)
            hit = base >= 0
            frame[hit] = self._colors_u8[base[hit]]
            self._base_frame = frame
            self._base_key = (geom, self._colors_version)
        return self._base_frame

    def render_raster(self) -> np.ndarray:
        """(H, W, 4) uint8 frame of the raster renderer for the current view."""
        shape, rect = self._raster_shape_rect()
        scale = float(self.canvas.pixel_scale or 1.0)
        base = self._raster_base(shape, rect, scale)
        if not self.overlays:
            return base
        if self._colors_u8 is None or len(self._colors_u8) != len(self.colors):
            self._colors_u8 = _to_u8(self.colors)
        frame = base.copy()
        for name in ("groups", "slide"):
            if name not in self.overlays:
                continue
            idx, col = self.overlays[name]
            lut = np.full(len(self.xy), -1, np.int64)
            lut[idx] = np.arange(idx.size)
            col_u8 = _to_u8(col)
            if name not in self.ringless:
                ring = rasterize(self.xy, self.valid, rect, shape,
                                 self._ring_size(name) * scale, indices=idx)
                hit = ring >= 0
                frame[hit] = col_u8[lut[ring[hit]]]
            top = rasterize(self.xy, self.valid, rect, shape, self.point_size * scale,
                            indices=idx)
            hit = top >= 0
            frame[hit] = col_u8[lut[top[hit]]] if name in self.ringless else \
                self._colors_u8[top[hit]]
        return frame

    def update_raster(self) -> None:
        """Re-rasterise now (the canvas draws it at the next paint)."""
        from vispy import scene
        from vispy.visuals.transforms import STTransform

        self._raster_due = False
        if self.renderer != "raster":
            return
        shape, rect = self._raster_shape_rect()
        frame = self.render_raster()
        if self._image is None:
            self._image = scene.visuals.Image(frame, parent=self.view.scene,
                                              interpolation="nearest", method="subdivide")
            self._image.order = 0
            self._image.set_gl_state("translucent", depth_test=False)
        else:
            self._image.set_data(frame)
        self._image.transform = STTransform(scale=(rect[2] / shape[1], rect[3] / shape[0]),
                                            translate=(rect[0], rect[1]))
        self.canvas.update()

    def _detect_renderer(self) -> None:
        """Pick the renderer once a GL context is current (first paint)."""
        if self.gl_renderer_name is not None:
            return
        self.gl_renderer_name = _query_gl_renderer()
        software = any(s in self.gl_renderer_name.lower() for s in _SOFTWARE_GL)
        if self.renderer_request == "auto" and not software and \
                self.gl_renderer_name != "unknown":
            self._switch_to_gl()
            self.canvas.update()

    def _on_draw(self, event) -> None:
        self._detect_renderer()
        if self._raster_due and self.renderer == "raster":
            self.update_raster()

    def draw_now(self) -> np.ndarray:
        """Render a frame synchronously (tests, benchmarks); returns the RGBA image."""
        if self.gl_renderer_name is None:
            self.canvas.set_current()
            self._detect_renderer()
        if self.renderer == "raster" and (self._raster_due or self._image is None):
            self.update_raster()
        return self.canvas.render()

    # -- mouse --------------------------------------------------------------------------------
    def to_data(self, pos) -> np.ndarray:
        tr = self.canvas.scene.node_transform(self.view.scene)
        return np.asarray(tr.map(np.asarray(pos, np.float64)[:2])[:2], np.float64)

    def data_per_pixel(self) -> np.ndarray:
        a, b = self.to_data((0, 0)), self.to_data((1, 1))
        return np.abs(b - a)

    def set_tool(self, tool: str) -> None:
        if tool not in ("pan", "lasso", "rectangle"):
            raise ValueError(f"unknown tool {tool!r}")
        self.tool = tool
        self.view.camera.interactive = tool == "pan"

    @staticmethod
    def _mode(event) -> str:
        mods = {str(getattr(m, "name", m)).lower() for m in (event.modifiers or ())}
        if "shift" in mods:
            return "add"
        if mods & {"alt", "control", "meta"}:
            return "remove"
        return "replace"

    def _on_press(self, event) -> None:
        if self.tool == "pan" or event.button != 1:
            return
        self._drag = [self.to_data(event.pos)]
        self._drag_mode = self._mode(event)

    def _on_move(self, event) -> None:
        if self._drag and event.is_dragging:
            p = self.to_data(event.pos)
            if self.tool == "lasso":
                self._drag.append(p)
                pts = np.array(self._drag + [self._drag[0]], np.float32)
            else:
                a = self._drag[0]
                self._drag = [a, p]
                pts = np.array([a, (p[0], a[1]), p, (a[0], p[1]), a], np.float32)
            if len(pts) >= 2:
                self._line.set_data(pos=pts)
                self._line.visible = True
            return
        if self.on_hover is not None and not event.is_dragging:
            self.on_hover(self.pick(event.pos))

    def _on_release(self, event) -> None:
        if not self._drag:
            return
        pts, self._drag = self._drag, []
        self._line.visible = False
        self.canvas.update()
        if self.tool == "lasso" and self.on_polygon is not None and len(pts) >= 3:
            self.on_polygon(np.array(pts), self._drag_mode)
        elif self.tool == "rectangle" and self.on_rectangle is not None and len(pts) == 2:
            self.on_rectangle(pts[0], pts[1], self._drag_mode)

    def _on_wheel(self, event) -> None:
        if self.tool == "pan":
            return  # the camera zooms itself
        factor = (1 + 0.1) ** (-event.delta[1] * 3)
        self.view.camera.zoom(factor, center=self.to_data(event.pos))

    def pick(self, pos, radius_px: float | None = None) -> int | None:
        """Index of the valid point nearest to canvas position ``pos`` within a few pixels."""
        if len(self.xy) == 0:
            return None
        c = self.to_data(pos)
        dpp = self.data_per_pixel()
        r = (radius_px or max(self.point_size, 4.0)) * dpp
        x, y = self.xy[:, 0], self.xy[:, 1]
        near = np.flatnonzero((np.abs(x - c[0]) <= r[0]) & (np.abs(y - c[1]) <= r[1]))
        if near.size == 0:
            return None
        d = ((self.xy[near] - c) / np.maximum(dpp, 1e-12)) ** 2
        return int(near[np.argmin(d.sum(axis=1))])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.canvas.close()
