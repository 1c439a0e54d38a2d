"""Build an artifact end to end: export, compile, parity check, then install it with its sidecar.

The artifact is built in a temp file beside its destination and only moved into place after parity
passes, so a failed compile never leaves something that `--backend auto` would pick up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from edge_gfs.backends.artifact import (PRECISIONS, TARGETS, ArtifactError, Sidecar, cache_path, compile_command,
                                        file_sha256, now_iso, read_sidecar, write_sidecar)
from edge_gfs.backends import support
from edge_gfs.backends.select import load_runner
from edge_gfs.core.files import install, temp_beside
from edge_gfs.core.model import CaplModel, at_size, model_checksum
from edge_gfs.core.segmenter import to_input
from edge_gfs.data.datasets import open_dataset

from .parity import ParityError, check_parity, describe, spread, val_frames

log = logging.getLogger("calib.build")


def calibration_batches(spec: str, input_hw: tuple[int, int], count: int = 64) -> list[torch.Tensor]:
    """INT8 calibration frames from a dataset's train split (never val/test: parity runs there)."""
    data = open_dataset(spec)
    return [to_input([data.read("train", n)[0]], input_hw) for n in spread(data.names("train"), count)]


def build_artifact(model: CaplModel, model_name: str, target: str, precision: str = "fp32",
                   input_hw: tuple[int, int] | None = None, out: Path | None = None, calib_data: str = "camvid",
                   check_frames: int = 32, progress: bool = True) -> tuple[Path, Sidecar]:
    """Compile, check parity on `check_frames` val frames (0 = skip: the sidecar says so), install."""
    if target not in TARGETS:
        raise ArtifactError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise ArtifactError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if target == "cpu" and precision != "fp32":
        raise ArtifactError(f"the CPU target is fp32 only ({precision} is for TensorRT): use --precision fp32")
    input_hw = tuple(input_hw or model.cfg.input_hw)
    checksum = model_checksum(model)
    dest = Path(out) if out else cache_path(checksum, target, precision, input_hw)
    tmp = temp_beside(dest)
    try:
        if target == "cpu":
            from edge_gfs.backends.onnxruntime import RUNTIME, cpu_name, runtime_versions

            from .cpu import export_onnx
            export_onnx(model, input_hw, tmp)
            runtime, versions, device = RUNTIME, runtime_versions(), {"cpu": cpu_name()}
        else:
            from edge_gfs.backends import tensorrt as trt_runtime

            from . import tensorrt as trt
            batches = calibration_batches(calib_data, input_hw) if precision == "int8" else []
            engine = trt.build(model, input_hw, precision, tmp, batches)
            env = trt_runtime.environment()
            runtime = trt_runtime.RUNTIME
            versions, device = trt_runtime.sidecar_fields(env)
        parity = None
        if check_frames > 0:
            runner = load_runner(target, tmp)
            parity = check_parity(at_size(model, input_hw), runner, precision, val_frames(check_frames), progress)
            log.info("%s", describe(parity))
            if not parity["passed"]:
                raise ParityError(f"{describe(parity)}; the artifact was not installed. Try another --precision, or "
                                  f"report it with the model name")
        side = Sidecar(model=model_name, model_checksum=checksum, input_hw=list(input_hw), target=target,
                       precision=precision, runtime=runtime, file=dest.name, file_sha256=file_sha256(tmp),
                       versions=versions, device=device, created=now_iso(), parity=parity)
        if target == "tensorrt":
            side.engine, side.platform = engine, " or ".join(p.key for p in support.rows_for(env)) or None
        return install_artifact(tmp, dest, side), side
    finally:
        tmp.unlink(missing_ok=True)


def install_artifact(tmp: Path, dest: Path, side: Sidecar) -> Path:
    """Move a checked artifact into place, then write its sidecar (both atomic; the sidecar last, so `auto`
    never sees an artifact without one)."""
    install(tmp, dest)
    write_sidecar(dest, side)
    return dest


def recheck(model: CaplModel, model_name: str, artifact: Path, check_frames: int = 32,
            progress: bool = True) -> tuple[dict, Sidecar]:
    """`edge-gfs compile --check`: parity of an existing artifact again; the sidecar gets the new result."""
    from edge_gfs.backends.select import open_artifact
    side = read_sidecar(artifact)
    checksum = model_checksum(model)
    hw = tuple(side.input_hw)
    _, runner = open_artifact(Path(artifact), model_name, checksum, hw)
    parity = check_parity(at_size(model, hw), runner, side.precision, val_frames(check_frames), progress)
    side.parity = parity
    write_sidecar(Path(artifact), side)
    if not parity["passed"]:
        raise ParityError(f"{describe(parity)}: rebuild it with {compile_command(model_name, side.target, hw, side.precision)}")
    return parity, side


__all__ = ["build_artifact", "recheck", "calibration_batches", "at_size", "ParityError"]
