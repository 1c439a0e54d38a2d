"""Choose the CPU bf16 and INT8 recipes and gates on val: every candidate against eager, on every val frame.

    python bench/cpu_precision.py                       # camvid and camvid-fold0, all recipes, 101 val frames
    python bench/cpu_precision.py --models camvid --frames 16 --recipes minmax   # a quick look

Each candidate is built by the code `edge-gfs compile --target cpu` runs (calib.cpu.build: export, INT8
quantization with ONNX Runtime's quantizer on 64 train frames, runtime chosen by timing) and scored by the
compile's own parity check (calib.parity.check_parity) with every check switched on: pixel agreement, mIoU,
each class's IoU, and total/novel mIoU after teaching K=5 shots per class through the candidate's features.
INT8 recipes: MinMax and percentile calibration, and MinMax with the first and/or last convolution kept in
fp32 (entropy is left out: calib/quantize.py says why); bf16 is OpenVINO's bf16 inference of the fp32 file (a fp32 row is the reference).
Writes bench/results/cpu_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from calib import cpu  # noqa: E402
from calib.build import calibration_batches  # noqa: E402
from calib.parity import GATES, Gate, check_parity, val_frames  # noqa: E402
from calib.quantize import Recipe  # noqa: E402
from edge_gfs.backends.cpu import cpu_name, load_cpu  # noqa: E402
from edge_gfs.core import zoo  # noqa: E402
from edge_gfs.core.model import at_size  # noqa: E402

RECIPES = {"minmax": Recipe(exclude=()), "percentile": Recipe("percentile", exclude=()),
           "minmax-first": Recipe(exclude=("first",)), "minmax-last": Recipe(exclude=("last",)),
           "minmax-first-last": Recipe(exclude=("first", "last"))}  # minmax-first is what compile ships
LOOSE = Gate(0.0, 100.0, 100.0, 100.0, one_sided=True)  # every check on, nothing failing: the bench wants the numbers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="camvid,camvid-fold0")
    p.add_argument("--frames", type=int, default=101, help="val frames (CamVid val has 101)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="INT8 recipes to try")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    frames = val_frames(args.frames)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-gfs-cpu-precision-") as tmp:
        for name in args.models.split(","):
            model = zoo.load(name)[0]
            hw = tuple(model.cfg.input_hw)
            batches = calibration_batches("camvid", hw)
            plan = [("fp32", None), ("bf16", None)] + [("int8", r) for r in args.recipes.split(",")]
            for precision, recipe in plan:
                t0 = time.perf_counter()
                path = Path(tmp) / f"{name}-{precision}-{recipe}.onnx"
                record = cpu.build(model, hw, precision, path, batches, RECIPES[recipe or "minmax-first"])
                runner = load_cpu(path, record["runtime"], precision)
                parity = check_parity(at_size(model, hw), runner, LOOSE, frames, progress=False)
                row = {"model": name, "input_hw": list(hw), "precision": precision, "recipe": recipe or "-",
                       "runtime": record["runtime"], "timings_ms": record["timings_ms"], "parity": parity,
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("model", "precision", "recipe", "runtime", "timings_ms")}),
                      parity["pixel_agreement_pct"], parity["miou_delta"], parity.get("worst_class"),
                      parity["taught"]["loss"], flush=True)
    res = {"command": "python bench/cpu_precision.py " + " ".join(sys.argv[1:]), "cpu": cpu_name(),
           "threads": args.threads, "frames": args.frames, "rows": rows,
           "gates": {k: v.to_dict() for k, v in GATES.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_precision.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "cpu_precision.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    lines = ["# CPU bf16 and INT8 against eager fp32, on CamVid val", "",
             f"Command: `{res['command']}`; {res['cpu']}, {res['threads']} threads; {res['frames']} val frames; "
             "teaching: K=5 train shots per class (seed 0, full labels) through each candidate's own features.", "",
             "| model | precision | recipe | runtime (ms/frame per runtime) | pixel agreement % | worst frame % | "
             "mIoU eager / compiled | worst class (IoU change) | after teaching: total (novel) mIoU change |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        q = r["parity"]
        t = q["taught"]
        novel = f" ({t['novel_miou_compiled'] - t['novel_miou_eager']:+.2f})" if "novel_miou_eager" in t else ""
        worst = q.get("worst_class")
        lines.append(f"| {r['model']} | {r['precision']} | {r['recipe']} | {r['runtime']} ("
                     f"{', '.join(f'{k} {v:.2f}' for k, v in r['timings_ms'].items())}) | {q['pixel_agreement_pct']:.2f} | "
                     f"{q['worst_frame_agreement_pct']:.2f} | {q['miou_eager']:.2f} / {q['miou_compiled']:.2f} | "
                     f"{worst} ({q['class_iou_change'].get(worst, 0):+.2f}) | "
                     f"{t['miou_compiled'] - t['miou_eager']:+.2f}{novel} |")
    lines += ["", "Gates (calib/parity.py GATES):", ""]
    lines += [f"- {k}: {v}" for k, v in res["gates"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
