"""Object detection metrics: match predicted boxes to ground-truth boxes at an IoU threshold and
count true positives, false positives and misses -> precision, recall, F1.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels (VOC order); segmentation tables are converted
with :func:`boxes_from_table`. Matching is one-to-one: greedy by descending score (the COCO/VOC
convention) or optimal (Hungarian, maximising total IoU among pairs above the threshold).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from ..segmentation.boxes import box_iou

REPORT_COLUMNS = ["image", "n_gt", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1",
                  "mean_iou", "seconds"]


@dataclass
class MatchResult:
    pairs: list[tuple[int, int, float]]  # (pred index, gt index, IoU)
    unmatched_pred: list[int]
    unmatched_gt: list[int]

    @property
    def tp(self) -> int:
        return len(self.pairs)

    @property
    def fp(self) -> int:
        return len(self.unmatched_pred)

    @property
    def fn(self) -> int:
        return len(self.unmatched_gt)


def match_boxes(pred: np.ndarray, gt: np.ndarray, scores: np.ndarray | None = None, *,
                iou_threshold: float = 0.5, method: str = "greedy") -> MatchResult:
    """One-to-one matching of predicted to true boxes with IoU >= ``iou_threshold``.

    ``greedy``: predictions in descending score order each take the free true box with the
    highest IoU. ``hungarian``: the assignment maximising the summed IoU of valid pairs.
    """
    pred = np.asarray(pred, dtype=float).reshape(-1, 4)
    gt = np.asarray(gt, dtype=float).reshape(-1, 4)
    iou = box_iou(pred, gt)
    pairs: list[tuple[int, int, float]] = []
    if len(pred) and len(gt):
        if method == "greedy":
            order = np.argsort(-np.asarray(scores, float), kind="stable") if scores is not None \
                else np.arange(len(pred))
            taken = np.zeros(len(gt), bool)
            for i in order:
                cand = np.where(~taken, iou[i], -1.0)
                j = int(np.argmax(cand))
                if cand[j] >= iou_threshold:
                    taken[j] = True
                    pairs.append((int(i), j, float(iou[i, j])))
        elif method == "hungarian":
            from scipy.optimize import linear_sum_assignment

            cost = np.where(iou >= iou_threshold, -iou, 0.0)
            rows, cols = linear_sum_assignment(cost)
            pairs = [(int(i), int(j), float(iou[i, j])) for i, j in zip(rows, cols, strict=True)
                     if iou[i, j] >= iou_threshold]
        else:
            raise InputError(None, f"unknown matching method '{method}' (greedy|hungarian)")
    mp = {p for p, _, _ in pairs}
    mg = {g for _, g, _ in pairs}
    return MatchResult(pairs=sorted(pairs),
                       unmatched_pred=[i for i in range(len(pred)) if i not in mp],
                       unmatched_gt=[j for j in range(len(gt)) if j not in mg])


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 (NaN where undefined: no predictions / no ground truth)."""
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    if tp == 0:
        f1 = 0.0 if (tp + fp + fn) else float("nan")
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def boxes_from_table(table: pd.DataFrame) -> np.ndarray:
    """(n, 4) VOC-order boxes (xmin, ymin, xmax, ymax) from a segmentation objects table."""
    if len(table) == 0:
        return np.zeros((0, 4))
    return table[["xmin", "ymin", "xmax", "ymax"]].to_numpy(dtype=float)


def evaluate_predictions(pred_tables: dict[str, pd.DataFrame], gt_tables: dict[str, pd.DataFrame],
                         *, classes: tuple[str, ...] | None = ("WBC",), iou_threshold: float = 0.5,
                         method: str = "greedy", seconds: dict[str, float] | None = None
                         ) -> pd.DataFrame:
    """Per-image counts and metrics plus a final ``TOTAL`` row (micro-averaged over images:
    precision/recall/F1 from the summed counts; ``mean_iou`` over all matched pairs)."""
    rows, all_iou = [], []
    for name, gt in gt_tables.items():
        g = gt if classes is None or "name" not in gt else gt[gt["name"].isin(classes)]
        pred = pred_tables.get(name)
        if pred is None:
            pred = pd.DataFrame(columns=["xmin", "ymin", "xmax", "ymax", "score"])
        m = match_boxes(boxes_from_table(pred), g[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float),
                        pred["score"].to_numpy(float) if "score" in pred and len(pred) else None,
                        iou_threshold=iou_threshold, method=method)
        ious = [i for _, _, i in m.pairs]
        all_iou += ious
        p, r, f = prf(m.tp, m.fp, m.fn)
        rows.append((name, len(g), len(pred), m.tp, m.fp, m.fn, p, r, f,
                     float(np.mean(ious)) if ious else float("nan"),
                     float((seconds or {}).get(name, float("nan")))))
    df = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    tp, fp, fn = int(df["tp"].sum()), int(df["fp"].sum()), int(df["fn"].sum())
    p, r, f = prf(tp, fp, fn)
    total = pd.DataFrame([("TOTAL", int(df["n_gt"].sum()), int(df["n_pred"].sum()), tp, fp, fn,
                           p, r, f, float(np.mean(all_iou)) if all_iou else float("nan"),
                           float(df["seconds"].sum()))], columns=REPORT_COLUMNS)
    return pd.concat([df, total], ignore_index=True)


def evaluate_detection(images_dir: str | os.PathLike, boxes_dir: str | os.PathLike | None = None,
                       method: str = "classical", classes: tuple[str, ...] = ("WBC",), *,
                       iou_threshold: float = 0.5, matching: str = "greedy",
                       limit: int | None = None, image_ids: list[str] | None = None,
                       device: str = "auto", progress: ProgressFn | None = None,
                       cancel: CancelFlag | None = None, **params: Any) -> pd.DataFrame:
    """Segment every smear of ``images_dir`` with ``method`` and score its objects' boxes
    against the VOC boxes of ``boxes_dir`` (same file stem, ``.xml``) of the given classes.

    ``images_dir`` may also be a VOC folder (``JPEGImages`` + ``Annotations``) with
    ``boxes_dir=None``. Images without an annotation file are skipped. Returns one row per image
    and a ``TOTAL`` row (see :func:`evaluate_predictions`).
    """
    import time
    import warnings

    from ..io.smears import SmearWarning, read_smear_folder, read_voc_boxes
    from ..segmentation import segment

    images = read_smear_folder(images_dir)
    bdir = Path(boxes_dir) if boxes_dir is not None else None
    if bdir is not None and not bdir.is_dir():
        raise InputError(bdir, "boxes folder not found")
    pairs = []
    for row in images.itertuples():
        ann = (bdir / f"{row.image_id}.xml") if bdir is not None else (
            Path(row.annotation) if row.annotation else None)
        if ann is not None and ann.exists():
            pairs.append((row.image_id, row.image, ann))
    if image_ids is not None:
        keep = set(image_ids)
        pairs = [p for p in pairs if p[0] in keep]
    if limit is not None:
        pairs = pairs[: int(limit)]
    if not pairs:
        raise InputError(bdir or images_dir, "no image has a matching VOC .xml annotation")
    preds, gts, secs = {}, {}, {}
    for k, (name, img_path, ann) in enumerate(pairs):
        check_cancel(cancel, "evaluation")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmearWarning)
            gts[name] = read_voc_boxes(ann)
        image = _read_rgb(img_path)
        t0 = time.perf_counter()
        res = segment(image, method=method, device=device, **params)
        secs[name] = time.perf_counter() - t0
        preds[name] = res.table
        report(progress, k + 1, len(pairs), name)
    return evaluate_predictions(preds, gts, classes=classes, iou_threshold=iou_threshold,
                                method=matching, seconds=secs)


def _read_rgb(path: str | os.PathLike) -> np.ndarray:
    from ..io.smears import read_smear

    pyr = read_smear(path)
    return pyr.read_region(0, 0, pyr.height, pyr.width)
