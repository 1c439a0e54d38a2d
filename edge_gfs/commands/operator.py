"""`edge-gfs operator`: the teaching window. Live frames with the node's labels; freeze, box/brush, name, send.

This is only the shell: sockets, the OpenCV window and its event loop. What the keys and the mouse do lives in
edge_gfs/ui/operator_session.py (no GUI, tested headless); requests go through the same TeachClient as
`edge-gfs teach`, so the node sees exactly what the command-line tools send. Keys: docs/operator.md.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import zmq

from edge_gfs.commands.common import EXIT_LOCAL, EXIT_OK, add_endpoint_flags, format_classes, open_window, run_client
from edge_gfs.commands.flags import parse_with_config
from edge_gfs.ui.operator_session import HELP, OperatorSession, Request
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import (DEFAULT_FRAMES, DEFAULT_LABELS, FrameSubscriber, LabelSubscriber, TeachClient,
                                  TeachError, TeachTimeout)

WINDOW = "edge-gfs operator"
PROG = "edge-gfs operator"
NO_GUI = ("on a desktop with a display, run `pip uninstall -y opencv-python-headless && pip install opencv-python` "
          "if OpenCV has no GUI; or teach from the shell with `edge-gfs teach NAME --image A.jpg --mask A.png`")
EXAMPLE = f"""examples:
  edge-gfs operator                                   # frames on :5555, node labels on :5556, teach on :5557
  edge-gfs operator --frames tcp://127.0.0.1:6555 --labels tcp://127.0.0.1:6556 --teach tcp://127.0.0.1:6557
  edge-gfs operator --config operator.yaml            # any of these flags from a YAML map

keys: {HELP}
      (n: type a name, Enter ends it; Enter again sends; f twice forgets the named class; see docs/operator.md)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Teaching window: freeze a frame, box or paint an object, "
                                "name it and send it to a running node.", epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default=DEFAULT_FRAMES, metavar="ENDPOINT", help="the frame publisher")
    p.add_argument("--labels", default=DEFAULT_LABELS, metavar="ENDPOINT", help="the node's labels socket")
    p.add_argument("--alpha", type=float, default=0.5, help="label overlay opacity")
    add_endpoint_flags(p)
    return p


def perform(client: TeachClient, req: Request) -> object:
    """One session request over the teach socket: the reply map, or the label map for a preview."""
    if req.op == "teach":
        return client.teach(req.name, req.shots())
    if req.op == "preview":
        return client.preview(req.name, req.shots(), req.image)
    if req.op == "forget":
        return client.forget(req.name)
    if req.op == "list":
        return client.list()
    raise ValueError(f"unknown operator request {req.op!r}")


def handle(session: OperatorSession, client: TeachClient, req: Request) -> bool:
    """Perform a request and give the session its outcome; a refusal or silence is a message, never a crash."""
    try:
        session.on_reply(req, perform(client, req))
        return True
    except TeachError as e:
        session.on_failure(req, f"the node refused: {e.code}: {e.message}")
    except TeachTimeout as e:
        session.on_failure(req, str(e))
    return False


def drain(session: OperatorSession, frames: FrameSubscriber, labels: LabelSubscriber, limit: int = 200) -> None:
    """Everything waiting on both sockets, newest wins: the window never lags behind a backlog."""
    for _ in range(limit):
        if not frames.sock.poll(0):
            break
        got = frames.recv(0)
        if got is not None:
            session.on_frame(got[1], got[0].seq)
    for _ in range(limit):
        if not labels.sock.poll(0):
            break
        try:
            msg = labels.recv(0)
        except P.RequestError:
            continue  # a malformed message: skip it, keep showing
        if msg is None:
            continue
        topic, m = msg
        if topic == "labels":
            session.on_labels(m.seq, m.labels)
        elif topic == "classes":
            session.on_classes(m)


def window_closed() -> bool:
    try:
        return cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1
    except cv2.error:
        return True


def loop(args: argparse.Namespace, client: TeachClient) -> int:
    session = OperatorSession(alpha=args.alpha, frames_hint=args.frames)
    frames = FrameSubscriber(args.frames)
    labels = LabelSubscriber(args.labels, topics=("labels", "classes"))
    cv2.setMouseCallback(WINDOW, lambda event, x, y, flags, _: session.on_mouse(event, x, y, flags))
    try:
        model = client.ping(2.0).get("model")
        handle(session, client, Request("list"))  # the legend before the first `classes` message comes
        session.message = f"node ready (model {model}); space freezes a frame, h shows the keys"
    except (TeachError, TeachTimeout):
        session.message = f"no node answers on {args.teach} yet: start `edge-gfs run`; frames still show"
    poller = zmq.Poller()
    poller.register(frames.sock, zmq.POLLIN)
    poller.register(labels.sock, zmq.POLLIN)
    early: int = -1  # a key pressed while a request was being sent: it is handled next, not lost
    try:
        cv2.imshow(WINDOW, session.render())
        while not session.quit:
            poller.poll(15)
            drain(session, frames, labels)
            cv2.imshow(WINDOW, session.render())
            key, early = (early, -1) if early != -1 else (cv2.waitKey(15), -1)
            req = session.on_key(key)
            if req is not None:
                cv2.imshow(WINDOW, session.render())  # show "sending ..." while the node works
                early = cv2.waitKey(1)
                if handle(session, client, req) and req.op == "list":  # the line shows names; the table goes here
                    print(format_classes(session.classes, session.classes_version), flush=True)
            if window_closed():
                break
    except KeyboardInterrupt:
        pass
    finally:
        frames.close()
        labels.close()
        cv2.destroyAllWindows()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_with_config(build_parser(), argv)
    problem = open_window(WINDOW)
    if problem:
        print(f"{PROG}: {problem}; {NO_GUI}", file=sys.stderr)
        return EXIT_LOCAL
    return run_client(PROG, args, lambda client: loop(args, client))
