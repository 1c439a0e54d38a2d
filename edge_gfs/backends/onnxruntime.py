"""ONNX Runtime's runner for a CPU artifact (fp32, or INT8 as a QDQ graph). Which runtime an artifact uses is
chosen per precision by measurement at compile time (edge_gfs/backends/cpu.py, calib/cpu.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from .cpu import frame_by_frame


class OnnxRuntimeExtractor:
    """(B,3,H,W) float RGB 0..255 -> (B,d,H/8,W/8), like model.extractor, on an ONNX Runtime CPU session.

    The graph has a static batch of 1 (the node's shape; TensorRT's too), so a batch runs frame by frame.
    `run` is thread-safe, so the node's stream and teach threads can share this object.
    """

    def __init__(self, path: Path, threads: int | None = None, spin: bool = False) -> None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between runs: on a small CPU the spinning pool would take cores from the classifier,
        # the upsampling and the teach thread that run between two extractor calls
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        return frame_by_frame(lambda x: self.session.run(None, {self.input_name: x})[0], rgb)
