"""What the operator commands (teach, forget, classes) share: endpoint flags, error reporting, exit codes.

Exit codes: 0 done; 1 the node refused (its error code is printed); 2 a local problem (a file, a flag);
3 no reply from the node. Scripts can tell "fix your request" from "start the node".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import cv2

from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import TeachClient, TeachError, TeachTimeout

EXIT_OK, EXIT_REFUSED, EXIT_LOCAL, EXIT_NO_REPLY = 0, 1, 2, 3


def window_problem() -> str | None:
    """Why no window can open here, checked before HighGUI is touched; None when one can.

    Why before: with the GUI build of OpenCV and no display (over SSH, in CI), Qt aborts the whole process (exit
    134) on the first window call, which no `except` can catch; an X or Wayland display must be named first.
    """
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set: over SSH, use ssh -X, or run under xvfb-run for tests)"
    return None


def open_window(name: str) -> str | None:
    """Open a resizable OpenCV window; None when it opened, else why not (no display, or opencv-python-headless,
    which raises on any window call). WINDOW_GUI_NORMAL: no Qt toolbar and no right-click context menu, so the
    right button paints and erases as documented."""
    problem = window_problem()
    if problem:
        return problem
    try:
        cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        return None
    except cv2.error:
        return "this OpenCV has no GUI (opencv-python-headless is installed)"


def add_endpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teach", default=P.DEFAULT_TEACH, metavar="ENDPOINT", help="the node's teach socket")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node's reply")
    p.add_argument("--curve-secret", type=Path, metavar="FILE", help="our CURVE NAME.key_secret (see edge-gfs keys)")
    p.add_argument("--curve-server-key", type=Path, metavar="FILE", help="the node's CURVE public NAME.key")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML map of any of these flags; flags win")


def run_client(prog: str, args: argparse.Namespace, body: Callable[[TeachClient], int]) -> int:
    try:
        with TeachClient(args.teach, timeout_s=args.timeout, curve_secret=args.curve_secret,
                         curve_server_key=args.curve_server_key) as client:
            return body(client)
    except TeachError as e:
        print(f"{prog}: the node refused: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_REFUSED
    except TeachTimeout as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_NO_REPLY
    except (OSError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_LOCAL


def format_classes(classes: list[dict], version: int) -> str:
    lines = [f"classes version {version}", f"{'id':>3}  {'name':<16} {'kind':<6} {'shots':>5}  color"]
    for c in classes:
        lines.append(f"{c['id']:>3}  {c['name']:<16} {c['kind']:<6} {c['shots']:>5}  {tuple(c['color'])}")
    return "\n".join(lines)
