"""Compile the feature extractor for a target (TensorRT on CUDA/Jetson, the fastest CPU path elsewhere).

This file: the exported program at a static input size, which is exactly what Torch-TensorRT's dynamo path
consumes (and what the CPU target's ONNX file is made from). The rest, one module per job:
  artifact.py     where artifacts live, the JSON sidecar, the checks before one is used
  cpu.py          the CPU target: ONNX from the exported program, run by ONNX Runtime
  tensorrt.py     the TensorRT target (guarded imports: CI has no GPU)
  parity.py       compiled vs eager label maps on val frames
  build.py        export -> compile -> parity -> atomic install
  backend.py      which extractor the node runs (--backend auto|eager|compiled|cpu|tensorrt, --engine)
  compile_cmd.py  `edge-gfs compile`
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
