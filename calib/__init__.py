"""Compile the feature extractor for a target (TensorRT on CUDA/Jetson, the fastest CPU path elsewhere).

This file: the exported program at a static input size, which is exactly what Torch-TensorRT's dynamo path
consumes (and what the CPU target's ONNX file is made from). The rest, one module per job:
  cpu.py          the CPU target: ONNX from the exported program
  tensorrt.py     the TensorRT target (guarded imports: CI has no GPU)
  parity.py       compiled vs eager label maps on val frames
  build.py        export -> compile -> parity -> atomic install
  compile_cmd.py  `edge-gfs compile`

What the node needs at run time (the artifact format and sidecar checks, the ONNX Runtime and TensorRT runners,
the --backend choice) is in edge_gfs/backends/, so a robot never imports this build package.
"""

from __future__ import annotations

import torch

from edge_gfs.core.model import CaplModel


def export_extractor(model: CaplModel, input_hw: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """torch.export the per-frame network (normalisation + backbone + head) at a static (1,3,H,W) size."""
    h, w = input_hw or model.cfg.input_hw
    extractor = model.extractor.eval()
    example = (torch.zeros(1, 3, h, w),)
    return torch.export.export(extractor, example, strict=False)
