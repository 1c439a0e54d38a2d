"""Foxglove live view and MCAP recording/replay, measured end to end (issue 14).

    python bench/foxglove_mcap.py                       # 3 x 20 s per condition, 60 s recording at 10 Hz
    python bench/foxglove_mcap.py --duration 10 --record-s 20 --threads 1 --out /tmp/fox   # a quick look

Processes as deployed: this process publishes CamVid test frames (the dataset's own JPEG bytes) on a frames
socket; the node (`edge-gfs run`) is a subprocess. Measured:
  1. stream fps (the node's status topic, averaged after a warm-up) with the camera at --camera-hz, three ways:
     no --foxglove; --foxglove with no client; --foxglove with a WebSocket client subscribed to every channel
     and reading every message (the `websockets` package speaking the Foxglove protocol);
  2. the cost of building the live view's messages per frame, in-process (what its thread does per frame);
  3. MCAP bytes per minute: `edge-gfs record` at a 10 Hz camera for --record-s, with and without /labels/color,
     also per message kind;
  4. the replay identity check: a second node replays that recording in-process (`--mcap`), and every label map
     it publishes is compared with the recorded one of the same stamp.
Writes bench/results/foxglove_mcap.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.ui.overlay import palette_rgb  # noqa: E402
from edge_gfs.wire import foxglove_msgs as F  # noqa: E402
from edge_gfs.wire import mcap_log  # noqa: E402
from edge_gfs.wire import protocol as P  # noqa: E402
from edge_gfs.wire.client import FramePublisher, LabelSubscriber, free_endpoint  # noqa: E402
from node_proc import NodeProcess  # noqa: E402  (bench/, beside this script)


def free_port() -> int:
    return int(free_endpoint().rsplit(":", 1)[1])


def start_node(work: Path, name: str, threads: int, source: tuple[str, ...] | None = None,
               extra: tuple[str, ...] = ()) -> NodeProcess:
    """`edge-gfs run` as a subprocess on free ports (frames on node.frames unless `source` is in-process), ready."""
    node = NodeProcess(work / f"{name}.log", work / f"{name}-state", threads=threads, source=source,
                       extra=("--status-period", "0.5", "--classes-period", "1", *extra))
    node.start().wait_ready(300)
    return node


class Camera(threading.Thread):
    """Publishes CamVid JPEGs at a rate, forever, until stopped; stamps are 10 Hz-spaced and unique."""

    def __init__(self, endpoint: str, jpegs: list[bytes], hz: float) -> None:
        super().__init__(daemon=True)
        self.pub = FramePublisher(endpoint)
        self.jpegs, self.period, self.stop, self.sent = jpegs, 1.0 / hz, threading.Event(), 0

    def run(self) -> None:
        self.stop.wait(1.0)  # subscribers (node, recorder) reconnect to the new bind before the first frame
        nxt = time.monotonic()
        while not self.stop.is_set():
            self.pub.publish(data=self.jpegs[self.sent % len(self.jpegs)], encoding="jpeg")
            self.sent += 1
            nxt += self.period
            self.stop.wait(max(0.0, nxt - time.monotonic()))
        self.pub.close()


class FoxgloveReader(threading.Thread):
    """A Foxglove WebSocket client subscribed to every channel, reading (and counting) every message."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        from websockets.sync.client import connect
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1"],
                                                   max_size=None))
        self.counts: dict[str, int] = {}
        self.bytes = 0
        self.stop = threading.Event()
        channels: dict[str, dict] = {}
        while set(channels) < set(F.CHANNELS):
            m = json.loads(self.ws.recv(timeout=30))
            if m.get("op") == "advertise":
                channels.update({c["topic"]: c for c in m["channels"]})
        self.topic_of = {k: t for k, t in enumerate(F.CHANNELS, 1)}
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": [
            {"id": k, "channelId": channels[t]["id"]} for k, t in self.topic_of.items()]}))

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                msg = self.ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:
                return
            if isinstance(msg, bytes) and msg[0] == 1:
                topic = self.topic_of[struct.unpack_from("<I", msg, 1)[0]]
                self.counts[topic] = self.counts.get(topic, 0) + 1
                self.bytes += len(msg)

    def close(self) -> None:
        self.stop.set()
        self.join(3)
        self.stack.close()


def mean_fps(labels_ep: str, seconds: float, warmup: float) -> dict:
    """The node's own status fps, averaged over `seconds` after `warmup`, and label maps counted here."""
    sub = LabelSubscriber(labels_ep, topics=("status", "labels"))
    fps, n, t0, stages = [], 0, time.monotonic(), []
    try:
        while time.monotonic() - t0 < warmup + seconds:
            got = sub.recv(0.5)
            if got is None or time.monotonic() - t0 < warmup:
                continue
            if got[0] == "status":
                fps.append(got[1]["fps"])
                stages.append(got[1]["stage_ms"])
            elif got[0] == "labels":
                n += 1
    finally:
        sub.close()
    return {"status_fps_mean": round(float(np.mean(fps)), 2) if fps else 0.0,
            "label_maps_per_s": round(n / seconds, 2), "samples": len(fps),
            "stage_ms": {k: round(float(np.mean([s[k] for s in stages])), 2) for k in stages[0]} if stages else {}}


def stream_fps(work: Path, jpegs: list[bytes], args) -> dict:
    """Each condition `--rounds` times, interleaved (off, on, client, off, ...), so a slow minute of a shared VM
    lands on every condition rather than on one; the table gives the median round and the range."""
    runs: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    for r in range(args.rounds):
        for cond in CONDITIONS:
            port = free_port()
            extra = () if cond == "off" else ("--foxglove", f"127.0.0.1:{port}")
            node = start_node(work, f"fps-{cond}-{r}", args.threads, extra=extra)
            cam = Camera(node.frames, jpegs, args.camera_hz)
            cam.start()
            reader = FoxgloveReader(port) if cond == "on_client" else None
            if reader:
                reader.start()
            try:
                got = mean_fps(node.labels, args.duration, args.warmup)
            finally:
                cam.stop.set()
                if reader:
                    reader.close()
                    got["client_messages"] = dict(reader.counts)
                    got["client_mb_per_s"] = round(reader.bytes / 2**20 / (args.duration + args.warmup), 2)
                got["node_exit"] = node.stop()
            runs[cond].append(got)
            print(f"fps round {r + 1} {cond}: {got}", flush=True)
    out = {}
    for cond, rs in runs.items():
        fps = sorted(x["status_fps_mean"] for x in rs)
        median = min(rs, key=lambda x: abs(x["status_fps_mean"] - fps[len(fps) // 2]))
        out[cond] = median | {"rounds_fps": [x["status_fps_mean"] for x in rs]}
    return out


CONDITIONS = ("off", "on_no_client", "on_client")


def view_cost(data) -> dict:
    """ms per frame to build the live view's four per-frame messages (what its own thread does per frame)."""
    name = data.names("test")[0]
    jpg = data.image_path("test", name).read_bytes()
    labels = data.read("test", name)[1]
    frame = P.make_frame(data=jpg, encoding="jpeg", seq=1, stamp_ns=1, frame_id="camera")
    lut = palette_rgb([])
    res = {}
    for what, fn in (("camera_image", lambda: F.camera_image(frame)),
                     ("label_color", lambda: F.label_color(1, "camera", labels, lut)),
                     ("label_ids", lambda: F.label_ids(1, "camera", labels)),
                     ("legend", lambda: F.legend(1, labels, []))):
        fn()
        t = time.perf_counter()
        for _ in range(50):
            fn()
        res[what] = round((time.perf_counter() - t) / 50 * 1000, 3)
    res["total_ms"] = round(sum(res.values()), 3)
    return res


def record(work: Path, jpegs: list[bytes], args) -> dict:
    node = start_node(work, "record", args.threads)
    frames = node.frames
    out = work / "rec.mcap"
    rec = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "record", str(out), "--labels", node.labels,
                            "--frames", frames, "--progress", "5"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)  # the recorder connects and sees a classes message
    cam = Camera(frames, jpegs, 10.0)
    t0 = time.monotonic()
    cam.start()
    time.sleep(args.record_s)
    cam.stop.set()
    cam.join(5)
    time.sleep(2.0)
    rec.send_signal(signal.SIGINT)
    stdout, stderr = rec.communicate(timeout=60)
    span = time.monotonic() - t0
    node.stop()
    counts, sizes = {}, {}
    for topic, _log_time, _publish_time, data in mcap_log.raw_messages(out):
        counts[topic] = counts.get(topic, 0) + 1
        sizes[topic] = sizes.get(topic, 0) + len(data)
    # the same messages without /labels/color, written again: the --no-color size
    nocolor = mcap_log.McapLog(work / "rec-nocolor.mcap")
    for topic, log_time, publish_time, data in mcap_log.raw_messages(out):
        if topic != F.TOPIC_COLOR:
            nocolor.write(topic, data, log_time, publish_time)
    nocolor.close()
    stamps = [r.log_time for r in mcap_log.read(out, [F.TOPIC_IMAGE])]
    rec_span_s = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else span
    size, size_nc = out.stat().st_size, (work / "rec-nocolor.mcap").stat().st_size
    labels_per_s = counts.get(F.TOPIC_IDS, 0) / rec_span_s
    per_label_set = (sizes.get(F.TOPIC_IDS, 0) + sizes.get(F.TOPIC_COLOR, 0)) / max(1, counts.get(F.TOPIC_IDS, 0))
    res = {"camera_hz": 10.0, "recorded_s": round(rec_span_s, 1), "file_bytes": size,
           "mb_per_min_measured": round(size / 2**20 / rec_span_s * 60, 2),
           "mb_per_min_measured_no_color": round(size_nc / 2**20 / rec_span_s * 60, 2),
           "label_maps_per_s": round(labels_per_s, 2), "messages": counts,
           "uncompressed_bytes_per_message": {t: round(sizes[t] / counts[t]) for t in counts},
           "compression_ratio": round(sum(sizes.values()) / size, 2),
           "recorder_stdout": stdout.strip()}
    # at 10 Hz label maps too (a node that keeps up): frames as measured, label maps scaled to 10/s, same ratio
    if labels_per_s > 0:
        frames_b = sizes.get(F.TOPIC_IMAGE, 0) / rec_span_s
        labels_b = per_label_set * 10.0
        ratio = sum(sizes.values()) / size
        other = (sum(sizes.values()) - sizes.get(F.TOPIC_IMAGE, 0) - sizes.get(F.TOPIC_IDS, 0)
                 - sizes.get(F.TOPIC_COLOR, 0)) / rec_span_s
        res["mb_per_min_at_10hz_labels_est"] = round((frames_b + labels_b + other) / ratio * 60 / 2**20, 2)
    print(f"record: {res}", flush=True)
    return res, out


def replay_identity(work: Path, out: Path, args) -> dict:
    recorded = {r.log_time: mcap_log.ids_of(r.message) for r in mcap_log.read(out, [F.TOPIC_IDS])}
    node = start_node(work, "replay", args.threads, source=("--mcap", str(out), "--loop", "--fps", str(args.replay_fps)))
    sub = LabelSubscriber(node.labels, topics=("labels",))
    got: dict[int, bool] = {}
    t0 = time.monotonic()
    try:
        while set(recorded) - set(got) and time.monotonic() - t0 < args.replay_timeout:
            m = sub.recv(1.0)
            if m is not None and m[1].stamp_ns in recorded and m[1].stamp_ns not in got:
                got[m[1].stamp_ns] = bool(np.array_equal(m[1].labels, recorded[m[1].stamp_ns]))
    finally:
        sub.close()
        node.stop()
    res = {"recorded_label_maps": len(recorded), "replayed_and_compared": len(got),
           "identical": sum(got.values()), "different": len(got) - sum(got.values()),
           "seconds": round(time.monotonic() - t0, 1)}
    print(f"replay: {res}", flush=True)
    return res


def markdown(r: dict) -> str:
    f, m, i, v = r["stream_fps"], r["mcap"], r["replay"], r["view_cost_ms"]
    lines = [
        "# Foxglove live view and MCAP recording (issue 14)", "",
        f"`python bench/foxglove_mcap.py {' '.join(r['argv'])}` on {r['machine']}; node `--threads "
        f"{r['args']['threads']}` (0 = all cores), camvid-fold0 on its `--backend auto` choice, CamVid test JPEGs "
        f"(360x480) sent at {r['args']['camera_hz']} Hz (faster than the node: fps is its throughput; frames it has no time for "
        f"are dropped at its input). Each condition {r['args']['rounds']} times, interleaved, on a shared VM: the median "
        f"round, and every round's fps.", "",
        "## Stream fps with and without a Foxglove client", "",
        "| node | status fps (median round) | rounds | label maps/s | publish stage ms | client got (median round) |",
        "|---|---|---|---|---|---|"]
    for cond, label in zip(CONDITIONS, ("no --foxglove", "--foxglove, no client",
                                        "--foxglove, client subscribed to all channels")):
        c = f[cond]
        got = ", ".join(f"{t} {n}" for t, n in sorted(c.get("client_messages", {}).items())) or "-"
        lines.append(f"| {label} | {c['status_fps_mean']} | {', '.join(map(str, c['rounds_fps']))} | {c['label_maps_per_s']} | "
                     f"{c['stage_ms'].get('publish', '-')} | {got} |")
    lines += ["", f"Building the view's per-frame messages (in its own thread, not the stream's): "
              f"{v['total_ms']} ms ({', '.join(f'{k} {x} ms' for k, x in v.items() if k != 'total_ms')}).", "",
              "## MCAP bytes per minute (camera at 10 Hz)", "",
              f"- recorded {m['recorded_s']} s: {m['file_bytes']:,} bytes = **{m['mb_per_min_measured']} MB/min** "
              f"(label maps at {m['label_maps_per_s']}/s, what this node kept up with); without /labels/color "
              f"{m['mb_per_min_measured_no_color']} MB/min.",
              f"- at 10 label maps/s (a node that keeps up), estimated from the same messages and compression: "
              f"**{m.get('mb_per_min_at_10hz_labels_est', 'n/a')} MB/min**.",
              f"- zstd chunk compression ratio {m['compression_ratio']}; uncompressed bytes per message: "
              + ", ".join(f"{t} {b:,}" for t, b in sorted(m["uncompressed_bytes_per_message"].items())) + ".", "",
              "## Replay identity", "",
              f"A second node replayed the recording in-process (`edge-gfs run --mcap rec.mcap --loop`): of "
              f"{i['recorded_label_maps']} recorded label maps, {i['replayed_and_compared']} were replayed and "
              f"compared by stamp: **{i['identical']} identical, {i['different']} different** ({i['seconds']} s).", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per fps run")
    p.add_argument("--rounds", type=int, default=3, help="runs of each fps condition, interleaved")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--camera-hz", type=float, default=60.0,
                   help="camera rate for the fps conditions (above the node's rate: fps is then its throughput)")
    p.add_argument("--record-s", type=float, default=60.0, help="seconds recorded at 10 Hz")
    p.add_argument("--replay-fps", type=float, default=8.0)
    p.add_argument("--replay-timeout", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    data = camvid()
    jpegs = [data.image_path("test", n).read_bytes() for n in data.names("test")]
    work = Path(tempfile.mkdtemp(prefix="foxglove-bench-"))
    res = {"argv": sys.argv[1:], "args": vars(args) | {"out": str(args.out)},
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "view_cost_ms": view_cost(data)}
    print(f"view cost: {res['view_cost_ms']}", flush=True)
    res["stream_fps"] = stream_fps(work, jpegs, args)
    res["mcap"], out = record(work, jpegs, args)
    res["replay"] = replay_identity(work, out, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "foxglove_mcap.json").write_text(json.dumps(res, indent=2))
    (args.out / "foxglove_mcap.md").write_text(markdown(res))
    print(markdown(res))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
