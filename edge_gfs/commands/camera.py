"""`edge-gfs camera`: publish frames from a camera, a video or a folder of images on the frames socket.

Why a separate process: on a robot the camera driver and the node restart independently, and any number of
nodes or recorders can subscribe to one camera. Frames from a folder are sent as the files' own bytes when
the encoding matches, so a replay costs no re-encoding and the node decodes exactly the dataset's JPEGs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import zmq

from edge_gfs.commands.flags import parse_with_config
from edge_gfs.node.sources import Pacer, SourceError, add_source_flags, alternatives, chosen, open_source
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import FramePublisher

EXAMPLE = f"""examples:
  edge-gfs camera --camera 0                                  # publish camera 0 on {P.DEFAULT_FRAMES}
  edge-gfs camera --images ../shared/datasets/camvid/test/images --fps 10 --loop
  edge-gfs camera --video drive.mp4 --encoding png --frames tcp://127.0.0.1:6000
  edge-gfs camera --mcap drive.mcap                          # replay a recording (edge-gfs record), its stamps kept
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs camera", description="Publish frames (topic `frame`) for edge-gfs run.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_flags(p.add_argument_group("frame source (one of)"))
    p.add_argument("--frames", default=P.DEFAULT_FRAMES, metavar="ENDPOINT", help="where to bind the PUB socket")
    p.add_argument("--fps", type=float, help="rate (default: 10 for --images, the file's own for --video and "
                                             "--mcap, as delivered for --camera); 0 = as fast as possible")
    p.add_argument("--encoding", default="jpeg", choices=P.FRAME_ENCODINGS, help="how frames travel")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality when encoding")
    p.add_argument("--loop", action="store_true", help="replay --images/--video forever")
    p.add_argument("--count", type=int, default=0, help="stop after N frames (0 = at the end of the source)")
    p.add_argument("--frame-id", default="camera", help="frame_id of the frames")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before the first frame")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML map of any of these flags; flags win")
    return p


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_with_config(build_parser(), argv)
    try:
        flags = chosen(args)
        if len(flags) != 1:
            raise SourceError(f"give exactly one frame source: {alternatives()}")
        source = open_source(flags[0], getattr(args, flags[0]), args.loop)
        fps = args.fps if args.fps is not None else source.default_fps
        pub = FramePublisher(args.frames, frame_id=args.frame_id)
    except SourceError as e:
        print(f"edge-gfs camera: {e}", file=sys.stderr)
        return 2
    except zmq.ZMQError as e:
        print(f"edge-gfs camera: cannot bind --frames {args.frames}: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.wait > 0:
        pub.wait_for_subscriber(args.wait)
    pacer = Pacer(fps)
    sent = 0
    try:
        for sf in source:
            if stop.is_set() or (args.count and sent >= args.count):
                break
            pacer.wait(stop)
            try:
                if sf.data is not None and sf.encoding == args.encoding:
                    pub.publish(data=sf.data, encoding=args.encoding, stamp_ns=sf.stamp_ns)
                else:
                    pub.publish(image=sf.bgr(), encoding=args.encoding, quality=args.quality, stamp_ns=sf.stamp_ns)
            except (P.RequestError, ValueError) as e:
                print(f"edge-gfs camera: skipped {sf.name}: {e}", file=sys.stderr)
                continue
            sent += 1
    finally:
        source.close()
        pub.close()
    print(f"edge-gfs camera: published {sent} frames from {source.label} on {pub.endpoint}")
    return 0
