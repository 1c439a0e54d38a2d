"""GPU smoke test of the deployment path: one command on a CUDA machine, well under 10 minutes.

    python bench/gpu_smoke.py                      # CUDA machine: writes bench/results/gpu_smoke.{json,md}
    python bench/gpu_smoke.py --cpu-dry-run        # anywhere: the same script on the CPU, tiny, to see it runs

Checks, each PASS / FAIL / SKIP (with the reason) and its numbers:
  1. environment: torch, CUDA, GPU, torch_tensorrt, TensorRT, ModelOpt, and the support-matrix row;
  2. fp16 and int8 compile through the build code at 360x480 (parity on val frames; the engine's layer
     precisions read back; the sidecar);
  3. each engine loaded in a fresh process through the node's loader, its features equal to this process';
  4. two threads on one engine: each thread's features equal the single-thread ones;
  5. model-only fps at 360x480, batch 1, on the GPU: eager fp32, eager fp16 autocast, torch.compile, and the
     TensorRT engines.
Without TensorRT (a CUDA machine without torch_tensorrt) 2-4 are SKIP with the reason and 5 measures PyTorch
only: the node's `--backend cuda` path. The process exits 1 if any check FAILs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gfs.backends import support  # noqa: E402
from edge_gfs.backends.tensorrt import available as tensorrt_available  # noqa: E402
from edge_gfs.backends.tensorrt import environment  # noqa: E402

MODEL = "camvid-fold0"
FRESH = """
import sys, torch
sys.path.insert(0, {repo!r})
from edge_gfs.core import zoo
from edge_gfs.core.model import model_checksum
from edge_gfs.backends.select import open_artifact
model = zoo.load({model!r})[0]
side, runner = open_artifact({path!r}, {model!r}, model_checksum(model), {hw!r})
torch.save(runner(torch.load({x!r})), {out!r})
print(side.precision, side.platform)
"""


def timed(fn, x: torch.Tensor, iters: int, warmup: int, cuda: bool) -> dict:
    """Frames per second of fn(x), batch 1, after warm-up (synchronised: GPU time, not launch time)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(x)
        sync()
    dt = time.perf_counter() - t0
    return {"fps": round(iters / dt, 1), "ms": round(1000 * dt / iters, 3), "iters": iters}


def check_engine(model, precision: str, hw: tuple[int, int], work: Path, args, x: torch.Tensor) -> dict:
    """Compile + parity + precision (build code), fresh-process load, two threads, fps."""
    from calib.build import build_artifact
    from edge_gfs.backends.tensorrt import TensorRTExtractor
    out: dict = {"precision": precision}
    t0 = time.perf_counter()
    path, side = build_artifact(model, MODEL, "tensorrt", precision, hw, work / f"{precision}.pt2",
                                check_frames=args.check_frames, progress=False)
    out |= {"compile_s": round(time.perf_counter() - t0, 1), "parity": side.parity, "engine": side.engine,
            "platform": side.platform, "check_compile": "PASS" if side.parity["passed"] else "FAIL"}
    runner = TensorRTExtractor(path)
    ref = runner(x)
    # fresh process, through the node's loader (main saved x to work/x.pt)
    code = FRESH.format(repo=str(REPO), model=MODEL, path=str(path), hw=tuple(hw), x=str(work / "x.pt"),
                        out=str(work / f"{precision}.out.pt"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        diff = (torch.load(work / f"{precision}.out.pt") - ref).abs().max().item()
        out["fresh_process"] = {"max_abs_diff": diff, "said": r.stdout.strip()}
        out["check_fresh_process"] = "PASS" if diff == 0.0 else "FAIL"
    else:
        out["fresh_process"] = {"error": r.stderr[-2000:]}
        out["check_fresh_process"] = "FAIL"
    # two threads on one engine (the node's stream and teach threads share it)
    results: dict[int, list[float]] = {0: [], 1: []}

    def worker(k: int) -> None:
        for _ in range(20):
            results[k].append((runner(x) - ref).abs().max().item())

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worst = max(results[0] + results[1])
    out["two_threads"] = {"calls": 40, "max_abs_diff": worst}
    out["check_two_threads"] = "PASS" if worst == 0.0 else "FAIL"
    xg = x.cuda()
    out["fps"] = timed(runner.module, xg, args.iters, args.warmup, True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="360x480", help="HxW of the engines and the fps runs (default 360x480)")
    p.add_argument("--check-frames", type=int, default=32, help="val frames for each parity check")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cpu-dry-run", action="store_true", help="run on the CPU at 64x96, 3 iterations: does it work")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    from edge_gfs.core import zoo
    from edge_gfs.core.model import at_size

    dry = args.cpu_dry_run
    if dry:
        args.size, args.iters, args.warmup, args.check_frames = "64x96", 3, 1, 2
    elif not torch.cuda.is_available():
        print("gpu_smoke: torch sees no CUDA device; run it on the CUDA machine (or --cpu-dry-run here)", file=sys.stderr)
        return 2
    hw = tuple(int(v) for v in args.size.lower().split("x"))
    env = environment()
    try:
        import modelopt
        env["modelopt"] = modelopt.__version__
    except ImportError as e:
        env["modelopt"] = f"absent ({e})"
    ok, why = tensorrt_available()
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "env": env, "size": list(hw),
                    "row": support.describe(env) if env.get("torch_tensorrt") else "no torch_tensorrt",
                    "tensorrt": "present" if ok else f"absent: {why}", "dry_run": dry}
    print(f"gpu_smoke: {report['env']}; TensorRT {report['tensorrt']}", flush=True)
    base = zoo.load(MODEL)[0]  # each engine build copies what it changes (quantized_program deep-copies)
    model = at_size(base, hw)
    device = "cpu" if dry else "cuda"
    net = model.extractor.eval().to(device)
    x = torch.rand(1, 3, *hw) * 255
    xd = x.to(device)
    fps = {"eager_fp32": timed(net, xd, args.iters, args.warmup, not dry)}
    if not dry:
        with torch.autocast("cuda", dtype=torch.float16):
            fps["eager_fp16_autocast"] = timed(net, xd, args.iters, args.warmup, True)
    try:
        compiled = torch.compile(net)
        fps["torch_compile"] = timed(compiled, xd, args.iters, max(args.warmup, 3), not dry)
    except Exception as e:  # an inductor toolchain missing is a finding, not a crash
        fps["torch_compile"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    report["fps"] = fps
    net.cpu()
    engines = {}
    if ok and not dry:
        work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
        torch.save(x, work / "x.pt")  # the input the fresh-process check feeds each engine
        for precision in ("fp16", "int8"):
            try:
                engines[precision] = check_engine(base, precision, hw, work, args, x)
                fps[f"tensorrt_{precision}"] = engines[precision]["fps"]
            except Exception as e:
                engines[precision] = {"check_compile": "FAIL", "error": f"{type(e).__name__}: {str(e)[:2000]}"}
            print(f"gpu_smoke: {precision}: {engines[precision]}", flush=True)
    report["engines"] = engines or {"skipped": f"TensorRT {report['tensorrt']}" if not ok else "dry run"}
    failed = [f"{p} {k}" for p, e in engines.items() for k, v in e.items() if k.startswith("check_") and v == "FAIL"]
    report["failed"] = failed
    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu_smoke_dry_run" if dry else "gpu_smoke"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# GPU smoke ({'CPU dry run' if dry else env.get('gpu')})", "",
             f"`python bench/gpu_smoke.py{' --cpu-dry-run' if dry else ''}`; {report['machine']}; torch "
             f"{env['torch']}, CUDA {env.get('cuda')}, torch_tensorrt {env.get('torch_tensorrt')}, TensorRT "
             f"{env.get('tensorrt')}, ModelOpt {env['modelopt']}; row: {report['row']}; TensorRT {report['tensorrt']}.",
             "", f"## Model-only speed at {hw[0]}x{hw[1]}, batch 1", "", "| path | fps | ms |", "|---|---|---|"]
    lines += [f"| {k} | {v.get('fps', '-')} | {v.get('ms', v.get('error', '-'))} |" for k, v in fps.items()]
    lines += ["", "## Engines", ""]
    for prec, e in engines.items():
        checks = ", ".join(f"{k[6:]} {v}" for k, v in e.items() if k.startswith("check_"))
        lines.append(f"- {prec}: {checks}; parity {e.get('parity')}; layers {(e.get('engine') or {}).get('layer_datatypes')}"
                     + (f"; error {e['error']}" if "error" in e else ""))
    if not engines:
        lines.append(f"- skipped: {report['engines']['skipped']}")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
