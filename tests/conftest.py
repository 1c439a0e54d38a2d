"""Shared fixtures: real CamVid frames from $EDGE_GFS_DATA and small real models."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from edge_gfs.core.config import ModelConfig, data_root

torch.set_num_threads(2)

# Compiled artifacts go to a per-run folder: an `edge-gfs compile` run on this machine must not change what
# `--backend auto` picks in the tests (node subprocesses inherit the variable).
os.environ["EDGE_GFS_ARTIFACTS"] = tempfile.mkdtemp(prefix="edge-gfs-artifacts-")


@pytest.fixture(scope="session")
def camvid_root():
    root = data_root() / "camvid"
    if not (root / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {root}; set EDGE_GFS_DATA")
    return root


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    """Fold-0 classes at a small input size: real network, fast steps."""
    return ModelConfig(base_classes=list(range(8)), input_hw=(64, 96), dim=32)
