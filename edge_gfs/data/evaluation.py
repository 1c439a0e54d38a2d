"""GFS-CamVid evaluation pieces shared by `edge-gfs evaluate`, the trainer's release and the benchmarks: drawing
support frames by seed, teaching them in `mask` or `full` mode, and scoring a split.

Teaching follows GFS-CamVid (../shared/spec/benchmark.md §1): for each class the model was not trained on,
K distinct train frames with >= 1,000 of its pixels, drawn with a seed; `mask` mode gives only that class's
mask, `full` mode the frame's label map with the other novel classes ignored.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from edge_gfs.core.classifier import Shot
from edge_gfs.core.labels import FULL, IGNORE
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import Dataset
from edge_gfs.data.metrics import scored_confusion, summarize

MIN_SUPPORT_PIXELS = 1000


def class_pixel_counts(data: Dataset, split: str = "train") -> dict[str, np.ndarray]:
    """Pixels of each label value per frame: what support drawing filters on."""
    return {n: np.bincount(data.read(split, n)[1].ravel(), minlength=256) for n in data.names(split)}


def draw_supports(data: Dataset, novel: list[int], k: int, seed: int,
                  counts: dict[str, np.ndarray] | None = None) -> dict[int, list[str]]:
    """K distinct train frames per novel class, each with >= 1,000 pixels of it (360x480), by seed."""
    rng = np.random.default_rng(seed)
    counts = counts or class_pixel_counts(data)
    names = sorted(counts)
    chosen: dict[int, list[str]] = {}
    for c in novel:
        candidates = [n for n in names if counts[n][c] >= MIN_SUPPORT_PIXELS]
        if len(candidates) < k:
            raise ValueError(f"only {len(candidates)} train frames show class {c} with >= {MIN_SUPPORT_PIXELS} px")
        chosen[c] = [candidates[i] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]
    return chosen


def support_labels(lab: np.ndarray, target: int, novel: list[int], mode: str) -> np.ndarray | None:
    """What a support frame gives besides its mask: nothing (`mask`), or its label map with the other novel
    classes ignored (`full`: they are not taught yet when this class is)."""
    if mode != FULL:
        return None
    return np.where(np.isin(lab, [o for o in novel if o != target]), IGNORE, lab).astype(np.uint8)


def teach_supports(seg: Segmenter, data: Dataset, supports: dict[int, list[str]], mode: str) -> list[Shot]:
    novel = list(supports)
    shots = []
    for c, names in supports.items():
        for n in names:
            img, lab = data.read("train", n)
            shots.append(seg.make_shot(img, lab == c, c, labels=support_labels(lab, c, novel, mode)))
    return shots


def evaluate_split(seg: Segmenter, data: Dataset, split: str, batch: int = 8, limit: int | None = None,
                   progress: bool = True) -> dict:
    cfg = seg.cfg
    scored = seg.classifier.row_ids
    n = len(cfg.class_names)
    cm = np.zeros((n, n + 1), dtype=np.int64)
    names = data.names(split)[:limit]
    for s in tqdm(range(0, len(names), batch), desc=f"{split}", disable=not progress, leave=False):
        pairs = [data.read(split, nm) for nm in names[s:s + batch]]
        preds = seg.segment([p[0] for p in pairs])
        for pred, (_, gt) in zip(preds, pairs):
            cm += scored_confusion(pred, gt, scored, n)
    novel = [c for c in scored if c not in cfg.base_classes]
    return summarize(cm, cfg.class_names, cfg.base_classes, novel) | {"frames": len(names)}
