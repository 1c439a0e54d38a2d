"""`edge-gfs view`: the published label maps over their frames, with a legend of the current classes.

Shows a window where OpenCV has a GUI; with --out (or on opencv-python-headless, which has none) it writes
the overlays instead, to a folder of PNGs or an .mp4, so a headless robot can still record what it sees.
Frames come from the frames socket and are matched to label maps by seq.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import zmq

from edge_gfs.commands.common import open_window
from edge_gfs.commands.flags import parse_with_config
from edge_gfs.ui.overlay import class_colors, legend, overlay
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import FrameSubscriber, LabelSubscriber

EXAMPLE = """examples:
  edge-gfs view                                   # window: frames on :5555, label maps on :5556
  edge-gfs view --out out/view.mp4 --count 100    # headless: record 100 overlays to a video
  edge-gfs view --out out/view/ --count 10        # ... or to PNG files
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-gfs view", description="Overlay viewer for the node's label maps.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default=P.DEFAULT_FRAMES, metavar="ENDPOINT", help="the frame publisher")
    p.add_argument("--labels", default=P.DEFAULT_LABELS, metavar="ENDPOINT", help="the node's labels socket")
    p.add_argument("--out", type=Path, help="write overlays to FILE.mp4 or a folder instead of a window")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of an --out video")
    p.add_argument("--count", type=int, default=0, help="stop after N overlays (0 = until Ctrl-C)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML map of any of these flags; flags win")
    args, _ = parse_with_config(p, argv)
    problem = None if args.out is not None else open_window("edge-gfs view")
    if problem:
        print(f"edge-gfs view: {problem}: pass --out FILE.mp4 or --out DIR to record the overlays instead",
              file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    frames, labels = FrameSubscriber(args.frames), LabelSubscriber(args.labels, topics=("labels", "classes"))
    poller = zmq.Poller()
    poller.register(frames.sock, zmq.POLLIN)
    poller.register(labels.sock, zmq.POLLIN)
    recent: OrderedDict[int, np.ndarray] = OrderedDict()
    names: dict[int, str] = {}
    colors: dict[int, tuple[int, int, int]] = {}
    writer, shown = None, 0
    video = args.out is not None and args.out.suffix.lower() in (".mp4", ".avi")
    if args.out is not None and not video:
        args.out.mkdir(parents=True, exist_ok=True)
    try:
        while not stop.is_set() and (not args.count or shown < args.count):
            ready = dict(poller.poll(200))
            if frames.sock in ready and (got := frames.recv(0)) is not None:
                recent[got[0].seq] = got[1]
                while len(recent) > 100:
                    recent.popitem(last=False)
            if labels.sock not in ready or (msg := labels.recv(0)) is None:
                continue
            topic, m = msg
            if topic == "classes":
                names = {c["id"]: c["name"] for c in m["classes"]}
                colors = class_colors(m["classes"])
                continue
            img = recent.get(m.seq)
            if img is None or img.shape[:2] != m.labels.shape:
                continue  # its frame was not seen (yet): nothing to draw on
            panel = np.concatenate([overlay(img, m.labels, args.alpha, colors), legend(names, img.shape[0], colors)],
                                   axis=1)
            shown += 1
            if args.out is None:
                cv2.imshow("edge-gfs view", panel)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            elif video:
                if writer is None:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), args.fps,
                                             (panel.shape[1], panel.shape[0]))
                writer.write(panel)
            else:
                cv2.imwrite(str(args.out / f"{m.seq:08d}.png"), panel)
    finally:
        if writer is not None:
            writer.release()
        frames.close()
        labels.close()
    if args.out is not None:
        print(f"edge-gfs view: wrote {shown} overlays to {args.out}")
    return 0
