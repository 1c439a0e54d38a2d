"""The TensorRT runtime (CUDA / Jetson): load an engine that calib/tensorrt.py built and run the extractor.

torch_tensorrt is imported lazily, because CI and CPU robots have none; `available()` says why the path cannot
run, and callers turn that into a clear message or a pytest skip.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import torch

RUNTIME = "torch_tensorrt"


def available() -> tuple[bool, str]:
    """Whether the TensorRT path can run here, and why not; the import is guarded on purpose (CI has no GPU)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        return False, "torch_tensorrt is not installed (pip install 'edge-gfs[tensorrt]')"
    return True, ""


def require() -> None:
    ok, why = available()
    if not ok:
        raise RuntimeError(f"the TensorRT target needs a CUDA GPU and torch_tensorrt: {why}. On a CPU machine "
                           f"compile with --target cpu")


def environment() -> dict[str, str | int | float | None]:
    """The GPU and TensorRT versions an engine is tied to (the keys edge_gfs.backends.artifact.env_problems compares)."""
    env: dict[str, str | int | float | None] = {"torch": torch.__version__, "tensorrt": None, "torch_tensorrt": None,
                                                "gpu": None, "compute_capability": None, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        env["compute_capability"] = f"{major}.{minor}"
    for name in ("tensorrt", "torch_tensorrt"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            pass
    return env


def sidecar_fields(env: dict) -> tuple[dict[str, str], dict[str, str | int | float]]:
    """(versions, device) that a TensorRT artifact's sidecar records, from `environment()`; what env_problems
    compares on load. A component that is absent is left out, never written as the string "None"."""
    versions = {k: str(env[k]) for k in ("torch", "tensorrt", "torch_tensorrt", "cuda") if env.get(k) is not None}
    device = {k: env[k] for k in ("gpu", "compute_capability") if env.get(k) is not None}
    return versions, device


class TensorRTExtractor:
    """(B,3,H,W) CPU float -> (B,d,H/8,W/8) CPU float through the engine; the rest of the frame stays on CPU.

    `device` is where the program runs: cuda for an engine. A `.pt2` without TensorRT ops (the tests' stand-in
    for an engine, on a machine without CUDA) runs on cpu, through this same loader."""

    def __init__(self, path: Path, device: str = "cuda") -> None:
        if device == "cuda":
            require()
            import torch_tensorrt  # noqa: F401  registers the engine op that the saved program calls
        self.device = device
        self.module = torch.export.load(str(path)).module()
        self.lock = threading.Lock()  # one execution context: stream and teach threads take turns

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        outs = []
        with self.lock, torch.no_grad():
            for i in range(rgb.shape[0]):
                outs.append(self.module(rgb[i:i + 1].to(self.device, non_blocking=True)).float().cpu())
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def load(path: Path, device: str = "cuda") -> Callable[[torch.Tensor], torch.Tensor]:
    return TensorRTExtractor(Path(path), device)
