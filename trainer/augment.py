"""Training augmentation: scale, rotate, crop, flip, blur (capl.md's list).

Frames are first resized to the model's input size, so "scale 1.0" means the whole frame as the node will see
it; scaling up then cropping shows small objects larger, scaling down pads with ignore. The crop may be smaller
than the input size: a 288x384 crop of a frame seen at 352x480 costs 35% less per step than the whole frame,
while every object keeps the size it has at run time (what thin classes need).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_gfs.core.labels import IGNORE


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.5, 2.5)  # of the input size: 0.4-2.0 of native 360x480 at 288x384
    rotate_deg: float = 10.0
    blur_p: float = 0.3
    flip_p: float = 0.5


def augment(img: np.ndarray, lab: np.ndarray, frame_hw: tuple[int, int], rng: np.random.Generator,
            cfg: AugmentConfig = AugmentConfig(), crop_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One random view: image (H,W,3) uint8 and label (H,W) uint8, scaled around frame_hw (the model's input
    size) -> both at crop_hw (default: frame_hw)."""
    h, w = crop_hw or frame_hw
    s = rng.uniform(*cfg.scale)
    sh, sw = int(round(frame_hw[0] * s)), int(round(frame_hw[1] * s))
    img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(lab, (sw, sh), interpolation=cv2.INTER_NEAREST)
    if cfg.rotate_deg > 0:
        angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
        rot = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, 1.0)
        img = cv2.warpAffine(img, rot, (sw, sh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        lab = cv2.warpAffine(lab, rot, (sw, sh), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=IGNORE)
    # pad to at least the crop size (ignore in the label), then crop at a random place
    ph, pw = max(h - sh, 0), max(w - sw, 0)
    if ph or pw:
        img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
        lab = cv2.copyMakeBorder(lab, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE)
    y = int(rng.integers(0, img.shape[0] - h + 1))
    x = int(rng.integers(0, img.shape[1] - w + 1))
    img, lab = img[y:y + h, x:x + w], lab[y:y + h, x:x + w]
    if rng.random() < cfg.flip_p:
        img, lab = img[:, ::-1], lab[:, ::-1]
    if rng.random() < cfg.blur_p:
        img = cv2.GaussianBlur(img, (5, 5), sigmaX=rng.uniform(0.1, 1.5))
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)
