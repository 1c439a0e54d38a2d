"""OpenVINO's runner for a CPU artifact: the same ONNX file, in bf16 (AVX-512 BF16 / AMX) or INT8 (a QDQ graph).

Why OpenVINO besides ONNX Runtime: on CPUs with AMX or AVX-512 BF16 it is the only one of the two that runs bf16,
and it ran the INT8 graph faster than ONNX Runtime there (bench/results/backends.md); calib/cpu.py times both
and the sidecar records which one won on the build machine.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from .cpu import frame_by_frame

HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}  # int8: the quantized ops are int8, the rest stays fp32


class OpenVinoExtractor:
    """(B,3,H,W) float RGB 0..255 -> (B,d,H/8,W/8) float32, like model.extractor, on OpenVINO's CPU plugin.

    One compiled model is shared; infer requests are not thread-safe, so each calling thread (the node's stream
    and teach threads) gets its own.
    """

    def __init__(self, source: Path | torch.nn.Module | torch.export.ExportedProgram, threads: int | None = None,
                 precision: str = "fp32", example: torch.Tensor | None = None) -> None:
        import openvino as ov
        core = ov.Core()
        if isinstance(source, (str, Path)):
            ov_model = core.read_model(str(source))
        else:
            ov_model = ov.convert_model(source, example_input=example) if example is not None else ov.convert_model(source)
        self.compiled = core.compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                                                            "INFERENCE_PRECISION_HINT": HINT[precision]})
        self.local = threading.local()

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        # the input is read in place (no 1.3 MB copy per frame); the output is copied out of the request's
        # buffer, which its next call overwrites
        return frame_by_frame(lambda x: np.array(request.infer([x], share_inputs=True).to_tuple()[0], dtype=np.float32),
                              rgb)
