"""CPU backends for the feature extractor, timed in one run on this machine: what `--target cpu` ships.

    python bench/backends.py                          # 288x384 and 352x480, 2 threads, + node fps eager vs cpu
    python bench/backends.py --sizes 192x256 --iters 30 --node-duration 0 --out /tmp/b
    python bench/backends.py --only onnxruntime,openvino-bf16,onnxruntime-int8,openvino-int8 --node-duration 0

Per size (batch 1, median / p90 ms over --iters calls after a warm-up, in 10 interleaved rounds): eager PyTorch, torch.compile
(Inductor, weights frozen), AOTInductor (the exported program, packaged), ONNX Runtime (the ONNX file of the
exported program, as shipped: no spinning; and with spinning, for reference), OpenVINO (the same ONNX file,
and its direct conversion of the exported program; LATENCY hint), and the low precisions `edge-gfs compile
--target cpu --precision bf16|int8` builds (OpenVINO bf16 of the same file; the INT8 QDQ file, calibrated on 64
train frames, on ONNX Runtime and on OpenVINO). Each is checked against eager (max abs feature difference and
median per-pixel cosine of the features) before it is timed. The compute floor is the extractor's FLOPs
(torch.utils.flop_counter) over the fp32 matmul rate measured in the same run on the same threads.

Then, unless --node-duration 0: the node end to end (bench/node_latency.py, closed loop: the next frame is
sent when the last label map arrives) with --backend eager and with the CPU artifact.
Writes bench/results/backends.json and backends.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from calib import export_extractor  # noqa: E402
from calib.build import calibration_batches  # noqa: E402
from calib.cpu import export_onnx  # noqa: E402
from calib.quantize import quantize  # noqa: E402
from edge_gfs.backends.cpu import cpu_name, runtime_versions  # noqa: E402
from edge_gfs.backends.cpu_features import describe as cpu_features  # noqa: E402
from edge_gfs.backends.onnxruntime import OnnxRuntimeExtractor  # noqa: E402
from edge_gfs.backends.openvino import OpenVinoExtractor  # noqa: E402
from edge_gfs.core import zoo  # noqa: E402


_A, _B = torch.randn(1024, 1024), torch.randn(1024, 1024)


def matmul_gflops() -> float:
    """fp32 1024^3 matmul rate on torch's threads: the best this CPU does on dense math (best of 10 here;
    bench_size samples it again in every timing round and the report keeps the best, so a moment of load
    elsewhere cannot lower the floor's denominator)."""
    for _ in range(3):
        _A @ _B
    best = min(_timed(lambda: _A @ _B) for _ in range(10))
    return 2 * 1024**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def extractor_gflops(ext: torch.nn.Module, hw: tuple[int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        ext(torch.zeros(1, 3, *hw))
    return fc.get_total_flops() / 1e9


def candidates(model, hw: tuple[int, int], work: Path, x: torch.Tensor, threads: int):
    """(name, how, build callable) per backend; building is timed separately from running."""
    ext = model.extractor.eval()
    onnx_path = work / f"ext-{hw[0]}x{hw[1]}.onnx"

    def eager():
        return torch.no_grad()(ext)

    def compiled():
        import torch._inductor.config as ic
        ic.freezing = True
        fn = torch.compile(ext, dynamic=False)
        with torch.no_grad():
            fn(x)  # compiles here, inside the timed build
        return torch.no_grad()(fn)

    def aoti():
        import torch._inductor
        ep = export_extractor(model, hw)
        pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(work / f"ext-{hw[0]}x{hw[1]}.pt2"),
                                                       inductor_configs={"freezing": True})
        runner = torch._inductor.aoti_load_package(pkg)
        return torch.no_grad()(runner)

    def onnx_file() -> Path:
        if not onnx_path.exists():
            export_onnx(model, hw, onnx_path)
        return onnx_path

    def ort(spin: bool):
        return lambda: OnnxRuntimeExtractor(onnx_file(), threads, spin=spin)

    def ov_onnx():
        return OpenVinoExtractor(onnx_file(), threads)

    def ov_ep():
        return OpenVinoExtractor(export_extractor(model, hw), threads)

    int8_path = work / f"ext-{hw[0]}x{hw[1]}-int8.onnx"

    def int8_file() -> Path:
        if not int8_path.exists():
            quantize(onnx_file(), int8_path, calibration_batches("camvid", hw))
        return int8_path

    return [("eager", "PyTorch eager, torch.no_grad", eager),
            ("torch.compile", "Inductor, freezing=True, dynamic=False", compiled),
            ("AOTInductor", "aoti_compile_and_package(exported program), freezing=True", aoti),
            ("onnxruntime", "ONNX of the exported program, ORT_ENABLE_ALL, sequential, no spinning (shipped)", ort(False)),
            ("onnxruntime+spin", "as above with intra-op spinning (ORT's default)", ort(True)),
            ("openvino", "the same ONNX file, PERFORMANCE_HINT=LATENCY, f32", ov_onnx),
            ("openvino-ep", "ov.convert_model(exported program), LATENCY, f32", ov_ep),
            ("openvino-bf16", "the same ONNX file, LATENCY, INFERENCE_PRECISION_HINT=bf16 (compile --precision bf16)",
             lambda: OpenVinoExtractor(onnx_file(), threads, "bf16")),
            ("onnxruntime-int8", "INT8 QDQ file (calib/quantize.py), ONNX Runtime as shipped",
             lambda: OnnxRuntimeExtractor(int8_file(), threads)),
            ("openvino-int8", "the same INT8 QDQ file on OpenVINO, LATENCY", lambda: OpenVinoExtractor(int8_file(), threads, "int8"))]


def bench_size(model, hw: tuple[int, int], args: argparse.Namespace, work: Path, rates: list[float]) -> dict:
    """Build every backend, then time them in interleaved rounds, so a burst of load elsewhere on the
    machine lands on all of them alike instead of on whichever happened to run at that moment."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, *hw) * 255
    with torch.no_grad():
        ref = model.extractor(x)
    gflops = extractor_gflops(model.extractor, hw)
    rows, fns = [], {}
    for name, how, build in candidates(model, hw, work, x, args.threads):
        if args.only and name not in args.only.split(","):
            continue
        row = {"backend": name, "how": how}
        try:
            t0 = time.perf_counter()
            fn = build()
            row["build_s"] = round(time.perf_counter() - t0, 1)
            y = fn(x)
            row["max_abs_diff"] = float((y - ref).abs().max())
            row["median_cosine"] = round(float(torch.nn.functional.cosine_similarity(y, ref, dim=1).median()), 5)
            for _ in range(args.warmup):
                fn(x)
            fns[name] = fn
        except Exception as e:  # a backend that fails here is a result too
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        rows.append(row)
    samples: dict[str, list[float]] = {n: [] for n in fns}
    rounds = 10
    for _ in range(rounds):
        rates.append(matmul_gflops())
        for name, fn in fns.items():
            fn(x)  # one untimed call after switching backends (caches, thread pools waking up)
            samples[name] += [_timed(lambda: fn(x)) * 1000 for _ in range(max(1, args.iters // rounds))]
    for row in rows:
        if row["backend"] in samples:
            ms = np.array(samples[row["backend"]])
            row.update({"median_ms": round(float(np.median(ms)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
                        "min_ms": round(float(ms.min()), 2)})
        print(f"{hw[0]}x{hw[1]} {row['backend']:17s} {row}", flush=True)
    fns.clear()
    gc.collect()
    return {"input_hw": list(hw), "extractor_gflops": round(gflops, 3), "rows": rows,
            "feature_scale": round(float(ref.abs().max()), 2)}


def node_fps(model_name: str, backend: str, duration: float, artifacts: Path, out: Path) -> dict:
    """bench/node_latency.py closed loop with one backend; its report lands in `out`."""
    env = os.environ | {"EDGE_GFS_ARTIFACTS": str(artifacts), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, str(REPO / "bench/node_latency.py"), "--model", model_name, "--backends", backend,
           "--rates", "closed", "--duration", str(duration), "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    r = json.loads((out / "node_latency.json").read_text())["backends"][0]
    run = r["runs"][0]
    return {"backend": backend, "fps": run["throughput_fps"], "latency_ms": run["latency_ms"],
            "stage_ms": run["stage_ms"], "cpu_percent": run["cpu_percent"], "teach": r["teach"]}


def markdown(r: dict) -> str:
    lines = ["# CPU backends for the feature extractor", "",
             f"Command: `{r['command']}`; {r['machine']}; batch 1, {r['threads']} threads; load average "
             f"{r['loadavg_start'][0]:.2f} at the start, {r['loadavg_end'][0]:.2f} at the end; fp32 matmul "
             f"{r['matmul_gflops_per_s']:.0f} GFLOP/s (best of {len(r['matmul_gflops_per_s_samples'])} samples "
             f"spread over the run; the floor = FLOPs / that rate).", ""]
    for s in r["sizes"]:
        h, w = s["input_hw"]
        lines += [f"## {h}x{w} (model {r['model']}, {s['extractor_gflops']:.2f} GFLOP, floor {s['floor_ms']:.1f} ms)", "",
                  "| backend | median ms | p90 ms | x floor | max abs diff vs eager | median cosine | build s | how |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in s["rows"]:
            if "error" in x:
                lines.append(f"| {x['backend']} | - | - | - | - | - | - | failed: {x['error']} |")
                continue
            lines.append(f"| {x['backend']} | {x['median_ms']} | {x['p90_ms']} | {x['x_floor']} | "
                         f"{x['max_abs_diff']:.1e} | {x['median_cosine']} | {x['build_s']} | {x['how']} |")
        lines.append(f"\nFeatures are of magnitude up to {s['feature_scale']}.\n")
    if r.get("node"):
        lines += ["## The node end to end (bench/node_latency.py, closed loop, 360x480 CamVid test JPEGs)", "",
                  "| backend | fps | p50 ms | p95 ms | extractor ms | node CPU % | teach K=5 reply s |",
                  "|---|---|---|---|---|---|---|"]
        for n in r["node"]:
            st = n["stage_ms"] or {}
            k5 = next((t["reply_s"] for t in n["teach"] if t["k"] == 5), "-")
            lines.append(f"| {n['backend']} | {n['fps']} | {n['latency_ms']['p50']} | {n['latency_ms']['p95']} | "
                         f"{st.get('extractor', '-')} | {n['cpu_percent']} | {k5} |")
        lines.append("")
    lines += ["Shipped as `edge-gfs compile --target cpu --precision fp32|bf16|int8|auto`: " + r["decision"], ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid-fold0")
    p.add_argument("--sizes", default="288x384,352x480", help="the shipped profiles: the default and the accurate one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--only", help="comma-separated backend names")
    p.add_argument("--node-duration", type=float, default=20.0, help="seconds per node run; 0 skips the node")
    p.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    load0 = os.getloadavg()
    torch.set_num_threads(args.threads)
    model, _ = zoo.load(args.model)
    rates = [matmul_gflops()]
    print(f"fp32 matmul {rates[0]:.0f} GFLOP/s on {args.threads} threads, load {load0}", flush=True)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="edge-gfs-backends-") as tmp:
        work = Path(tmp)
        results = [bench_size(model, hw, args, work, rates) for hw in sizes]
        rate = max(rates)
        for s in results:  # the floor with the best matmul rate seen in the whole run
            s["floor_ms"] = round(1000 * s["extractor_gflops"] / rate, 2)
            for row in s["rows"]:
                if "median_ms" in row:
                    row["x_floor"] = round(row["median_ms"] / s["floor_ms"], 2)
        node = []
        if args.node_duration > 0:
            from calib.build import build_artifact
            arts = work / "artifacts"
            os.environ["EDGE_GFS_ARTIFACTS"] = str(arts)
            build_artifact(model, args.model, "cpu", check_frames=8, progress=False)
            for backend in ("eager", "cpu"):
                node.append(node_fps(args.model, backend, args.node_duration, arts, work / f"node-{backend}"))
                print(node[-1], flush=True)
    load1 = os.getloadavg()
    best = {}
    for s in results:
        ok = [x for x in s["rows"] if "error" not in x]
        best[f"{s['input_hw'][0]}x{s['input_hw'][1]}"] = min(ok, key=lambda x: x["median_ms"])["backend"] if ok else None
    decision = (f"fp32, bf16 or int8 on ONNX Runtime (no spinning) or OpenVINO, whichever `edge-gfs compile "
                f"--target cpu` times faster on the machine it runs on (the sidecar records both times). Fastest per "
                f"size in this run: {', '.join(f'{k}: {v}' for k, v in best.items())}. ONNX Runtime's intra-op "
                f"spinning is off: a few % faster alone, but it busy-waits on the cores the rest of the frame and the "
                f"teach thread need.")
    report = {"model": args.model, "command": "python bench/backends.py " + " ".join(sys.argv[1:]),
              "machine": f"{cpu_name()}, {os.cpu_count()} CPUs ({', '.join(cpu_features()['features'])})",
              "threads": args.threads,
              "loadavg_start": list(load0), "loadavg_end": list(load1), "matmul_gflops_per_s": round(rate, 1),
              "matmul_gflops_per_s_samples": [round(r, 1) for r in rates],
              "versions": runtime_versions(), "sizes": results, "node": node,
              "decision": decision}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "backends.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
