"""`edge-gfs record OUT.mcap`: subscribe to a running node (and its camera) and write what they publish to MCAP.

Why a separate process and not a node flag: recording is something an operator starts and stops while the
robot runs, on the robot or on a desktop that can reach it; the node keeps one job. Frames come from the frame
publisher (`edge-gfs camera`, --frames) and label maps, classes and status from the node (--labels), so both
ends of a recording are exactly what crossed the wire. Teach and forget events are derived from changes of the
class table (wire/foxglove_msgs.class_events). Topics and schemas: docs/foxglove.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from edge_gfs.commands.flags import parse_with_config
from edge_gfs.ui.overlay import palette_rgb
from edge_gfs.wire import foxglove_msgs as F
from edge_gfs.wire import mcap_log
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import FrameSubscriber, LabelSubscriber

EXAMPLE = f"""examples:
  edge-gfs record drive.mcap                            # node on {P.DEFAULT_LABELS}, camera on {P.DEFAULT_FRAMES}
  edge-gfs record drive.mcap --split-mb 500             # drive-000.mcap, drive-001.mcap, ... of ~500 MB each
  edge-gfs record drive.mcap --split-minutes 10 --duration 3600
  edge-gfs record labels.mcap --frames none             # a node reading its camera in-process: no frame topic

Exit codes: 0 written; 2 a local problem (a flag, the file, packages missing); 3 nothing received.
Replay a recording with `edge-gfs camera --mcap drive.mcap` or `edge-gfs run --mcap drive.mcap`; open it in
Foxglove with the layout docs/foxglove-layout.json.
"""

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs record", description="Record a running node's frames, label maps, "
                                "classes, status and teach/forget events to MCAP.", epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, metavar="OUT.mcap", help="file to write (with rotation: OUT-000.mcap, ...)")
    p.add_argument("--labels", default=P.DEFAULT_LABELS, metavar="ENDPOINT", help="the node's labels socket")
    p.add_argument("--frames", default=P.DEFAULT_FRAMES, metavar="ENDPOINT",
                   help="the frame publisher (edge-gfs camera); 'none' to record no frames")
    p.add_argument("--split-mb", type=float, default=0.0, help="start a new file after this many MB (0 = never)")
    p.add_argument("--split-minutes", type=float, default=0.0, help="start a new file after this long (0 = never)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--count", type=int, default=0, help="stop after this many label maps (0 = until Ctrl-C)")
    p.add_argument("--no-color", action="store_true", help="leave out /labels/color (the ids are enough to redraw it)")
    p.add_argument("--progress", type=float, default=1.0, metavar="S", help="seconds between progress lines (0 = none)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.mcap if it exists")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML map of any of these flags; flags win")
    return p


@dataclass
class Recorder:
    """Turns node messages into MCAP records (the writer is wire/mcap_log.McapLog)."""

    log: object  # McapLog
    color: bool = True
    classes: list[dict] | None = None
    lut: object = None

    def frame(self, payload: bytes, now_ns: int) -> None:
        frame = P.parse_frame(payload)  # header checked; the bytes are stored as they came
        self.log.write(F.TOPIC_IMAGE, F.camera_image(frame), frame.stamp_ns, now_ns)

    def labels(self, payload: bytes, now_ns: int) -> None:
        lm = P.parse_labels(payload)
        self.log.write(F.TOPIC_IDS, F.label_ids(lm.stamp_ns, lm.frame_id, lm.labels), lm.stamp_ns, now_ns)
        self.log.write(F.TOPIC_LEGEND, F.legend(lm.stamp_ns, lm.labels, self.classes or []), lm.stamp_ns, now_ns)
        if self.color:
            if self.lut is None:
                self.lut = palette_rgb(self.classes or [])
            self.log.write(F.TOPIC_COLOR, F.label_color(lm.stamp_ns, lm.frame_id, lm.labels, self.lut), lm.stamp_ns,
                           now_ns)

    def table(self, msg: dict, now_ns: int) -> None:
        """Every `classes` message is kept (they are small); a changed table also yields teach/forget events."""
        self.log.write(F.TOPIC_CLASSES, F.json_bytes(msg), now_ns)
        if self.classes != msg["classes"]:
            for e in F.class_events(self.classes, msg["classes"], msg["version"]):
                self.log.write(F.TOPIC_EVENTS, F.json_bytes(e), now_ns)
            self.classes, self.lut = msg["classes"], None

    def status(self, msg: dict, now_ns: int) -> None:
        self.log.write(F.TOPIC_STATUS, F.json_bytes(msg), now_ns)


def progress_line(out: Path, counts: dict[str, int], total_bytes: int, parts: int, elapsed: float) -> str:
    frames, labels = counts.get(F.TOPIC_IMAGE, 0), counts.get(F.TOPIC_IDS, 0)
    rate = labels / elapsed if elapsed > 0 else 0.0
    mb_min = total_bytes / 2**20 / elapsed * 60 if elapsed > 0 else 0.0
    return (f"edge-gfs record: {out}: {frames} frames, {labels} label maps ({rate:.1f}/s), "
            f"{counts.get(F.TOPIC_EVENTS, 0)} events, {total_bytes / 2**20:.1f} MB ({mb_min:.1f} MB/min)"
            + (f", {parts} files" if parts > 1 else "") + f", {elapsed:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_with_config(build_parser(), argv)
    try:
        F.require()
        F.require("mcap")
    except F.FoxgloveMissing as e:
        print(f"edge-gfs record: {e}", file=sys.stderr)
        return 2
    log = mcap_log.McapLog(args.out, split_bytes=int(args.split_mb * 2**20), split_s=args.split_minutes * 60)
    first = mcap_log.part_path(args.out, 0, log.rotating)  # (the log opens its first file on the first write)
    if first.exists() and not args.overwrite:
        print(f"edge-gfs record: {first} exists; choose another name or pass --overwrite", file=sys.stderr)
        return 2
    ctx = zmq.Context()
    socks: dict[zmq.Socket, str] = {}
    try:
        # the client's sockets; their messages are read raw here (a frame's pixels are stored, never decoded)
        socks[LabelSubscriber(args.labels, ctx=ctx).sock] = "labels"
        if args.frames.lower() != "none":
            socks[FrameSubscriber(args.frames, ctx=ctx).sock] = "frames"
    except zmq.ZMQError as e:
        print(f"edge-gfs record: cannot connect to {args.labels} / {args.frames}: {e}", file=sys.stderr)
        ctx.destroy(0)
        return 2
    rec = Recorder(log, color=not args.no_color)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    started = time.monotonic()
    next_progress = started + args.progress if args.progress > 0 else float("inf")
    tty = sys.stderr.isatty()
    print(f"edge-gfs record: recording {args.labels}" + (f" and {args.frames}" if len(socks) > 1 else "")
          + f" into {first} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    bad = 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                break
            if args.count and log.counts.get(F.TOPIC_IDS, 0) >= args.count:
                break
            if now >= next_progress:
                line = progress_line(args.out, log.counts, log.total_bytes, len(log.parts), now - started)
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
                next_progress = now + args.progress
            for sock, _ in poller.poll(100):
                parts = sock.recv_multipart()
                now_ns = time.time_ns()
                if len(parts) != 2:
                    continue
                try:
                    if socks[sock] == "frames":
                        rec.frame(parts[1], now_ns)
                    elif parts[0] == P.TOPIC_LABELS:
                        rec.labels(parts[1], now_ns)
                    elif parts[0] == P.TOPIC_CLASSES:
                        rec.table(P.unpack_map(parts[1], "classes"), now_ns)
                    elif parts[0] == P.TOPIC_STATUS:
                        rec.status(P.unpack_map(parts[1], "status"), now_ns)
                except (P.RequestError, KeyError, TypeError, ValueError) as e:
                    bad += 1  # a malformed message is skipped, the recording goes on
                    if bad == 1 or bad % 100 == 0:
                        print(f"\nedge-gfs record: skipped {bad} malformed messages ({e})", file=sys.stderr)
    except OSError as e:
        print(f"\nedge-gfs record: cannot write {log.parts[-1] if log.parts else args.out}: {e.strerror}",
              file=sys.stderr)
        return 2
    finally:
        log.close()
        ctx.destroy(0)
    elapsed = time.monotonic() - started
    if tty:
        print(file=sys.stderr)
    if not log.parts:
        print(f"edge-gfs record: nothing received in {elapsed:.0f} s, so no file was written: is `edge-gfs run` "
              f"publishing on --labels {args.labels}?", file=sys.stderr)
        return 3
    print(progress_line(args.out, log.counts, log.total_bytes, len(log.parts), elapsed).replace(
        "edge-gfs record:", "edge-gfs record: wrote", 1) + (f"; files: {', '.join(map(str, log.parts))}"
                                                          if len(log.parts) > 1 else ""))
    return 0
