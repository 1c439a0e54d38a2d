"""Bundled models by name. They live in the repository's models/ folder (or $EDGE_GFS_MODELS)."""

from __future__ import annotations

import os
from pathlib import Path

from edge_gfs.core.model import CaplModel, load_checkpoint

BUNDLED = {
    "camvid": "CAPL, all 11 CamVid classes as base: the default for real use",
    "camvid-fold0": "CAPL, GFS-CamVid fold 0 (Car, Pedestrian, Bicyclist held out): for teaching demos and the benchmark",
}


def models_dir() -> Path:
    env = os.environ.get("EDGE_GFS_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def resolve(name_or_path: str) -> Path:
    """A bundled name (camvid, camvid-fold0) or a path to a .pt checkpoint."""
    if name_or_path in BUNDLED:
        path = models_dir() / f"{name_or_path}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"bundled model {name_or_path!r} missing at {path}: install edge-gfs from its "
                                    f"repository (pip install -e .) or set EDGE_GFS_MODELS")
        return path
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise FileNotFoundError(f"no model {name_or_path!r}: use one of {', '.join(BUNDLED)} or a path to a .pt file")


def load(name_or_path: str) -> tuple[CaplModel, dict]:
    return load_checkpoint(resolve(name_or_path))
