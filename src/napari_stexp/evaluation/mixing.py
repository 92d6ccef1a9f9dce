"""How well batches (patients) mix and labels separate in a latent space.

Why: a batch-agnostic encoder should put spots of the same tissue class together whatever the
patient. We measure both sides on the same embedding:

- ``batch_silhouette``: silhouette of the batch labels (−1..1; near 0 = batches mixed, high =
  patients form their own clusters); ``batch_silhouette_within_label`` computes it inside each
  tissue class and averages (what is left once biology is held fixed);
- ``label_silhouette``: silhouette of the tissue labels (higher = classes apart);
- ``knn_batch_accuracy``: how often the k nearest neighbours vote for the spot's own batch
  (chance = largest batch share; lower = better mixed), with the chance level beside it;
- ``mixing_entropy``: mean entropy of the batch mix among k neighbours, normalised to 0..1
  (1 = perfectly mixed), and ``ilisi``: an iLISI-like inverse Simpson index rescaled to 0..1;
- ``knn_transfer``: kNN label transfer from training patients to a held-out patient (accuracy,
  macro-F1): the test that matters for unseen patients.

Euclidean distances after per-dimension standardisation are used everywhere, so latents of
different scales (PCA, VAE) are compared fairly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def _std(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    return (X - X.mean(axis=0)) / sd


def _codes(values: Any) -> tuple[np.ndarray, list]:
    s = pd.Series(list(values), dtype=object)
    ok = s.notna().to_numpy()
    cats = sorted({str(v) for v in s[ok]})
    pos = {c: i for i, c in enumerate(cats)}
    codes = np.array([pos[str(v)] if o else -1 for v, o in zip(s, ok, strict=True)], np.int64)
    return codes, cats


def _silhouette(X: np.ndarray, codes: np.ndarray, max_n: int = 4000, seed: int = 0) -> float:
    from sklearn.metrics import silhouette_score

    keep = codes >= 0
    X, codes = X[keep], codes[keep]
    if len(np.unique(codes)) < 2 or len(codes) < 3:
        return float("nan")
    if len(codes) > max_n:
        idx = np.random.default_rng(seed).choice(len(codes), max_n, replace=False)
        X, codes = X[idx], codes[idx]
    return float(silhouette_score(X, codes))


def batch_silhouette(X: np.ndarray, batch: Sequence, labels: Sequence | None = None) -> float:
    """Silhouette of the batches (within each label when ``labels`` are given, then averaged
    weighted by class size). Near 0 = mixed; high = batches separate."""
    Xs = _std(X)
    b, _ = _codes(batch)
    if labels is None:
        return _silhouette(Xs, b)
    y, cats = _codes(labels)
    vals, weights = [], []
    for c in range(len(cats)):
        m = y == c
        if m.sum() < 3 or len(np.unique(b[m])) < 2:
            continue
        s = _silhouette(Xs[m], b[m])
        if np.isfinite(s):
            vals.append(s)
            weights.append(m.sum())
    return float(np.average(vals, weights=weights)) if vals else float("nan")


def label_silhouette(X: np.ndarray, labels: Sequence) -> float:
    """Silhouette of the tissue labels (unlabelled spots ignored). Higher = classes apart."""
    y, _ = _codes(labels)
    return _silhouette(_std(X), y)


def _knn(X: np.ndarray, k: int):
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, len(X) - 1))
    nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
    _, idx = nn.kneighbors(X)
    return idx[:, 1:]


def knn_batch_accuracy(X: np.ndarray, batch: Sequence, k: int = 15) -> tuple[float, float]:
    """``(accuracy, chance)`` of predicting a spot's batch from its k nearest neighbours
    (leave-self-out). Lower accuracy = better mixed; chance = share of the largest batch."""
    b, _ = _codes(batch)
    if len(np.unique(b)) < 2:
        return float("nan"), 1.0
    idx = _knn(_std(X), k)
    nb = b.max() + 1
    votes = np.zeros((len(b), nb))
    for j in range(idx.shape[1]):
        votes[np.arange(len(b)), b[idx[:, j]]] += 1
    acc = float((votes.argmax(1) == b).mean())
    chance = float(np.bincount(b).max() / len(b))
    return acc, chance


def mixing_entropy(X: np.ndarray, batch: Sequence, k: int = 30) -> tuple[float, float]:
    """``(entropy, ilisi)`` of the batch mix among each spot's k neighbours, both in 0..1
    (1 = neighbourhoods as mixed as possible given the number of batches)."""
    b, cats = _codes(batch)
    nb = len(cats)
    if nb < 2:
        return float("nan"), float("nan")
    idx = _knn(_std(X), k)
    counts = np.zeros((len(b), nb))
    for j in range(idx.shape[1]):
        counts[np.arange(len(b)), b[idx[:, j]]] += 1
    p = counts / counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -(np.where(p > 0, p * np.log(p), 0.0)).sum(1) / np.log(nb)
    simpson = 1.0 / (p ** 2).sum(1)
    ilisi = (simpson - 1.0) / (nb - 1.0)
    return float(ent.mean()), float(ilisi.mean())


def knn_transfer(X_train: np.ndarray, y_train: Sequence, X_test: np.ndarray,
                 y_test: Sequence, k: int = 15) -> dict:
    """kNN label transfer (majority of k neighbours, distance-weighted) from the training spots
    to the test spots; unlabelled spots are ignored. Standardised with the training statistics."""
    from sklearn.neighbors import KNeighborsClassifier

    from .classification import classification_metrics

    ytr = pd.Series(list(y_train), dtype=object)
    yte = pd.Series(list(y_test), dtype=object)
    mtr, mte = ytr.notna().to_numpy(), yte.notna().to_numpy()
    Xtr = np.asarray(X_train, np.float64)
    mu, sd = Xtr[mtr].mean(0), Xtr[mtr].std(0)
    sd[sd == 0] = 1.0
    A = (Xtr[mtr] - mu) / sd
    Bt = (np.asarray(X_test, np.float64)[mte] - mu) / sd
    if len(A) == 0 or len(Bt) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": int(len(Bt))}
    clf = KNeighborsClassifier(n_neighbors=int(min(k, len(A))), weights="distance").fit(
        A, ytr[mtr].astype(str).to_numpy())
    pred = clf.predict(Bt)
    m = classification_metrics(yte[mte].astype(str).to_numpy(), pred)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": int(len(Bt))}


def mixing_report(X: np.ndarray, batch: Sequence, labels: Sequence | None = None,
                  k: int = 15) -> dict:
    """All mixing/separation figures of one embedding in one dict."""
    acc, chance = knn_batch_accuracy(X, batch, k)
    ent, ilisi = mixing_entropy(X, batch, max(k, 30))
    out = {"batch_silhouette": batch_silhouette(X, batch),
           "knn_batch_accuracy": acc, "knn_batch_chance": chance,
           "mixing_entropy": ent, "ilisi": ilisi}
    if labels is not None:
        out["batch_silhouette_within_label"] = batch_silhouette(X, batch, labels)
        out["label_silhouette"] = label_silhouette(X, labels)
    return out
