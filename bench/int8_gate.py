"""Choose the INT8 parity gate on val: ModelOpt INT8 (emulated on CPU) against eager, on every val frame.

    python bench/int8_gate.py                  # camvid-fold0 at its input size, 64 train frames calibrated
    python bench/int8_gate.py --frames 16      # a quick look

The INT8 program is built exactly as `edge-gfs compile --target tensorrt --precision int8` builds it
(calib.tensorrt.quantized_program: ModelOpt INT8_DEFAULT_CFG, max calibration on 64 frames of the train split),
with ModelOpt's CUDA kernel stood in for by its own CPU emulation (calib/modelopt_emulation.py). TensorRT's
INT8 kernels round like the emulation; they accumulate differently, and the non-quantized layers run in fp16
there, so a first GPU run should confirm the margin (bench/gpu_smoke.py prints the parity).
Writes bench/results/int8_gate.{json,md}: pixel agreement and mIoU delta, overall and per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from calib import tensorrt as trt  # noqa: E402
from calib.build import calibration_batches  # noqa: E402
from calib.modelopt_emulation import on_cpu  # noqa: E402
from calib.parity import check_parity, val_frames  # noqa: E402
from edge_gfs.core import zoo  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid-fold0")
    p.add_argument("--frames", type=int, default=101, help="val frames (CamVid val has 101)")
    p.add_argument("--calib-frames", type=int, default=64)
    p.add_argument("--bad-calibration", action="store_true",
                   help="calibrate on frames scaled to [0,1] (the model takes [0,255]): what the gate must catch")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    model = zoo.load(args.model)[0]
    hw = tuple(model.cfg.input_hw)
    t0 = time.perf_counter()
    with on_cpu():
        batches = calibration_batches("camvid", hw, args.calib_frames)
        if args.bad_calibration:
            batches = [b / 255 for b in batches]  # the classic mistake: [0,1] frames where the model takes [0,255]
        ep = trt.quantized_program(model, hw, batches, device="cpu")
        net = ep.module()
        per_frame: list[float] = []
        result = check_parity(model, net, "int8", val_frames(args.frames), progress=True, per_frame=per_frame)
    name = "int8_gate_bad_calibration" if args.bad_calibration else "int8_gate"
    res = {"model": args.model, "bad_calibration": args.bad_calibration, "input_hw": list(hw), "calib_frames": args.calib_frames, "parity": result,
           "per_frame_agreement_pct": {"min": result["worst_frame_agreement_pct"], "p5": float(np.percentile(per_frame, 5)),
                                       "median": float(np.median(per_frame))},
           "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2))
    how = f"{args.calib_frames} train frames scaled to [0,1] calibrated" if args.bad_calibration else \
        f"{args.calib_frames} train frames calibrated"
    md = (f"# INT8 parity on val (ModelOpt INT8, emulated on CPU)\n\n`python bench/int8_gate.py"
          f"{' --bad-calibration' if args.bad_calibration else ''}` ({args.model} at {hw[0]}x{hw[1]}, {how}, "
          f"{result['frames']} val frames):\n\n"
          f"- pixel agreement with eager: **{result['pixel_agreement_pct']:.2f}%** (worst frame "
          f"{res['per_frame_agreement_pct']['min']:.2f}%, 5th percentile {res['per_frame_agreement_pct']['p5']:.2f}%)\n"
          f"- mIoU eager {result['miou_eager']:.2f}, INT8 {result['miou_compiled']:.2f}: delta **{result['miou_delta']:.2f}**\n")
    (args.out / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
