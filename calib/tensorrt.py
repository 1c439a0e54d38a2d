"""The TensorRT target (CUDA / Jetson): Torch-TensorRT's dynamo path from the exported program.

Everything here imports torch_tensorrt (and, for INT8, NVIDIA ModelOpt) lazily, because CI and CPU robots
have neither; `edge_gfs.backends.tensorrt.available()` says why the path cannot run. What this path consumes
is tested on CPU (tests/test_tensorrt_boundary.py): the exported program at a static size, the INT8 program ModelOpt
produces (its emulation standing in for its CUDA kernels), the settings per Torch-TensorRT release, the
engine-precision check, and the `.pt2` + sidecar round trip through the node's loader.

Precisions (NVIDIA's documented flow for each Torch-TensorRT release; `precision_settings`):
  fp32  the exported program as is;
  fp16  Torch-TensorRT >= 2.13 is strongly typed: its autocast lowers the program to fp16. Before 2.13:
        enabled_precisions={fp16} (weak typing, the builder picks);
  int8  ModelOpt PTQ (mtq.INT8_DEFAULT_CFG: per-channel weights, per-tensor activations, max calibration) on
        frames of the training split, exported under `export_torch_mode` with its QDQ nodes; the rest of the
        network in fp16 (autocast from 2.13, enabled_precisions={fp16, int8} before).
After the build, the engine inspector's layer precisions are read back and an engine whose precision is not
what its name says is refused (`precision_problems`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from edge_gfs.backends import support
from edge_gfs.backends.tensorrt import require
from edge_gfs.core.model import CaplModel

from . import export_extractor

log = logging.getLogger("calib.tensorrt")

STRONGLY_TYPED_SINCE = (2, 13)  # Torch-TensorRT dropped enabled_precisions / use_explicit_typing here


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = support.minor(version).split(".")
    return int(major), int(minor)


def precision_settings(precision: str, torch_tensorrt_version: str) -> dict:
    """dynamo.compile settings for a precision on a Torch-TensorRT release: chosen by version, not guessed."""
    if precision == "fp32":
        return {}
    if _version_tuple(torch_tensorrt_version) >= STRONGLY_TYPED_SINCE:
        # int8: the QDQ nodes fix the quantized convolutions; autocast takes everything else to fp16
        return {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    return {"enabled_precisions": {torch.float16, torch.int8} if precision == "int8" else {torch.float16}}


def checked_settings(settings: dict, compile_fn: Callable) -> dict:
    """Refuse a setting the compiler does not name: Torch-TensorRT silently ignores unknown keyword arguments,
    which is how an fp16 request could quietly build an fp32 engine."""
    params = inspect.signature(compile_fn).parameters
    unknown = sorted(k for k in settings if k not in params)
    if unknown:
        raise RuntimeError(f"this torch_tensorrt's dynamo.compile does not take {', '.join(unknown)}: it is outside "
                           f"the support matrix (docs/compile.md); install a supported row")
    return settings


def import_modelopt():
    """ModelOpt's quantization API, or a RuntimeError that shows the real import error (a dependency ModelOpt
    needs but does not declare looks exactly like ModelOpt missing if the error is swallowed)."""
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.utils import export_torch_mode
    except ImportError as e:
        if (e.name or "").split(".")[0] == "modelopt":
            raise RuntimeError("INT8 needs NVIDIA ModelOpt: pip install 'edge-gfs[tensorrt]' (or use --precision "
                               "fp16)") from e
        raise RuntimeError(f"INT8 needs NVIDIA ModelOpt, which is installed but does not import: "
                           f"{type(e).__name__}: {e}. Install the missing module ({e.name}); "
                           f"pip install 'edge-gfs[tensorrt]' declares the ones we know of") from e
    return mtq, export_torch_mode


def quantized_program(model: CaplModel, input_hw: tuple[int, int], calib_batches: Iterable[torch.Tensor],
                      device: str = "cuda") -> torch.export.ExportedProgram:
    """INT8: ModelOpt inserts calibrated QDQ nodes into a copy of the extractor, then we export that.

    `device` is cuda on the target; tests pass cpu, where ModelOpt runs its own emulation of the kernels."""
    mtq, export_torch_mode = import_modelopt()
    ext = copy.deepcopy(model.extractor).eval().to(device)
    batches = list(calib_batches)
    if not batches:
        raise RuntimeError("INT8 calibration got no frames: give --calib-data DIR or camvid")

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for b in batches:
                m(b.to(device))

    mtq.quantize(ext, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    h, w = input_hw
    with export_torch_mode(), torch.no_grad():
        return torch.export.export(ext, (torch.zeros(1, 3, h, w, device=device),), strict=False)


# -- what the built engine really is -------------------------------------------------------------------------
_DTYPE = re.compile(r"\b(FP32|FP16|BF16|FP8|Int8|INT8|Int32|Int64|Half|Float|Bool)\b")
_CANON = {"FP32": "fp32", "Float": "fp32", "FP16": "fp16", "Half": "fp16", "BF16": "bf16", "FP8": "fp8",
          "Int8": "int8", "INT8": "int8", "Int32": "int32", "Int64": "int64", "Bool": "bool"}


def layer_datatypes(layer_info: dict) -> Counter | None:
    """Layers per output datatype, from TensorRT's engine-inspector JSON (ProfilingVerbosity.DETAILED).
    None when the engine holds only layer names (built without detailed profiling)."""
    layers = layer_info.get("Layers", [])
    if layers and not isinstance(layers[0], dict):
        return None
    counts: Counter = Counter()
    for layer in layers:
        outputs = layer.get("Outputs") or [{}]
        found = _DTYPE.search(str(outputs[0].get("Format/Datatype", "")))
        counts[_CANON[found.group(1)] if found else "other"] += 1
    return counts


def precision_problems(precision: str, datatypes: Mapping[str, int] | None,
                       output_dtype: torch.dtype | None) -> list[str]:
    """Why an engine is not the precision its name says (empty: it is). A pure function of what the engine reports."""
    if datatypes is None:
        return ["the engine reports only layer names, so its precision cannot be read back"]
    low = {k: datatypes.get(k, 0) for k in ("fp16", "int8", "bf16", "fp8")}
    problems = []
    if precision == "fp32":
        if any(low.values()):
            problems.append(f"an fp32 engine has lower-precision layers {low}")
        if output_dtype is not None and output_dtype != torch.float32:
            problems.append(f"an fp32 engine outputs {output_dtype}")
    elif precision == "fp16":
        if low["fp16"] == 0:
            problems.append(f"no layer runs in fp16 (layers by output type: {dict(datatypes)})")
        if low["int8"]:
            problems.append(f"{low['int8']} int8 layers in an fp16 engine")
    elif precision == "int8" and low["int8"] == 0:
        problems.append(f"no layer runs in int8 (layers by output type: {dict(datatypes)})")
    return problems


@contextlib.contextmanager
def _detailed_profiling(compile_fn: Callable):
    """Build with ProfilingVerbosity.DETAILED, so the engine inspector reports each layer's precision. Newer
    Torch-TensorRT turns it on only inside its Debugger (which reconfigures the root logger: ours is put back);
    older releases with their `debug=True` setting. Yields the extra compile settings."""
    import torch_tensorrt
    debugger = getattr(torch_tensorrt.dynamo, "Debugger", None)
    root, ttrt_log = logging.getLogger(), logging.getLogger("torch_tensorrt")
    handlers, level, ttrt_level = list(root.handlers), root.level, ttrt_log.level
    try:
        if debugger is not None:
            with tempfile.TemporaryDirectory() as tmp:
                with debugger(log_level="warning", engine_builder_monitor=False, logging_dir=tmp):
                    yield {}
        else:
            yield {"debug": True} if "debug" in inspect.signature(compile_fn).parameters else {}
    finally:
        root.handlers[:], root.level = handlers, level
        ttrt_log.setLevel(ttrt_level)


def engine_report(trt_gm: torch.nn.Module, example: torch.Tensor) -> tuple[dict, torch.dtype]:
    """Layer precisions of every TensorRT engine in the compiled module and its output dtype (for the sidecar, as
    plain JSON types), and the output dtype itself."""
    counts: Counter | None = Counter()
    engines = 0
    for _, sub in trt_gm.named_modules():
        if hasattr(sub, "get_layer_info"):
            engines += 1
            got = layer_datatypes(json.loads(sub.get_layer_info()))
            counts = None if got is None or counts is None else counts + got
    with torch.no_grad():
        out = trt_gm(example)
    return {"engines": engines, "layer_datatypes": None if counts is None else dict(counts),
            "output_dtype": str(out.dtype).replace("torch.", "")}, out.dtype


def build(model: CaplModel, input_hw: tuple[int, int], precision: str, path: Path,
          calib_batches: Iterable[torch.Tensor] = (), env: dict | None = None) -> dict:
    """Compile the extractor to a TensorRT engine, check its precision, save it as `.pt2`; returns the report.
    `env`: backends.tensorrt.environment(), probed here when the caller has not."""
    if precision == "int8":
        import_modelopt()  # first: torch_tensorrt registers its quantize converter only if ModelOpt imports
    require()
    import torch_tensorrt
    if env is None:
        from edge_gfs.backends.tensorrt import environment
        env = environment()
    problems = support.pairing_problems(env)
    if problems:
        raise RuntimeError(f"{'; '.join(problems)}: install one row of the support matrix "
                           f"({support.describe(env)})")
    h, w = input_hw
    if precision == "int8":
        from torch_tensorrt.dynamo.conversion._ConverterRegistry import DYNAMO_CONVERTERS
        op = getattr(getattr(torch.ops, "tensorrt", None), "quantize_op", None)
        if op is None or op.default not in DYNAMO_CONVERTERS:
            raise RuntimeError("torch_tensorrt has no converter for ModelOpt's quantize op (it registers it only if "
                               "ModelOpt imported when torch_tensorrt was first imported): reinstall "
                               "'edge-gfs[tensorrt]' and check `python -c \"import modelopt.torch.quantization\"`")
        ep = quantized_program(model, input_hw, calib_batches)
    else:
        # the very program calib.export_extractor gives on CPU (and the tests check), moved to the GPU
        from torch.export.passes import move_to_device_pass
        ep = move_to_device_pass(export_extractor(model, input_hw), "cuda")
    example = torch.zeros(1, 3, h, w, device="cuda")
    settings = checked_settings(precision_settings(precision, env["torch_tensorrt"]), torch_tensorrt.dynamo.compile)
    log.info("building a TensorRT %s engine at %dx%d on %s (%s; settings %s)", precision, h, w, env["gpu"],
             support.describe(env), settings)
    with _detailed_profiling(torch_tensorrt.dynamo.compile) as detail:
        trt_gm = torch_tensorrt.dynamo.compile(ep, inputs=[example], min_block_size=1, **settings, **detail)
    report, out_dtype = engine_report(trt_gm, example)
    problems = precision_problems(precision, report["layer_datatypes"], out_dtype)
    if problems:
        raise RuntimeError(f"the built engine is not {precision}: {'; '.join(problems)}; nothing was installed")
    torch_tensorrt.save(trt_gm, str(path), output_format="exported_program", arg_inputs=[example])
    return report
