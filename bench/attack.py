"""The stream under attack (issue 13): how much of the good-frame rate survives hostile frames at 2 Hz?

    python bench/attack.py                       # ~5 minutes: clean 30 s, each kind 20 s, all kinds 60 s, clean 15 s
    python bench/attack.py --clean 10 --per-kind 8 --mixed 16 --recovery 8 --out /tmp/attack   # ~2 minutes

Why: the frames socket is the node's widest door (no CURVE, anyone on the network segment may publish), and
one frame that costs seconds of decoding, gigabytes of memory or a dropped connection stops a robot's
perception. The node (`edge-gfs run`, --threads 1) subscribes to this process, which publishes CamVid test
frames (the dataset's JPEG bytes) at --hz and, on the same socket, hostile messages at --hostile-hz:

  bomb_sof_65000          a 630-byte JPEG whose SOF says 65000x65000 (the frame message says 480x360)
  bomb_sof_65000_stray00  the same with a stray 0x00 before the SOF marker (libjpeg skips it; naive parsers stop)
  bomb_20000_stray00      20000x20000 with the stray byte: under OpenCV's 2^30-pixel cap, so it really decodes
  png_ihdr_100000         a PNG whose IHDR says 100000x100000 (CRC fixed)
  jpeg_4096               a real 4096x4096 JPEG, declared as such
  jpeg_1920x1200          a real 1920x1200 JPEG, declared as such (the largest frame the protocol will allow)
  size_mismatch           a real 480x360 JPEG declared as 640x480
  garbage_msgpack         [b"frame", random bytes]
  oversized               a frame message one byte over the frames socket's size limit
                          (Limits.max_frame_bytes x SOCKET_SLACK): ZeroMQ drops the connection

Why 10 Hz: a camera's rate that the node keeps up with on one thread, so it is idle between frames and takes
every hostile frame (a saturating publisher would let good frames overwrite hostile ones in the node's
one-frame slot and hide their cost). Phases: clean, each kind alone (oversized last: it may break the link),
all kinds round-robin, clean again (does the stream come back?). Per phase: good-frame label maps per second
(maps whose seq is a good frame's) and their ratio to the clean rate (target >= 50 %), the longest gap between
good maps, latency, node RSS peak, log growth, and the node's status counters (bad_frames, errors, drops).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from hostile import bomb_jpeg, bomb_png, resized_jpeg
from node_proc import (Collector, FrameStream, NodeProcess, add_node_flags, bench_log, command_line,
                       connect, machine, md_table, pct, proc_mb, real_frames, write_report)

from edge_gfs.data.datasets import camvid
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import FramePublisher

TARGET_RATIO = 0.5


# -- hostile payloads (the image builders are bench/hostile.py's, shared with bench/fuzz_kinds.py) ---------------------
def frame_payload(data: bytes, width: int, height: int, seq: int, encoding: str = "jpeg") -> bytes:
    frame = P.Frame(seq=seq, stamp_ns=time.time_ns(), frame_id="camera", encoding=encoding, width=width,
                    height=height, data=data)
    return P.pack(P.frame_message(frame))


def oversized_payload(size: int) -> bytes:
    """A well-formed frame message of exactly `size` bytes (the padding is its data)."""
    pad = size - len(frame_payload(b"", 480, 360, 0)) - 3  # bin32's header is 3 bytes longer than bin8's
    payload = frame_payload(b"\0" * pad, 480, 360, 0)
    assert len(payload) == size, (len(payload), size)
    return payload


@dataclass
class Hostile:
    """One kind of hostile message: either a frame (data, declared size, encoding: it takes a seq) or raw parts."""

    kind: str
    data: bytes = b""
    width: int = 480
    height: int = 360
    encoding: str = "jpeg"
    raw: bytes | None = None  # the whole payload, sent as it is under the `frame` topic

    def parts(self, seq: int) -> list[bytes]:
        if self.raw is not None:
            return [P.TOPIC_FRAME, self.raw]
        return [P.TOPIC_FRAME, frame_payload(self.data, self.width, self.height, seq, self.encoding)]


def hostile_kinds(first_jpeg: bytes, seed: int) -> list[Hostile]:
    """The attack menu, in the order the per-kind phases run (oversized last: it may cut the connection)."""
    img = cv2.imdecode(np.frombuffer(first_jpeg, np.uint8), cv2.IMREAD_COLOR)
    big = {(w, h): resized_jpeg(img, w, h) for w, h in ((4096, 4096), (1920, 1200))}
    rng = np.random.default_rng(seed)
    return [
        Hostile("bomb_sof_65000", bomb_jpeg(65000, 65000)),
        Hostile("bomb_sof_65000_stray00", bomb_jpeg(65000, 65000, stray_zero=True)),
        Hostile("bomb_20000_stray00", bomb_jpeg(20000, 20000, stray_zero=True)),
        Hostile("png_ihdr_100000", bomb_png(100000, 100000), encoding="png"),
        Hostile("jpeg_4096", big[(4096, 4096)], 4096, 4096),
        Hostile("jpeg_1920x1200", big[(1920, 1200)], 1920, 1200),
        Hostile("size_mismatch", first_jpeg, 640, 480),
        Hostile("garbage_msgpack", raw=rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        Hostile("oversized", raw=oversized_payload(P.LIMITS.max_frame_bytes * P.SOCKET_SLACK + 1)),
    ]


class Attacker:
    """Called on the publisher thread between good frames: sends the next hostile message when one is due.

    Frame-shaped hostile messages take the next seq of the shared counter, so the node sees no seq gap for them;
    raw ones (garbage, oversized) take none, as they never parse as frames."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.kinds: list[Hostile] = []  # the current phase's menu, replaced whole by the main thread
        self.next_at = 0.0
        self.turn = 0
        self.sent: dict[str, int] = {}
        self.seqs: dict[int, str] = {}  # seq -> kind, to count label maps made of hostile frames

    def __call__(self, pub: FramePublisher) -> None:
        kinds, now = self.kinds, time.monotonic()
        if not kinds or now < self.next_at:
            return
        self.next_at = now + self.period
        h = kinds[self.turn % len(kinds)]
        self.turn += 1
        seq = pub.seq
        pub.sock.send_multipart(h.parts(seq), copy=False)
        if h.raw is None:
            self.seqs[seq] = h.kind
            pub.seq += 1
        self.sent[h.kind] = self.sent.get(h.kind, 0) + 1


# -- phases --------------------------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    seconds: float
    kinds: list[Hostile] = field(default_factory=list)


COUNTERS = ("frames", "bad_frames", "errors", "drops", "drops_overwritten", "drops_seq_gap", "seq_resets")


def run_phase(ph: Phase, node: NodeProcess, col: Collector, stream: FrameStream, attacker: Attacker, bar) -> dict:
    """Stream for ph.seconds with ph.kinds interleaved; the phase's good-map rate, gaps, memory and counters."""
    before = {k: (col.status or {}).get(k, 0) for k in COUNTERS}
    sent0 = dict(attacker.sent)
    log0 = node.log.stat().st_size
    n0 = len(col.maps)
    attacker.kinds, attacker.next_at = ph.kinds, time.monotonic() + 0.5  # first hostile half a second in
    t0 = time.monotonic()
    rss_peak, died, shown = 0.0, False, 0
    while time.monotonic() - t0 < ph.seconds:
        col.poll(0.25)
        if not node.alive():
            died = True
            break
        rss_peak = max(rss_peak, proc_mb(node.pid))
        step = min(int(time.monotonic() - t0), int(ph.seconds)) - shown
        bar.update(step)
        shown += step
    bar.update(int(ph.seconds) - shown)
    t1 = time.monotonic()
    attacker.kinds = []
    maps = col.maps[n0:]
    good = [(t, lat) for seq, t, lat in maps if seq in stream.good]
    times = [t0] + [t for t, _ in good] + [t1]
    status = col.status or {}
    hostile = {k: v - sent0.get(k, 0) for k, v in attacker.sent.items() if v != sent0.get(k, 0)}
    row = {"phase": ph.name, "seconds": round(t1 - t0, 1), "hostile_sent": hostile,
           "good_maps": len(good), "good_maps_per_s": round(len(good) / (t1 - t0), 2),
           "hostile_maps": sum(1 for seq, _, _ in maps if seq in attacker.seqs),
           "longest_gap_s": round(float(np.max(np.diff(times))), 2),
           "latency_p50_ms": pct([lat for _, lat in good], 50), "latency_p95_ms": pct([lat for _, lat in good], 95),
           "rss_peak_mb": round(rss_peak, 1), "node_log_bytes": node.log.stat().st_size - log0,
           "node_alive": not died and node.alive(),
           **{f"d_{k}": status.get(k, 0) - before[k] for k in COUNTERS}}
    return row


def markdown(r: dict) -> str:
    s = r["summary"]
    lines = [f"# Stream under attack: good frames at {r['hz']} Hz, hostile at {r['hostile_hz']} Hz", "",
             f"Command: `{r['command']}`", "", f"Node code: {r['code']}.", "",
             f"Model {r['model']}, node --threads {r['threads']}; {r['machine']}; bench wall time {r['wall_s']} s. "
             f"Ratio = good-frame label maps per second in the phase / in the clean phase (target >= "
             f"{100 * TARGET_RATIO:.0f} %). d_* = change of the node's status counters over the phase (read from "
             f"its status topic, up to 1 s stale).", "",
             f"- clean: **{s['clean_rate']} maps/s**; all kinds round-robin: **{s['mixed_rate']} maps/s = "
             f"{s['mixed_ratio_pct']} %** (target met: {s['mixed_pass']}); "
             f"after the attack: {s['recovery_rate']} maps/s",
             f"- kinds under {100 * TARGET_RATIO:.0f} %: {', '.join(s['kinds_below_target']) or 'none'}",
             f"- node alive at the end: **{s['node_alive_at_end']}**; peak RSS {s['node_peak_rss_mb']} MB "
             f"(VmHWM); clean stop exit code {s['node_exit_code']}", ""]
    rows = [[x["phase"], ", ".join(f"{k} {v}" for k, v in x["hostile_sent"].items()) or "-", x["good_maps_per_s"],
             x.get("ratio_pct"), x["longest_gap_s"], x["latency_p50_ms"], x["latency_p95_ms"], x["hostile_maps"],
             x["rss_peak_mb"], x["d_bad_frames"], x["d_errors"], x["d_drops"], x["node_log_bytes"], x["node_alive"]]
            for x in r["phases"] if "skipped" not in x]
    lines += md_table(["phase", "hostile sent", "good maps/s", "ratio %", "longest gap s", "p50 ms", "p95 ms",
                       "hostile maps", "RSS peak MB", "d_bad_frames", "d_errors", "d_drops", "node log bytes",
                       "alive"], rows)
    skipped = [x["phase"] for x in r["phases"] if "skipped" in x]
    if skipped:
        lines += ["", f"Not run (the node was dead): {', '.join(skipped)}"]
    lines += ["", "Last status of the node:", "", f"`{r['last_status']}`"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hz", type=float, default=10.0, help="good frames per second")
    p.add_argument("--hostile-hz", type=float, default=2.0, help="hostile messages per second (at most --hz)")
    p.add_argument("--clean", type=float, default=30.0, help="seconds of the clean phase (the reference rate)")
    p.add_argument("--per-kind", type=float, default=20.0, help="seconds of each one-kind phase (0 = skip them)")
    p.add_argument("--mixed", type=float, default=60.0, help="seconds of the all-kinds round-robin phase (0 = skip)")
    p.add_argument("--recovery", type=float, default=15.0, help="seconds of the clean phase after the attack (0 = skip)")
    p.add_argument("--kinds", help="comma-separated subset of the kinds (default: all)")
    add_node_flags(p, "attack", "the garbage bytes")
    args = p.parse_args()
    if args.clean <= 0:
        p.error("--clean must be > 0: it is the rate every phase is compared with")
    if not 0 < args.hostile_hz <= args.hz:
        p.error("--hostile-hz must be in (0, --hz]: at most one hostile message goes out between two good frames")
    data = camvid()
    jpegs = real_frames(data)
    kinds = hostile_kinds(jpegs[0], args.seed)
    if args.kinds:
        wanted = args.kinds.split(",")
        unknown = set(wanted) - {h.kind for h in kinds}
        if unknown:
            p.error(f"unknown --kinds {sorted(unknown)}; kinds: {', '.join(h.kind for h in kinds)}")
        kinds = [h for h in kinds if h.kind in wanted]
    log = bench_log(args.out, args.name)
    wall0 = time.monotonic()
    phases = [Phase("clean", args.clean)] + [Phase(h.kind, args.per_kind, [h]) for h in kinds]
    phases += [Phase("all kinds", args.mixed, kinds), Phase("recovery (clean)", args.recovery)]
    phases = [ph for ph in phases if ph.seconds > 0]  # --per-kind 0, --mixed 0, ...: that phase is left out
    node = NodeProcess.from_args(args)
    log.info("node ready after %.1f s", node.start().wait_ready())
    pub, sub = connect(node)
    col, attacker = Collector(sub), Attacker(args.hostile_hz)
    stream = FrameStream(pub, jpegs, args.hz, inject=attacker)
    stream.start()
    col.poll(2.0)  # a status before the first phase, so the counters' deltas start from it
    rows: list[dict] = []
    with tqdm(total=int(sum(ph.seconds for ph in phases)), unit="s", desc="attack") as bar:
        for ph in phases:
            if not node.alive():
                rows.append({"phase": ph.name, "skipped": "node dead"})
                continue
            bar.set_description(f"attack: {ph.name}")
            row = run_phase(ph, node, col, stream, attacker, bar)
            log.info("%s", row)
            rows.append(row)
    stream.finish()
    alive = node.alive()
    peak = proc_mb(node.pid, "VmHWM") if alive else None
    code = node.stop()
    node.remove_state()
    pub.close()
    sub.close()
    ran = [x for x in rows if "skipped" not in x]
    clean = ran[0]["good_maps_per_s"] if ran else 0.0
    for x in ran:
        x["ratio_pct"] = round(100 * x["good_maps_per_s"] / clean, 1) if clean else None
    by = {x["phase"]: x for x in ran}
    mixed, rec = by.get("all kinds", {}), by.get("recovery (clean)", {})
    summary = {"clean_rate": clean, "mixed_rate": mixed.get("good_maps_per_s"),
               "mixed_ratio_pct": mixed.get("ratio_pct"),
               "mixed_pass": (mixed.get("ratio_pct") or 0) >= 100 * TARGET_RATIO,
               "recovery_rate": rec.get("good_maps_per_s"),
               "kinds_below_target": [x["phase"] for x in ran if x["phase"] in {h.kind for h in kinds}
                                      and (x["ratio_pct"] or 0) < 100 * TARGET_RATIO],
               "node_alive_at_end": alive, "node_peak_rss_mb": round(peak, 1) if peak else None, "node_exit_code": code}
    result = {"command": command_line(), "code": node.code, "machine": machine(), "model": args.model,
              "threads": args.threads, "hz": args.hz, "hostile_hz": args.hostile_hz, "seed": args.seed,
              "wall_s": round(time.monotonic() - wall0, 1),
              "hostile_bytes": {h.kind: len(h.raw if h.raw is not None else h.data) for h in kinds},
              "summary": summary, "phases": rows, "last_status": col.status}
    md = write_report(args.out, args.name, result, markdown(result))
    log.info("wrote %s", md)
    print(md.read_text())
    return 0 if alive and summary["mixed_pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
