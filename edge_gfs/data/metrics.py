"""Confusion-matrix IoU, accumulated over a whole split (not averaged per frame), as benchmark.md asks."""

from __future__ import annotations

import numpy as np

from edge_gfs.core.labels import IGNORE


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes x num_classes) counts, rows = ground truth. Ignore-labelled pixels are skipped."""
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    inside = (g < num_classes) & (p < num_classes)
    # predictions outside the class range (e.g. 255 = unknown) count as misses for their ground truth
    cm = np.bincount(g[inside] * num_classes + p[inside], minlength=num_classes**2).reshape(num_classes, num_classes)
    misses = np.bincount(g[~inside & (g < num_classes)], minlength=num_classes)
    return np.concatenate([cm, misses[:, None]], axis=1).astype(np.int64)


def scored_confusion(pred: np.ndarray, gt: np.ndarray, scored: list[int], num_classes: int) -> np.ndarray:
    """confusion() with ground truth outside `scored` ignored: a model is judged only on the classes it has
    (a base-only model is not charged for the pixels of classes it was never taught)."""
    return confusion(pred, np.where(np.isin(gt, scored), gt, IGNORE).astype(np.uint8), num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class from a confusion (with the extra 'miss' column); NaN where a class never occurs."""
    n = cm.shape[0]
    tp = np.diag(cm[:, :n]).astype(np.float64)
    gt_total = cm.sum(axis=1)
    pred_total = cm[:, :n].sum(axis=0)
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def summarize(cm: np.ndarray, class_names: list[str], base: list[int], novel: list[int]) -> dict:
    """Per-class IoU and base / novel / total mIoU and hIoU, in percent."""
    iou = iou_per_class(cm) * 100
    def mean(ids: list[int]) -> float | None:
        vals = [iou[i] for i in ids if not np.isnan(iou[i])]
        return float(np.mean(vals)) if vals else None
    b, n = mean(base), mean(novel)
    out = {"per_class": {class_names[i]: (None if np.isnan(iou[i]) else float(iou[i])) for i in range(len(iou))},
           "base_miou": b, "novel_miou": n, "total_miou": mean(list(base) + list(novel))}
    out["hiou"] = (2 * b * n / (b + n)) if (b is not None and n is not None and b + n > 0) else None
    return out
