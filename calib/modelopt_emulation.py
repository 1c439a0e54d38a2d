"""ModelOpt's INT8 quantization on a machine without CUDA, for tests and for choosing the INT8 gate.

A STAND-IN FOR A LIBRARY KERNEL, NOT FOR OUR CODE. On CUDA, ModelOpt's fake quantization calls its op
`tensorrt::quantize_op` (what Torch-TensorRT converts to TensorRT's Q/DQ layers), whose kernel is a CUDA
extension; for CPU tensors ModelOpt takes another route, which cannot be exported. Inside `on_cpu()` the kernel
the op's CPU implementation calls (`tensor_quant.fake_quant_impl`) is ModelOpt's own emulation
(`tensor_quant._tensor_quant`), and CPU tensors take the op route as CUDA ones do, so everything of ours (calibration frames, calib.tensorrt.quantized_program, the export) runs
unchanged and the exported graph holds the op Torch-TensorRT would convert. Never used by `edge-gfs compile`.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def on_cpu():
    from modelopt.torch.quantization import tensor_quant
    from modelopt.torch.quantization.nn.modules import tensor_quantizer

    def emulated_kernel(inputs, amax, num_bits=8, unsigned=False, narrow_range=True):
        return tensor_quant._tensor_quant(inputs, amax, num_bits, unsigned, narrow_range)

    def through_the_op(inputs, amax, bias=None, num_bits=8, unsigned=False, narrow_range=True, *_rest):
        x = inputs if bias is None else inputs - bias  # FakeTensorQuantFunction.forward's CUDA branch
        out = torch.ops.tensorrt.quantize_op(x, amax, num_bits, 0, unsigned, narrow_range)
        return out if bias is None else out + bias

    originals = tensor_quant.fake_quant_impl, tensor_quantizer.fake_tensor_quant
    tensor_quant.fake_quant_impl = emulated_kernel  # looked up by the op's CPU implementation at each call
    tensor_quantizer.fake_tensor_quant = through_the_op
    try:
        yield
    finally:
        tensor_quant.fake_quant_impl, tensor_quantizer.fake_tensor_quant = originals
