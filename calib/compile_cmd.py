"""`edge-gfs compile`: compile the feature extractor for the target, check parity, install the artifact."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from edge_gfs.backends.artifact import PRECISIONS, TARGETS, ArtifactError, cache_path, sidecar_path
from edge_gfs.core.config import parse_hw

from .quantize import METHODS, Recipe

EXAMPLE = """examples:
  edge-gfs compile --model camvid --target cpu --precision auto   # the fastest precision this CPU runs within its gate
  edge-gfs compile --model camvid-fold0 --target cpu          # fp32 artifact in the cache; `run --backend auto` uses it
  edge-gfs compile --model camvid --target cpu --precision int8 --calib-method percentile --keep-fp32 first,last
  edge-gfs compile --model camvid-fold0 --target cpu --check  # parity of the cached artifact again
  edge-gfs compile --model camvid --target tensorrt --precision fp16            # on the Jetson / CUDA machine
  edge-gfs compile --model camvid --target tensorrt --precision int8 --calib-data camvid --out camvid-int8.pt2
  edge-gfs run --model camvid --engine camvid-int8.pt2                           # an explicit artifact

Only the feature extractor is compiled, at a static input size; DQCE and the classifier stay in PyTorch, so
teaching never rebuilds an engine. Every compile ends with a parity check against eager PyTorch on CamVid val
frames and fails loudly below its precision's gate (fp32/fp16: pixel agreement >= 99.5%, mIoU within 0.3;
bf16/int8: >= 99.0/98.5%, losing at most 0.5 mIoU, 2 IoU on any class and 1 point of mIoU after teaching K=5
shots; see docs/compile.md). On the CPU,
bf16 needs AVX-512 BF16 or AMX and int8 needs VNNI or AMX; the runtime (ONNX Runtime or OpenVINO) is picked by
timing both. The artifact's JSON sidecar records the model checksum, size, target, precision, runtime, CPU
features, tool versions and parity.
Cache: $EDGE_GFS_ARTIFACTS, default $XDG_CACHE_HOME/edge-gfs/artifacts. See docs/compile.md.
"""


def parse_size(text: str) -> tuple[int, int]:
    """config.parse_hw, plus the exported graph's rule: both sides multiples of 8."""
    h, w = parse_hw(text)
    if h % 8 or w % 8:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be >= 32 and multiples of 8")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs compile", description="Compile the feature extractor for the target "
                                "(TensorRT on CUDA/Jetson, ONNX Runtime on CPU) and check parity with eager PyTorch.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid", help="bundled name (camvid, camvid-fold0) or a .pt path")
    p.add_argument("--target", default="cpu", choices=TARGETS, help="cpu (ONNX Runtime) or tensorrt (CUDA/Jetson)")
    p.add_argument("--size", type=parse_size, metavar="HxW",
                   help="static input size (default: the model's input size, which is what the node feeds)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS + ("auto",),
                   help="cpu: fp32, bf16, int8 or auto (fastest that passes its gate here); tensorrt: fp32, fp16, int8")
    p.add_argument("--calib-data", default="camvid", metavar="DIR|camvid",
                   help="INT8 calibration frames: train split of CamVid or of a folder dataset")
    p.add_argument("--runtime", choices=("onnxruntime", "openvino"),
                   help="CPU: run the artifact on this runtime (default: time both here and keep the faster)")
    p.add_argument("--calib-method", default="minmax", choices=METHODS, help="CPU INT8: activation range calibration")
    p.add_argument("--keep-fp32", default="first", metavar="first,last|none",
                   help="CPU INT8: convolutions left unquantized (default: the first; bench/results/cpu_precision.md)")
    p.add_argument("--out", type=Path, metavar="FILE", help="where to write (default: the model's artifact cache)")
    p.add_argument("--check", action="store_true", help="only re-run the parity check of an existing artifact")
    p.add_argument("--check-frames", type=int, default=32, metavar="N",
                   help="val frames for the parity check (0 skips it; the sidecar then says parity: null)")
    p.add_argument("--threads", type=int, default=0, help="torch / runtime threads; 0 = all cores")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep = tuple(k for k in args.keep_fp32.split(",") if k and k != "none")
    if any(k not in ("first", "last") for k in keep):
        build_parser().error(f"--keep-fp32 {args.keep_fp32!r}: use first, last or first,last")
    logging.basicConfig(level=logging.INFO, format="edge-gfs compile: %(message)s", stream=sys.stderr)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from edge_gfs.core import zoo
    from edge_gfs.core.model import model_checksum

    from .build import build_artifact, recheck
    from .parity import ParityError, describe
    try:
        model, _ = zoo.load(args.model)
        hw = args.size or tuple(model.cfg.input_hw)
        if args.check:
            if args.precision == "auto" and not args.out:
                raise ArtifactError("--check --precision auto: name the precision to check (or the file with --out)")
            path = args.out or cache_path(model_checksum(model), args.target, args.precision, hw)
            parity, side = recheck(model, args.model, path, args.check_frames, not args.quiet)
            print(f"{path}: {describe(parity)}")
            return 0
        if hw != tuple(model.cfg.input_hw):
            logging.info("note: %dx%d is not %s's input size %dx%d; the node only uses artifacts at the model's "
                         "input size", *hw, args.model, *model.cfg.input_hw)
        recipe = Recipe(method=args.calib_method, exclude=keep)
        path, side = build_artifact(model, args.model, args.target, args.precision, hw, args.out, args.calib_data,
                                    args.check_frames, not args.quiet, recipe, args.runtime)
    except ParityError as e:
        print(f"edge-gfs compile: FAILED {e}", file=sys.stderr)
        return 1
    except (ArtifactError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"edge-gfs compile: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({side.target}, {side.precision}, {side.input_hw[0]}x{side.input_hw[1]}, {side.runtime})")
    if side.cpu and "auto" in side.cpu:
        auto = side.cpu["auto"]
        for t in auto["tried"]:
            print(f"  auto tried {t['precision']}: " + (f"{t['median_ms']:.2f} ms/frame on {t['runtime']}" if t["passed"]
                                                        else "FAILED its gate"))
        for p, why in auto["skipped"].items():
            print(f"  auto skipped {p}: {why}")
    print(f"sidecar {sidecar_path(path)}")
    print(describe(side.parity) if side.parity else "parity: not checked (--check-frames 0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
