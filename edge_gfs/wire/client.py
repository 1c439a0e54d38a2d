"""Talking to an edge-gfs node from Python: frame publisher, label subscriber, teach client.

This is the contract of ../shared/spec/node.md (and docs/protocol.md) from the other side of the sockets.
Every example and test goes through it, so a change to the wire shows up here first. Nothing here blocks
forever: every receive takes a timeout, and a teach request that gets no reply raises TeachTimeout.

    from edge_gfs.wire.client import FramePublisher, LabelSubscriber, TeachClient
    pub = FramePublisher("tcp://127.0.0.1:5555")          # binds, like `edge-gfs camera`
    sub = LabelSubscriber("tcp://127.0.0.1:5556")
    teach = TeachClient("tcp://127.0.0.1:5557")
    teach.teach("Car", [(image_bgr, mask_bool)])
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from edge_gfs.wire import protocol as P


def free_endpoint(host: str = "127.0.0.1") -> str:
    """A tcp endpoint on a port the OS says is free now: demos, tests and benches run beside other nodes."""
    with socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


class TeachError(Exception):
    """The node refused a request: `code` is one of protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class TeachTimeout(TimeoutError):
    """No reply in time: the node is not running at that endpoint, or is busy beyond the timeout."""


# -- sockets ---------------------------------------------------------------------------------------------------
def _socket(ctx: zmq.Context, kind: int, max_bytes: int) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    return s


class FramePublisher:
    """PUB of `frame` messages (what `edge-gfs camera` runs). Binds by default: the camera side owns the port."""

    def __init__(self, endpoint: str = P.DEFAULT_FRAMES, bind: bool = True, ctx: zmq.Context | None = None,
                 frame_id: str = "camera", sndhwm: int = 10) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = _socket(self.ctx, zmq.XPUB, 1 << 16)  # XPUB: a PUB that also tells us who subscribed
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        (self.sock.bind if bind else self.sock.connect)(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint
        self.frame_id = frame_id
        self.seq = 0

    def wait_for_subscriber(self, timeout_s: float = 10.0) -> bool:
        """Block until some subscriber has subscribed (or timeout_s): PUB drops what it sends before that."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return False
        while self.sock.poll(0):
            self.sock.recv()
        return True

    def publish(self, image: np.ndarray | None = None, data: bytes | None = None, encoding: str = "jpeg",
                seq: int | None = None, stamp_ns: int | None = None, quality: int = 90) -> int:
        """Send one frame (BGR pixels encoded here, or encoded bytes as they are); returns its seq."""
        seq = self.seq if seq is None else seq
        frame = P.make_frame(image, data, encoding, seq, time.time_ns() if stamp_ns is None else stamp_ns,
                             self.frame_id, quality)
        self.send(frame)
        self.seq = seq + 1
        return seq

    def send(self, frame: P.Frame) -> None:
        self.sock.send_multipart([P.TOPIC_FRAME, P.pack(P.frame_message(frame))], copy=False)

    def close(self) -> None:
        self.sock.close(0)


class FrameSubscriber:
    """SUB to a frame publisher: validated, decoded frames (for viewers and recorders; the node has its own reader)."""

    def __init__(self, endpoint: str = P.DEFAULT_FRAMES, ctx: zmq.Context | None = None,
                 limits: P.Limits = P.LIMITS) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = _socket(self.ctx, zmq.SUB, limits.max_frame_bytes * P.SOCKET_SLACK)
        self.sock.setsockopt(zmq.SUBSCRIBE, P.TOPIC_FRAME)
        self.sock.connect(endpoint)
        self.limits = limits

    def recv(self, timeout_s: float = 1.0) -> tuple[P.Frame, np.ndarray] | None:
        """Next frame and its BGR pixels; None after timeout_s or for a frame that fails validation."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        parts = self.sock.recv_multipart()
        try:
            if len(parts) != 2:
                return None
            frame = P.parse_frame(parts[1], self.limits)
            return frame, P.decode_frame(frame, self.limits)
        except P.RequestError:
            return None

    def close(self) -> None:
        self.sock.close(0)


class LabelSubscriber:
    """SUB to a node's labels socket: `labels`, `classes` and `status` topics, parsed."""

    def __init__(self, endpoint: str = P.DEFAULT_LABELS, topics: Sequence[str] = ("labels", "classes", "status"),
                 ctx: zmq.Context | None = None, max_bytes: int = 256 << 20) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = _socket(self.ctx, zmq.SUB, max_bytes)
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(endpoint)
        self.endpoint = endpoint

    def recv(self, timeout_s: float = 1.0) -> tuple[str, object] | None:
        """Next message as (topic, LabelMap | dict), or None after timeout_s."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        parts = self.sock.recv_multipart()
        if len(parts) != 2:
            return None
        topic = parts[0].decode(errors="replace")
        if topic == "labels":
            return topic, P.parse_labels(parts[1])
        return topic, P.unpack_map(parts[1], topic)

    def next(self, topic: str, timeout_s: float = 5.0):
        """The next message of one topic (others are skipped), or None after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is not None and got[0] == topic:
                return got[1]
        return None

    def labels_for(self, seq: int, timeout_s: float = 5.0) -> P.LabelMap | None:
        """The label map of frame `seq` (older ones skipped), or None if it did not come in time."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            lm = self.next("labels", left)
            if lm is not None and lm.seq == seq:
                return lm
        return None

    def close(self) -> None:
        self.sock.close(0)


def segment_via(pub: FramePublisher, sub: LabelSubscriber, image: np.ndarray | None = None,
                data: bytes | None = None, encoding: str = "png", tries: int = 10,
                timeout_s: float = 5.0) -> P.LabelMap:
    """Publish one frame and wait for its label map, publishing again if it was missed (PUB/SUB may lose the
    first messages while connecting, and a node drops frames it is too busy for). Lock-step: for tests,
    evaluation and demos, not for streaming."""
    for _ in range(tries):
        seq = pub.publish(image=image, data=data, encoding=encoding)
        lm = sub.labels_for(seq, timeout_s)
        if lm is not None:
            return lm
    raise TimeoutError(f"no label map from {sub.endpoint} after {tries} tries: is the node running?")


def _png(arr: np.ndarray | bytes, mask: bool = False) -> bytes:
    if isinstance(arr, (bytes, bytearray)):
        return bytes(arr)
    if mask:
        arr = np.where(np.asarray(arr) != 0, 255, 0).astype(np.uint8)
    return P.encode_png(np.asarray(arr))


Shotlike = tuple  # (image, mask) or (image, mask, labels); arrays are PNG-encoded, bytes sent as they are


def shot_bytes(shot: Shotlike) -> P.ShotBytes:
    image, mask = shot[0], shot[1]
    labels = shot[2] if len(shot) > 2 else None
    return P.ShotBytes(image=_png(image), mask=_png(mask, mask=True), labels=None if labels is None else _png(labels))


# what a teach client's monitor watches, to say why a request got no reply
_DIAGNOSED = (zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


class TeachClient:
    """REQ (or DEALER) to a node's teach socket. Methods raise TeachError on a refusal, TeachTimeout on silence."""

    def __init__(self, endpoint: str = P.DEFAULT_TEACH, timeout_s: float = 30.0, dealer: bool = False,
                 ctx: zmq.Context | None = None, curve_secret: Path | str | None = None,
                 curve_server_key: Path | str | None = None) -> None:
        """curve_secret (our NAME.key_secret) and curve_server_key (the node's NAME.key): for a node whose teach
        socket uses CURVE (see `edge-gfs keys`); a node that does not know our key simply never answers."""
        self.ctx = ctx or zmq.Context.instance()
        self.endpoint, self.timeout_s, self.dealer = endpoint, timeout_s, dealer
        self.curve: tuple[bytes, bytes, bytes] | None = None
        if (curve_secret is None) != (curve_server_key is None):
            raise ValueError("CURVE needs both our secret key file and the node's public key file")
        if curve_secret is not None:
            from zmq.auth import load_certificate
            public, secret = load_certificate(str(curve_secret))
            server, _ = load_certificate(str(curve_server_key))
            if secret is None:
                raise ValueError(f"{curve_secret} holds no secret key (pass NAME.key_secret)")
            self.curve = (public, secret, server)
        self.sock: zmq.Socket | None = None
        self._open()

    def _open(self) -> None:
        self.sock = _socket(self.ctx, zmq.DEALER if self.dealer else zmq.REQ, 64 << 20)
        if self.curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = self.curve
        self.monitor = self.sock.get_monitor_socket(_DIAGNOSED)
        self.sock.connect(self.endpoint)

    def _close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)

    def _why_silent(self, timeout: float) -> str:
        """Why no reply came, from what the socket saw: no listener, a refused key, or a node that is busy."""
        seen = set()
        while self.monitor.poll(0):
            seen.add(recv_monitor_message(self.monitor)["event"])
        if zmq.EVENT_HANDSHAKE_FAILED_AUTH in seen:
            return (f"the node at {self.endpoint} refused our CURVE key: ask its operator to copy our NAME.key into "
                    f"the node's --curve-allow folder")
        if zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in seen or (zmq.EVENT_CONNECTED in seen and self.curve is not None
                                                           and zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen):
            return (f"connected to {self.endpoint} but the CURVE handshake failed: is --curve-server-key that "
                    f"node's public NAME.key, and does it run with --curve-secret?")
        if zmq.EVENT_CONNECTED not in seen and zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen:
            return f"no reply from {self.endpoint} within {timeout:g} s: is `edge-gfs run` running there?"
        return f"the node at {self.endpoint} did not reply within {timeout:g} s (busy? try a longer timeout)"

    def request(self, msg: dict | bytes, timeout_s: float | None = None) -> dict:
        """Send one request (a map, or raw bytes to test the node's checks) and return the reply map."""
        payload = msg if isinstance(msg, (bytes, bytearray)) else P.pack(msg)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self.dealer:
            self.sock.send_multipart([b"", payload])
        else:
            self.sock.send(payload)
        if not self.sock.poll(int(timeout * 1000)):
            why = self._why_silent(timeout)
            self._close()  # a REQ that missed its reply cannot send again: start over
            self._open()
            raise TeachTimeout(why)
        parts = self.sock.recv_multipart()
        return P.unpack_map(parts[-1], "reply")

    def call(self, msg: dict, timeout_s: float | None = None) -> dict:
        reply = self.request(msg, timeout_s)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise TeachError(str(err.get("code", "internal")), str(err.get("message", "")))
        return reply

    def ping(self, timeout_s: float | None = None) -> dict:
        return self.call({"op": "ping"}, timeout_s)

    def wait_ready(self, timeout_s: float = 60.0) -> dict:
        """Ping until the node answers (it binds after loading its model)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.ping(min(2.0, max(0.1, deadline - time.monotonic())))
            except TeachTimeout:
                if time.monotonic() >= deadline:
                    raise

    def list(self) -> dict:
        return self.call({"op": "list"})

    def teach(self, name: str, shots: Sequence[Shotlike], create: bool = False,
              color: tuple[int, int, int] | None = None) -> dict:
        req = P.Request("teach", name=name, shots=tuple(shot_bytes(s) for s in shots), create=create, color=color)
        return self.call(P.request_message(req))

    def forget(self, name: str) -> dict:
        return self.call({"op": "forget", "name": name})

    def preview(self, name: str, shots: Sequence[Shotlike], image: np.ndarray | bytes) -> np.ndarray:
        """The label map the node would publish for `image` if `name` were taught with `shots` (not committed)."""
        req = P.Request("preview", name=name, shots=tuple(shot_bytes(s) for s in shots), image=_png(image))
        reply = self.call(P.request_message(req))
        return np.frombuffer(reply["data"], np.uint8).reshape(reply["height"], reply["width"])

    def export_pack(self) -> bytes:
        return self.call({"op": "export"})["pack"]

    def import_pack(self, pack: bytes) -> dict:
        return self.call({"op": "import", "pack": pack})

    def close(self) -> None:
        if self.sock is not None:
            self._close()
            self.sock = None

    def __enter__(self) -> "TeachClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
