"""`edge-gfs evaluate`: a model's mIoU on a CamVid split, optionally after teaching its missing classes
(GFS-CamVid's support draw and modes: edge_gfs/data/evaluation.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge_gfs.core import zoo
from edge_gfs.core.config import parse_hw
from edge_gfs.core.model import at_size
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import camvid
from edge_gfs.data.evaluation import draw_supports, evaluate_split, teach_supports

EXAMPLE = """examples:
  edge-gfs evaluate --model camvid --split val
  edge-gfs evaluate --model camvid-fold0 --split test --shots 5 --seed 123 --support-mode mask
"""
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
