"""Which feature extractor the node runs: a TensorRT engine, PyTorch on CUDA, the CPU artifact, or eager PyTorch.

`auto` takes the fastest thing that is valid here (a TensorRT engine, else PyTorch on a CUDA device, else the
CPU artifact, else eager on the CPU) and says in one log line why; an explicit `cpu`, `cuda`, `tensorrt` or
`--engine FILE` that cannot be honoured is an error instead, because a robot configured for an engine should
not quietly run 4x slower.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from edge_gfs.backends.artifact import (ArtifactError, Sidecar, artifacts_root, cached, compile_command, read_sidecar,
                                        verify)
from edge_gfs.backends.tensorrt import available as tensorrt_available
from edge_gfs.core.model import CaplModel, model_checksum

log = logging.getLogger("edge_gfs.backends")

# compiled = the artifact for this machine, never eager; cuda = eager PyTorch on the GPU (a CUDA machine
# without TensorRT, or one whose engine is not built yet)
CHOICES = ("auto", "eager", "compiled", "cpu", "cuda", "tensorrt")

Extractor = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Backend:
    name: str  # eager | cpu | cuda | tensorrt: the node's status `backend`
    extractor: Extractor | None  # None = the model's own (eager) extractor
    artifact: Path | None
    note: str  # why this one, for the log


def environment(target: str) -> dict:
    """What an artifact of `target` needs from this machine (compared by artifact.env_problems)."""
    if target == "tensorrt":
        from edge_gfs.backends.tensorrt import environment as trt_env
        return trt_env()
    from edge_gfs.backends.cpu import RUNTIMES, version
    from edge_gfs.backends.cpu_features import cpu_flags
    versions = {r: version(r) for r in sorted({r for rs in RUNTIMES.values() for r in rs})}
    return {r: (None if v == "absent" else v) for r, v in versions.items()} | {"cpu_flags": cpu_flags()}


def load_runner(side: Sidecar, path: Path, device: str = "cuda") -> Extractor:
    """The runner an artifact's sidecar asks for (its target, and on the CPU its runtime and precision)."""
    if side.target == "tensorrt":
        from edge_gfs.backends.tensorrt import load
        return load(path, device)
    from edge_gfs.backends.cpu import load_cpu
    return load_cpu(path, side.runtime, side.precision)


def open_artifact(path: Path, model_name: str, checksum: str, input_hw: tuple[int, int],
                  env: dict | None = None, device: str = "cuda") -> tuple[Sidecar, Extractor]:
    """Read the sidecar, refuse any mismatch (ArtifactError says what to run), then load the runner.

    `env` is this machine as artifact.env_problems sees it (probed when None); `device` where an engine's
    program runs. Tests give both to open a TensorRT sidecar on a CPU machine through this same path."""
    side = read_sidecar(path)
    if side.target == "tensorrt" and env is None:
        ok, why = tensorrt_available()
        if not ok:
            raise ArtifactError(f"{path} is a TensorRT engine but {why}: on this machine run "
                                f"{compile_command(model_name, 'cpu', input_hw)} and --backend cpu")
    verify(path, side, model_name, checksum, input_hw, environment(side.target) if env is None else env)
    return side, load_runner(side, path, device)


class CudaExtractor:
    """The eager extractor on the GPU: (B,3,H,W) CPU float in, CPU float out, like the compiled runners."""

    def __init__(self, model: CaplModel) -> None:
        import copy
        self.net = copy.deepcopy(model.extractor).eval().cuda()
        torch.backends.cudnn.benchmark = True  # one static input size: let cuDNN pick its fastest kernels once

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(rgb.cuda(non_blocking=True)).float().cpu()


def cuda_backend(model: CaplModel, why: str) -> Backend:
    """--backend cuda, or auto on a CUDA machine without a usable engine; ArtifactError without a CUDA device."""
    if not torch.cuda.is_available():
        raise ArtifactError("--backend cuda needs a CUDA device, and torch sees none (torch.cuda.is_available() "
                            "is False): use --backend auto or cpu here")
    return Backend("cuda", CudaExtractor(model), None, f"PyTorch on {torch.cuda.get_device_name(0)} ({why})")


def select(model: CaplModel, model_name: str, requested: str = "auto", engine: Path | None = None) -> Backend:
    """The node's extractor for --backend REQUESTED [--engine FILE]; ArtifactError if an explicit one can't be had."""
    if requested not in CHOICES:
        raise ArtifactError(f"unknown backend {requested!r}: use one of {', '.join(CHOICES)}")
    input_hw = tuple(model.cfg.input_hw)
    if requested == "eager":
        if engine is not None:
            raise ArtifactError("--engine runs a compiled artifact: use --backend auto (or cpu / tensorrt) with it")
        return Backend("eager", None, None, "eager PyTorch (--backend eager)")
    if requested == "cuda":
        if engine is not None:
            raise ArtifactError("--engine runs a compiled artifact: use --backend auto (or cpu / tensorrt) with it")
        return cuda_backend(model, "--backend cuda")
    checksum = model_checksum(model)
    if engine is not None:
        side, runner = open_artifact(Path(engine), model_name, checksum, input_hw)
        if requested in ("cpu", "tensorrt") and side.target != requested:
            raise ArtifactError(f"{engine} is a {side.target} artifact, not {requested}: use --backend "
                                f"{side.target} or auto with it")
        return Backend(side.target, runner, Path(engine), f"{side.target} artifact {engine} (--engine)")

    targets = {"auto": ("tensorrt", "cpu"), "compiled": ("tensorrt", "cpu"), "cpu": ("cpu",),
               "tensorrt": ("tensorrt",)}[requested]
    notes: list[str] = []
    for target in targets:
        if target == "cpu" and requested == "auto" and torch.cuda.is_available():
            return cuda_backend(model, f"no TensorRT engine: {'; '.join(notes)}")
        if target == "tensorrt":
            ok, why = tensorrt_available()
            if not ok:
                if requested == "tensorrt":
                    raise ArtifactError(f"--backend tensorrt needs CUDA and torch_tensorrt here, but {why}: on a CPU "
                                        f"run {compile_command(model_name, 'cpu', input_hw)} and use --backend cpu (or auto)")
                notes.append(f"no TensorRT ({why})")
                continue
        found = cached(checksum, target)
        if not found:
            notes.append(f"no {target} artifact in {artifacts_root() / checksum[:16]}")
            continue
        for path in found:  # newest first; one at another size (another camera profile) is skipped
            try:
                side, runner = open_artifact(path, model_name, checksum, input_hw)
            except ArtifactError as e:
                notes.append(str(e))
                continue
            return Backend(target, runner, path, f"{target} artifact {path} ({side.precision}, {side.runtime})")
    if requested != "auto":
        target = "tensorrt" if requested == "tensorrt" else "cpu"
        raise ArtifactError(f"--backend {requested}: {'; '.join(notes)}; run {compile_command(model_name, target, input_hw)}")
    return Backend("eager", None, None, f"eager PyTorch: {'; '.join(notes)} (run "
                                        f"{compile_command(model_name, 'cpu', input_hw)} for the faster CPU path)")
