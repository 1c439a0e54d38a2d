"""Node latency and throughput (../shared/spec/benchmark.md §2), end to end over ZeroMQ on loopback.

    edge-gfs compile --model camvid-fold0 --target cpu    # once: the CPU artifact the `cpu` backend runs
    python bench/node_latency.py                          # eager and cpu; 5/10/30 Hz, closed loop, flood; 20 s each
    python bench/node_latency.py --backends eager --duration 8 --threads 1 --out /tmp/lat
    python bench/node_latency.py --model camvid --backends cpu:fp32,cpu:bf16,cpu:int8 --name node_latency_precision

A backend `cpu:PRECISION[:RUNTIME]` runs the node on that CPU artifact (`--engine`), compiled first through
`edge-gfs compile`'s code into the artifact cache when it is not there yet (with a RUNTIME, `compile --runtime`,
into the cache's bench/ folder).

Processes as deployed: the node is a subprocess (`edge-gfs run`); this process publishes CamVid test frames
(360x480, the dataset's own JPEG bytes) and subscribes to the label maps. Latency = receipt time of a label
map minus its frame's stamp (one host clock). Per run: p50/p95/p99, throughput, dropped frames, the node's
CPU % and peak RSS, and the node's own stage breakdown (its status topic). In the same run: the compute
floor (the feature extractor's FLOPs at the model's input size over the measured fp32 matmul rate of the
same number of cores) and the teach latency for K = 1 and K = 5 (to the reply and to the first label map
made with the new class).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from edge_gfs.core import zoo  # noqa: E402
from edge_gfs.wire.client import FramePublisher, LabelSubscriber, TeachClient, free_endpoint  # noqa: E402
from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.core.config import parse_hw  # noqa: E402
from edge_gfs.data.evaluation import draw_supports  # noqa: E402
from edge_gfs.core.model import at_size  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def compute_floor(model, threads: int) -> dict:
    """Extractor FLOPs at the model's input size / fp32 matmul FLOP/s on the same cores: a lower bound per frame."""
    import torch
    from backends import extractor_gflops, matmul_gflops  # the floor of bench/backends.py, measured the same way
    if threads:
        torch.set_num_threads(threads)
    h, w = model.cfg.input_hw
    gflops, rate = extractor_gflops(model.extractor, (h, w)), matmul_gflops()
    return {"input_hw": [h, w], "extractor_gflops": gflops,
            "extractor_gflops_at_360x480": extractor_gflops(model.extractor, (360, 480)),
            "matmul_gflops_per_s": rate, "floor_ms": 1000 * gflops / rate, "threads": torch.get_num_threads()}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.eps = {k: free_endpoint() for k in ("frames", "labels", "teach")}
        data = camvid()
        self.data = data
        self.jpgs = [data.image_path("test", n).read_bytes() for n in data.names("test")]
        state = Path("/tmp") / f"node_latency_{os.getpid()}"
        cmd = [sys.executable, "-m", "edge_gfs.cli", "run", "--model", args.model, "--state", str(state),
               "--threads", str(args.threads), "--status-period", "0.5", "--log-level", "warning",
               "--backend", args.backend.split(":")[0]]
        if getattr(args, "engine", None):
            cmd += ["--engine", str(args.engine)]
        if args.input_size:
            cmd += ["--input-size", f"{args.input_size[0]}x{args.input_size[1]}"]
        for k, v in self.eps.items():
            cmd += [f"--{k}", v]
        self.node = subprocess.Popen(cmd, cwd=REPO)
        self.teach = TeachClient(self.eps["teach"], timeout_s=120)
        self.teach.wait_ready(300)
        self.pub = FramePublisher(self.eps["frames"])
        self.sub = LabelSubscriber(self.eps["labels"])
        self.pub.wait_for_subscriber(60)
        self.sub.next("classes", 30)

    def close(self) -> None:
        self.node.send_signal(signal.SIGTERM)
        try:
            self.node.wait(30)
        except subprocess.TimeoutExpired:
            self.node.kill()

    def run_rate(self, rate: str) -> dict:
        """One run: publish at `rate` Hz (open loop), 'closed' (next frame when the last map arrives) or 'flood'."""
        dur = self.args.duration
        sent, recv, lat, status = 0, 0, [], None
        stop = threading.Event()
        got_map = threading.Event()
        counter = {"sent": 0}

        def publish() -> None:
            period = 0.002 if rate == "flood" else 0.0 if rate == "closed" else 1.0 / float(rate)
            nxt = time.monotonic()
            k = 0
            while not stop.is_set():
                if rate == "closed":
                    got_map.wait(2.0)
                    got_map.clear()
                self.pub.publish(data=self.jpgs[k % len(self.jpgs)], encoding="jpeg")
                counter["sent"] += 1
                k += 1
                if period:
                    nxt += period
                    stop.wait(max(0.0, nxt - time.monotonic()))

        cpu0, t0 = cpu_seconds(self.node.pid), time.monotonic()
        first_seq = self.pub.seq
        th = threading.Thread(target=publish, daemon=True)
        th.start()
        got_map.set()
        while time.monotonic() - t0 < dur:
            msg = self.sub.recv(0.5)
            if msg is None:
                continue
            topic, m = msg
            if topic == "labels" and m.seq >= first_seq:
                lat.append((time.time_ns() - m.stamp_ns) / 1e6)
                recv += 1
                got_map.set()
            elif topic == "status":
                status = m
        stop.set()
        th.join()
        wall = time.monotonic() - t0
        cpu = cpu_seconds(self.node.pid) - cpu0
        sent = counter["sent"]
        lat_a = np.array(lat) if lat else np.array([np.nan])
        return {"rate": rate, "seconds": round(wall, 1), "sent": sent, "label_maps": recv,
                "dropped": sent - recv, "throughput_fps": round(recv / wall, 2),
                "latency_ms": {p: round(float(np.percentile(lat_a, q)), 1) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
                "cpu_percent": round(100 * cpu / wall, 1), "peak_rss_mb": round(peak_rss_mb(self.node.pid), 1),
                "stage_ms": (status or {}).get("stage_ms"), "node_latency_p95_ms": (status or {}).get("latency_p95_ms")}

    def teach_latency(self, k: int) -> dict:
        """Time to the teach reply and to the first label map made with the new class, streaming at 10 Hz."""
        names = draw_supports(self.data, [8], k, seed=123)[8]
        shots = [(img, lab == 8) for img, lab in (self.data.read("train", n) for n in names)]
        stop = threading.Event()

        def publish() -> None:
            j = 0
            while not stop.is_set():
                self.pub.publish(data=self.jpgs[j % len(self.jpgs)], encoding="jpeg")
                j += 1
                stop.wait(0.1)

        th = threading.Thread(target=publish, daemon=True)
        th.start()
        try:
            time.sleep(1.0)
            t0 = time.perf_counter()
            reply = self.teach.teach("Car", shots)
            t_reply = time.perf_counter() - t0
            while True:
                m = self.sub.next("labels", 10)
                if m is not None and m.classes_version >= reply["version"]:
                    break
            t_map = time.perf_counter() - t0
            self.teach.forget("Car")
        finally:
            stop.set()
            th.join()
        return {"k": k, "reply_s": round(t_reply, 3), "first_map_s": round(t_map, 3)}


def markdown(r: dict) -> str:
    fl = r["floor"]
    size = f"{fl['input_hw'][0]}x{fl['input_hw'][1]}"
    lines = [f"# Node latency ({r['backend']}, model {r['model']} at {size}, {r['threads_flag']} threads flag)", "",
             f"Command: `{r['command']}`; {r['machine']}.", "",
             "| rate | sent | maps | dropped | fps | p50 ms | p95 ms | p99 ms | CPU % | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        L = x["latency_ms"]
        lines.append(f"| {x['rate']} | {x['sent']} | {x['label_maps']} | {x['dropped']} | {x['throughput_fps']} | "
                     f"{L['p50']} | {L['p95']} | {L['p99']} | {x['cpu_percent']} | {x['peak_rss_mb']} |")
    lines += ["", "Stage breakdown (node status, mean ms per frame over its last 120 frames, closed loop):", ""]
    st = next((x["stage_ms"] for x in r["runs"] if x["rate"] == "closed" and x["stage_ms"]), None) or {}
    lines += ["| " + " | ".join(st) + " |", "|" + "---|" * len(st), "| " + " | ".join(str(v) for v in st.values()) + " |"]
    if st:
        model_ms = st["extractor"]
        rest = st["decode"] + st["classifier"] + st["upsample_argmax"] + st["publish"]
        frame = sum(st.values())
        lines += ["", f"- extractor {model_ms:.1f} ms vs compute floor {fl['floor_ms']:.1f} ms "
                      f"({fl['extractor_gflops']:.2f} GFLOP at {fl['input_hw'][0]}x{fl['input_hw'][1]}, "
                      f"matmul {fl['matmul_gflops_per_s']:.0f} GFLOP/s on {fl['threads']} threads): "
                      f"**{model_ms / fl['floor_ms']:.2f}x** the floor",
                  f"- decode + DQCE/classifier + upsample/argmax + publish: {rest:.1f} ms = "
                  f"**{100 * rest / model_ms:.0f}%** of the extractor time",
                  f"- DQCE + classifier: **{100 * st['classifier'] / frame:.1f}%** of the frame"]
    lines += ["", "Teach latency (streaming at 10 Hz):", "", "| K | to reply s | to first map with the class s |", "|---|---|---|"]
    lines += [f"| {t['k']} | {t['reply_s']} | {t['first_map_s']} |" for t in r["teach"]]
    return "\n".join(lines) + "\n"


def precision_artifact(model, model_name: str, backend: str) -> Path:
    """`cpu:PRECISION[:RUNTIME]` -> that CPU artifact, compiled (and parity-gated) first if it is missing."""
    from edge_gfs.backends.artifact import ArtifactError, artifacts_root, cache_path
    from edge_gfs.core.model import model_checksum
    target, precision, *runtime = backend.split(":")
    if target != "cpu":
        raise ArtifactError(f"backend {backend!r}: only cpu:PRECISION takes a precision (cpu:fp32, cpu:int8:onnxruntime)")
    hw = tuple(model.cfg.input_hw)
    path = cache_path(model_checksum(model), "cpu", precision, hw)
    if runtime:
        path = artifacts_root() / "bench" / f"{model_name}-cpu-{precision}-{runtime[0]}-{hw[0]}x{hw[1]}.onnx"
    if not path.is_file():
        from calib.build import build_artifact
        print(f"compiling {backend} for {model_name} ...", flush=True)
        build_artifact(model, model_name, "cpu", precision, hw, out=path if runtime else None, progress=False,
                       runtime=runtime[0] if runtime else None)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid-fold0")
    p.add_argument("--backends", default="eager,cpu",
                   help="node --backend values, one full run each (cpu needs `edge-gfs compile --model M --target cpu`)")
    p.add_argument("--threads", type=int, default=0, help="the node's --threads (0 = all cores)")
    p.add_argument("--rates", default="5,10,30,closed,flood")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    p.add_argument("--out", type=Path, default=REPO / "bench/results")
    p.add_argument("--input-size", type=parse_hw, metavar="HxW",
                   help="a profile other than the model's own input size (compile it with --size HxW first)")
    p.add_argument("--name", default="node_latency", help="result file stem, e.g. node_latency_352x480")
    args = p.parse_args()
    model, _ = zoo.load(args.model)
    if args.input_size:
        model = at_size(model, args.input_size)
    from edge_gfs.backends.artifact import ArtifactError, read_sidecar
    from edge_gfs.backends.select import select
    engines = {}
    for backend in args.backends.split(","):
        try:
            if ":" in backend:
                engines[backend] = precision_artifact(model, args.model, backend)
            else:
                select(model, args.model, backend)
        except ArtifactError as e:
            print(f"node_latency: {e}", file=sys.stderr)
            return 2
    floor = compute_floor(model, args.threads)
    print(f"compute floor: {floor}")
    reports = []
    for backend in args.backends.split(","):
        args.backend, args.engine = backend, engines.get(backend)
        bench = Bench(args)
        try:
            runs = []
            for rate in args.rates.split(","):
                r = bench.run_rate(rate)
                print(json.dumps(r))
                runs.append(r)
            teach = [bench.teach_latency(k) for k in (1, 5)]
            print(teach)
        finally:
            bench.close()
        load = os.getloadavg()
        side = read_sidecar(args.engine) if args.engine else None
        reports.append({"model": args.model, "backend": backend, "threads_flag": args.threads,
                        "artifact": side and {"precision": side.precision, "runtime": side.runtime, "file": side.file},
                        "command": "python bench/node_latency.py " + " ".join(sys.argv[1:]),
                        "machine": f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end", "floor": floor,
                        "runs": runs, "teach": teach})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"backends": reports}, indent=1))
    (args.out / f"{args.name}.md").write_text("\n".join(markdown(r) for r in reports))
    print((args.out / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
