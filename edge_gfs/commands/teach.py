"""`edge-gfs teach NAME --image A.jpg --mask A.png [...]`: teach a running node a class from a few shots.

Each --image starts a shot; the --mask (PNG, nonzero = the object) and optional --labels (PNG full label map)
that follow belong to it. Files are sent as they are, so the node sees exactly the pixels on disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edge_gfs.commands.common import EXIT_LOCAL, EXIT_OK, add_endpoint_flags, run_client
from edge_gfs.commands.flags import parse_with_config
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import TeachClient

EXAMPLE = """examples:
  edge-gfs teach Car --image a.jpg --mask a_car.png --image b.jpg --mask b_car.png
  edge-gfs teach Car --image a.jpg --mask a_car.png --labels a_labels.png      # full labels give base context
  edge-gfs teach Dog --image d.jpg --mask d.png --preview street.jpg --out preview.png   # try, commit nothing
"""


class ShotAction(argparse.Action):
    """Keeps --image/--mask/--labels in command-line order, grouped into shots."""

    def __call__(self, parser, namespace, value, option_string=None):
        shots = getattr(namespace, "shots", None) or []
        key = self.dest
        if key == "image":
            shots.append({"image": value})
        elif not shots or key in shots[-1]:
            parser.error(f"--{key} {value} must follow its --image (and appear once per shot)")
        else:
            shots[-1][key] = value
        namespace.shots = shots


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs teach", description="Teach a running node a class from a few shots.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="class name (case-insensitive); an existing name gets more shots")
    p.add_argument("--image", action=ShotAction, type=Path, dest="image", help="a shot's image (JPEG/PNG)")
    p.add_argument("--mask", action=ShotAction, type=Path, dest="mask", help="its mask (PNG, nonzero = the object)")
    p.add_argument("--labels", action=ShotAction, type=Path, dest="labels", help="optional full label map (PNG)")
    p.add_argument("--create", action="store_true", help="refuse (name_taken) if the class exists")
    p.add_argument("--preview", type=Path, metavar="IMAGE", help="only preview: segment IMAGE as if taught")
    p.add_argument("--out", type=Path, default=Path("preview.png"), help="where --preview writes its overlay")
    add_endpoint_flags(p)
    p.set_defaults(shots=[])
    return p


def main(argv: list[str] | None = None) -> int:
    prog = "edge-gfs teach"
    args, _ = parse_with_config(build_parser(), argv)
    if not args.shots:
        print(f"{prog}: give at least one --image A.jpg --mask A.png", file=sys.stderr)
        return EXIT_LOCAL
    try:
        shots = []
        for k, s in enumerate(args.shots):
            if "mask" not in s:
                raise OSError(f"shot {k + 1} ({s['image']}) has no --mask")
            shots.append(tuple(Path(s[key]).read_bytes() for key in ("image", "mask", "labels") if key in s))
        preview = args.preview.read_bytes() if args.preview else None
    except OSError as e:
        print(f"{prog}: {e.strerror + ': ' + str(e.filename) if e.strerror else e}", file=sys.stderr)
        return EXIT_LOCAL

    def body(client: TeachClient) -> int:
        if preview is not None:
            labels = client.preview(args.name, shots, preview)
            import cv2

            from edge_gfs.ui.overlay import overlay
            img = P.decode_image(preview, str(args.preview))
            cv2.imwrite(str(args.out), overlay(img, labels))
            ids = ", ".join(str(int(i)) for i in np.unique(labels))
            print(f"preview of {args.name} on {args.preview}: class ids {ids}; overlay written to {args.out}")
            return EXIT_OK
        r = client.teach(args.name, shots, create=args.create)
        print(f"taught {args.name}: id {r['id']}, {r['shots']} shots, classes version {r['version']}")
        return EXIT_OK

    return run_client(prog, args, body)
