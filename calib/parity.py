"""Parity of a compiled extractor with eager PyTorch, on what the user sees: final label maps of val frames.

Both sides run the same Segmenter path (resize, extractor, DQCE + classifier, upsample, argmax), so the only
difference is the extractor. Feature-level tolerances would say little about labels (an argmax flips only
near ties), so the thresholds are on the label maps: pixel agreement and mIoU against the ground truth over
the model's classes, and for bf16/int8 also every class's IoU and the mIoU after teaching (Gate, GATES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from edge_gfs.core.config import FOLDS
from edge_gfs.core.model import CaplModel
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import Dataset, camvid
from edge_gfs.data.metrics import confusion, summarize


@dataclass(frozen=True)
class Gate:
    """What a compiled extractor must keep, measured on val label maps against eager PyTorch.

    fp32/fp16 differ from eager only by rounding, so pixel agreement and an mIoU change either way are the test.
    Low precision moves labels at object borders by design, so beyond a pixel-agreement floor its gate is on
    accuracy *lost*: overall mIoU, every class (a thin class can collapse while the mean hardly moves), and the
    classes taught on the robot, whose prototypes come from the same low-precision features (taught_delta).
    One-sided, because on val these low-precision extractors often scored higher than eager: INT8 raised fold
    0's novel mIoU after teaching by 1.1-1.4 points, and on a few frames one class's IoU moves by 3 either way
    (bench/results/cpu_precision.md). A robot is hurt by a loss, not by a gain; agreement bounds the change.
    None = not checked. The bf16/int8 thresholds were chosen on all 101 val frames with both bundled models
    (bench/results/cpu_precision.md; TensorRT INT8: bench/results/int8_gate.md).
    """

    min_agreement: float  # % of pixels with the same label
    max_miou_delta: float  # points of mIoU against the ground truth (lost, when one_sided)
    max_class_delta: float | None = None  # points of IoU lost by any class present in the frames
    max_taught_loss: float | None = None  # points of total (and novel) mIoU lost after teaching K=5 shots per class

    one_sided: bool = False  # mIoU: a loss counts, a gain does not

    def to_dict(self) -> dict:
        miou = "max_miou_loss" if self.one_sided else "max_miou_delta"
        return {"min_pixel_agreement_pct": self.min_agreement, miou: self.max_miou_delta} | (
            {"max_class_iou_loss": self.max_class_delta} if self.max_class_delta is not None else {}) | (
            {"max_taught_miou_loss": self.max_taught_loss} if self.max_taught_loss is not None else {})


GATES = {"fp32": Gate(99.5, 0.3), "fp16": Gate(99.5, 0.3),
         "bf16": Gate(99.0, 0.5, 2.0, 1.0, one_sided=True), "int8": Gate(98.5, 0.5, 2.0, 1.0, one_sided=True)}
TEACH_K, TEACH_SEED = 5, 0
_DRAWN: dict[tuple[str, tuple[int, ...]], dict[int, list[str]]] = {}  # (train root, classes) -> shot names


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


def teach_classes(model: CaplModel) -> list[int]:
    """What the teaching check teaches: the model's held-out classes, or, for a model trained on every class,
    GFS-CamVid fold 0's (their shots then add context to the learned rows, as a teach of a known class does)."""
    novel = [c for c in range(len(model.cfg.class_names)) if c not in model.cfg.base_classes]
    return novel or list(FOLDS["0"])


def _confusions(eager: Segmenter, compiled: Segmenter, frames: Frames, n: int, progress: bool,
                desc: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Confusion matrices of both sides against the ground truth, and each frame's pixel agreement %."""
    cm_e = np.zeros((n, n + 1), dtype=np.int64)
    cm_c = np.zeros_like(cm_e)
    agreement = []
    for img, lab in tqdm(list(zip(frames.images, frames.labels)), desc=desc, unit="frame", disable=not progress):
        a = eager.segment([img])[0]
        b = compiled.segment([img])[0]
        agreement.append(100.0 * int((a == b).sum()) / a.size)
        cm_e += confusion(a, lab, n)
        cm_c += confusion(b, lab, n)
    return cm_e, cm_c, agreement


def _class_changes(s_e: dict, s_c: dict) -> dict[str, float]:
    """IoU compiled minus eager per class (negative = lost), for the classes scored in both."""
    return {name: round(s_c["per_class"][name] - iou, 2) for name, iou in s_e["per_class"].items()
            if iou is not None and s_c["per_class"][name] is not None}


def check_parity(model: CaplModel, extractor: Callable[[torch.Tensor], torch.Tensor], precision: str | Gate,
                 frames: Frames, progress: bool = True, per_frame: list[float] | None = None,
                 train: Dataset | None = None) -> dict:
    """Label maps of eager vs compiled on the frames, against the precision's Gate (or a Gate given, for
    benches) -> a dict with `passed`. `per_frame`, when given, receives each frame's agreement % (for benches
    that want the spread); `train` is where the teaching check draws its shots (CamVid's train split by default)."""
    gate = precision if isinstance(precision, Gate) else GATES[precision]
    eager = Segmenter(model)
    compiled = Segmenter(model, extractor=extractor)
    cls, base = model.cfg.class_names, model.cfg.base_classes
    n = len(cls)
    cm_e, cm_c, agree = _confusions(eager, compiled, frames, n, progress, "parity")
    if per_frame is not None:
        per_frame.extend(agree)
    s_e, s_c = summarize(cm_e, cls, base, []), summarize(cm_c, cls, base, [])
    miou_e, miou_c = s_e["total_miou"] or 0.0, s_c["total_miou"] or 0.0
    agreement = float(np.mean(agree)) if agree else 0.0
    delta = abs(miou_c - miou_e)
    changes = _class_changes(s_e, s_c)
    worst_class = min(changes, key=changes.get) if changes else None
    result = {"split": frames.split, "frames": len(frames.names), "pixel_agreement_pct": round(agreement, 4),
              "worst_frame_agreement_pct": round(min(agree, default=0.0), 4), "miou_eager": round(miou_e, 3),
              "miou_compiled": round(miou_c, 3), "miou_delta": round(delta, 3), "class_iou_change": changes,
              "thresholds": gate.to_dict()}
    moved = (miou_e - miou_c) if gate.one_sided else delta
    passed = agreement >= gate.min_agreement and moved <= gate.max_miou_delta
    if gate.max_class_delta is not None and worst_class is not None:
        result["worst_class"] = worst_class
        passed = passed and -changes[worst_class] <= gate.max_class_delta
    if gate.max_taught_loss is not None:
        result["taught"] = taught_delta(eager, compiled, frames, train or camvid(), progress)
        passed = passed and result["taught"]["loss"] <= gate.max_taught_loss
    result["passed"] = bool(passed)
    return result


def taught_delta(eager: Segmenter, compiled: Segmenter, frames: Frames, train: Dataset, progress: bool) -> dict:
    """GFS after teaching: each side teaches the same K=5 train frames per class through its own extractor
    (full label maps, seed 0, as GFS-CamVid), then both are scored on the frames; loss = the larger drop of
    total and novel mIoU (negative: compiled scored higher on both)."""
    from edge_gfs.core.labels import FULL
    from edge_gfs.data.evaluation import draw_supports, teach_supports
    model = eager.model
    classes = teach_classes(model)
    key = (str(train.root), tuple(classes))
    if key not in _DRAWN:  # the draw reads every train label map; auto and the benches gate several candidates
        _DRAWN[key] = draw_supports(train, classes, TEACH_K, TEACH_SEED)
    supports = _DRAWN[key]
    for seg in (eager, compiled):
        seg.set_shots(teach_supports(seg, train, supports, FULL))
    n = len(model.cfg.class_names)
    cm_e, cm_c, _ = _confusions(eager, compiled, frames, n, progress, "parity after teaching")
    novel = [c for c in classes if c not in model.cfg.base_classes]
    s_e, s_c = (summarize(cm, model.cfg.class_names, model.cfg.base_classes, novel) for cm in (cm_e, cm_c))
    out = {"classes": [model.cfg.class_names[c] for c in classes], "k": TEACH_K, "seed": TEACH_SEED,
           "miou_eager": round(s_e["total_miou"] or 0.0, 3), "miou_compiled": round(s_c["total_miou"] or 0.0, 3)}
    losses = [out["miou_eager"] - out["miou_compiled"]]
    if novel:
        out |= {"novel_miou_eager": round(s_e["novel_miou"] or 0.0, 3),
                "novel_miou_compiled": round(s_c["novel_miou"] or 0.0, 3)}
        losses.append(out["novel_miou_eager"] - out["novel_miou_compiled"])
    out["loss"] = round(max(losses), 3)
    return out


def describe(result: dict) -> str:
    t = result["thresholds"]
    miou = (f"lost {result['miou_eager'] - result['miou_compiled']:.3f}, <= {t['max_miou_loss']}" if "max_miou_loss" in t
            else f"delta {result['miou_delta']:.3f}, <= {t['max_miou_delta']}")
    text = (f"parity on {result['frames']} {result['split']} frames: pixel agreement "
            f"{result['pixel_agreement_pct']:.3f}% (>= {t['min_pixel_agreement_pct']}), mIoU eager "
            f"{result['miou_eager']:.2f} vs compiled {result['miou_compiled']:.2f} ({miou})")
    if "max_class_iou_loss" in t and result.get("worst_class"):
        text += (f", worst class {result['worst_class']} {result['class_iou_change'][result['worst_class']]:+.2f} IoU "
                 f"(loss <= {t['max_class_iou_loss']})")
    if "taught" in result:
        text += (f", mIoU lost after teaching {'/'.join(result['taught']['classes'])} {result['taught']['loss']:.2f} "
                 f"(<= {t['max_taught_miou_loss']})")
    return f"{text}: {'PASS' if result['passed'] else 'FAIL'}"
