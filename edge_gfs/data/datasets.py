"""Reading labelled frames: CamVid (11 classes) and a generic folder dataset.

Folder dataset layout (see docs/datasets.md):
    ROOT/classes.yaml            classes: [Name0, Name1, ...]   ignore_index: 255 (optional)
    ROOT/{train,val,test}/images/NAME.jpg|png
    ROOT/{train,val,test}/labels/NAME.png   8-bit class ids, ignore_index for unlabelled pixels
CamVid's void (11) is mapped to 255 on read, so every consumer sees one ignore value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from edge_gfs.core.config import CAMVID_CLASSES, CAMVID_VOID, data_root
from edge_gfs.core.labels import IGNORE


@dataclass
class Dataset:
    name: str
    root: Path
    class_names: list[str]
    ignore_ids: tuple[int, ...]  # label values read as ignore

    def names(self, split: str) -> list[str]:
        listing = self.root / f"{split}.txt"
        if listing.is_file():
            return [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        folder = self.root / split / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"no split {split!r} in {self.root}: expected {listing} or {folder}/")
        return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    def image_path(self, split: str, name: str) -> Path:
        for ext in (".jpg", ".png", ".jpeg"):
            p = self.root / split / "images" / f"{name}{ext}"
            if p.is_file():
                return p
        raise FileNotFoundError(f"no image for {name!r} in {self.root / split / 'images'}")

    def label_path(self, split: str, name: str) -> Path:
        return self.root / split / "labels" / f"{name}.png"

    def read(self, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 image, uint8 label map with ignore = 255)."""
        img = cv2.imread(str(self.image_path(split, name)), cv2.IMREAD_COLOR)
        lab = cv2.imread(str(self.label_path(split, name)), cv2.IMREAD_UNCHANGED)
        if img is None or lab is None:
            raise OSError(f"cannot read frame {name!r} of {self.root / split}")
        if lab.ndim != 2 or lab.shape != img.shape[:2]:
            raise ValueError(f"label map of {name!r} must be single-channel and {img.shape[1]}x{img.shape[0]}")
        lab = lab.copy()
        for v in self.ignore_ids:
            lab[lab == v] = IGNORE
        return img, lab

    def load(self, split: str, limit: int | None = None) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        names = self.names(split)[:limit]
        pairs = [self.read(split, n) for n in names]
        return names, [p[0] for p in pairs], [p[1] for p in pairs]


def camvid(root: Path | None = None) -> Dataset:
    root = Path(root) if root else data_root() / "camvid"
    if not (root / "train.txt").is_file():
        raise FileNotFoundError(f"CamVid not found at {root}: set EDGE_GFS_DATA to the folder that holds camvid/")
    return Dataset("camvid", root, list(CAMVID_CLASSES), (CAMVID_VOID,))


def folder(root: Path) -> Dataset:
    root = Path(root)
    spec_file = root / "classes.yaml"
    if not spec_file.is_file():
        raise FileNotFoundError(f"{spec_file} missing: a folder dataset needs classes.yaml (see docs/datasets.md)")
    spec = yaml.safe_load(spec_file.read_text()) or {}
    names = spec.get("classes")
    if not isinstance(names, list) or not names or len(names) > 254:
        raise ValueError(f"{spec_file}: 'classes' must be a list of 1..254 class names")
    ignore = int(spec.get("ignore_index", IGNORE))
    return Dataset(root.name, root, [str(n) for n in names], (ignore,) if ignore != IGNORE else ())


def open_dataset(spec: str) -> Dataset:
    """'camvid' or a path to a folder dataset."""
    return camvid() if spec == "camvid" else folder(Path(spec))


def train_lut(base_classes: list[int]) -> np.ndarray:
    """uint8 lookup: class id -> base row index, anything else (novel, ignore) -> 255.

    This is how GFS base training hides novel classes without dropping frames (CamVid shows almost every
    class in almost every frame).
    """
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for row, cid in enumerate(base_classes):
        lut[cid] = row
    return lut
