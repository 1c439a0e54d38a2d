"""Parity of a compiled extractor with eager PyTorch, on what the user sees: final label maps of val frames.

Both sides run the same Segmenter path (resize, extractor, DQCE + classifier, upsample, argmax), so the only
difference is the extractor. Feature-level tolerances would say little about labels (an argmax flips only
near ties), so the thresholds are on the label maps: pixel agreement, and the change in mIoU against the
ground truth over the model's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from edge_gfs.core.model import CaplModel
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import Dataset, camvid
from edge_gfs.data.metrics import confusion, summarize

# Per precision: % of pixels with the same label, and mIoU points. INT8's was chosen on val
# (bench/results/int8_gate.md: ModelOpt INT8 emulated on CPU agrees on 99.33% of the pixels of all 101 val
# frames, mIoU delta 0.07): 98.5 leaves room for TensorRT's fp16 outside the quantized convolutions and its
# accumulation order; a first GPU run (bench/gpu_smoke.py) should confirm it.
MIN_AGREEMENT = {"fp32": 99.5, "fp16": 99.5, "int8": 98.5}
MAX_MIOU_DELTA = {"fp32": 0.3, "fp16": 0.3, "int8": 1.0}


class ParityError(Exception):
    """The compiled extractor does not give the eager model's label maps closely enough."""


@dataclass
class Frames:
    split: str
    names: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]


def spread(names: list[str], count: int) -> list[str]:
    """`count` names spread evenly over a list (deterministic: the same frames every run)."""
    idx = np.unique(np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int))
    return [names[i] for i in idx]


def val_frames(count: int, data: Dataset | None = None, split: str = "val") -> Frames:
    """`count` frames spread evenly over a split, with their ground truth."""
    data = data or camvid()
    picked = spread(data.names(split), count)
    pairs = [data.read(split, n) for n in picked]
    return Frames(split, picked, [p[0] for p in pairs], [p[1] for p in pairs])


def check_parity(model: CaplModel, extractor: Callable[[torch.Tensor], torch.Tensor], precision: str,
                 frames: Frames, progress: bool = True, per_frame: list[float] | None = None) -> dict:
    """Label maps of eager vs compiled on the frames -> agreement %, mIoU of each, delta, pass/fail.
    `per_frame`, when given, receives each frame's agreement % (for benches that want the spread)."""
    eager = Segmenter(model)
    compiled = Segmenter(model, extractor=extractor)
    n = len(model.cfg.class_names)
    cm_e = np.zeros((n, n + 1), dtype=np.int64)
    cm_c = np.zeros_like(cm_e)
    same = total = 0
    worst = 100.0
    for img, lab in tqdm(list(zip(frames.images, frames.labels)), desc="parity", unit="frame", disable=not progress):
        a = eager.segment([img])[0]
        b = compiled.segment([img])[0]
        agree = int((a == b).sum())
        same, total = same + agree, total + a.size
        worst = min(worst, 100.0 * agree / a.size)
        if per_frame is not None:
            per_frame.append(100.0 * agree / a.size)
        cm_e += confusion(a, lab, n)
        cm_c += confusion(b, lab, n)
    cls = model.cfg.class_names
    base = model.cfg.base_classes
    miou_e = summarize(cm_e, cls, base, [])["total_miou"] or 0.0
    miou_c = summarize(cm_c, cls, base, [])["total_miou"] or 0.0
    agreement = 100.0 * same / max(total, 1)
    delta = abs(miou_c - miou_e)
    limit, floor = MAX_MIOU_DELTA[precision], MIN_AGREEMENT[precision]
    return {"split": frames.split, "frames": len(frames.names), "pixel_agreement_pct": round(agreement, 4),
            "worst_frame_agreement_pct": round(worst, 4), "miou_eager": round(miou_e, 3),
            "miou_compiled": round(miou_c, 3), "miou_delta": round(delta, 3),
            "thresholds": {"min_pixel_agreement_pct": floor, "max_miou_delta": limit},
            "passed": bool(agreement >= floor and delta <= limit)}


def describe(result: dict) -> str:
    t = result["thresholds"]
    return (f"parity on {result['frames']} {result['split']} frames: pixel agreement "
            f"{result['pixel_agreement_pct']:.3f}% (>= {t['min_pixel_agreement_pct']}), mIoU eager "
            f"{result['miou_eager']:.2f} vs compiled {result['miou_compiled']:.2f} (delta {result['miou_delta']:.3f}, "
            f"<= {t['max_miou_delta']}): {'PASS' if result['passed'] else 'FAIL'}")
