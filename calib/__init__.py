"""Compile the feature extractor for a target (TensorRT on CUDA/Jetson, the fastest CPU path elsewhere).

Stage 1 (this file): the exported program at a static input size, which is exactly what Torch-TensorRT's
dynamo path consumes. The compile targets, artifacts and parity checks come with the compile issue.
"""

from __future__ import annotations

import torch

from edge_gfs.model import CaplModel


def export_extractor(model: CaplModel, input_hw: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """torch.export the per-frame network (normalisation + backbone + head) at a static (1,3,H,W) size."""
    h, w = input_hw or model.cfg.input_hw
    extractor = model.extractor.eval()
    example = (torch.zeros(1, 3, h, w),)
    return torch.export.export(extractor, example, strict=False)


def tensorrt_available() -> tuple[bool, str]:
    """Whether the TensorRT path can run here, and why not; the import is guarded on purpose (CI has no GPU)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        return False, "torch_tensorrt is not installed (pip install 'edge-gfs[tensorrt]')"
    return True, ""
