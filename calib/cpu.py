"""The CPU target's build step: the exported program as ONNX, INT8-quantized when asked, and the runtime that
runs it fastest here, chosen by timing (edge_gfs.backends.cpu lists which runtimes can run each precision).

The ONNX file comes from the very ExportedProgram that Torch-TensorRT consumes (calib.export_extractor), so
the CPU parity check also validates what the GPU path is built from. bf16 is not a file format: it is the
fp32 file run by OpenVINO with bf16 inference (AVX-512 BF16 or AMX), so its sidecar names the runtime and
precision and the loader passes them on.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edge_gfs.backends import cpu_features
from edge_gfs.backends.artifact import ArtifactError
from edge_gfs.backends.cpu import RUNTIMES, installed, load_cpu
from edge_gfs.core.model import CaplModel

from .quantize import DEFAULT, Recipe, quantize

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


def check_runnable(precision: str, flags: frozenset[str] | None = None) -> list[str]:
    """The runtimes that can run `precision` here; ArtifactError (saying what to do) if none can or the CPU
    (its /proc/cpuinfo `flags`, read when None) lacks the instructions that make it pay."""
    why = cpu_features.missing(cpu_features.NEEDS_ANY[precision], flags)
    if why:
        raise ArtifactError(f"--precision {precision} on the CPU: {why}, so it would be slow or inexact here: use "
                            f"--precision fp32 (or auto), or compile on the CPU that will run it")
    runtimes = [r for r in RUNTIMES[precision] if installed(r)]
    if not runtimes:
        raise ArtifactError(f"--precision {precision} on the CPU needs {' or '.join(RUNTIMES[precision])}: "
                            f"pip install -e . (OpenVINO is a dependency on x86-64)")
    return runtimes


def time_runners(runners: dict[str, Callable[[torch.Tensor], torch.Tensor]], input_hw: tuple[int, int],
                 rounds: int = 6, per_round: int = 5) -> dict[str, float]:
    """Median ms per frame of each runner, timed in interleaved rounds (load elsewhere lands on all alike)."""
    x = torch.rand(1, 3, *input_hw) * 255
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(3):
            fn(x)
    for _ in range(rounds):
        for k, fn in runners.items():
            fn(x)  # one untimed call after switching (caches, thread pools waking up)
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn(x)
                samples[k].append(1000 * (time.perf_counter() - t0))
    return {k: round(float(np.median(v)), 3) for k, v in samples.items()}


def build(model: CaplModel, input_hw: tuple[int, int], precision: str, path: Path,
          batches: list[torch.Tensor], recipe: Recipe = DEFAULT, runtime: str | None = None) -> dict:
    """Write the artifact for `precision` to `path` and pick its runtime by timing each candidate here
    (`runtime` forces one).

    Returns the sidecar's `cpu` record: this CPU's features, what the artifact needs, the timings, the runtime
    chosen and, for INT8, the quantization done."""
    runtimes = check_runnable(precision)
    if runtime is not None:
        if runtime not in runtimes:
            raise ArtifactError(f"--runtime {runtime} cannot run --precision {precision} here (it can: "
                                f"{', '.join(runtimes)}): leave --runtime out to time what can")
        runtimes = [runtime]
    record: dict = cpu_features.describe() | {"needs_any": list(cpu_features.NEEDS_ANY[precision])}
    if precision == "int8":
        fp32 = path.with_name(path.name + ".fp32.onnx")
        try:
            export_onnx(model, input_hw, fp32)
            record["quantization"] = quantize(fp32, path, batches, recipe)
        finally:
            fp32.unlink(missing_ok=True)
    else:
        export_onnx(model, input_hw, path)
    threads = torch.get_num_threads()
    timings = time_runners({r: load_cpu(path, r, precision, threads) for r in runtimes}, input_hw)
    record |= {"threads": threads, "timings_ms": timings, "runtime": min(timings, key=timings.get)}
    log.info("%s on the CPU: %s -> %s", precision, ", ".join(f"{r} {ms:.2f} ms" for r, ms in timings.items()),
             record["runtime"])
    return record
