"""`edge-gfs run`: the streaming node. Frames in, label maps out, classes taught while it runs.

A thin imperative shell around pure parts: protocol (what crosses the wire), state (the registry), predict
(the per-frame path), teacher (registry changes). Three threads, each owning its sockets:
  - input (stream.ZmqFrameReader or stream.SourceReader): keeps only the newest frame, counts drops;
  - stream (this module's main loop): decode, preprocess, extractor, DQCE + classifier, upsample + argmax,
    publish; also the `classes` and `status` topics, so all PUB traffic leaves from one thread;
  - teach: a ROUTER that serves REQ and DEALER clients; forward passes for shots happen here, and the new
    classifier reaches the stream as one reference assignment, read once per frame.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
import zmq

from . import protocol as P
from .config import parse_hw
from .client import ALTERNATIVES, DEFAULT_FRAMES, DEFAULT_LABELS, DEFAULT_TEACH, FrameSource, SourceError
from .predict import Segmenter, to_input
from .state import Registry, StateError, StateStore
from .stream import STAGES, LatestSlot, SourceReader, Stats, ZmqFrameReader
from .teacher import Snapshot, Teacher, snapshot_of
from .yaml_flags import parse_with_config

log = logging.getLogger("edge_gfs.node")

BACKENDS = ("auto", "eager", "compiled", "cpu", "tensorrt")  # calib.backend.CHOICES; see docs/compile.md
SOURCE_FLAGS = ("camera", "video", "images", "frames")

EXAMPLE = f"""examples:
  edge-gfs camera --images ../shared/datasets/camvid/test/images --fps 10 --loop &   # a publisher on {DEFAULT_FRAMES}
  edge-gfs run --model camvid-fold0 --state state/fold0                   # subscribes to it (the default input)
  edge-gfs run --camera 0                                                 # OpenCV camera, in-process
  edge-gfs run --images ../shared/datasets/camvid/test/images --fps 5 --loop
  edge-gfs run --config node.yaml       # node.yaml: {{model: camvid-fold0, frames: "tcp://127.0.0.1:5555"}}

Label maps go out on --labels (topics labels, classes, status); teach with `edge-gfs teach`, list with
`edge-gfs classes`, forget with `edge-gfs forget`. Protocol: docs/protocol.md.
"""


def is_loopback(endpoint: str) -> bool:
    """Only processes on this host can reach it (tcp on 127.x / localhost / ::1, ipc, inproc)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class StartupError(Exception):
    """The node cannot start as configured (a port taken, ...): one line for the user, exit code 2."""


def default_state_dir(model: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edge-gfs" / Path(model).stem


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs run", description="Run the streaming node: frames in, label maps out, "
                                "live teaching.", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("frame source (one of; default --frames " + DEFAULT_FRAMES + ")")
    src.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index, read in-process")
    src.add_argument("--video", type=Path, metavar="PATH", help="replay a video file (at its own rate, or --fps)")
    src.add_argument("--images", type=Path, metavar="DIR", help="replay a folder of JPEG/PNG frames, sorted by name")
    src.add_argument("--frames", metavar="ENDPOINT", help="subscribe to a frame publisher (edge-gfs camera)")
    src.add_argument("--fps", type=float, help="replay rate of --images (default 10) or --video (default: its own)")
    src.add_argument("--loop", action="store_true", help="replay --images/--video forever (else the node exits at the end)")
    src.add_argument("--frame-id", default="camera", help="frame_id of frames read in-process")
    p.add_argument("--labels", default=DEFAULT_LABELS, metavar="ENDPOINT", help="PUB: labels, classes, status topics")
    p.add_argument("--teach", default=DEFAULT_TEACH, metavar="ENDPOINT",
                   help="ROUTER for teach requests (REQ or DEALER clients); loopback by default")
    p.add_argument("--curve-secret", type=Path, metavar="FILE",
                   help="the node's CURVE NAME.key_secret: required to bind --teach beyond loopback")
    p.add_argument("--curve-allow", type=Path, metavar="DIR", help="folder of operators' public *.key files accepted")
    p.add_argument("--model", default="camvid", help="bundled name (camvid, camvid-fold0) or a .pt path")
    p.add_argument("--input-size", metavar="HxW", type=parse_hw,
                   help="run the model at this input size instead of its own (a speed/accuracy profile; compile "
                        "with --size HxW to match); see README 'Profiles'")
    p.add_argument("--state", type=Path, metavar="DIR",
                   help="where the class registry lives (default: $XDG_STATE_HOME/edge-gfs/MODEL)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="feature extractor: auto (TensorRT engine on CUDA, else the CPU artifact of `edge-gfs compile`, "
                        "else eager), eager, compiled (an artifact, never eager), cpu or tensorrt")
    p.add_argument("--engine", type=Path, metavar="FILE", help="run this compiled artifact (from edge-gfs compile --out)")
    p.add_argument("--confidence", action="store_true", help="add the winning class's probability to label maps")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker thread; 0 = all cores")
    p.add_argument("--max-classes", type=int, default=P.LIMITS.max_novel_classes,
                   help="most taught classes the node holds (then teach replies `limit`)")
    p.add_argument("--max-shots", type=int, default=P.LIMITS.max_shots_per_class, help="most shots per class")
    p.add_argument("--status-period", type=float, default=1.0, help="seconds between status messages")
    p.add_argument("--classes-period", type=float, default=2.0, help="seconds between repeated classes messages")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML map of any of these flags; flags win")
    return p


class Node:
    def __init__(self, seg: Segmenter, registry: Registry, store: StateStore | None, model_name: str,
                 args: argparse.Namespace, limits: P.Limits = P.LIMITS) -> None:
        self.seg, self.args, self.limits = seg, args, limits
        self.model_name = model_name
        self.backend = "eager"
        self.ctx = zmq.Context()
        self.stop = threading.Event()
        self.slot = LatestSlot()
        self.stats = Stats()
        self.snapshot: Snapshot = snapshot_of(seg, registry)
        self.teacher = Teacher(seg, registry, store, self._swap, model_name, limits)
        self.reader: ZmqFrameReader | SourceReader | None = None
        self.bad_frames = 0
        self.errors = 0
        self.started = time.monotonic()

    def _swap(self, snap: Snapshot) -> None:
        """Called by the teach thread: one reference assignment, read once per frame by the stream."""
        self.snapshot = snap

    # -- setup ------------------------------------------------------------------------------------------------
    def bind(self) -> None:
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.MAXMSGSIZE, 1 << 16)  # inbound on a PUB: subscriptions only
        self.pub.setsockopt(zmq.SNDHWM, 100)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_teach_bytes * P.SOCKET_SLACK)
        self._secure_teach()
        for sock, ep, what in ((self.pub, self.args.labels, "--labels"), (self.router, self.args.teach, "--teach")):
            try:
                sock.bind(ep)
            except zmq.ZMQError as e:
                raise StartupError(f"cannot bind {what} {ep}: {e} (another node running? choose another {what})") from None

    def _secure_teach(self) -> None:
        """CURVE on the teach socket when keys are given; without them, loopback only (node.md: Security)."""
        a = self.args
        if a.curve_secret is None:
            if a.curve_allow is not None:
                raise StartupError("--curve-allow needs --curve-secret (the node's own NAME.key_secret)")
            if not is_loopback(a.teach):
                raise StartupError(f"--teach {a.teach} is reachable from other hosts: that needs CURVE (create keys "
                                   f"with `edge-gfs keys`, pass --curve-secret and --curve-allow) or a 127.0.0.1 address")
            return
        from zmq.auth import load_certificate
        from zmq.auth.thread import ThreadAuthenticator
        if a.curve_allow is None or not a.curve_allow.is_dir():
            raise StartupError("--curve-secret needs --curve-allow DIR, a folder of the operators' public *.key files")
        try:
            public, secret = load_certificate(str(a.curve_secret))
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot read --curve-secret {a.curve_secret}: {e}") from None
        if secret is None:
            raise StartupError(f"--curve-secret {a.curve_secret} holds no secret key (pass NAME.key_secret)")
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(a.curve_allow))
        self.router.curve_publickey, self.router.curve_secretkey = public, secret
        self.router.curve_server = True
        log.info("teach socket uses CURVE; operators allowed: %d keys in %s", len(list(a.curve_allow.glob("*.key"))),
                 a.curve_allow)

    def set_input(self, source: FrameSource | None) -> None:
        if source is None:
            try:
                self.reader = ZmqFrameReader(self.ctx, self.args.frames or DEFAULT_FRAMES, self.slot, self.stop,
                                             self.limits)
            except zmq.ZMQError as e:
                raise SourceError(f"cannot subscribe to --frames {self.args.frames}: {e}") from None
        else:
            fps = self.args.fps or source.default_fps
            self.reader = SourceReader(source, self.slot, self.stop, fps, self.args.frame_id)

    # -- threads ----------------------------------------------------------------------------------------------
    def _teach_loop(self) -> None:
        if self.args.threads > 0:
            torch.set_num_threads(self.args.threads)
        while not self.stop.is_set():
            try:
                if self.router.poll(100):
                    self._serve_one()
            except Exception:  # the teach socket must outlive any single bad exchange
                if self.stop.is_set():
                    break
                log.exception("teach socket error")

    def _serve_one(self) -> None:
        parts = self.router.recv_multipart()
        # REQ sends [id, b"", body]; a DEALER [id, b"", body] or [id, body]
        cut = parts.index(b"") + 1 if b"" in parts[1:] else 1
        envelope, body = parts[:cut], parts[cut:]
        if len(body) != 1:
            reply = P.error_reply(P.BAD_REQUEST, f"a request is one message part, got {len(body)}")
        else:
            reply = self.teacher.handle(body[0])
        self.router.send_multipart(envelope + [P.pack(reply)])

    def run(self) -> int:
        teach = threading.Thread(target=self._teach_loop, name="teach", daemon=True)
        teach.start()
        self.reader.start()
        published_version: int | None = None
        next_status = next_classes = time.monotonic()
        next_log = time.monotonic() + 10.0
        log.info("ready: model %s, labels on %s, teach on %s, input %s, classes version %d", self.model_name,
                 self.args.labels, self.args.teach, self.input_label(), self.snapshot.version)
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                snap = self.snapshot
                if snap.version != published_version or now >= next_classes:
                    published_version, next_classes = self._publish_classes(snap, now)
                if now >= next_status:
                    status = self.status()
                    self._send(P.TOPIC_STATUS, status)
                    next_status = now + self.args.status_period
                    if now >= next_log:
                        log.info("fps %.1f, latency p50 %.0f ms p95 %.0f ms, drops %d, classes version %d",
                                 status["fps"], status["latency_p50_ms"], status["latency_p95_ms"], status["drops"],
                                 status["classes_version"])
                        next_log = now + 10.0
                arrival = self.slot.take(0.05)
                if arrival is None:
                    if self.slot.done:
                        log.info("input ended after %d frames", self.stats.frames)
                        break
                    continue
                snap = self.snapshot  # the one read of the classifier for this frame
                if snap.version != published_version:
                    published_version, next_classes = self._publish_classes(snap, now)
                try:
                    self.process(arrival, snap)
                except Exception:  # a frame that breaks the model must not stop the stream
                    self.errors += 1
                    log.exception("frame %s failed", arrival.frame.seq)
        finally:
            self.stop.set()
            teach.join(2.0)
            self.reader.join(2.0)
            self.close()
            log.info("stopped after %d frames", self.stats.frames)
        return 0

    def close(self) -> None:
        """Close every socket (also when start-up failed half-way), so the context never blocks on exit."""
        self.stop.set()
        if getattr(self, "auth", None) is not None:
            self.auth.stop()
        for sock in (getattr(self, "pub", None), getattr(self, "router", None)):
            if sock is not None:
                sock.close(0)
        if isinstance(self.reader, ZmqFrameReader) and not self.reader.is_alive():
            self.reader.sock.close(0)
        self.ctx.destroy(0)

    # -- per frame --------------------------------------------------------------------------------------------
    def process(self, arrival, snap: Snapshot) -> None:
        seg, frame = self.seg, arrival.frame
        t0 = time.perf_counter()
        try:
            bgr = P.decode_frame(frame, self.limits)
        except P.RequestError as e:
            self.bad_frames += 1
            log.warning("frame %d not decodable: %s", frame.seq, e)
            return
        t1 = time.perf_counter()
        rgb = to_input([bgr], seg.cfg.input_hw)
        t2 = time.perf_counter()
        feats = seg.features(rgb)
        t3 = time.perf_counter()
        logits = seg.logits(feats, snap.classifier)
        t4 = time.perf_counter()
        labels, conf = seg.label_maps_confidence(logits, bgr.shape[:2], snap.classifier, self.args.confidence)
        t5 = time.perf_counter()
        latency_ms = (time.monotonic() - arrival.received) * 1000.0
        msg = P.labels_message(frame, labels[0], snap.version, latency_ms, None if conf is None else conf[0])
        self._send(P.TOPIC_LABELS, msg)
        t6 = time.perf_counter()
        ms = [(b - a) * 1000.0 for a, b in zip((t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6))]
        self.stats.add(dict(zip(STAGES, ms)), latency_ms)

    def _publish_classes(self, snap: Snapshot, now: float) -> tuple[int, float]:
        """Send the class list; returns the version now published and when to repeat it."""
        self._send(P.TOPIC_CLASSES, P.classes_message(snap.version, snap.classes))
        return snap.version, now + self.args.classes_period

    def _send(self, topic: bytes, msg: dict) -> None:
        self.pub.send_multipart([topic, P.pack(msg)], copy=False)

    def status(self) -> dict:
        r = self.reader
        overwritten, gaps = self.slot.overwritten, getattr(r, "seq_gaps", 0)
        return {"v": P.VERSION, "model": self.model_name, "backend": self.backend, **self.stats.summary(),
                "drops": overwritten + gaps, "drops_overwritten": overwritten, "drops_seq_gap": gaps,
                "bad_frames": self.bad_frames + getattr(r, "bad", 0), "errors": self.errors,
                "classes_version": self.snapshot.version, "threads": torch.get_num_threads(),
                "uptime_s": round(time.monotonic() - self.started, 1), "input": self.input_label(),
                "input_hw": list(self.seg.cfg.input_hw)}

    def input_label(self) -> str:
        a = self.args
        if a.camera is not None:
            return f"camera {a.camera}"
        if a.video is not None:
            return f"video {a.video}"
        if a.images is not None:
            return f"images {a.images}"
        return f"frames {a.frames or DEFAULT_FRAMES}"


def _pick_source(args: argparse.Namespace, given: set[str]) -> None:
    """One source: a source flag on the command line replaces one from the config file."""
    on_cli = [f for f in SOURCE_FLAGS if f in given]
    if on_cli:
        for f in SOURCE_FLAGS:
            if f not in on_cli:
                setattr(args, f, None)
    chosen = [f for f in SOURCE_FLAGS if getattr(args, f) is not None]
    if len(chosen) > 1:
        raise SourceError(f"give one frame source, not {' and '.join('--' + f for f in chosen)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, given = parse_with_config(parser, argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s edge-gfs run: %(message)s", stream=sys.stderr)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from . import zoo  # after the fast checks: loading torch models takes a while
    from .model import at_size, model_checksum
    from calib.artifact import ArtifactError
    from calib.backend import select as select_backend
    store: StateStore | None = None
    try:
        _pick_source(args, given)
        source = None
        if any(getattr(args, f) is not None for f in ("camera", "video", "images")):
            source = FrameSource(camera=args.camera, video=args.video, images=args.images, loop=args.loop)
        model, _ = zoo.load(args.model)
        if args.input_size:
            model = at_size(model, args.input_size)
        backend = select_backend(model, args.model, args.backend, args.engine)  # ArtifactError says what to run
        seg = Segmenter(model, extractor=backend.extractor)
        state_dir = args.state or default_state_dir(args.model)
        store = StateStore(state_dir)
        store.lock()
        fresh = Registry.fresh(model_checksum(model), args.model, model.cfg.class_names, model.cfg.base_classes,
                               model.cfg.dim)
        registry = store.open(fresh)
        limits = replace(P.LIMITS, max_novel_classes=args.max_classes, max_shots_per_class=args.max_shots)
        node = Node(seg, registry, store, args.model, args, limits)
        node.backend = backend.name
        try:
            node.bind()
            node.set_input(source)
        except BaseException:
            node.close()
            raise
    except (SourceError, StartupError, StateError, ArtifactError, FileNotFoundError, ValueError) as e:
        msg = str(e)
        if isinstance(e, SourceError) and "--video" not in msg:
            msg += f"; sources: --camera N, {ALTERNATIVES}"
        print(f"edge-gfs run: {msg}", file=sys.stderr)
        if store is not None:
            store.unlock()
        return 2
    log.info("model %s (checksum %s), state %s: %d taught classes, version %d", args.model,
             registry.model_checksum[:12], state_dir, registry.novel_count(), registry.version)
    log.info("backend %s: %s", backend.name, backend.note)

    def on_signal(signum, _frame) -> None:
        node.stop.set()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return node.run()
    finally:
        store.unlock()


if __name__ == "__main__":
    raise SystemExit(main())
