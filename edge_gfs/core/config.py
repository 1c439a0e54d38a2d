"""Model configuration and data location.

The model's input size lives here because it is part of the model: a network trained on 192x256 frames
loses accuracy when fed full-resolution frames, so every consumer (trainer, node, benchmark) resizes to it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
CAMVID_VOID = 11

# GFS-CamVid folds (../shared/spec/benchmark.md §1): novel class ids per fold.
FOLDS: dict[str, tuple[int, ...]] = {
    "0": (8, 9, 10),  # Car, Pedestrian, Bicyclist
    "1": (2, 6, 7),   # Pole, SignSymbol, Fence
    "all": (),
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network and interpret its outputs."""

    class_names: list[str] = field(default_factory=lambda: list(CAMVID_CLASSES))
    base_classes: list[int] = field(default_factory=lambda: list(range(len(CAMVID_CLASSES))))
    method: str = "capl"  # how it was trained: "capl", "baseline" or "oracle" (plain CE, all classes)
    backbone: str = "efficientnet_lite0"  # or "tf_efficientnet_lite0" (TF "same" padding)
    dim: int = 128
    input_hw: tuple[int, int] = (192, 256)
    alpha: float = 10.0
    dqce_weighting: str = "impl"  # "impl" (reference code) or "paper" (printed Eq. 6)
    sce_pooling: str = "raw"  # registration pools "raw" features (Eq. 1) or "normalised" ones (as Eq. 9)
    pseudo_threshold: float = 0.7  # min softmax confidence for pseudo base context in mask-only shots
    # cosine margin taken off novel rows (capl.calibrate_novel), tuned on val by bench/val_tuning.py: 0.15 for the
    # previous 192x256 recipe, 0 (the paper's CAPL) for the current one (bench/results/val/recipe2/tuning.md)
    novel_bias: float = 0.0
    # "mean": the paper's single K-shot mean (Eq. 1); "per_shot": a taught class gets one prototype row per shot
    # and scores its best (classifier.per_shot_rows). Chosen on val per model by trainer.release --novel-rows:
    # bench/results/val/recipe2/per_shot/tuning.md, bench/results/val/recipe3/tuning.md
    novel_rows: str = "mean"

    def __post_init__(self) -> None:
        self.input_hw = tuple(int(v) for v in self.input_hw)  # yaml/json give lists
        if self.method not in ("capl", "baseline", "oracle"):
            raise ValueError(f"method must be capl, baseline or oracle, got {self.method!r}")
        if self.dqce_weighting not in ("impl", "paper"):
            raise ValueError(f"dqce_weighting must be 'impl' or 'paper', got {self.dqce_weighting!r}")
        if self.sce_pooling not in ("raw", "normalised"):
            raise ValueError(f"sce_pooling must be 'raw' or 'normalised', got {self.sce_pooling!r}")
        if self.novel_rows not in ("per_shot", "mean"):
            raise ValueError(f"novel_rows must be 'per_shot' or 'mean', got {self.novel_rows!r}")
        if any(h % 32 or w % 32 for h, w in [self.input_hw]):
            raise ValueError(f"input_hw must be multiples of 32 (the backbone's stride), got {self.input_hw}")

    @property
    def base_names(self) -> list[str]:
        return [self.class_names[i] for i in self.base_classes]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def parse_hw(text: str) -> tuple[int, int]:
    """'352x480' -> (352, 480); an argparse `type`, so a bad size is a usage error that shows the form."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size must look like 352x480 (HxW), got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be >= 32")
    return h, w


def data_root() -> Path:
    """Where datasets live: $EDGE_GFS_DATA, else ../shared/datasets next to the checkout."""
    env = os.environ.get("EDGE_GFS_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]  # edge_gfs/core/config.py -> the checkout
    return repo.parent / "shared" / "datasets"
