"""Results -> layer data: the Qt-free part of the trained-model widgets.

The expression (mclSTExp), classifier and β-VAE dock widgets in :mod:`napari_stexp.widgets` run
these in workers and apply the layer data tuples they return; tests call them directly. Nothing
here imports Qt.

- Expression: :class:`SectionPrediction`, :func:`predict_for_sections`, :func:`predict_for_slide`,
  :func:`gene_layer_tuples` (predicted and measured, one contrast range),
  :func:`confidence_layer_tuple` (confidence colours, embedding columns ``mclstexp_*``).
- Classifier: :class:`ClassPrediction`, :func:`classify_slide_layers`,
  :func:`classify_section_layers`, :func:`class_layer_tuples` (classes and confidence),
  :func:`apply_threshold` (hide, and fade, rows below a confidence), :func:`embedding_refs`.
- β-VAE: :func:`crops_layer_tuples`, :func:`labels_features_with_latents`,
  :func:`traversal_layer_tuple`, :func:`trajectory_layer_tuple`, :func:`expression_at`,
  :func:`trajectory_trend_table`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..session import EmbeddingRef
from .palettes import label_colors, legend_html  # the one palette, the one legend

#: Feature-column prefix of the mclSTExp image embeddings (``mclstexp_0`` …).
EMBED_PREFIX = "mclstexp_"
#: Features column of the classifier's predicted class.
CLASS_COLUMN = "batch_agnostic_class"
TRAVERSAL_LAYER = "bvae traversal"
TRAJECTORY_LAYER = "bvae trajectory"
CROPS_LAYER = "bvae crops"
POINTS_LAYER = "bvae cells"


# ----------------------------------------------------------------------------- expression


@dataclass
class SectionPrediction:
    """Predictions for the spots (or pseudo-spots) of one section/slide, in the µm frame."""

    name: str
    coords_um: np.ndarray  # (n, 2) napari (row, col) in µm
    size_um: float
    genes: list
    predicted: np.ndarray  # (n, G)
    confidence: np.ndarray  # (n,)
    embeddings: np.ndarray  # (n, D)
    obs_names: list
    measured: np.ndarray | None = None  # (n, G) normalised measured expression
    pcc: np.ndarray | None = None  # (G,) per-gene PCC
    in_reference: bool = False  # the section is among the model's references (optimistic)
    protocol: str = ""  # PCC protocol: unseen patient / held-out section of a training patient
    adata: Any = None  # the slide prediction AnnData (H&E-only slides)

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            raise InputError(gene, "not in the model's gene panel") from None


def predict_for_sections(model, adatas: dict, images: dict | None = None, *, progress=None,
                         cancel=None, device: str = "auto") -> list[SectionPrediction]:
    """Predict every spot of ST sections; measured values and per-gene PCC when the section has
    the model's genes."""
    from ..data.genes import DISPLAY_LIBRARY, measured_expression, panel_targets
    from ..evaluation.regression import gene_pcc, section_protocol
    from ..io.frame import layer_spot_size, spots_rc_um
    from ..models.mclstexp import patient_of

    out = []
    refs = set(model.reference.section_names)
    for name, adata in adatas.items():
        res = model.predict_sections({name: adata}, {name: images[name]} if images and
                                     images.get(name) is not None else None,
                                     device=device, progress=progress, cancel=cancel)[name]
        measured = pcc = None
        if set(model.genes) <= set(adata.var_names):
            # shown: the display library (the same number as the navigator and explorer);
            # scored: the model's own targets (the panel library), as the evaluation does
            measured = measured_expression(adata, model.genes, library=DISPLAY_LIBRARY,
                                           target_sum=model.config.target_sum)
            pcc = gene_pcc(res["predicted"], panel_targets(
                adata, model.genes, model.config.target_sum, library="panel"))
        out.append(SectionPrediction(
            name=name, coords_um=spots_rc_um(adata), size_um=layer_spot_size(adata),
            genes=list(model.genes), predicted=res["predicted"], confidence=res["confidence"],
            embeddings=res["embeddings"], obs_names=list(map(str, adata.obs_names)),
            measured=measured, pcc=pcc, in_reference=name in refs,
            protocol=section_protocol(patient_of(adata),
                                      (getattr(model, "provenance", None) or {}).get("train_patients"))
            if measured is not None else ""))
    return out


def predict_for_slide(model, pyramid, name: str, *, progress=None, cancel=None,
                      device: str = "auto") -> SectionPrediction:
    """Whole-slide prediction over tissue (pseudo-spots), as a :class:`SectionPrediction`."""
    from ..analysis.slide_predict import predict_slide

    ad = predict_slide(model, pyramid, name=name, progress=progress, cancel=cancel,
                       device=device)
    from ..io.frame import layer_coords, layer_spot_size

    # in the frame of the slide's image layer
    coords, size = layer_coords(ad, pyramid), layer_spot_size(ad, pyramid)
    return SectionPrediction(
        name=name, coords_um=coords, size_um=size, genes=list(model.genes),
        predicted=np.asarray(ad.layers["predicted"]),
        confidence=ad.obs["confidence"].to_numpy(np.float32),
        embeddings=np.asarray(ad.obsm["X_mclstexp"]), obs_names=list(ad.obs_names), adata=ad)


def gene_limits(pred: SectionPrediction, gene: str) -> tuple[float, float]:
    """One contrast range for predicted and measured values of ``gene`` (both layers)."""
    i = pred.gene_index(gene)
    vals = [pred.predicted[:, i]]
    if pred.measured is not None:
        vals.append(pred.measured[:, i])
    v = np.concatenate(vals)
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    if not hi > lo:
        hi = lo + 1e-6
    return lo, hi


def gene_layer_tuples(pred: SectionPrediction, gene: str, colormap: str = "viridis") -> list:
    """Points layer tuples for ``gene``: predicted (and measured beside it, same limits)."""
    i = pred.gene_index(gene)
    lims = gene_limits(pred, gene)
    base = {"size": pred.size_um, "border_width": 0.0, "face_colormap": colormap,
            "face_contrast_limits": lims, "face_color": "value"}
    pcc = None if pred.pcc is None else float(pred.pcc[i])
    feats = pd.DataFrame({"spot_id": pred.obs_names, "value": pred.predicted[:, i],
                          "confidence": pred.confidence})
    layers = [(pred.coords_um, {**base, "name": f"{pred.name} predicted", "features": feats,
                                "metadata": {"kind": "mclstexp_gene", "gene": gene,
                                             "section": pred.name, "what": "predicted",
                                             "pcc": pcc}}, "points")]
    if pred.measured is not None:
        span = np.ptp(pred.coords_um[:, 1]) + 4 * pred.size_um
        mfeats = pd.DataFrame({"spot_id": pred.obs_names, "value": pred.measured[:, i]})
        layers.append((pred.coords_um, {**base, "name": f"{pred.name} measured",
                                        "features": mfeats, "translate": (0.0, float(span)),
                                        "metadata": {"kind": "mclstexp_gene", "gene": gene,
                                                     "section": pred.name, "what": "measured",
                                                     "pcc": pcc}}, "points"))
    return layers


def confidence_layer_tuple(pred: SectionPrediction) -> tuple:
    """The per-section layer: confidence colours + embedding columns in ``features``."""
    feats = pd.DataFrame({"spot_id": pred.obs_names, "confidence": pred.confidence})
    emb = pd.DataFrame(pred.embeddings, columns=[f"{EMBED_PREFIX}{j}"
                                                 for j in range(pred.embeddings.shape[1])])
    feats = pd.concat([feats, emb], axis=1)
    c = pred.confidence
    lims = (float(np.min(c)), float(np.max(c)) if np.ptp(c) > 0 else float(np.min(c)) + 1e-6)
    return (pred.coords_um, {"name": f"{pred.name} mclSTExp", "size": pred.size_um,
                             "features": feats, "face_color": "confidence",
                             "face_colormap": "magma", "face_contrast_limits": lims,
                             "border_width": 0.0, "visible": False,
                             "metadata": {"kind": "mclstexp_confidence",
                                          "section": pred.name}}, "points")


# ----------------------------------------------------------------------------- classifier


def class_colors(classes: list[str]) -> dict[str, np.ndarray]:
    """A fixed RGBA colour per class (the one palette: viewer.palettes)."""
    return label_colors(classes)


@dataclass
class ClassPrediction:
    """Classes of the patches/spots of one slide or section, in the µm frame."""

    name: str
    coords_um: np.ndarray  # (n, 2) napari (row, col)
    size_um: float
    classes: list[str]
    proba: np.ndarray  # (n, k), rows sum to 1
    source: np.ndarray  # (n,) 'image' | 'gene' (which classifier produced the row)
    obs_names: list[str]
    image_embedding: np.ndarray | None = None  # (n, D)
    gene_latent: np.ndarray | None = None  # (n, d)
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)  # patient, section, label
    adata: Any = None  # the slide AnnData (slides)

    @property
    def predicted(self) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[self.proba.argmax(1)]

    @property
    def confidence(self) -> np.ndarray:
        return self.proba.max(1).astype(np.float32)


def classify_slide_layers(model, pyramid, name: str, *, progress=None, cancel=None,
                          device: str | None = None) -> ClassPrediction:
    """Classify a grid of patches over the slide's tissue (streamed, see ``classify_slide``)."""
    from ..analysis.slide_classify import classify_slide
    from ..models.batch_agnostic import PREFIX

    ad = classify_slide(model, pyramid, name=name, progress=progress, cancel=cancel,
                        device=device)
    from ..io.frame import layer_coords, layer_spot_size

    coords, size = layer_coords(ad, pyramid), layer_spot_size(ad, pyramid)  # the slide's layer
    extra = pd.DataFrame({"patient": [name] * ad.n_obs, "section": [name] * ad.n_obs})
    return ClassPrediction(name=name, coords_um=coords, size_um=size,
                           classes=list(model.classes),
                           proba=np.asarray(ad.obsm[f"{PREFIX}_proba"], np.float32),
                           source=np.array(["image"] * ad.n_obs, dtype=object),
                           obs_names=list(ad.obs_names),
                           image_embedding=np.asarray(ad.obsm["X_image"]), extra=extra,
                           adata=ad)


def classify_section_layers(model, adata, name: str, image=None, *, progress=None,
                            cancel=None, device: str | None = None) -> ClassPrediction:
    """Classify the spots of an ST section: from its H&E when it has one, else from its
    expression (the gene encoder's head). The gene latent is added when the model has one."""
    from ..io.frame import layer_spot_size, spots_rc_um
    from ..models.batch_agnostic import _image_of
    from ..models.gene_vae import clean_labels

    img = image if image is not None else _image_of(adata, name)
    emb = z = None
    if img is not None:
        p = model.section_patches(adata, name, img, progress=progress, cancel=cancel)
        res = model.predict_patches(p, device=device, progress=progress, cancel=cancel)
        proba, emb = res["proba"], res["embedding"]
        source = np.array(["image"] * adata.n_obs, dtype=object)
    else:
        proba = model.gene_proba({name: adata}) if model.gene_model is not None else None
        if proba is None:
            raise InputError(f"section {name}", "has no H&E image and the model has no gene "
                                                "classifier head: nothing to classify from")
        source = np.array(["gene"] * adata.n_obs, dtype=object)
    if model.gene_model is not None:
        try:
            z = model.gene_embed({name: adata})
        except InputError:
            z = None  # e.g. a section without the model's genes: classes from the image only
    labels = clean_labels(adata.obs["label"]) if "label" in adata.obs else \
        np.full(adata.n_obs, None, dtype=object)
    extra = pd.DataFrame({
        "patient": (adata.obs["patient"].astype(str).to_numpy() if "patient" in adata.obs
                    else [name] * adata.n_obs),
        "section": [name] * adata.n_obs,
        "label": [v if v is not None else "unknown" for v in labels]})
    return ClassPrediction(name=name, coords_um=spots_rc_um(adata), size_um=layer_spot_size(adata),
                           classes=list(model.classes), proba=np.asarray(proba, np.float32),
                           source=source, obs_names=list(map(str, adata.obs_names)),
                           image_embedding=emb, gene_latent=z, extra=extra)


def prediction_features(pred: ClassPrediction, threshold: float = 0.0) -> pd.DataFrame:
    """The features table of the class/confidence layers (one row per patch/spot)."""
    n = len(pred.proba)
    conf = pred.confidence
    feats = pd.DataFrame({"spot_id": pred.obs_names,
                          CLASS_COLUMN: pd.Categorical(pred.predicted, categories=pred.classes),
                          "confidence": conf, "source": pred.source.astype(str)})
    for j, c in enumerate(pred.classes):
        feats[f"proba: {c}"] = pred.proba[:, j]
    extra = pred.extra.reset_index(drop=True)
    for col in extra.columns:
        feats[col] = pd.Categorical(extra[col].astype(str))
    feats["shown"] = conf >= threshold
    blocks = [feats]
    if pred.image_embedding is not None:
        blocks.append(pd.DataFrame(pred.image_embedding, columns=[
            f"img_{j}" for j in range(pred.image_embedding.shape[1])]))
    if pred.gene_latent is not None:
        blocks.append(pd.DataFrame(pred.gene_latent, columns=[
            f"gene_{j}" for j in range(pred.gene_latent.shape[1])]))
    out = pd.concat(blocks, axis=1)
    assert len(out) == n
    return out


def class_layer_tuples(pred: ClassPrediction, threshold: float = 0.0) -> list:
    """Points layer tuples: classes (categorical colours) and confidence (magma)."""
    feats = prediction_features(pred, threshold)
    colors = class_colors(pred.classes)
    face = np.stack([colors[c] for c in pred.predicted]) if len(pred.proba) else \
        np.zeros((0, 4), np.float32)
    shown = feats["shown"].to_numpy(bool)
    face = faded_colors(face, shown)
    meta = {"kind": "batch_agnostic_classes", "section": pred.name, "classes": pred.classes,
            "class_colors": {c: v.tolist() for c, v in colors.items()},
            "legend": legend_html(pred.classes, colors), "threshold": float(threshold)}
    cls = (pred.coords_um, {"name": f"{pred.name} classes", "size": pred.size_um,
                            "features": feats, "face_color": face, "border_width": 0.0,
                            "shown": shown, "opacity": 0.8, "metadata": meta}, "points")
    conf_feats = feats[["spot_id", CLASS_COLUMN, "confidence", "shown"]].copy()
    conf = (pred.coords_um, {"name": f"{pred.name} confidence", "size": pred.size_um,
                             "features": conf_feats, "face_color": "confidence",
                             "face_colormap": "magma", "face_contrast_limits": (0.0, 1.0),
                             "border_width": 0.0, "shown": shown, "visible": False,
                             "metadata": {"kind": "batch_agnostic_confidence",
                                          "section": pred.name, "threshold": float(threshold)}},
            "points")
    return [cls, conf]


#: Face alpha of the points below the confidence threshold: faded, so the threshold is visible
#: on the canvas (napari 0.9.2 ignores ``Points.shown`` when every dimension is displayed).
FADED_ALPHA = 0.08


def faded_colors(colors: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """``colors`` (n, 4) with alpha 1 where ``shown`` and :data:`FADED_ALPHA` elsewhere."""
    out = np.array(colors, dtype=np.float32, copy=True)
    if len(out):
        out[:, 3] = np.where(shown, 1.0, FADED_ALPHA)
    return out


def apply_threshold(layers, threshold: float) -> int:
    """Hide rows whose ``confidence`` is below ``threshold`` (``shown`` mask, features column
    and a faded face colour, which is what the canvas shows) in each layer; returns how many
    rows are hidden in the first layer."""
    hidden = 0
    for i, layer in enumerate(layers):
        feats = layer.features.copy()
        shown = feats["confidence"].to_numpy(np.float64) >= float(threshold)
        feats["shown"] = shown
        layer.features = feats
        layer.shown = shown
        layer.face_color = faded_colors(layer.face_color, shown)
        layer.metadata = {**(layer.metadata or {}), "threshold": float(threshold)}
        if i == 0:
            hidden = int((~shown).sum())
    return hidden


def embedding_refs(pred: ClassPrediction) -> list[EmbeddingRef]:
    """Session entries for the prediction's image embedding and gene latent."""
    layer = f"{pred.name} classes"
    refs = []
    if pred.image_embedding is not None:
        refs.append(EmbeddingRef(name=f"{pred.name} image embedding", layer=layer,
                                 data=pred.image_embedding, source="classifier:image"))
    if pred.gene_latent is not None:
        refs.append(EmbeddingRef(name=f"{pred.name} gene latent", layer=layer,
                                 data=pred.gene_latent, source="classifier:gene"))
    return refs


# ----------------------------------------------------------------------------- β-VAE


def latent_columns(z: np.ndarray, prefix: str = "bvae") -> dict[str, np.ndarray]:
    return {f"{prefix}_{i}": z[:, i].astype(np.float32) for i in range(z.shape[1])}


def crops_layer_tuples(cells, z: np.ndarray) -> list[tuple]:
    """A crop stack (N, H, W, 3) Image layer plus a Points layer (one point per crop, centred on
    its slice) whose features hold label, id and the latents ``bvae_*``."""
    n, s = len(cells), cells.size
    feats = pd.DataFrame({"index": np.arange(n), "cell_id": cells.ids,
                          "label": [v if v is not None else "" for v in cells.labels]})
    feats = pd.concat([feats, pd.DataFrame(latent_columns(z))], axis=1)
    pts = np.stack([np.arange(n), np.full(n, (s - 1) / 2), np.full(n, (s - 1) / 2)], 1)
    image = (np.clip(cells.images, 0, 1) * 255).astype(np.uint8)
    return [
        (image, {"name": CROPS_LAYER, "rgb": True,
                 "metadata": {"kind": "cell-crops", "table": cells.table.copy()}}, "image"),
        (pts, {"name": POINTS_LAYER, "features": feats, "size": max(4, s // 8),
               "face_color": "transparent", "border_color": "yellow",
               "metadata": {"source": "bvae"}}, "points"),
    ]


def labels_features_with_latents(features, cells, z: np.ndarray):
    """A Labels layer's features table with ``bvae_*`` columns joined on the label id (rows
    without an embedded cell get NaN)."""
    lat = pd.DataFrame(latent_columns(z))
    lat["label"] = cells.table["label_id"].to_numpy() if "label_id" in cells.table else \
        pd.to_numeric(cells.table["id"]).to_numpy()
    base = features.copy() if features is not None and len(features) else \
        pd.DataFrame({"label": lat["label"].to_numpy()})
    if "label" not in base.columns:
        raise InputError("labels layer", "features table has no 'label' column")
    base = base.drop(columns=[c for c in base.columns if c.startswith("bvae_")])
    return base.merge(lat, on="label", how="left")


def traversal_layer_tuple(trav, name: str = TRAVERSAL_LAYER) -> tuple:
    """The traversal as an Image layer (dims, steps, 1, H, W, 3): sliders = latent dim and step;
    the singleton axis lines up with a crop stack's crop axis, so the step slider has its own
    axis (it does not run to the number of crops)."""
    return (trav.images[:, :, None], {"name": name, "rgb": True,
                          "metadata": {"dims": trav.dims.tolist(),
                                       "steps_sigma": trav.values.tolist(),
                                       "scores": trav.scores.tolist(), "source": "bvae"}},
            "image")


def expression_at(model, trav, row: int, step: int, n: int = 10):
    """Top ``n`` genes by change at traversal point (row, step) against the cell's own decoding:
    DataFrame(gene, expression, change)."""
    row = int(np.clip(row, 0, len(trav.dims) - 1))
    step = int(np.clip(step, 0, len(trav.values) - 1))
    both = model.expression_from_latent(np.stack([trav.latents[row, step], trav.z0]))
    here, ref = both.iloc[0], both.iloc[1]
    change = here - ref
    top = change.abs().sort_values(ascending=False).index[:n]
    return pd.DataFrame({"gene": list(top), "expression": here[top].to_numpy(),
                         "change": change[top].to_numpy()})


def trajectory_trend_table(traj, n: int = 10):
    """Expression along a trajectory for its ``n`` most changing genes (steps × genes)."""
    if traj.expression is None:
        return None
    genes = traj.top_genes(n)
    return traj.expression[genes]


def trajectory_layer_tuple(traj, name: str = TRAJECTORY_LAYER) -> tuple:
    """The trajectory's decoded images as an Image layer (steps, H, W, 3)."""
    return (traj.images, {"name": name, "rgb": True,
                          "metadata": {"t": traj.t.tolist(), "method": traj.method}}, "image")
