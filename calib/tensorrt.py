"""The TensorRT target (CUDA / Jetson): Torch-TensorRT's dynamo path from the exported program.

Everything here imports torch_tensorrt (and, for INT8, NVIDIA ModelOpt) lazily, because CI and CPU robots
have neither; `edge_gfs.backends.tensorrt.available()` says why the path cannot run, and callers turn that into a clear
message or a pytest skip. What this path consumes (the ExportedProgram at a static size, the sidecar, the
version checks) is tested on CPU; the build itself needs a GPU.

Precisions:
  fp32  the exported program as is;
  fp16  TensorRT autocast (newer Torch-TensorRT) or enabled_precisions={fp16} (older);
  int8  post-training quantization with ModelOpt (mtq.INT8_DEFAULT_CFG: per-channel weights, per-tensor
        activations) calibrated on frames drawn from the training data, then compiled with its QDQ nodes.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Iterable

import torch

from edge_gfs.backends.tensorrt import require
from edge_gfs.core.model import CaplModel

from . import export_extractor

log = logging.getLogger("calib.tensorrt")


def _precision_kwargs(precision: str) -> dict:
    """Compile settings per precision, for the Torch-TensorRT API in hand (autocast replaced weak typing)."""
    import torch_tensorrt
    params = inspect.signature(torch_tensorrt.dynamo.compile).parameters
    if precision == "fp32":
        return {}
    if precision == "int8":
        return {"enabled_precisions": {torch.int8}} if "enabled_precisions" in params else {}
    if "enable_autocast" in params:
        key = "low_precision_type" if "low_precision_type" in params else "autocast_low_precision_type"
        return {"use_explicit_typing": True, "enable_autocast": True, key: torch.float16}
    return {"enabled_precisions": {torch.float16}}


def _quantized_program(model: CaplModel, input_hw: tuple[int, int],
                       calib_batches: Iterable[torch.Tensor]) -> torch.export.ExportedProgram:
    """INT8: ModelOpt inserts calibrated QDQ nodes into a copy of the extractor, then we export that."""
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.utils import export_torch_mode
    except ImportError as e:
        raise RuntimeError("INT8 needs NVIDIA ModelOpt: pip install nvidia-modelopt (or use --precision fp16)") from e
    import copy
    ext = copy.deepcopy(model.extractor).eval().cuda()
    batches = list(calib_batches)
    if not batches:
        raise RuntimeError("INT8 calibration got no frames: give --calib-data DIR or camvid")

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for b in batches:
                m(b.cuda())

    mtq.quantize(ext, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    h, w = input_hw
    with export_torch_mode(), torch.no_grad():
        return torch.export.export(ext, (torch.zeros(1, 3, h, w, device="cuda"),), strict=False)


def build(model: CaplModel, input_hw: tuple[int, int], precision: str, path: Path,
          calib_batches: Iterable[torch.Tensor] = ()) -> None:
    """Compile the extractor to a TensorRT engine and save it (ExportedProgram format, `torch.export.load`able)."""
    require()
    import torch_tensorrt
    h, w = input_hw
    if precision == "int8":
        ep = _quantized_program(model, input_hw, calib_batches)
    else:
        # the very program calib.export_extractor gives on CPU (and the tests check), moved to the GPU
        from torch.export.passes import move_to_device_pass
        ep = move_to_device_pass(export_extractor(model, input_hw), "cuda")
    example = torch.zeros(1, 3, h, w, device="cuda")
    log.info("building a TensorRT %s engine at %dx%d on %s", precision, h, w, torch.cuda.get_device_name(0))
    trt_gm = torch_tensorrt.dynamo.compile(ep, inputs=[example], min_block_size=1, **_precision_kwargs(precision))
    torch_tensorrt.save(trt_gm, str(path), output_format="exported_program", inputs=[example])
