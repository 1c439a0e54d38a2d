"""Registered classes as per-shot statistics, and the classifier as a pure function of them.

Why statistics and not prototypes: a prototype is a mean over shots, so adding a shot, forgetting a class or
restarting would otherwise need the images again. Per shot we keep, for each class seen in it, the feature sum
and pixel count at feature resolution. The classifier is rebuilt from (P_cls, G_sup, shots) with the shots in
a canonical order and sums in float64, so the same set of shots always gives the same bits, whatever the
order they were taught in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from edge_gfs.core import capl
from edge_gfs.core.capl import Gate
from edge_gfs.core.labels import FULL, MASK

LEGACY_MODES = {"labels": FULL}  # registries written before the support modes had one vocabulary


@dataclass(frozen=True)
class Shot:
    """One taught frame: which class it teaches and the pooled features of every class it shows."""

    shot_id: str  # content hash of image + mask (+ labels): the canonical sort key
    target: int  # class id this shot teaches (novel, or a base class to add context to)
    class_ids: tuple[int, ...]  # class ids with statistics in this shot
    sums_raw: np.ndarray  # (K,d) float64: sum of raw features per class
    sums_unit: np.ndarray  # (K,d) float64: sum of L2-normalised features per class
    counts: np.ndarray  # (K,) int64 pixels per class at feature resolution
    mode: str = MASK  # core.labels.SUPPORT_MODES: MASK (pseudo base context) or FULL (full label map given)

    def to_dict(self) -> dict:
        return {"shot_id": self.shot_id, "target": self.target, "class_ids": list(self.class_ids),
                "sums_raw": self.sums_raw.astype("<f8").tobytes(), "sums_unit": self.sums_unit.astype("<f8").tobytes(),
                "counts": self.counts.astype("<i8").tobytes(), "dim": int(self.sums_raw.shape[1]), "mode": self.mode}

    @classmethod
    def from_dict(cls, d: dict) -> "Shot":
        k, dim = len(d["class_ids"]), int(d["dim"])
        return cls(shot_id=d["shot_id"], target=int(d["target"]), class_ids=tuple(int(c) for c in d["class_ids"]),
                   sums_raw=np.frombuffer(d["sums_raw"], "<f8").reshape(k, dim).copy(),
                   sums_unit=np.frombuffer(d["sums_unit"], "<f8").reshape(k, dim).copy(),
                   counts=np.frombuffer(d["counts"], "<i8").reshape(k).copy(), mode=LEGACY_MODES.get(d.get("mode", MASK), d.get("mode", MASK)))


def shot_id_of(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def shot_from_features(features: torch.Tensor, class_map: torch.Tensor, target: int, shot_id: str,
                       mode: str = MASK) -> Shot:
    """Statistics of one shot. features (1,d,h,w); class_map (1,h,w) class ids at feature size, 255 = ignore."""
    ids = sorted(int(c) for c in torch.unique(class_map).tolist() if c != capl.IGNORE)
    if target not in ids:
        raise ValueError("the mask covers no pixel at feature resolution (1/8 of the input): paint a larger area")
    raw, counts = capl.class_sums(features.double(), class_map, ids, normalise=False)
    unit, _ = capl.class_sums(features.double(), class_map, ids, normalise=True)
    return Shot(shot_id=shot_id, target=target, class_ids=tuple(ids), sums_raw=raw.cpu().numpy(),
                sums_unit=unit.cpu().numpy(), counts=counts.round().long().cpu().numpy(), mode=mode)


def pooled(shots: list[Shot], class_ids: list[int], pooling: str = "raw") -> tuple[np.ndarray, np.ndarray]:
    """Sum statistics over shots in canonical order: (len(class_ids), d) sums and counts (float64)."""
    dim = shots[0].sums_raw.shape[1] if shots else 0
    sums = np.zeros((len(class_ids), dim), dtype=np.float64)
    counts = np.zeros(len(class_ids), dtype=np.float64)
    row = {c: i for i, c in enumerate(class_ids)}
    for shot in sorted(shots, key=lambda s: s.shot_id):
        src = shot.sums_raw if pooling == "raw" else shot.sums_unit
        for k, c in enumerate(shot.class_ids):
            if c in row:
                sums[row[c]] += src[k]
                counts[row[c]] += shot.counts[k]
    return sums, counts


@dataclass
class Classifier:
    """What the per-frame path needs: class id of each row, the cached SCE base rows and novel rows."""

    row_ids: list[int]  # class id of each logit row: base ids first, then novel ids
    base_rows: torch.Tensor  # (N_b,d)
    novel_rows: torch.Tensor  # (R,d): one or more rows per novel class
    novel_ids: list[int] = field(default_factory=list)
    novel_owner: torch.Tensor | None = None  # (R,) index into novel_ids of each novel row; None: one row each

    @cached_property
    def row_lut(self) -> np.ndarray:
        """(256,) uint8 row index -> class id, for cv2.LUT over a whole label map (once per classifier, not per frame)."""
        lut = np.full(256, 255, dtype=np.uint8)
        lut[:len(self.row_ids)] = self.row_ids
        return lut


MAX_ROWS_PER_CLASS = 8  # per-shot rows of one class; more shots are pooled round-robin into this many rows


def shot_groups(shots: list[Shot], class_id: int, max_rows: int = MAX_ROWS_PER_CLASS) -> list[list[Shot]]:
    """The shots that show `class_id`, in canonical order, split into at most max_rows groups round-robin:
    one group per shot up to max_rows, so a class's rows never depend on the order it was taught in."""
    holders = [s for s in sorted(shots, key=lambda s: s.shot_id)
               if class_id in s.class_ids and s.counts[s.class_ids.index(class_id)] > 0]
    n = min(len(holders), max_rows)
    return [holders[i::n] for i in range(n)]


def per_shot_rows(shots: list[Shot], novel_ids: list[int], pooling: str = "raw",
                  max_rows: int = MAX_ROWS_PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """One prototype (Eq. 1) per shot of each novel class, and the owner index of each row.

    Why: the mean of five cars seen from the side, the back and far away is a car seen from nowhere; on val
    (fold 0, K=5, bench/results/val/recipe2/per_shot/tuning.md) a row per shot, each class scoring its best row,
    raised novel mIoU from 15.8 to 19.1 (Car 10 -> 20) and kept 99.7% of base mIoU, where within-shot k-means
    rows stole Building pixels.
    """
    rows, owner = [], []
    for i, c in enumerate(novel_ids):
        for group in shot_groups(shots, c, max_rows):
            sums, counts = pooled(group, [c], pooling)
            rows.append(capl.novel_prototypes(torch.from_numpy(sums), torch.from_numpy(counts))[0])
            owner.append(i)
    return torch.stack(rows), torch.tensor(owner, dtype=torch.long)


@torch.no_grad()
def build_classifier(p_cls: torch.Tensor, g_sup: Gate, base_ids: list[int], shots: list[Shot],
                     pooling: str = "raw", novel_rows: str = "mean") -> Classifier:
    """The classifier as a pure function of the base weights, G_sup and the stored shots (SCE, Eq. 1-4).

    Novel ids are the targets of shots that are not base classes, in increasing id order. `novel_rows`:
    "mean" is the paper's one prototype per class (Eq. 1); "per_shot" gives a class one row per shot.
    """
    if novel_rows not in ("per_shot", "mean"):
        raise ValueError(f"novel_rows must be 'per_shot' or 'mean', got {novel_rows!r}")
    if len({s.shot_id for s in shots}) != len(shots):
        raise ValueError("two shots share a shot_id: the canonical order (and so the classifier bits) needs unique ids")
    novel_ids = sorted({s.target for s in shots} - set(base_ids))
    dim = p_cls.shape[1]
    if shots:
        b_sums, b_counts = pooled(shots, base_ids, pooling)
        base_rows = capl.sce_base_rows(p_cls, g_sup, torch.from_numpy(b_sums).to(p_cls),
                                       torch.from_numpy(b_counts).to(p_cls))
    else:
        base_rows = capl.l2n(p_cls)
    owner = None
    if novel_ids and novel_rows == "per_shot":
        rows, owner = per_shot_rows(shots, novel_ids, pooling)
        rows = rows.to(p_cls)
    elif novel_ids:
        n_sums, n_counts = pooled(shots, novel_ids, pooling)
        rows = capl.novel_prototypes(torch.from_numpy(n_sums), torch.from_numpy(n_counts)).to(p_cls)
    else:
        rows = p_cls.new_zeros((0, dim))
    return Classifier(row_ids=list(base_ids) + novel_ids, base_rows=base_rows, novel_rows=rows,
                      novel_ids=novel_ids, novel_owner=owner)
