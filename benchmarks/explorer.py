"""Benchmark: the latent explorer with a million points vs a matplotlib scatter, same run.

Setup (not timed): a napari viewer (shown, under ``xvfb-run``) with ``--slides`` Points layers
that share ``--n`` spots in total, each with ``--dims`` embedding feature columns ``emb_*``
(a Gaussian mixture, so a lasso around one cluster is a realistic selection) and a categorical
``kind``. Only the first slide is visible, as the loader does (``--visible`` changes that).

Figures (one JSON line each, ours vs matplotlib measured in this process):

- ``explorer_show``: dock widget built, embedding gathered from all slides, PCA, colours,
  upload and one real frame (``canvas.render()`` reads the pixels back) vs a matplotlib Agg
  figure with the same points and colours drawn once (``scatter`` + ``canvas.draw()``).
- ``explorer_lasso_to_highlight``: from a lasso polygon in scatter coordinates to the selection
  column written into every slide's features and the highlight applied to the visible slide
  (``applied``: state and GPU buffers updated) and then drawn (``drawn``: one frame of the scatter
  plus one frame of napari's canvas) vs matplotlib (``Path.contains_points`` + highlight colours
  on the embedding scatter and the visible slide's scatter + ``canvas.draw()``).
- ``scatter_first_frame``: the rendering engine alone, same coordinates and colours: upload +
  one frame vs a matplotlib figure with only the embedding scatter.
- ``explorer_recolour``, ``explorer_pan_frame``: colour-by switch and one view change, drawn.
- ``explorer_memory``: RSS growth of ours (widget + scatter) and of the matplotlib figure.
- ``napari_frame``: one frame of napari's own canvas with the visible slide, unchanged (the part
  of ``drawn`` that is napari's, for context).

Every time is given as wall clock (``*_s``) and CPU time of this process (``*_cpu_s``, all
threads): on a shared machine the wall clock grows with the load (``load_avg_1min``), the CPU
time much less. Targets: show < 5 s, lasso -> highlight < 0.3 s, >= 10x faster than matplotlib.

    xvfb-run -a python benchmarks/explorer.py                 # 1,000,000 points, 10 slides
    xvfb-run -a python benchmarks/explorer.py --quick         # 100,000 points, 4 slides
    xvfb-run -a python benchmarks/explorer.py --slides 1      # one slide of 1e6 (worst case)

``--links``: the links at scale (issue 17, "Linked views at scale"): ONE Points layer of ``--n``
points (visible), 10 feature columns, the scatter of two of them (``emb_0`` x ``emb_1``, so every
tool plots the same coordinates) and the same lasso polygon for every tool. Figures
``link_lasso_applied``, ``link_lasso_drawn`` (applied + one scatter frame + one napari frame, both
read back), ``link_slide_to_scatter`` (a selection made on the slide layer, until the scatter
frame is drawn) and ``link_recolour``, each beside matplotlib (same run, always) and beside
napari-clusters-plotter when it is installed (its widget driven on the same layer with the same
polygon: its lasso selector's ``on_select``, which writes ``MANUAL_CLUSTER_ID`` and recolours the
layer, then its canvas and napari's drawn). ``napari_frame`` is napari's frame of the unchanged
layer: the part of every "drawn" figure that no plugin controls.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/explorer.py --links --quick
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/explorer.py --links   # 1e6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import pandas as pd

TARGETS = {"show_s": 5.0, "lasso_s": 0.3, "ratio": 10.0}


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def emit(**fields) -> None:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}),
          flush=True)


def make_layers(n: int, slides: int, dims: int, seed: int = 0):
    """``slides`` (coords, features) pairs, with a Gaussian-mixture embedding of ``dims``."""
    rng = np.random.default_rng(seed)
    k = 8
    centers = rng.normal(size=(k, dims)).astype(np.float32) * 4
    per = np.full(slides, n // slides)
    per[: n - per.sum()] += 1
    out = []
    for s, m in enumerate(per):
        cl = rng.integers(0, k, m)
        emb = centers[cl] + rng.normal(size=(m, dims)).astype(np.float32)
        side = int(np.ceil(np.sqrt(m)))
        rr, cc = np.divmod(np.arange(m), side)
        coords = np.column_stack([rr, cc]).astype(np.float32) * 100.0  # 100 µm spot pitch
        f = pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(dims)])
        f.insert(0, "spot_id", [f"s{s}_{i}" for i in range(m)])
        f["kind"] = pd.Categorical(np.array(list("abcdefgh"))[cl])
        out.append((coords, f))
    return out


def lasso_around(xy: np.ndarray, center: np.ndarray, radius: float, k: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    wobble = 1 + 0.15 * np.sin(3 * t)  # not a circle: a hand-drawn lasso
    return np.column_stack([center[0] + radius * wobble * np.cos(t),
                            center[1] + radius * wobble * np.sin(t)])


class Clock:
    """Wall and CPU (this process, all threads) time of a block: on a shared machine the CPU
    time is the load-independent figure, the wall time what a user waits."""

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        self.cpu = time.process_time() - self.c


def run(args) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stexp.analysis.projection import PROJECTION_CACHE, project
    from napari_stexp.widgets.explorer import ExplorerWidget

    if args.renderer:
        os.environ["NAPARI_STEXP_SCATTER_RENDERER"] = args.renderer
    app = QApplication.instance() or QApplication([])
    layers_data = make_layers(args.n, args.slides, args.dims)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    for s, (coords, f) in enumerate(layers_data):
        viewer.add_points(coords, features=f, size=80, name=f"slide {s}",
                          visible=s < args.visible, face_color="kind", border_width=0)
    app.processEvents()
    viewer.screenshot(canvas_only=True, flash=False)  # warm napari's canvas
    with Clock() as napari_frame:
        viewer.screenshot(canvas_only=True, flash=False)
    load = os.getloadavg()[0]

    # ---- ours: build and show -------------------------------------------------------------
    rss0 = rss_mb()
    PROJECTION_CACHE.clear()
    with Clock() as dock:
        w = ExplorerWidget(viewer)
        viewer.window.add_dock_widget(w, name="explorer", area="right")
        app.processEvents()  # the dock appears: Qt layout, GL context, napari canvas resized
    with Clock() as scatter:
        w.set_source(f"features:emb_|{args.dims}")
        w.set_method("pca")
        w.set_colour_by("feature · kind")
        w.compute(block=True)
        app.processEvents()
        frame = w.scatter.draw_now()
    rss_ours = rss_mb() - rss0
    drawn_frac = float((frame[..., :3].astype(int).sum(-1) != frame[0, 0, :3].astype(int).sum())
                       .mean())
    coords = np.asarray(w.projection.coords)
    colors = np.asarray(w.mapping.colors)
    with Clock() as pca:
        project(w.embedding.data, "pca", cache=None)
    with Clock() as frame_only:  # the rendering engine alone: upload + one frame
        w.scatter.set_points(coords, colors, reset_view=False)
        w.scatter.draw_now()

    # lassos around three cluster centres (in PCA coordinates)
    kinds = np.concatenate([f["kind"].to_numpy() for _, f in layers_data])
    polys = []
    for kname in ("a", "c", "f")[: args.repeats]:
        sel = coords[kinds == kname]
        c = np.median(sel, axis=0)
        r = float(np.median(np.linalg.norm(sel - c, axis=1)))
        polys.append(lasso_around(coords, c, r))

    # ---- ours: lasso -> highlight ---------------------------------------------------------
    applied, drawn, counts = [], [], []
    for poly in polys:
        with Clock() as a:
            counts.append(w.select_polygon(poly))
        with Clock() as d:
            w.scatter.draw_now()
            viewer.screenshot(canvas_only=True, flash=False)
        applied.append(a)
        drawn.append((a.wall + d.wall, a.cpu + d.cpu))
    first = viewer.layers["slide 0"]
    n_marked = int((first.features["selection"] != "unselected").sum())
    n_border = int((first.border_width > 0).sum())

    with Clock() as recolour:
        w.set_colour_by(f"dim · emb_{args.dims - 1}")
        w.scatter.draw_now()
    with Clock() as pan:
        w.scatter.view.camera.zoom(0.7)
        w.scatter.draw_now()
    renderer, gl_name = w.scatter.renderer, w.scatter.gl_renderer_name

    # ---- matplotlib baseline --------------------------------------------------------------
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.path import Path

    vis = np.concatenate([np.full(len(f), s < args.visible) for s, (_, f) in
                          enumerate(layers_data)])
    slide_xy = np.concatenate([c for c, _ in layers_data])
    rss1 = rss_mb()
    with Clock() as mpl_frame:  # embedding scatter alone (compare with frame_only)
        fig1 = Figure(figsize=(6, 6), dpi=100)
        canvas1 = FigureCanvasAgg(fig1)
        fig1.add_subplot().scatter(coords[:, 0], coords[:, 1], s=2, c=colors, linewidths=0)
        canvas1.draw()
    with Clock() as mpl_show:  # embedding + visible slide, as the explorer shows them
        fig = Figure(figsize=(16, 8), dpi=100)
        canvas = FigureCanvasAgg(fig)
        ax_emb, ax_slide = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        sc_emb = ax_emb.scatter(coords[:, 0], coords[:, 1], s=2, c=colors, linewidths=0)
        sc_slide = ax_slide.scatter(slide_xy[vis, 1], -slide_xy[vis, 0], s=4, c=colors[vis],
                                    linewidths=0)
        canvas.draw()
    rss_mpl = rss_mb() - rss1
    mpl_lasso = []
    for poly in polys[: args.mpl_repeats]:
        with Clock() as m:
            inside = Path(np.vstack([poly, poly[:1]]), closed=True).contains_points(coords)
            fc = colors.copy()
            fc[inside] = (1.0, 0.9, 0.0, 1.0)
            sc_emb.set_facecolors(fc)
            ec = np.zeros((int(vis.sum()), 4))
            ec[inside[vis]] = (1.0, 0.9, 0.0, 1.0)
            sc_slide.set_edgecolors(ec)
            sc_slide.set_linewidths(np.where(inside[vis], 1.0, 0.0))
            canvas.draw()
        mpl_lasso.append(m)

    med = statistics.median
    common = {"n": args.n, "slides": args.slides, "visible_slides": args.visible,
              "dims": args.dims, "renderer": renderer, "gl": gl_name,
              "load_avg_1min": round(load, 2)}
    show_wall, show_cpu = dock.wall + scatter.wall, dock.cpu + scatter.cpu
    emit(name="explorer_show", ours_s=show_wall, ours_cpu_s=show_cpu,
         dock_s=dock.wall, dock_cpu_s=dock.cpu, scatter_s=scatter.wall,
         scatter_cpu_s=scatter.cpu, pca_s=pca.wall, pca_cpu_s=pca.cpu,
         matplotlib_s=mpl_show.wall, matplotlib_cpu_s=mpl_show.cpu,
         ratio=mpl_show.wall / show_wall, ratio_cpu=mpl_show.cpu / show_cpu,
         target_s=TARGETS["show_s"], pixels_drawn_frac=drawn_frac, **common)
    emit(name="scatter_first_frame", ours_s=frame_only.wall, ours_cpu_s=frame_only.cpu,
         matplotlib_s=mpl_frame.wall, matplotlib_cpu_s=mpl_frame.cpu,
         ratio=mpl_frame.wall / frame_only.wall, ratio_cpu=mpl_frame.cpu / frame_only.cpu,
         **common)
    a_wall, a_cpu = med(x.wall for x in applied), med(x.cpu for x in applied)
    d_wall, d_cpu = med(x[0] for x in drawn), med(x[1] for x in drawn)
    m_wall, m_cpu = med(x.wall for x in mpl_lasso), med(x.cpu for x in mpl_lasso)
    emit(name="explorer_lasso_to_highlight", ours_applied_s=a_wall, ours_applied_cpu_s=a_cpu,
         ours_drawn_s=d_wall, ours_drawn_cpu_s=d_cpu, matplotlib_s=m_wall,
         matplotlib_cpu_s=m_cpu, ratio_applied=m_wall / a_wall, ratio_applied_cpu=m_cpu / a_cpu,
         ratio_drawn=m_wall / d_wall, ratio_drawn_cpu=m_cpu / d_cpu,
         selected_per_lasso=int(med(counts)), marked_rows_slide0=n_marked,
         highlighted_slide0=n_border, target_s=TARGETS["lasso_s"], **common)
    emit(name="explorer_recolour", ours_s=recolour.wall, ours_cpu_s=recolour.cpu, **common)
    emit(name="explorer_pan_frame", ours_s=pan.wall, ours_cpu_s=pan.cpu, **common)
    emit(name="napari_frame", napari_s=napari_frame.wall, napari_cpu_s=napari_frame.cpu,
         **common)
    emit(name="explorer_memory", ours_rss_mb=rss_ours, matplotlib_rss_mb=rss_mpl, **common)
    w.cleanup()
    viewer.close()


def _ncp_plotter(viewer, layer, app):
    """napari-clusters-plotter's widget docked and plotting ``emb_0`` x ``emb_1`` of ``layer``
    (None when the package is not installed)."""
    try:
        from napari_clusters_plotter import PlotterWidget
    except ImportError:
        return None
    plotter = PlotterWidget(viewer)
    viewer.window.add_dock_widget(plotter, name="clusters plotter", area="right")
    viewer.layers.selection.active = layer
    app.processEvents()
    plotter.x_axis, plotter.y_axis = "emb_0", "emb_1"
    app.processEvents()
    return plotter


def _ncp_lasso(plotter):
    sels = plotter.plotting_widget.selectors
    return next(s for k, s in sels.items() if "LASSO" in k.upper())


def run_links(args) -> None:
    """The links at scale: one layer, the same polygon, ours vs matplotlib vs clusters-plotter."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stexp.widgets.explorer import ExplorerWidget

    if args.renderer:
        os.environ["NAPARI_STEXP_SCATTER_RENDERER"] = args.renderer
    app = QApplication.instance() or QApplication([])
    (coords, f), = make_layers(args.n, 1, 10)
    xy = f[["emb_0", "emb_1"]].to_numpy(np.float32)
    sel_c = np.median(xy[f["kind"].to_numpy() == "c"], axis=0)
    r = float(np.median(np.linalg.norm(xy[f["kind"].to_numpy() == "c"] - sel_c, axis=1)))
    poly = lasso_around(xy, sel_c, r)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    layer = viewer.add_points(coords, features=f, size=80, name="spots", face_color="kind",
                              border_width=0)
    app.processEvents()
    viewer.screenshot(canvas_only=True, flash=False)  # warm napari's canvas
    with Clock() as napari_frame:
        viewer.screenshot(canvas_only=True, flash=False)
    load = os.getloadavg()[0]
    common = {"n": args.n, "layers": 1, "feature_columns": 10, "polygon_vertices": len(poly),
              "load_avg_1min": round(load, 2)}

    # ---- ours ------------------------------------------------------------------------------
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="explorer", area="right")
    w.set_source("features:emb_|10")
    w.set_method("dims", (0, 1))
    w.set_colour_by("feature · kind")
    w.compute(block=True)
    app.processEvents()
    w.scatter.draw_now()
    viewer.screenshot(canvas_only=True, flash=False)
    common["renderer"], common["gl"] = w.scatter.renderer, w.scatter.gl_renderer_name
    ours = {}
    applied, drawn, scat, nap = [], [], [], []
    for rep in range(args.repeats):
        if rep:  # start from no selection each time
            w.clear_group(w.current_group)
            w.scatter.draw_now()
            viewer.screenshot(canvas_only=True, flash=False)
        with Clock() as a:
            n_sel = w.select_polygon(poly)
        with Clock() as s_:
            w.scatter.draw_now()
        with Clock() as n_:
            viewer.screenshot(canvas_only=True, flash=False)
        applied.append(a.wall)
        scat.append(s_.wall)
        nap.append(n_.wall)
        drawn.append(a.wall + s_.wall + n_.wall)
    med = statistics.median
    ours["applied"], ours["drawn"] = med(applied), med(drawn)
    ours["drawn_scatter"], ours["drawn_napari"] = med(scat), med(nap)
    col = layer.features["selection"]
    n_marked = int((np.asarray(col.cat.codes) > 0).sum())
    rows = np.flatnonzero(np.asarray(col.cat.codes) == 0)[: max(1, args.n // 100)]
    s2s = []
    for rep in range(args.repeats):
        rows_r = rows if rep % 2 == 0 else rows[: len(rows) // 2]
        with Clock() as t:
            layer.selected_data = set(rows_r.tolist())
            w.scatter.draw_now()
        s2s.append(t.wall)
    ours["slide"] = med(s2s)
    n_slide_ring = int(len(w.scatter.overlays.get("slide", ((),))[0]))
    rec = []
    for key in ("dim · emb_3", "feature · kind", "dim · emb_5")[: max(args.repeats, 1)]:
        with Clock() as t:
            w.set_colour_by(key)
            w.scatter.draw_now()
        rec.append(t.wall)
    ours["recolour"] = med(rec)
    layer.selected_data = set()
    w.clear_group(w.current_group)
    w.cleanup()
    viewer.window.remove_dock_widget(w)
    app.processEvents()

    # ---- matplotlib (same coordinates, colours, polygon) ------------------------------------
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.path import Path

    from napari_stexp.widgets._scatter_canvas import categorical_colors

    colors = categorical_colors(f["kind"]).colors
    fig = Figure(figsize=(16, 8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax_emb, ax_slide = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sc_emb = ax_emb.scatter(xy[:, 0], xy[:, 1], s=2, c=colors, linewidths=0)
    sc_slide = ax_slide.scatter(coords[:, 1], -coords[:, 0], s=4, c=colors, linewidths=0)
    canvas.draw()
    mpl = {}
    with Clock() as m_applied:
        inside = Path(np.vstack([poly, poly[:1]]), closed=True).contains_points(xy)
        fc = colors.copy()
        fc[inside] = (1.0, 0.9, 0.0, 1.0)
        ec = np.zeros((len(xy), 4))
        ec[inside] = (1.0, 0.9, 0.0, 1.0)
        sc_emb.set_facecolors(fc)
        sc_slide.set_edgecolors(ec)
        sc_slide.set_linewidths(np.where(inside, 1.0, 0.0))
    with Clock() as m_draw:
        canvas.draw()
    mpl["applied"], mpl["drawn"] = m_applied.wall, m_applied.wall + m_draw.wall
    with Clock() as m_slide:
        fc2 = colors.copy()
        fc2[rows] = (1.0, 1.0, 1.0, 1.0)
        sc_emb.set_facecolors(fc2)
        canvas.draw()
    mpl["slide"] = m_slide.wall
    from napari_stexp.widgets._scatter_canvas import continuous_colors

    with Clock() as m_rec:
        sc_emb.set_facecolors(continuous_colors(f["emb_3"].to_numpy()).colors)
        canvas.draw()
    mpl["recolour"] = m_rec.wall
    n_mpl = int(inside.sum())
    del fig, canvas

    # ---- napari-clusters-plotter (when installed) -------------------------------------------
    ncp = {}
    ncp_version = None
    if not args.no_ncp:
        with Clock() as ncp_plot:
            plotter = _ncp_plotter(viewer, layer, app)
            if plotter is not None:
                plotter.plotting_widget.canvas.draw()
        if plotter is not None:
            import napari_clusters_plotter

            ncp_version = napari_clusters_plotter.__version__
            viewer.screenshot(canvas_only=True, flash=False)
            lasso = _ncp_lasso(plotter)
            with Clock() as c_applied:
                lasso.on_select(poly)  # the mouse release of its lasso: mask, column, colours
                app.processEvents()
            with Clock() as c_s:
                plotter.plotting_widget.canvas.draw()
            with Clock() as c_n:
                viewer.screenshot(canvas_only=True, flash=False)
            ncp["plot"] = ncp_plot.wall
            ncp["applied"] = c_applied.wall
            ncp["drawn"] = c_applied.wall + c_s.wall + c_n.wall
            ncp["n_selected"] = int((np.asarray(layer.features["MANUAL_CLUSTER_ID"]) > 0).sum())
            with Clock() as c_rec:
                plotter.hue_axis = "emb_3"
                app.processEvents()
                plotter.plotting_widget.canvas.draw()
            ncp["recolour"] = c_rec.wall

    def figure(name, key, **extra):
        out = {"name": name, "ours_s": ours[key], "matplotlib_s": mpl.get(key),
               "ratio_matplotlib": mpl[key] / ours[key] if key in mpl else None}
        if key in ncp:
            out.update(ncp_s=ncp[key], ratio_ncp=ncp[key] / ours[key],
                       ncp_version=ncp_version)
        elif ncp_version is not None:
            out["ncp_s"] = None  # the plotter has no such link
        out["target_s"] = TARGETS["lasso_s"]
        out.update(extra)
        emit(**out, **common)

    figure("link_lasso_applied", "applied", selected=n_sel, selected_matplotlib=n_mpl,
           selected_ncp=ncp.get("n_selected"), marked_rows=n_marked)
    figure("link_lasso_drawn", "drawn", ours_scatter_frame_s=ours["drawn_scatter"],
           ours_napari_frame_s=ours["drawn_napari"],
           ours_without_napari_frame_s=ours["drawn"] - ours["drawn_napari"])
    figure("link_slide_to_scatter", "slide", slide_rows=int(len(rows)),
           scatter_ringed=n_slide_ring)
    figure("link_recolour", "recolour")
    if "plot" in ncp:
        emit(name="ncp_plot", ncp_s=ncp["plot"], ncp_version=ncp_version, **common)
    emit(name="napari_frame", napari_s=napari_frame.wall, napari_cpu_s=napari_frame.cpu,
         **common)
    viewer.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="points in total")
    p.add_argument("--slides", type=int, default=10, help="Points layers sharing the points")
    p.add_argument("--visible", type=int, default=1, help="how many slides are visible")
    p.add_argument("--dims", type=int, default=16, help="embedding dimensions")
    p.add_argument("--repeats", type=int, default=3, help="lassos for ours (median)")
    p.add_argument("--mpl-repeats", type=int, default=2, help="lassos for matplotlib (median)")
    p.add_argument("--renderer", choices=("auto", "gl", "raster"), default=None)
    p.add_argument("--quick", action="store_true", help="100,000 points in 4 slides")
    p.add_argument("--links", action="store_true",
                   help="the links at scale: one layer, 10 columns, beside clusters-plotter")
    p.add_argument("--no-ncp", action="store_true", help="skip napari-clusters-plotter")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.slides = 100_000, 4
    if args.links:
        run_links(args)
        return
    args.visible = max(1, min(args.visible, args.slides))
    run(args)


if __name__ == "__main__":
    main()
