"""Evaluation of spatial expression prediction: per-gene PCC, MSE/MAE, baselines, CV loops.

Metrics (one held-out section at a time, on the normalised targets ``log1p(CP10k over panel)``):

- **per-gene PCC**: Pearson correlation of predicted vs measured values *across the spots of the
  section*, one value per gene (the correlation is computed along the spot axis; nothing is
  normalised per gene beforehand — normalising along the wrong axis inflates PCC).
- **PCC-ACG**: mean per-gene PCC over all panel genes; **PCC-HEG**: over the 50 genes with the
  highest mean *measured* expression in that section.
- Constant genes: a gene whose measured values are constant in the section has no defined PCC
  and is left out of both means (``n_genes_pcc`` says how many counted). A gene whose
  *prediction* is constant while the measurement varies gets PCC 0 (the model has no
  information on it; leaving it out would reward dropping hard genes). A predictor that is
  constant for every gene (the training mean) has PCC reported as NaN.
- **MSE**, **MAE**: over all spots × genes.

Baselines in the same run: ``ridge`` (ridge regression, alpha by efficient leave-one-out CV, on
the same frozen image features the model starts from), ``pca_ridge`` (HEST-Benchmark's probe:
the z-scored frozen features reduced to 256 principal components, then ridge with alpha chosen by
an inner 5-fold cross-validation grouped by training section) and ``train_mean`` (the training
spots' mean expression; MSE/MAE only).

Protocol (column ``protocol``): ``unseen patient`` when no training section comes from the test
section's patient (the honest, patient-level figure, listed first), ``held-out section of a
training patient`` otherwise (optimistic: sections of one patient share tissue and batch), or
``unknown`` when the patients are not recorded. The retrieval reference is always the training sections: a test
section is never among the references (checked).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report

REPORT_COLUMNS = ["method", "section", "n_spots", "pcc_acg", "pcc_heg", "mse", "mae",
                  "protocol"]
N_HEG = 50
RIDGE_ALPHAS = (1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5)
PCA_COMPONENTS = 256
BASELINES = ("ridge", "pca_ridge", "train_mean")
UNSEEN = "unseen patient"
SEEN = "held-out section of a training patient"
PROTOCOL_ORDER = (UNSEEN, SEEN, "unknown")


def gene_pcc(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-gene Pearson r across spots (rows); NaN for constant measured genes, 0 for constant
    predictions of varying genes."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    if p.shape != t.shape or p.ndim != 2:
        raise InputError("prediction", f"shape {p.shape} does not match measured {t.shape}")
    pc = p - p.mean(axis=0)
    tc = t - t.mean(axis=0)
    sp = np.sqrt((pc * pc).sum(axis=0))
    st = np.sqrt((tc * tc).sum(axis=0))
    t_const = np.ptp(t, axis=0) == 0 if len(t) else np.ones(t.shape[1], bool)
    p_const = sp <= 1e-9 * (1.0 + np.abs(p.mean(axis=0))) * max(np.sqrt(len(p)), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=0) / (sp * st)
    r[p_const] = 0.0
    r[t_const] = np.nan
    return np.clip(r, -1.0, 1.0)


def heg_indices(true: np.ndarray, n: int = N_HEG) -> np.ndarray:
    """Indices of the ``n`` genes with highest mean measured expression."""
    m = np.asarray(true, np.float64).mean(axis=0)
    return np.argsort(-m, kind="stable")[: min(n, len(m))]


def regression_metrics(pred: np.ndarray, true: np.ndarray, *, n_heg: int = N_HEG,
                       pcc: bool = True) -> dict[str, Any]:
    """``n_spots, pcc_acg, pcc_heg, mse, mae, n_genes_pcc`` and the per-gene PCC array."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    r = gene_pcc(p, t) if pcc else np.full(t.shape[1], np.nan)
    heg = heg_indices(t, n_heg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN means
        acg = float(np.nanmean(r)) if np.isfinite(r).any() else np.nan
        hg = float(np.nanmean(r[heg])) if np.isfinite(r[heg]).any() else np.nan
    diff = p - t
    return {"n_spots": int(t.shape[0]), "pcc_acg": acg, "pcc_heg": hg,
            "mse": float(np.mean(diff * diff)), "mae": float(np.mean(np.abs(diff))),
            "n_genes_pcc": int(np.isfinite(r).sum()), "gene_pcc": r}


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  alphas: Sequence[float] = RIDGE_ALPHAS) -> np.ndarray:
    """Ridge regression on standardised features (alpha by efficient leave-one-out CV)."""
    from sklearn.linear_model import RidgeCV

    mu = train_x.mean(axis=0)
    sd = train_x.std(axis=0) + 1e-6
    model = RidgeCV(alphas=tuple(alphas))
    model.fit((train_x - mu) / sd, train_y)
    return model.predict((test_x - mu) / sd).astype(np.float32)


def pca_ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                      groups: np.ndarray | None = None, *, n_components: int = PCA_COMPONENTS,
                      alphas: Sequence[float] = RIDGE_ALPHAS, folds: int = 5) -> np.ndarray:
    """HEST-Benchmark's probe: z-scored features → PCA (``n_components``, fitted on the training
    spots) → ridge, alpha chosen by inner cross-validation (MSE; folds = the training sections
    when there are at least 2, else ``folds`` contiguous blocks)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge

    x = np.asarray(train_x, np.float64)
    y = np.asarray(train_y, np.float64)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    k = int(min(n_components, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=max(k, 1), svd_solver="full", random_state=0)
    z = pca.fit_transform((x - mu) / sd)
    zt = pca.transform((np.asarray(test_x, np.float64) - mu) / sd)
    n = len(z)
    if groups is not None and len(np.unique(groups)) >= 2:
        fold_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
    else:
        fold_of = (np.arange(n) * min(folds, max(n, 1)) // max(n, 1)).astype(int)
    err = np.zeros(len(alphas))
    for f in np.unique(fold_of):
        tr, va = fold_of != f, fold_of == f
        if tr.sum() < 2 or va.sum() < 1:
            continue
        for i, a in enumerate(alphas):
            r = Ridge(alpha=float(a)).fit(z[tr], y[tr])
            err[i] += float(((r.predict(z[va]) - y[va]) ** 2).sum())
    best = float(alphas[int(np.argmin(err))])
    return Ridge(alpha=best).fit(z, y).predict(zt).astype(np.float32)


def section_protocol(test_patient: str | None, train_patients: Sequence[str] | None) -> str:
    """Which protocol a held-out section's figure comes from (see the module docstring)."""
    if test_patient is None or not train_patients:
        return "unknown"
    return SEEN if str(test_patient) in {str(p) for p in train_patients} else UNSEEN


def ridge_with_options(train_x: np.ndarray, train_y: np.ndarray, train_grid: np.ndarray | None,
                       train_sections: np.ndarray, test_views: np.ndarray,
                       test_grid: np.ndarray, cfg) -> np.ndarray:
    """Ridge on the same frozen features with the model's spatial-context, test-time
    augmentation and smoothing options applied the same way (what the options alone give):
    features combined with their neighbours' mean (``concat`` or ``mean``, neighbours within
    ``context_radius`` on the same section), test features averaged over ``tta_views`` views
    (ridge is linear: the same as averaging the predictions), predictions smoothed."""
    from ..models.mclstexp import neighbour_mean, smooth_predictions

    def combine(x, grid, groups=None):
        if cfg.context_neighbours == "none":
            return x
        c = neighbour_mean(x, grid, cfg.context_radius, groups)
        return np.hstack([x, c]) if cfg.context_neighbours == "concat" else (x + c) / 2.0

    tv = np.asarray(test_views, np.float32)
    tv = tv[None] if tv.ndim == 2 else tv
    tx = np.mean([combine(v, test_grid) for v in tv], axis=0)
    p = ridge_predict(combine(train_x, train_grid, train_sections), train_y, tx)
    return smooth_predictions(p, test_grid, cfg.smooth_neighbours, radius=cfg.context_radius)


@dataclass
class EvaluationResult:
    """``table``: one row per (method, section) with :data:`REPORT_COLUMNS`; ``per_gene``: long
    table (method, section, gene, pcc); ``predictions``: method → section → (n, G) array."""

    table: pd.DataFrame
    per_gene: pd.DataFrame
    predictions: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _rows(method: str, section: str, m: dict, genes: Sequence[str], rows: list, genes_rows: list,
          pcc: bool = True, protocol: str = "unknown") -> None:
    rows.append({"method": method, "section": section, "n_spots": m["n_spots"],
                 "pcc_acg": m["pcc_acg"] if pcc else np.nan,
                 "pcc_heg": m["pcc_heg"] if pcc else np.nan, "mse": m["mse"], "mae": m["mae"],
                 "protocol": protocol})
    if pcc:
        genes_rows.append(pd.DataFrame({"method": method, "section": section,
                                        "gene": list(genes), "pcc": m["gene_pcc"]}))


def evaluate_model(model, adatas: Mapping[str, Any], *, images: Mapping[str, Any] | None = None,
                   baselines: Sequence[str] = BASELINES, method: str = "mclstexp",
                   batch_size: int = 64, device: Any = "auto",
                   cache_dir: str | os.PathLike | None | bool = None,
                   progress: ProgressFn | None = None, cancel: CancelFlag | None = None
                   ) -> EvaluationResult:
    """Evaluate a trained :class:`~napari_stexp.models.mclstexp.ExpressionModel` (and baselines)
    on held-out sections. Raises InputError if a section lacks panel genes (model from another
    panel) or is among the model's retrieval references."""
    from ..data.genes import panel_targets
    from ..data.patches import open_section_image
    from ..models.feature_cache import backbone_signature, resolve_cache_dir
    from ..models.mclstexp import _device, patient_of, section_frozen_features, section_grid

    model.check_genes(adatas)
    model.check_no_leak(list(adatas))
    cdir = resolve_cache_dir(cache_dir)
    rows: list[dict] = []
    gene_rows: list[pd.DataFrame] = []
    preds: dict[str, dict] = {}
    notes: list[str] = []
    ref = model.reference
    encoder = bsig = None
    train_patients = model.provenance.get("train_patients")
    if "ridge" in baselines or "pca_ridge" in baselines:
        if ref.frozen_features is None:
            notes.append("ridge skipped: the model folder has no frozen training features")
        else:
            encoder = model.frozen_encoder()
            if encoder is None:
                notes.append("ridge skipped: the initial backbone could not be rebuilt exactly")
            else:
                bsig = backbone_signature(encoder, model.config.backbone, model.config.weights)
    for i, (name, adata) in enumerate(adatas.items()):
        check_cancel(cancel, "evaluation")
        report(progress, i, len(adatas), f"evaluating {name}")
        true = panel_targets(adata, model.genes, model.config.target_sum,
                             source=f"section {name}", library="panel")
        proto = section_protocol(patient_of(adata), train_patients)

        def add(meth, pred, pcc=True, _name=name, _true=true, _proto=proto):
            preds.setdefault(meth, {})[_name] = (pred if isinstance(pred, dict)
                                                 else {"predicted": pred})
            p = pred["predicted"] if isinstance(pred, dict) else pred
            _rows(meth, _name, regression_metrics(p, _true, pcc=pcc), model.genes, rows,
                  gene_rows, pcc=pcc, protocol=_proto)

        pyr = (images or {}).get(name) or open_section_image(adata, name)
        patches = model.section_patches(adata, name, pyr, cache_dir=cdir, cancel=cancel)
        grid = section_grid(adata)
        cfg = model.config
        if cfg.mode == "cached" and cdir is not None:
            # frozen backbone: its features of this section come from (or go to) the cache
            menc = model.net.image_encoder
            feats = section_frozen_features(
                menc, backbone_signature(menc, cfg.backbone, cfg.weights), adata, name, pyr,
                model.patch_spec, views=cfg.tta_views, cache_dir=cdir, batch_size=batch_size,
                device=_device(device), patches=patches, cancel=cancel)
            out = model.predict_features(feats, grid)
        else:
            out = model.predict_patches(patches, grid=grid, batch_size=batch_size,
                                        device=device, cancel=cancel)
        add(method, out)
        if encoder is not None:
            views = cfg.tta_views if cfg.uses_options else 1
            test_v = section_frozen_features(
                encoder, bsig, adata, name, pyr, model.patch_spec, views=views,
                cache_dir=cdir if cdir is not None else False, device=_device(device),
                patches=patches, cancel=cancel)
            if "ridge" in baselines:
                add("ridge", ridge_predict(ref.frozen_features, ref.expression, test_v[0]))
            if "pca_ridge" in baselines:
                add("pca_ridge", pca_ridge_predict(ref.frozen_features, ref.expression,
                                                   test_v[0], groups=ref.sections))
            if cfg.uses_options and "ridge" in baselines:
                if cfg.context_neighbours != "none" and ref.grid is None:
                    notes.append("ridge+options skipped: the model folder has no reference grid")
                else:
                    add("ridge+options", ridge_with_options(
                        ref.frozen_features, ref.expression, ref.grid, ref.sections, test_v,
                        grid, cfg))
        if "train_mean" in baselines:
            p = np.broadcast_to(ref.expression.mean(axis=0, keepdims=True), true.shape)
            add("train_mean", np.array(p), pcc=False)
        del pyr
    report(progress, len(adatas), len(adatas), "evaluation done")
    table = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    per_gene = (pd.concat(gene_rows, ignore_index=True) if gene_rows
                else pd.DataFrame(columns=["method", "section", "gene", "pcc"]))
    return EvaluationResult(table=table, per_gene=per_gene, predictions=preds, notes=notes)


def cv_folds(adatas: Mapping[str, Any], by: str = "section") -> list[tuple[list[str], list[str]]]:
    """``[(train sections, test sections)]`` for leave-one-section/patient-out."""
    names = list(adatas)
    if by == "section":
        groups = {n: [n] for n in names}
    elif by == "patient":
        groups: dict[str, list[str]] = {}
        from ..models.mclstexp import patient_of

        for n, a in adatas.items():
            groups.setdefault(patient_of(a) or n, []).append(n)
    else:
        raise InputError("by", f"unknown grouping '{by}' (section or patient)")
    if len(groups) < 2:
        raise InputError(", ".join(names), f"leave-one-{by}-out needs at least 2 {by}s, "
                                           f"got {len(groups)}")
    return [([n for n in names if n not in test], list(test)) for test in groups.values()]


def cross_validate(adatas: Mapping[str, Any], *, by: str = "section", config=None,
                   genes: Sequence[str] | None = None, top_genes: int | None = None,
                   baselines: Sequence[str] = BASELINES,
                   images: Mapping[str, Any] | None = None,
                   cache_dir: str | os.PathLike | None | bool = None, device: Any = None,
                   progress: ProgressFn | None = None, cancel: CancelFlag | None = None,
                   **overrides: Any) -> EvaluationResult:
    """Leave-one-section-out or leave-one-patient-out: train on the rest, evaluate the held-out
    sections (model + baselines). Without ``genes`` the panel is the ``top_genes`` (default
    1000) most variable genes of each fold's *training* sections, among genes every section has. Returns the concatenated :class:`EvaluationResult` (table gets the
    report columns; ``per_gene`` and notes as for :func:`evaluate_model`)."""
    from ..data.genes import check_panel, shared_genes, top_variable_genes
    from ..models.mclstexp import train_expression_model

    folds = cv_folds(adatas, by)
    if genes is not None:
        check_panel(adatas, genes)
    else:
        everywhere = shared_genes(adatas)  # held-out sections must have the fold's panel too
    tables, genes_tabs, notes = [], [], []
    preds: dict[str, dict] = {}
    for k, (train, test) in enumerate(folds):
        check_cancel(cancel, "cross-validation")
        report(progress, k, len(folds), f"fold {k + 1}/{len(folds)}: test {', '.join(test)}")
        kw = dict(overrides)
        if device is not None:
            kw["device"] = device
        imgs = images or {}
        panel = genes if genes is not None else top_variable_genes(
            {n: adatas[n] for n in train}, top_genes or 1000, candidates=everywhere)
        model = train_expression_model({n: adatas[n] for n in train}, config, genes=panel,
                                       cache_dir=cache_dir, cancel=cancel,
                                       images={n: imgs[n] for n in train if n in imgs},
                                       **kw)
        res = evaluate_model(model, {n: adatas[n] for n in test}, baselines=baselines,
                             images={n: imgs[n] for n in test if n in imgs},
                             device=model.config.device, cache_dir=cache_dir, cancel=cancel)
        tables.append(res.table)
        genes_tabs.append(res.per_gene)
        notes += res.notes
        for m, d in res.predictions.items():
            preds.setdefault(m, {}).update(d)
    report(progress, len(folds), len(folds), "cross-validation done")
    return EvaluationResult(table=pd.concat(tables, ignore_index=True)[REPORT_COLUMNS],
                            per_gene=pd.concat(genes_tabs, ignore_index=True),
                            predictions=preds, notes=list(dict.fromkeys(notes)))


def write_report(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write REPORT.csv (exact :data:`REPORT_COLUMNS`) atomically."""
    from ..io._atomic import atomic_path

    missing = [c for c in REPORT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"report table lacks columns {missing}")
    with atomic_path(path) as tmp:
        table[REPORT_COLUMNS].to_csv(tmp, index=False, float_format="%.6g")


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per (protocol, method), the patient-level protocol first (for
    printing). Index: ``(protocol, method)``; a table without ``protocol`` gets "unknown"."""
    t = table if "protocol" in table.columns else table.assign(protocol="unknown")
    order = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    s = t.groupby(["protocol", "method"], sort=False)[["n_spots", "pcc_acg", "pcc_heg", "mse",
                                                       "mae"]].mean()
    keys = sorted(s.index, key=lambda k: order.get(k[0], len(order)))
    return s.loc[keys]


def baseline_verdict(table: pd.DataFrame, method: str = "mclstexp",
                     baselines: Sequence[str] = ("ridge", "pca_ridge", "ridge+options")) -> dict:
    """Does ``method`` beat every baseline present (``ridge+options``: ridge with the model's own
    spatial options, the like-for-like baseline of a model that uses them) on both PCC-ACG and
    PCC-HEG, under the most honest protocol present? ``{"protocol", "beats": bool,
    "best_baseline", "text"}``; the text says so plainly when it does not (for reports, the
    widget status and the CLI)."""
    s = summarise(table)
    if s.empty:
        return {"protocol": None, "beats": None, "best_baseline": None, "text": ""}
    proto = s.index[0][0]
    part = s.loc[proto]
    if method not in part.index:
        return {"protocol": proto, "beats": None, "best_baseline": None, "text": ""}
    have = [b for b in baselines if b in part.index]
    if not have:
        return {"protocol": proto, "beats": None, "best_baseline": None, "text": ""}
    best = max(have, key=lambda b: (part.loc[b, "pcc_acg"] + part.loc[b, "pcc_heg"]))
    m = part.loc[method]
    beats = all(m["pcc_acg"] > part.loc[b, "pcc_acg"] and m["pcc_heg"] > part.loc[b, "pcc_heg"]
                for b in have)
    fig = (f"{method} PCC-ACG {m['pcc_acg']:.3f} / PCC-HEG {m['pcc_heg']:.3f} vs {best} "
           f"{part.loc[best, 'pcc_acg']:.3f} / {part.loc[best, 'pcc_heg']:.3f} ({proto})")
    show = (f"show it with predict --baseline {best}" if best in ("ridge", "pca_ridge") else
            "its slide prediction is not available; predict --baseline ridge gives plain ridge")
    text = (f"{fig}: the model beats the baselines" if beats else
            f"{fig}: the model does NOT beat the {best} baseline on both PCCs on these frozen "
            f"features; {best} is the better predictor on at least one ({show})")
    return {"protocol": proto, "beats": bool(beats), "best_baseline": best, "text": text}
