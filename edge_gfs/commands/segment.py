"""`edge-gfs segment`: label a few frames with a model and write colour overlays (PNG)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_gfs.core import zoo
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import camvid
from edge_gfs.data.metrics import confusion, summarize
from edge_gfs.ui.overlay import legend, overlay

EXAMPLE = """examples:
  edge-gfs segment                                   # 4 CamVid test frames with the default model
  edge-gfs segment --model camvid-fold0 --count 8 --out out/fold0
  edge-gfs segment --images my_frames/ --out out/mine
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs segment", description="Segment frames and write overlays (PNG).",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid", help="bundled name (camvid, camvid-fold0) or a .pt path")
    p.add_argument("--images", type=Path, help="an image file or a folder of them (default: CamVid test frames)")
    p.add_argument("--count", type=int, default=4, help="how many CamVid test frames, spread over the split")
    p.add_argument("--out", type=Path, default=Path("out/segment"), help="where the overlays go")
    return p


def _inputs(args: argparse.Namespace) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    if args.images is None:
        data = camvid()
        names = data.names("test")
        step = max(1, len(names) // max(1, args.count))
        return [(n, *data.read("test", n)) for n in names[::step][: args.count]]
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
        if args.images.is_dir() else [args.images]
    out = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot decode {p}: is it a JPEG/PNG image?")
        out.append((p.stem, img, None))
    if not out:
        raise SystemExit(f"no .jpg/.png images in {args.images}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, payload = zoo.load(args.model)
        frames = _inputs(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"edge-gfs segment: {e}", file=sys.stderr)
        return 2
    seg = Segmenter(model)
    cfg = model.cfg
    names = {cid: cfg.class_names[cid] for cid in seg.classifier.row_ids}
    args.out.mkdir(parents=True, exist_ok=True)
    n = len(cfg.class_names)
    cm = np.zeros((n, n + 1), dtype=np.int64)
    for name, img, gt in frames:
        t0 = time.perf_counter()
        pred = seg.segment([img])[0]
        ms = (time.perf_counter() - t0) * 1000
        panel = np.concatenate([img, overlay(img, pred), legend(names, img.shape[0])], axis=1)
        path = args.out / f"{name}.png"
        cv2.imwrite(str(path), panel)
        msg = f"{path}  {img.shape[1]}x{img.shape[0]}  {ms:.0f} ms"
        if gt is not None:
            gt = np.where(np.isin(gt, list(names)), gt, 255).astype(np.uint8)
            cm += confusion(pred, gt, n)
            valid = gt != 255
            msg += f"  pixel accuracy {100 * (pred[valid] == gt[valid]).mean():.1f}%"
        print(msg)
    if cm.sum():
        s = summarize(cm, cfg.class_names, cfg.base_classes, [])
        print(f"mIoU over these {len(frames)} frames ({len(cfg.base_classes)} classes): {s['base_miou']:.1f}")
    print(f"wrote {len(frames)} overlays to {args.out}/")
    return 0
