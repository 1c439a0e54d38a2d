"""Registries of synthetic shots for the pure registry and pack tests: no model, no node, exact numbers."""

from __future__ import annotations

import numpy as np

from edge_gfs.core.classifier import Shot
from edge_gfs.core.config import CAMVID_CLASSES
from edge_gfs.node.registry import Registry

DIM = 8
FOLD0_BASE = list(range(8))


def fresh(checksum: str = "a" * 64) -> Registry:
    return Registry.fresh(checksum, "camvid-fold0", list(CAMVID_CLASSES), FOLD0_BASE, DIM)


def shot(target: int, sid: str, ctx=(0, 3), seed: int = 0) -> Shot:
    rng = np.random.default_rng(seed)
    ids = tuple(sorted(set(ctx) | {target}))
    k = len(ids)
    return Shot(sid, target, ids, rng.standard_normal((k, DIM)), rng.standard_normal((k, DIM)),
                rng.integers(1, 50, k).astype(np.int64))
