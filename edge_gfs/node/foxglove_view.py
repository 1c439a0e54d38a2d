"""`edge-gfs run --foxglove [HOST:PORT]`: the node's topics served live over the Foxglove WebSocket protocol.

Why a thread of its own: the stream thread hands over (frame, pixels, labels, classes) as one reference into a
one-item slot (stream.LatestSlot) and goes on; encoding and sending happen here. A slow viewer therefore costs
the stream nothing but that hand-over, and when the viewer is slower than the stream it simply sees fewer frames.
With no client subscribed, nothing is handed over at all (`Channel.has_sinks()` is False), so an idle live view
costs a few attribute reads per frame. The SDK itself queues per client and drops the oldest message when a
client falls behind (message_backlog_size), so a stalled socket never blocks this thread either.

Messages are built by wire/foxglove_msgs.py, the same functions `edge-gfs record` writes to MCAP.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from edge_gfs.node.config import StartupError
from edge_gfs.node.stream import LatestSlot
from edge_gfs.ui.overlay import palette_rgb
from edge_gfs.wire import foxglove_msgs as F
from edge_gfs.wire import protocol as P

log = logging.getLogger("edge_gfs.node")

IMAGE_TOPICS = (F.TOPIC_IMAGE, F.TOPIC_COLOR, F.TOPIC_IDS, F.TOPIC_LEGEND)
# Messages queued per client before the SDK drops the oldest. Its default, 1024, is ~700 MB of 360x480 label
# images for one stalled client; 64 is about 20 frames of all three image topics (~16 MB).
BACKLOG = 64


@dataclass(frozen=True)
class Shown:
    """One segmented frame, as the stream thread hands it over (references only, nothing copied)."""

    frame: P.Frame
    bgr: np.ndarray
    labels: np.ndarray
    classes: list[dict]


class FoxgloveView:
    """A Foxglove WebSocket server in its own foxglove.Context (so nothing else the process logs leaks into it)."""

    def __init__(self, address: str) -> None:
        host, port = F.parse_address(address)  # checked, with its message, by NodeConfig.check before the model loads
        fox = F.require()
        self.ctx = fox.Context()
        self.channels = {topic: self._channel(fox, topic) for topic in F.CHANNELS}
        try:
            self.server = fox.start_server(name="edge-gfs", host=host, port=port, context=self.ctx,
                                           message_backlog_size=BACKLOG)
        except Exception as e:  # the SDK raises its own error type for a taken port
            raise StartupError(f"cannot serve --foxglove {host}:{port}: {e} (port taken? choose another)") from None
        self.address = f"{host}:{self.server.port}"
        self.slot = LatestSlot()
        self.stop = threading.Event()
        self.sent = 0  # frames encoded and sent (0 while no client watches: the status topic shows it)
        self._classes: list[dict] | None = None
        self._lut: tuple[list[dict], np.ndarray] | None = None  # (the class list it was built from, RGB table)
        self._thread = threading.Thread(target=self._run, name="foxglove", daemon=True)
        self._thread.start()
        log.info("foxglove: serving %s on ws://%s (open it in Foxglove: Open connection > Foxglove WebSocket; "
                 "layout docs/foxglove-layout.json)", ", ".join(F.CHANNELS), self.address)

    def _channel(self, fox, topic: str):
        spec = F.schema_of(topic)
        schema = fox.Schema(name=spec.name, encoding=spec.encoding, data=spec.data)
        return fox.Channel(topic, schema=schema, message_encoding=spec.message_encoding, context=self.ctx)

    # -- stream thread: cheap, never blocks ------------------------------------------------------------------
    def watched(self) -> bool:
        """True when some client subscribes to an image topic (the only ones that cost encoding)."""
        return any(self.channels[t].has_sinks() for t in IMAGE_TOPICS)

    def offer(self, frame: P.Frame, bgr: np.ndarray, labels: np.ndarray, classes: list[dict]) -> None:
        if self.watched():
            self.slot.put(Shown(frame, bgr, labels, classes))

    def classes(self, msg: dict) -> None:
        """The `classes` message, plus teach/forget events when the table changed (JSON: cheap, always sent)."""
        ch = self.channels[F.TOPIC_CLASSES]
        events = F.class_events(self._classes, msg["classes"], msg["version"])
        self._classes = msg["classes"]
        if ch.has_sinks():
            ch.log(F.json_bytes(msg))
        if events and self.channels[F.TOPIC_EVENTS].has_sinks():
            for e in events:
                self.channels[F.TOPIC_EVENTS].log(F.json_bytes(e))

    def status(self, msg: dict) -> None:
        ch = self.channels[F.TOPIC_STATUS]
        if ch.has_sinks():
            ch.log(F.json_bytes(msg))

    # -- own thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stop.is_set():
            shown = self.slot.take(0.2)
            if shown is None:
                continue
            try:
                self._send(shown)
            except Exception:  # a bad frame must not end the live view
                log.exception("foxglove: frame %d not sent", shown.frame.seq)

    def _send(self, s: Shown) -> None:
        stamp, fid, ch = s.frame.stamp_ns, s.frame.frame_id, self.channels
        if ch[F.TOPIC_IMAGE].has_sinks():
            ch[F.TOPIC_IMAGE].log(F.camera_image(s.frame, s.bgr), log_time=stamp)
        if ch[F.TOPIC_COLOR].has_sinks():
            if self._lut is None or self._lut[0] is not s.classes:  # one class list per snapshot: rebuilt on teach
                self._lut = (s.classes, palette_rgb(s.classes))
            lut = self._lut[1]
            ch[F.TOPIC_COLOR].log(F.label_color(stamp, fid, s.labels, lut), log_time=stamp)
        if ch[F.TOPIC_IDS].has_sinks():
            ch[F.TOPIC_IDS].log(F.label_ids(stamp, fid, s.labels), log_time=stamp)
        if ch[F.TOPIC_LEGEND].has_sinks():
            ch[F.TOPIC_LEGEND].log(F.legend(stamp, s.labels, s.classes), log_time=stamp)
        self.sent += 1

    def close(self) -> None:
        self.stop.set()
        self._thread.join(2.0)
        try:
            self.server.stop()
        except Exception:
            pass
