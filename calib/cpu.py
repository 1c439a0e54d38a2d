"""The CPU target's build step: the exported program as ONNX (run by edge_gfs.backends.onnxruntime).

The ONNX file comes from the very ExportedProgram that Torch-TensorRT consumes (calib.export_extractor), so
the CPU parity check also validates what the GPU path is built from.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch

from edge_gfs.core.model import CaplModel

log = logging.getLogger("calib.cpu")

OPSET = 18


def export_onnx(model: CaplModel, input_hw: tuple[int, int], path: Path) -> None:
    """Write the extractor's exported program at a static (1,3,H,W) size as ONNX (needs onnx + onnxscript)."""
    from . import export_extractor
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"exporting to ONNX needs {e.name}: pip install -e . (it is a dependency of edge-gfs)") from e
    ep = export_extractor(model, input_hw)
    for name in ("onnxscript", "onnx_ir"):  # their INFO lines ("Replaced initializer ...") are noise to a user
        logging.getLogger(name).setLevel(logging.WARNING)
    h, w = input_hw
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        warnings.simplefilter("ignore")
        program = torch.onnx.export(ep, (torch.zeros(1, 3, h, w),), None, dynamo=True, opset_version=OPSET,
                                    input_names=["rgb"], output_names=["features"], optimize=True)
    program.save(str(path))
