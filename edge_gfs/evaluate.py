"""`edge-gfs evaluate`: a model's mIoU on a CamVid split, optionally after teaching its missing classes.

Teaching follows GFS-CamVid (../shared/spec/benchmark.md §1): for each class the model was not trained on,
K distinct train frames with >= 1,000 of its pixels, drawn with a seed; `mask` mode gives only that class's
mask, `full` mode the frame's label map with the other novel classes ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import zoo
from .config import IGNORE, parse_hw
from .datasets import Dataset, camvid
from .metrics import scored_confusion, summarize
from .model import at_size
from .predict import Segmenter
from .registry import Shot

EXAMPLE = """examples:
  edge-gfs evaluate --model camvid --split val
  edge-gfs evaluate --model camvid-fold0 --split test --shots 5 --seed 123 --support-mode mask
"""
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
    if mode != "full":
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-gfs evaluate", description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid", help="bundled name or .pt path")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--shots", type=int, default=0, help="K: teach each class the model lacks from K train frames")
    p.add_argument("--seed", type=int, default=123, help="support draw seed")
    p.add_argument("--support-mode", default="mask", choices=["mask", "full"])
    p.add_argument("--limit", type=int, default=None, help="only the first N frames of the split")
    p.add_argument("--input-size", default=None, type=parse_hw, metavar="HxW",
                   help="HxW to run the model at instead of its own (a speed/accuracy profile, e.g. 288x384)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    try:
        model, _ = zoo.load(args.model)
        data = camvid()
    except (FileNotFoundError, ValueError) as e:
        print(f"edge-gfs evaluate: {e}", file=sys.stderr)
        return 2
    if args.input_size:
        model = at_size(model, args.input_size)
    seg = Segmenter(model)
    t0 = time.time()
    result: dict = {"model": args.model, "split": args.split, "shots": args.shots,
                    "input_hw": list(model.cfg.input_hw)}
    if args.shots:
        novel = [c for c in range(len(model.cfg.class_names)) if c not in model.cfg.base_classes]
        supports = draw_supports(data, novel, args.shots, args.seed)
        seg.set_shots(teach_supports(seg, data, supports, args.support_mode))
        result |= {"seed": args.seed, "support_mode": args.support_mode,
                   "supports": {model.cfg.class_names[c]: v for c, v in supports.items()}}
    result |= evaluate_split(seg, data, args.split, limit=args.limit)
    result["seconds"] = round(time.time() - t0, 1)
    for name, v in result["per_class"].items():
        print(f"  {name:<12} {'-' if v is None else f'{v:5.1f}'}")
    for key in ("base_miou", "novel_miou", "total_miou", "hiou"):
        if result[key] is not None:
            print(f"{key:<11} {result[key]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0
