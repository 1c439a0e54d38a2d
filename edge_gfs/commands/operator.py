"""`edge-gfs operator`: the teaching window. Live frames with the node's labels; freeze, box/brush, name, send.

This is only the shell: sockets, the window (edge_gfs/ui/tk_window.py, Tk) and its event loop. What the keys
and the mouse do lives in edge_gfs/ui/operator_session.py (no GUI, tested headless); requests go through the
same TeachClient as `edge-gfs teach`, so the node sees exactly what the command-line tools send. Keys:
docs/operator.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from edge_gfs.commands.common import EXIT_LOCAL, EXIT_OK, add_endpoint_flags, format_classes, run_client, window_problem
from edge_gfs.commands.flags import parse_with_config
from edge_gfs.ui.operator_session import HELP, OperatorSession, Request
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import FrameSubscriber, LabelSubscriber, TeachClient, TeachError, TeachTimeout

WINDOW = "edge-gfs operator"
PROG = "edge-gfs operator"
NO_GUI = "or teach from the shell with `edge-gfs teach NAME --image A.jpg --mask A.png`"
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
    p.add_argument("--frames", default=P.DEFAULT_FRAMES, metavar="ENDPOINT", help="the frame publisher")
    p.add_argument("--labels", default=P.DEFAULT_LABELS, metavar="ENDPOINT", help="the node's labels socket")
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
        result = perform(client, req)
    except (TeachError, TeachTimeout) as e:
        session.on_failure(req, outcome_text(e))
        return False
    session.on_reply(req, result)
    return True


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


def outcome_text(error: Exception) -> str:
    if isinstance(error, TeachError):
        return f"the node refused: {error.code}: {error.message}"
    if isinstance(error, TeachTimeout):
        return f"{error} (the window keeps running; the next request reconnects)"
    return f"{type(error).__name__}: {str(error)[:200]}"


def loop(args: argparse.Namespace, client: TeachClient) -> int:
    from edge_gfs.ui.tk_window import OperatorWindow, RequestWorker  # tkinter only where a window opens

    session = OperatorSession(alpha=args.alpha, frames_hint=args.frames)
    frames = FrameSubscriber(args.frames)
    labels = LabelSubscriber(args.labels, topics=("labels", "classes"))
    worker = RequestWorker(lambda req: perform(client, req))  # the only thread that touches the teach socket

    def on_outcome(req: Request, ok: bool, result: object) -> None:
        if not ok:
            session.on_failure(req, outcome_text(result))
            return
        session.on_reply(req, result)
        if req.op == "list":  # the status line shows names; the table goes to the terminal
            print(format_classes(session.classes, session.classes_version), flush=True)

    session.message = f"asking the node on {args.teach} for its classes ... (space freezes a frame, h: keys)"
    try:
        window = OperatorWindow(session, WINDOW, lambda: drain(session, frames, labels), worker, on_outcome)
    except Exception as e:  # tkinter.TclError: no display after all, or a display that refuses us
        frames.close()
        labels.close()
        print(f"{PROG}: cannot open a window: {str(e)[:200]}; {NO_GUI}", file=sys.stderr)
        return EXIT_LOCAL
    worker.start()
    worker.todo.put(Request("list"))  # the legend before the first `classes` message comes
    try:
        window.run()
    except KeyboardInterrupt:
        pass
    finally:
        worker.todo.put(None)
        frames.close()
        labels.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_with_config(build_parser(), argv)
    problem = window_problem()
    if problem is None and importlib.util.find_spec("tkinter") is None:
        problem = "this Python has no Tk (on Debian/Ubuntu: sudo apt install python3-tk)"
    if problem:
        print(f"{PROG}: {problem}; {NO_GUI}", file=sys.stderr)
        return EXIT_LOCAL
    return run_client(PROG, args, lambda client: loop(args, client))
