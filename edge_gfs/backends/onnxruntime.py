"""The CPU runtime: ONNX Runtime (shipped) and OpenVINO (benchmark only) runners for a compiled artifact.

Why ONNX Runtime: bench/backends.py timed eager PyTorch, torch.compile, AOTInductor, ONNX Runtime and
OpenVINO on this feature extractor in one run (bench/results/backends.md). ONNX Runtime and OpenVINO were
within noise of each other and both 3-4x faster than eager; ONNX Runtime wins on what it costs to ship: a
smaller wheel, a thread-safe `run` (the node's stream and teach threads share one session) and nothing to
configure. The ONNX file itself is built by calib/cpu.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

RUNTIME = "onnxruntime"  # what `--target cpu` ships


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
        x = np.ascontiguousarray(rgb.detach().cpu().numpy(), dtype=np.float32)
        outs = [self.session.run(None, {self.input_name: x[i:i + 1]})[0] for i in range(x.shape[0])]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))


class OpenVinoExtractor:
    """The same contract on OpenVINO (benchmark only). Infer requests are not thread-safe: one per caller."""

    def __init__(self, source: Path | torch.nn.Module | torch.export.ExportedProgram, threads: int | None = None,
                 example: torch.Tensor | None = None) -> None:
        import openvino as ov
        core = ov.Core()
        if isinstance(source, (str, Path)):
            ov_model = core.read_model(str(source))
        else:
            ov_model = ov.convert_model(source, example_input=example) if example is not None else ov.convert_model(source)
        self.compiled = core.compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                                                            "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(rgb.detach().cpu().numpy(), dtype=np.float32)
        outs = [np.array(self.request.infer([x[i:i + 1]]).to_tuple()[0]) for i in range(x.shape[0])]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))


def load_cpu(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The shipped CPU runner for an artifact file."""
    return OnnxRuntimeExtractor(Path(path), threads)


def runtime_versions() -> dict[str, str]:
    """Versions of what made / runs the CPU artifact (recorded in the sidecar)."""
    return {"torch": torch.__version__} | {name: version(name) for name in ("onnxruntime", "onnx", "onnxscript")}


def version(package: str) -> str:
    try:
        return __import__(package).__version__
    except ImportError:
        return "absent"


def cpu_name() -> str:
    """The CPU model string (for the sidecar and the benchmark: CPU timings only compare on one CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()

