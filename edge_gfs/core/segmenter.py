"""Frame -> label map with a model and a classifier: the per-frame path shared by the node, `edge-gfs
segment`, the trainer's validation and the benchmark.

Frames are BGR uint8 (OpenCV's layout); the network sees RGB at the model's input size and the logits are
upsampled back to the frame's size before the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from edge_gfs.core import capl
from edge_gfs.core.classifier import Classifier, Shot, build_classifier, shot_from_features, shot_id_of
from edge_gfs.core.labels import mask_problem, support_mode
from edge_gfs.core.model import CaplModel


@dataclass
class InferenceOptions:
    """Which CAPL parts run at test time. CAPL models use both; the baseline uses neither (Eq. 2)."""

    sce: bool = True
    dqce: bool = True
    weighting: str | None = None  # override the model's dqce_weighting ("impl" or "paper") at test time
    novel_bias: float | None = None  # override the model's novel_bias (0 = uncalibrated, as in the paper)
    novel_rows: str | None = None  # override the model's novel_rows ("per_shot" or the paper's "mean")

    @classmethod
    def for_method(cls, method: str) -> "InferenceOptions":
        on = method == "capl"
        return cls(sce=on, dqce=on, novel_bias=None if on else 0.0, novel_rows=None if on else "mean")


def to_input(frames_bgr: list[np.ndarray], input_hw: tuple[int, int]) -> torch.Tensor:
    """Resize to the model's input size, BGR->RGB, stack to (B,3,H,W) float in 0..255."""
    h, w = input_hw
    batch = [cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB) for f in frames_bgr]
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()


def upsample_argmax(logits: np.ndarray, out_hw: tuple[int, int],
                    confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Bilinear upsampling of (N,h,w) logits to out_hw, then the winning row (H,W) uint8 (N <= 256) and, on
    request, its softmax probability as uint8 0-255.

    Why OpenCV plane by plane and a running maximum: at 360x480 torch's interpolate plus an argmax over the
    strided class dimension took 6 ms a frame, as long as half the compiled network; numpy's masked running
    maximum 2.2 ms; OpenCV's SIMD compare/max 1.0 ms (issue 16: at INT8 speed this is a quarter of a frame).
    Same labels: cv2.INTER_LINEAR samples pixel centres like align_corners=False, and strict `>` keeps the
    first maximum on ties, as argmax does.
    """
    h, w = out_hw
    logits = logits.astype(np.float32, copy=False)
    best = cv2.resize(logits[0], (w, h), interpolation=cv2.INTER_LINEAR)
    planes = [best.copy()] if confidence else []
    idx = np.zeros((h, w), dtype=np.uint8)
    for k in range(1, len(logits)):
        plane = cv2.resize(logits[k], (w, h), interpolation=cv2.INTER_LINEAR)
        won = cv2.compare(plane, best, cv2.CMP_GT)  # 255 where row k beats every earlier row
        cv2.max(idx, cv2.bitwise_and(won, k), dst=idx)  # k only grows, so the latest winner is the largest index
        cv2.max(best, plane, dst=best)
        if confidence:
            planes.append(plane)
    if not confidence:
        return idx, None
    total = np.zeros((h, w), dtype=np.float32)
    for plane in planes:
        total += np.exp(plane - best)
    return idx, np.clip(np.rint(255.0 / total), 0, 255).astype(np.uint8)


def check_shot(image_bgr: np.ndarray, mask: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Refuse a teaching frame that cannot give a prototype, with what to do about it (ValueError)."""
    for what, arr in (("mask", mask), ("labels", labels)):
        if arr is not None and arr.shape[:2] != image_bgr.shape[:2]:
            raise ValueError(f"{what} is {arr.shape[1]}x{arr.shape[0]} but the image is "
                             f"{image_bgr.shape[1]}x{image_bgr.shape[0]}: they must match")
    problem = mask_problem(mask)
    if problem:
        raise ValueError(problem)


class Segmenter:
    """A model plus its current classifier. Not thread-safe by design: the node swaps `classifier` between frames."""

    def __init__(self, model: CaplModel, options: InferenceOptions | None = None,
                 extractor: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model = model.eval()
        # a compiled feature extractor (calib/: ONNX Runtime, TensorRT) or the eager network
        self.extractor = extractor if extractor is not None else model.extractor
        self.cfg = model.cfg
        self.options = options or InferenceOptions.for_method(model.cfg.method)
        self.weighting = self.options.weighting or model.cfg.dqce_weighting
        self.novel_bias = model.cfg.novel_bias if self.options.novel_bias is None else self.options.novel_bias
        self.novel_rows = self.options.novel_rows or model.cfg.novel_rows
        self.shots: list[Shot] = []
        self.base_classifier = self.rebuild([])  # no shots: what mask-only shots take pseudo context from
        self.classifier = self.base_classifier

    # -- classifier -------------------------------------------------------------------------------------------
    def rebuild(self, shots: list[Shot]) -> Classifier:
        """Classifier for a set of shots; SCE off keeps the learned base rows (the baseline's Eq. 2)."""
        p_cls = self.model.prototypes.detach()
        clf = build_classifier(p_cls, self.model.g_sup, self.cfg.base_classes, shots, self.cfg.sce_pooling,
                               self.novel_rows)
        if not self.options.sce:
            clf.base_rows = capl.l2n(p_cls)
        return clf

    def set_shots(self, shots: list[Shot]) -> None:
        self.shots = list(shots)
        self.classifier = self.rebuild(self.shots)

    # -- per frame ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.extractor(rgb)  # compiled runners (calib/) take a batch too, frame by frame

    @torch.no_grad()
    def logits(self, feats: torch.Tensor, classifier: Classifier | None = None) -> torch.Tensor:
        clf = classifier or self.classifier
        return capl.classify(feats, self.model.prototypes, clf.base_rows, clf.novel_rows, self.cfg.alpha,
                             self.weighting, dqce_on=self.options.dqce, novel_bias=self.novel_bias,
                             novel_owner=clf.novel_owner)

    @torch.no_grad()
    def label_maps(self, logits: torch.Tensor, out_hw: tuple[int, int], classifier: Classifier | None = None) -> np.ndarray:
        """Upsample bilinearly to the frame size, argmax, map rows to class ids -> (B,H,W) uint8."""
        return self.label_maps_confidence(logits, out_hw, classifier)[0]

    @torch.no_grad()
    def label_maps_confidence(self, logits: torch.Tensor, out_hw: tuple[int, int], classifier: Classifier | None = None,
                              confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """label_maps plus, on request, the winning class's softmax probability as uint8 (0-255).

        The labels come from the same argmax as label_maps (not from the softmax), so switching confidence on
        never changes a label.
        """
        clf = classifier or self.classifier
        maps = [upsample_argmax(item, out_hw, confidence) for item in logits.float().numpy()]
        labels = np.stack([cv2.LUT(idx, clf.row_lut) for idx, _ in maps])
        return labels, (np.stack([conf for _, conf in maps]) if confidence else None)

    def segment(self, frames_bgr: list[np.ndarray]) -> np.ndarray:
        """Frames of one size -> label maps (B,H,W) uint8 of that size."""
        rgb = to_input(frames_bgr, self.cfg.input_hw)
        return self.label_maps(self.logits(self.features(rgb)), frames_bgr[0].shape[:2])

    # -- teach --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def make_shot(self, image_bgr: np.ndarray, mask: np.ndarray, target: int, labels: np.ndarray | None = None,
                  shot_id: str | None = None) -> Shot:
        """Statistics of one teaching frame (SCE's inputs). mask (H,W) nonzero = the taught class.

        With `labels` (full label map, 255 = ignore) the base context comes from them; without, from the
        model's own confident base prediction outside the mask.
        """
        return self.make_shots([(image_bgr, mask, labels)], target, [shot_id])[0]

    @torch.no_grad()
    def make_shots(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], target: int,
                   shot_ids: list[str | None] | None = None) -> list[Shot]:
        """make_shot for K (image, mask, labels) frames with one batched forward pass.

        Why batched: a teach with K=5 shots spent most of its time in five batch-1 passes; one batch of five
        costs little more than two. Every frame is checked before the network runs, so a bad shot refuses the
        whole request without work.
        """
        ids = list(shot_ids or [None] * len(items))
        for k, (image_bgr, mask, labels) in enumerate(items):
            check_shot(image_bgr, mask, labels)
            if ids[k] is None:
                parts = [image_bgr.tobytes(), mask.tobytes()] + ([labels.tobytes()] if labels is not None else [])
                ids[k] = shot_id_of(str(target).encode(), *parts)
        feats = self.features(to_input([it[0] for it in items], self.cfg.input_hw))
        return [self.shot_from_features(feats[k:k + 1], mask, target, ids[k], labels)
                for k, (_, mask, labels) in enumerate(items)]

    @torch.no_grad()
    def shot_from_features(self, feats: torch.Tensor, mask: np.ndarray, target: int, shot_id: str,
                           labels: np.ndarray | None = None) -> Shot:
        """make_shot after the feature extractor: lets the benchmark reuse cached features."""
        class_map = self.shot_class_map(feats, mask, target, labels)
        return shot_from_features(feats, class_map, target, shot_id, support_mode(labels))

    @torch.no_grad()
    def shot_class_map(self, feats: torch.Tensor, mask: np.ndarray, target: int,
                       labels: np.ndarray | None = None) -> torch.Tensor:
        """(1,h,w) class ids at feature resolution that a shot pools over: `target` under the mask, base context
        from `labels` or, without them, from the model's own confident base prediction; 255 = ignore."""
        size = feats.shape[-2:]
        m = torch.from_numpy(np.ascontiguousarray(mask != 0))[None]
        m_small = capl.downsample_labels(m.long(), size).bool()
        if not bool(m_small.any()):
            # a thin object (a pole is ~2 px wide at 360x480) can fall between the nearest samples of the
            # stride-8 grid: then take every feature cell the mask touches, so it can still be taught
            m_small = F.adaptive_max_pool2d(m[:, None].float(), size)[:, 0].bool()
        if labels is None:
            base_logits = self.logits(feats, self.base_classifier)
            return capl.pseudo_context_labels(base_logits, m_small, target, torch.tensor(self.cfg.base_classes),
                                              self.cfg.pseudo_threshold)
        lab = torch.from_numpy(labels.astype(np.int64))[None]
        lab = torch.where(m, torch.full_like(lab, target), lab)
        class_map = capl.downsample_labels(lab, size)
        class_map = torch.where(m_small, torch.full_like(class_map, target), class_map)
        keep = torch.tensor(self.cfg.base_classes + [target])
        return torch.where(torch.isin(class_map, keep), class_map, torch.full_like(class_map, capl.IGNORE))
