"""The CPU target's runtimes: which ones can run each precision, loading an artifact with the one its sidecar
names, and the versions and CPU a sidecar records.

The runtime is chosen per precision by measurement when the artifact is compiled (calib/cpu.py): ONNX Runtime
ships with edge-gfs everywhere; OpenVINO is used where it measured faster, and is the only bf16 runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

# per precision, the runtimes that can run it, in the order tried when the build cannot measure
RUNTIMES: dict[str, tuple[str, ...]] = {"fp32": ("onnxruntime", "openvino"), "bf16": ("openvino",),
                                        "int8": ("onnxruntime", "openvino")}
CPU_PRECISIONS = tuple(RUNTIMES)


def installed(runtime: str) -> bool:
    return version(runtime) != "absent"


def load_cpu(path: Path, runtime: str = "onnxruntime", precision: str = "fp32",
             threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The runner for a CPU artifact file, on the runtime and precision its sidecar names."""
    if runtime == "openvino":
        from .openvino import OpenVinoExtractor
        return OpenVinoExtractor(Path(path), threads, precision)
    if runtime != "onnxruntime":
        raise ValueError(f"unknown CPU runtime {runtime!r}: use onnxruntime or openvino")
    from .onnxruntime import OnnxRuntimeExtractor
    return OnnxRuntimeExtractor(Path(path), threads)


def frame_by_frame(run_one: Callable[[np.ndarray], np.ndarray], rgb: torch.Tensor) -> torch.Tensor:
    """A (B,3,H,W) batch through a runner of the graph's static batch of 1 (the node's shape), as float32 numpy."""
    x = np.ascontiguousarray(rgb.detach().cpu().numpy(), dtype=np.float32)
    outs = [run_one(x[i:i + 1]) for i in range(x.shape[0])]
    return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))


def runtime_versions() -> dict[str, str]:
    """Versions of what made / runs the CPU artifact (recorded in the sidecar)."""
    return {"torch": torch.__version__} | {n: version(n) for n in ("onnxruntime", "onnx", "onnxscript", "openvino")}


def version(package: str) -> str:
    try:
        v = __import__(package).__version__
    except ImportError:
        return "absent"
    return v.split("-")[0]  # OpenVINO's is "2026.4.1-22982-<hash>-releases/..."


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
