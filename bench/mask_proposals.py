"""How good is the operator's box -> mask proposal? IoU with the true object on CamVid test.

    python bench/mask_proposals.py                      # all variants, writes bench/results/mask_proposals.{json,md}
    python bench/mask_proposals.py --variants plain,shipped --limit 40

Each object is a connected component of a class's ground truth (8-connected, >= MIN_AREA px at 360x480): every
Car and every Pedestrian in the 233 test frames. Its box is the component's bounding box grown by PAD px on each
side, as a person drags it a little loose. The proposal is scored against that component alone. The model
seeds come from the bundled `camvid-fold0`, which was never taught Car or Pedestrian: what the node knows
when an operator teaches them. Reports the median IoU and the share of objects below 0.5 per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gfs_camvid import pick  # noqa: E402

from edge_gfs.core.config import CAMVID_CLASSES  # noqa: E402
from edge_gfs.core.segmenter import Segmenter, to_input  # noqa: E402
from edge_gfs.core import zoo  # noqa: E402
from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.ui.operator_session import ellipse_or_box, grabcut_box, propose_mask  # noqa: E402

MIN_AREA = 400  # px at 360x480: smaller objects are not what an operator draws a box around
PAD = 4
CLASSES = ("Car", "Pedestrian")

# name -> (what, function(image, rect, labels, confidence) -> bool mask)
VARIANTS = {
    "box": ("the box itself", lambda img, rect, lab, conf: ellipse_or_box(img.shape[:2], rect, ellipse=False)),
    "ellipse": ("the ellipse inscribed in the box", lambda img, rect, lab, conf: ellipse_or_box(img.shape[:2], rect)),
    "plain": ("GrabCut from the box alone (the operator before this benchmark)",
              lambda img, rect, lab, conf: grabcut_box(img, rect)),
    "model_seeds": ("GrabCut; pixels in the box that the model labels a base class with >= 0.9 confidence "
                    "start as probable background",
                    lambda img, rect, lab, conf: grabcut_box(img, rect, background=conf >= 230)),
    "shipped": ("propose_mask as the operator runs it: GrabCut on an equalised copy with the centre ellipse at 60% "
                "of the box fixed as object, the piece holding the centre, the inscribed ellipse if GrabCut loses it",
                lambda img, rect, lab, conf: propose_mask(img, rect)[0]),
    "no_core": ("propose_mask without a fixed centre: GrabCut on an equalised copy, the piece holding the centre, "
                "the ellipse when GrabCut loses the object",
                lambda img, rect, lab, conf: propose_mask(img, rect, core_share=0.0)[0]),
    "shipped_model_seeds": ("propose_mask with the model seeds of model_seeds",
                            lambda img, rect, lab, conf: propose_mask(img, rect, background=conf >= 230)[0]),
    "no_equalise": ("propose_mask without the equalised copy",
                    lambda img, rect, lab, conf: propose_mask(img, rect, equalise=False)[0]),
    "core_0.5_no_equalise": ("core_0.5 without the equalised copy",
                             lambda img, rect, lab, conf: propose_mask(img, rect, core_share=0.5, equalise=False)[0]),
}
for _share in (0.3, 0.4, 0.5, 0.6, 0.7):  # the centre seed's size, tuned on val
    VARIANTS[f"core_{_share}"] = (f"propose_mask, the centre ellipse at {_share:.0%} of the box is surely the object",
                                  lambda img, rect, lab, conf, s=_share: propose_mask(img, rect, core_share=s)[0])


def objects(label: np.ndarray, class_id: int) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(padded inclusive box, component mask) of each ground-truth component of class_id."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats((label == class_id).astype(np.uint8), connectivity=8)
    h, w = label.shape
    out = []
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        if area < MIN_AREA:
            continue
        rect = (max(0, x - PAD), max(0, y - PAD), min(w - 1, x + bw - 1 + PAD), min(h - 1, y + bh - 1 + PAD))
        out.append((rect, comp == k))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)}")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--limit", type=int, default=None, help="only the first N frames (a quick look)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    names = pick(p, args.variants, VARIANTS, "variant")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    data = camvid()
    seg = Segmenter(zoo.load("camvid-fold0")[0])
    frames = data.names(args.split)[:args.limit]
    scores: dict[str, dict[str, list[float]]] = {v: {c: [] for c in CLASSES} for v in names}
    seconds: dict[str, list[float]] = {v: [] for v in names}
    for name in tqdm(frames, desc="frames"):
        img, gt = data.read(args.split, name)
        feats = seg.features(to_input([img], seg.cfg.input_hw))
        lab, conf = seg.label_maps_confidence(seg.logits(feats), img.shape[:2], confidence=True)
        for cname in CLASSES:
            for rect, truth in objects(gt, CAMVID_CLASSES.index(cname)):
                for v in names:
                    s = time.perf_counter()
                    mask = VARIANTS[v][1](img, rect, lab[0], conf[0])
                    seconds[v].append(time.perf_counter() - s)
                    scores[v][cname].append(iou(mask, truth))
    rows = []
    for v in names:
        every = [x for c in CLASSES for x in scores[v][c]]
        row = {"variant": v, "what": VARIANTS[v][0], "objects": len(every), "median_iou": float(np.median(every)),
               "mean_iou": float(np.mean(every)), "share_below_0.5": float(np.mean(np.array(every) < 0.5)),
               "median_seconds": float(np.median(seconds[v]))}
        for c in CLASSES:
            row[c] = {"objects": len(scores[v][c]), "median_iou": float(np.median(scores[v][c])),
                      "share_below_0.5": float(np.mean(np.array(scores[v][c]) < 0.5))}
        rows.append(row)
    report = {"split": args.split, "frames": len(frames), "min_area": MIN_AREA, "pad": PAD,
              "command": "python bench/mask_proposals.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "wall_seconds": time.time() - t0, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "mask_proposals" if args.limit is None else "mask_proposals_quick"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(report))
    print((args.out / f"{stem}.md").read_text())
    return 0


def markdown(r: dict) -> str:
    lines = ["# Box -> mask proposals of the operator (CamVid " + r["split"] + ")", "",
             f"Command: `{r['command']}`; {r['frames']} frames; objects are ground-truth components >= {r['min_area']} px "
             f"of Car and Pedestrian, boxed with {r['pad']} px of slack; wall time {r['wall_seconds'] / 60:.1f} min.", "",
             "| variant | what | objects | median IoU | IoU < 0.5 | Car median | Car < 0.5 | Pedestrian median | "
             "Pedestrian < 0.5 | median time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['variant']} | {x['what']} | {x['objects']} | {x['median_iou']:.2f} | "
                     f"{100 * x['share_below_0.5']:.0f}% | {x['Car']['median_iou']:.2f} | "
                     f"{100 * x['Car']['share_below_0.5']:.0f}% | {x['Pedestrian']['median_iou']:.2f} | "
                     f"{100 * x['Pedestrian']['share_below_0.5']:.0f}% | {1000 * x['median_seconds']:.0f} ms |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
