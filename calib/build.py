"""Build an artifact end to end: export, compile, parity check, then install it with its sidecar.

The artifact is built in a temp file beside its destination and only moved into place after parity
passes, so a failed compile never leaves something that `--backend auto` would pick up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from edge_gfs.backends import support
from edge_gfs.backends.artifact import (PRECISIONS, TARGETS, ArtifactError, Sidecar, cache_path, compile_command,
                                        file_sha256, now_iso, read_sidecar, write_sidecar)
from edge_gfs.backends.cpu import CPU_PRECISIONS
from edge_gfs.backends.select import load_runner
from edge_gfs.core.files import install, temp_beside
from edge_gfs.core.model import CaplModel, at_size, model_checksum
from edge_gfs.core.segmenter import to_input
from edge_gfs.data.datasets import open_dataset

from .parity import ParityError, check_parity, describe, spread, val_frames
from .quantize import DEFAULT, Recipe

log = logging.getLogger("calib.build")

TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")


def calibration_batches(spec: str, input_hw: tuple[int, int], count: int = 64) -> list[torch.Tensor]:
    """INT8 calibration frames from a dataset's train split (never val/test: parity runs there)."""
    data = open_dataset(spec)
    return [to_input([data.read("train", n)[0]], input_hw) for n in spread(data.names("train"), count)]


def build_artifact(model: CaplModel, model_name: str, target: str, precision: str = "fp32",
                   input_hw: tuple[int, int] | None = None, out: Path | None = None, calib_data: str = "camvid",
                   check_frames: int = 32, progress: bool = True, recipe: Recipe = DEFAULT,
                   runtime: str | None = None) -> tuple[Path, Sidecar]:
    """Compile, check parity on `check_frames` val frames (0 = skip: the sidecar says so), install.
    On the CPU, precision "auto" builds every precision this CPU runs well and installs the fastest that
    passes its gate (build_auto); `runtime` forces the CPU runtime instead of timing both."""
    if target not in TARGETS:
        raise ArtifactError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if target == "cpu" and precision == "auto":
        return build_auto(model, model_name, input_hw, out, calib_data, check_frames, progress, recipe, runtime)
    if precision not in PRECISIONS:
        raise ArtifactError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    allowed = CPU_PRECISIONS if target == "cpu" else TENSORRT_PRECISIONS
    if precision not in allowed:
        raise ArtifactError(f"--target {target} does not take --precision {precision}: use one of "
                            f"{', '.join(allowed)}{' or auto' if target == 'cpu' else ''}")
    input_hw = tuple(input_hw or model.cfg.input_hw)
    dest = Path(out) if out else cache_path(model_checksum(model), target, precision, input_hw)
    tmp = temp_beside(dest)
    try:
        side = compile_checked(model, model_name, target, precision, input_hw, tmp, dest.name, calib_data,
                               check_frames, progress, recipe, runtime)
        return install_artifact(tmp, dest, side), side
    finally:
        tmp.unlink(missing_ok=True)


def compile_checked(model: CaplModel, model_name: str, target: str, precision: str, input_hw: tuple[int, int],
                    tmp: Path, file_name: str, calib_data: str, check_frames: int, progress: bool,
                    recipe: Recipe = DEFAULT, runtime: str | None = None) -> Sidecar:
    """Compile into `tmp` and check parity (ParityError below the gate); the sidecar it will be installed with."""
    cpu_record = engine = platform = None
    batches = calibration_batches(calib_data, input_hw) if precision == "int8" else []
    if target == "cpu":
        from edge_gfs.backends.cpu import cpu_name, runtime_versions

        from . import cpu
        cpu_record = cpu.build(model, input_hw, precision, tmp, batches, recipe, runtime)
        runtime, versions, device = cpu_record["runtime"], runtime_versions(), {"cpu": cpu_name()}
    else:
        from edge_gfs.backends import tensorrt as trt_runtime

        from . import tensorrt as trt
        env = trt_runtime.environment()
        engine = trt.build(model, input_hw, precision, tmp, batches, env)
        runtime = trt_runtime.RUNTIME
        versions, device = trt_runtime.sidecar_fields(env)
        platform = " or ".join(p.key for p in support.rows_for(env)) or None
    side = Sidecar(model=model_name, model_checksum=model_checksum(model), input_hw=list(input_hw), target=target,
                   precision=precision, runtime=runtime, file=file_name, file_sha256=file_sha256(tmp),
                   versions=versions, device=device, created=now_iso(), engine=engine, platform=platform,
                   cpu=cpu_record)
    if check_frames > 0:
        runner = load_runner(side, tmp)
        side.parity = check_parity(at_size(model, input_hw), runner, precision, val_frames(check_frames), progress)
        log.info("%s %s: %s", target, precision, describe(side.parity))
        if not side.parity["passed"]:
            raise ParityError(f"{precision}: {describe(side.parity)}; the artifact was not installed. Try another "
                              f"--precision, or report it with the model name")
    return side


def build_auto(model: CaplModel, model_name: str, input_hw: tuple[int, int] | None, out: Path | None,
               calib_data: str, check_frames: int, progress: bool, recipe: Recipe = DEFAULT,
               runtime: str | None = None) -> tuple[Path, Sidecar]:
    """`compile --target cpu --precision auto`: every precision this CPU has the instructions for is built and
    gated; those that pass are timed again side by side, and the fastest is installed (the sidecar's
    cpu.auto says what was tried, skipped and why)."""
    from edge_gfs.backends.cpu import load_cpu

    from .cpu import check_runnable, time_runners
    if check_frames <= 0:
        raise ArtifactError("--precision auto chooses among precisions that pass their parity gate: give "
                            "--check-frames > 0")
    input_hw = tuple(input_hw or model.cfg.input_hw)
    checksum = model_checksum(model)
    skipped: dict[str, str] = {}
    built: dict[str, tuple[Path, Path, Sidecar]] = {}
    tried: list[dict] = []
    try:
        for precision in ("int8", "bf16", "fp32"):
            try:
                if runtime not in (None, *check_runnable(precision)):
                    raise ArtifactError(f"--runtime {runtime}: it does not run {precision}")
            except ArtifactError as e:
                skipped[precision] = str(e).split(": ", 1)[-1]
                continue
            dest = Path(out) if out else cache_path(checksum, "cpu", precision, input_hw)
            tmp = temp_beside(dest)
            try:
                side = compile_checked(model, model_name, "cpu", precision, input_hw, tmp, dest.name, calib_data,
                                       check_frames, progress, recipe, runtime)
                built[precision] = (tmp, dest, side)
            except ParityError as e:
                tmp.unlink(missing_ok=True)
                log.warning("auto: %s", e)
                side = None
                tried.append({"precision": precision, "passed": False, "why": str(e)})
            if side is not None:
                tried.append({"precision": precision, "passed": True, "runtime": side.runtime})
        if not built:
            raise ParityError("no CPU precision passed its gate: " + "; ".join(t["why"] for t in tried if not t["passed"]))
        runners = {p: load_cpu(tmp, side.runtime, p) for p, (tmp, _, side) in built.items()}
        timings = time_runners(runners, input_hw)
        chosen = min(timings, key=timings.get)
        for t in tried:
            t["median_ms"] = timings.get(t["precision"])
        tmp, dest, side = built[chosen]
        side.cpu["auto"] = {"chosen": chosen, "tried": tried, "skipped": skipped}  # the CPU's features: side.cpu
        log.info("auto: %s (%s); tried %s; skipped %s", chosen, side.runtime,
                 ", ".join(f"{p} {ms:.2f} ms" for p, ms in timings.items()),
                 ", ".join(f"{p} ({why})" for p, why in skipped.items()) or "none")
        return install_artifact(tmp, dest, side), side
    finally:
        for tmp, _, _ in built.values():
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
