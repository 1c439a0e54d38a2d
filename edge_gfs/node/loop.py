"""The streaming node: frames in, label maps out, classes taught while it runs (`edge-gfs run`, whose flags live
in commands/run.py).

A thin imperative shell around pure parts: wire/protocol (what crosses the wire), node/registry (the classes on
disk), core/segmenter (the per-frame path), node/teach_handler (registry changes). Three threads, each owning its
sockets:
  - input (stream.ZmqFrameReader or stream.SourceReader): keeps only the newest frame, counts drops;
  - stream (this module's run loop): decode, preprocess, extractor, DQCE + classifier, upsample + argmax,
    publish; also the `classes` and `status` topics, so all PUB traffic leaves from one thread;
  - teach: a ROUTER that serves REQ and DEALER clients; forward passes for shots happen here, and the new
    classifier reaches the stream as one reference assignment, read once per frame.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch
import zmq

from edge_gfs.core.segmenter import Segmenter, to_input
from edge_gfs.node.config import NodeConfig, StartupError
from edge_gfs.node.registry import Registry, StateStore
from edge_gfs.node.sources import Source, SourceError
from edge_gfs.node.stream import STAGES, LatestSlot, SourceReader, Stats, ZmqFrameReader
from edge_gfs.node.teach_handler import Snapshot, Teacher, snapshot_of
from edge_gfs.wire import protocol as P

log = logging.getLogger("edge_gfs.node")


# A plain PUB keeps every topic any subscriber asks for: 2,000 random 60 KB topics took a node from 0.8 to 3.6 GB
# and stayed after the client left (issue 13). The labels socket is an XPUB in manual mode instead; it keeps only
# subscriptions to a prefix of its own topics, a set of a few dozen short strings, so memory stays bounded.
TOPICS = (P.TOPIC_LABELS, P.TOPIC_CLASSES, P.TOPIC_STATUS)
MAX_SUBSCRIPTION_BYTES = 64  # a subscription to one of TOPICS is 8-17 bytes on the wire; longer drops that connection


def wanted_topic(topic: bytes) -> bool:
    """True for "" (everything) and any prefix of a topic the node publishes."""
    return any(t.startswith(topic) for t in TOPICS)


class OperatorKeys:
    """The CURVE keys allowed on the teach socket (--curve-allow DIR), as a zmq.auth credentials provider.

    Why not configure_curve(location=...): pyzmq logs a refused key at debug level only, so an operator with
    the wrong key saw silence on both ends. Here every refusal is a warning naming the key (rate-limited).
    """

    def __init__(self, folder: Path) -> None:
        from zmq.auth import load_certificates
        self.folder = folder
        self.keys: set[bytes] = set(load_certificates(str(folder)))
        self.denied = 0
        self._last_log = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.denied += 1
        now = time.monotonic()
        if now - self._last_log > 5.0:
            self._last_log = now
            log.warning("teach: refused a CURVE client whose public key %s is not in --curve-allow %s (%d refusals "
                        "so far); to allow it, copy the operator's NAME.key there and restart",
                        key.decode(errors="replace")[:40], self.folder, self.denied)
        return False


class Node:
    """Owns its context, sockets and threads from construction to close(); `run()` blocks until stopped.

    Construction binds the labels and teach sockets and connects the input, so a node that exists can serve;
    any failure on the way closes what was opened and raises StartupError or SourceError.
    """

    def __init__(self, cfg: NodeConfig, seg: Segmenter, registry: Registry, store: StateStore | None,
                 source: Source | None = None, backend: str = "eager") -> None:
        self.cfg, self.seg, self.limits = cfg, seg, cfg.limits
        self.model_name, self.backend = cfg.model, backend
        self.stop = threading.Event()
        self.slot = LatestSlot()
        self.stats = Stats()
        self.snapshot: Snapshot = snapshot_of(seg, registry)
        self.teacher = Teacher(seg, registry, store, self._swap, cfg.model, self.limits)
        self.bad_frames = 0
        self._last_bad_log = 0.0
        self.errors = 0
        self.started = time.monotonic()
        self.ctx = zmq.Context()
        self.auth = None
        self.pub = self._socket(zmq.XPUB, MAX_SUBSCRIPTION_BYTES)  # inbound: subscriptions only
        self.pub.setsockopt(zmq.SNDHWM, 100)
        self.pub.setsockopt(zmq.XPUB_MANUAL, 1)  # _serve_subscriptions decides which ones libzmq keeps
        self.refused_subscriptions = 0
        self.router = self._socket(zmq.ROUTER, self.limits.max_teach_bytes * P.SOCKET_SLACK)
        self.reader: ZmqFrameReader | SourceReader | None = None
        self.view = None  # node/foxglove_view.FoxgloveView with --foxglove
        try:
            self._secure_teach()
            for sock, ep, what in ((self.pub, cfg.labels, "--labels"), (self.router, cfg.teach, "--teach")):
                try:
                    sock.bind(ep)
                except zmq.ZMQError as e:
                    raise StartupError(f"cannot bind {what} {ep}: {e} (another node running? choose another {what})") from None
            self.reader = self._input(source)
            if cfg.foxglove is not None:
                from edge_gfs.node.foxglove_view import FoxgloveView  # imports foxglove-sdk only when asked for
                self.view = FoxgloveView(cfg.foxglove)
        except BaseException:
            self.close()
            raise

    def _socket(self, kind: int, max_bytes: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        return sock

    def _swap(self, snap: Snapshot) -> None:
        """Called by the teach thread: one reference assignment, read once per frame by the stream."""
        self.snapshot = snap

    # -- setup ------------------------------------------------------------------------------------------------
    def _secure_teach(self) -> None:
        """CURVE on the teach socket when keys are given (NodeConfig.check refused a non-loopback one without)."""
        cfg = self.cfg
        if cfg.curve_secret is None:
            return
        from zmq.auth import load_certificate
        from zmq.auth.thread import ThreadAuthenticator
        public, secret = load_certificate(str(cfg.curve_secret))  # NodeConfig.check read it already
        allowed = OperatorKeys(cfg.curve_allow)
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=allowed)
        self.router.curve_publickey, self.router.curve_secretkey = public, secret
        self.router.curve_server = True
        log.info("teach socket uses CURVE; operators allowed: %d keys in %s", len(allowed.keys), cfg.curve_allow)

    def _input(self, source: Source | None) -> ZmqFrameReader | SourceReader:
        if source is not None:
            return SourceReader(source, self.slot, self.stop, self.cfg.fps or source.default_fps, self.cfg.frame_id)
        try:
            return ZmqFrameReader(self.ctx, self.cfg.frames, self.slot, self.stop, self.limits)
        except zmq.ZMQError as e:
            raise SourceError(f"cannot subscribe to --frames {self.cfg.frames}: {e}") from None

    # -- threads ----------------------------------------------------------------------------------------------
    def _teach_loop(self) -> None:
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
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
                 self.cfg.labels, self.cfg.teach, self.cfg.input_label, self.snapshot.version)
        try:
            while not self.stop.is_set():
                self._serve_subscriptions()
                now = time.monotonic()
                snap = self.snapshot
                if snap.version != published_version or now >= next_classes:
                    published_version, next_classes = self._publish_classes(snap, now)
                if now >= next_status:
                    status = self.status()
                    self._send(P.TOPIC_STATUS, status)
                    if self.view is not None:
                        self.view.status(status)
                    next_status = now + self.cfg.status_period
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
        """Close every socket (also when construction failed half-way), so the context never blocks on exit."""
        self.stop.set()
        if self.view is not None:
            self.view.close()
        if self.auth is not None:
            self.auth.stop()
        self.pub.close(0)
        self.router.close(0)
        if isinstance(self.reader, ZmqFrameReader) and not self.reader.is_alive():
            self.reader.close()
        self.ctx.destroy(0)

    # -- per frame --------------------------------------------------------------------------------------------
    def process(self, arrival, snap: Snapshot) -> None:
        seg, frame = self.seg, arrival.frame
        t0 = time.perf_counter()
        try:
            bgr = P.decode_frame(frame, self.limits)
        except P.RequestError as e:
            self.bad_frames += 1
            if time.monotonic() - self._last_bad_log > 5.0:  # a hostile publisher must not fill the disk
                self._last_bad_log = time.monotonic()
                log.warning("frame %d not decodable (%d so far): %s", frame.seq, self.bad_frames, e)
            return
        t1 = time.perf_counter()
        rgb = to_input([bgr], seg.cfg.input_hw)
        t2 = time.perf_counter()
        feats = seg.features(rgb)
        t3 = time.perf_counter()
        logits = seg.logits(feats, snap.classifier)
        t4 = time.perf_counter()
        labels, conf = seg.label_maps_confidence(logits, bgr.shape[:2], snap.classifier, self.cfg.confidence)
        t5 = time.perf_counter()
        latency_ms = (time.monotonic() - arrival.received) * 1000.0
        msg = P.labels_message(frame, labels[0], snap.version, latency_ms, None if conf is None else conf[0])
        self._send(P.TOPIC_LABELS, msg)
        if self.view is not None:  # a hand-over only when a Foxglove client watches; encoding is its thread's
            self.view.offer(frame, bgr, labels[0], snap.classes)
        t6 = time.perf_counter()
        ms = [(b - a) * 1000.0 for a, b in zip((t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6))]
        self.stats.add(dict(zip(STAGES, ms)), latency_ms)

    def _publish_classes(self, snap: Snapshot, now: float) -> tuple[int, float]:
        """Send the class list; returns the version now published and when to repeat it."""
        msg = P.classes_message(snap.version, snap.classes)
        self._send(P.TOPIC_CLASSES, msg)
        if self.view is not None:
            self.view.classes(msg)
        return snap.version, now + self.cfg.classes_period

    def _serve_subscriptions(self, most: int = 1000) -> None:
        """Apply the subscriptions and unsubscriptions that name our topics; drop the rest (stream thread). At
        most `most` per call, so a subscription flood cannot keep the stream thread from its frames."""
        for _ in range(most):
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] not in (0, 1):
                continue
            topic = msg[1:]
            if wanted_topic(topic):
                self.pub.setsockopt(zmq.SUBSCRIBE if msg[0] == 1 else zmq.UNSUBSCRIBE, topic)
            elif msg[0] == 1:
                self.refused_subscriptions += 1
                if self.refused_subscriptions == 1 or self.refused_subscriptions % 1000 == 0:
                    log.warning("--labels: ignored %d subscriptions to topics the node does not publish (%s ...); "
                                "its topics are %s", self.refused_subscriptions, P.clip(topic, 20),
                                ", ".join(t.decode() for t in TOPICS))

    def _send(self, topic: bytes, msg: dict) -> None:
        self.pub.send_multipart([topic, P.pack(msg)], copy=False)

    def status(self) -> dict:
        inp = self.reader.status()
        overwritten, bad = self.slot.overwritten, inp.pop("bad_messages")
        view = {} if self.view is None else {"foxglove": {"address": self.view.address, "frames_sent": self.view.sent}}
        return {"v": P.VERSION, "model": self.model_name, "backend": self.backend, **self.stats.summary(), **inp,
                "drops": overwritten + inp["drops_seq_gap"], "drops_overwritten": overwritten,
                "bad_frames": self.bad_frames + bad, "errors": self.errors,
                "classes_version": self.snapshot.version, "threads": torch.get_num_threads(),
                "uptime_s": round(time.monotonic() - self.started, 1), "input": self.cfg.input_label,
                "input_hw": list(self.seg.cfg.input_hw), **view}
