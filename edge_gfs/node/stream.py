"""Getting frames to the node without a backlog, and measuring what happens to them.

Why a reader thread and a one-frame slot: the node must always work on the newest frame. ZMQ_CONFLATE does
not work with two-part messages, and draining a socket only between frames lets stale frames wait in kernel
buffers. A reader thread that keeps receiving and overwrites a single slot gives the newest frame at the
moment the segmenter is free; every overwritten frame is a counted drop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import zmq

from edge_gfs.node.sources import Pacer, Source
from edge_gfs.wire import protocol as P

log = logging.getLogger("edge_gfs.node.loop")

STAGES = ("decode", "preprocess", "extractor", "classifier", "upsample_argmax", "publish")


@dataclass
class Arrival:
    frame: P.Frame
    received: float  # time.monotonic() when the node got it: latency_ms counts from here


class LatestSlot:
    """Holds at most one frame, the newest. put() never blocks; take() waits for a frame or the end."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Arrival | None = None
        self.overwritten = 0
        self.ended = False

    def put(self, item: Arrival) -> None:
        with self._cond:
            if self._item is not None:
                self.overwritten += 1
            self._item = item
            self._cond.notify()

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify()

    def take(self, timeout_s: float) -> Arrival | None:
        with self._cond:
            if self._item is None and not self.ended:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item

    @property
    def done(self) -> bool:
        with self._cond:
            return self.ended and self._item is None


# A seq jump larger than this (10 minutes at 30 Hz) is a publisher that restarted or numbers frames its own way,
# not frames lost on the way. Why bounded: counting 2^64-1 -> 0 -> 2^64-1 as gaps pushed `drops` past uint64,
# and packing the status message then killed the node (issue 13).
MAX_SEQ_GAP = 18_000


class ZmqFrameReader(threading.Thread):
    """SUB to a frame publisher; validates headers (cheap) and keeps only the newest frame in the slot."""

    def __init__(self, ctx: zmq.Context, endpoint: str, slot: LatestSlot, stop: threading.Event,
                 limits: P.Limits = P.LIMITS) -> None:
        super().__init__(name="frames", daemon=True)
        self.sock = ctx.socket(zmq.SUB)  # created here, used only by this thread from run() on
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame_bytes * P.SOCKET_SLACK)
        self.sock.setsockopt(zmq.RCVHWM, 4)
        self.sock.setsockopt(zmq.SUBSCRIBE, P.TOPIC_FRAME)
        self.sock.connect(endpoint)
        self.slot, self.stop, self.limits = slot, stop, limits
        self.bad = 0
        self.seq_gaps = 0  # frames missing between consecutive seqs (lost before they reached the node)
        self.seq_resets = 0  # seq went back, or jumped past MAX_SEQ_GAP: a restarted publisher, not lost frames
        self._last_seq: int | None = None
        self._last_log = 0.0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.sock.poll(100):
                    continue
                while True:
                    try:
                        parts = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._take(parts)
        finally:
            self.sock.close(0)

    def _take(self, parts: list[bytes]) -> None:
        now = time.monotonic()
        try:
            if len(parts) != 2 or parts[0] != P.TOPIC_FRAME:
                raise P.RequestError(P.BAD_REQUEST, f"expected [b'frame', payload], got {len(parts)} parts")
            frame = P.parse_frame(parts[1], self.limits)
        except P.RequestError as e:
            self.bad += 1
            if now - self._last_log > 5.0:
                log.warning("bad frame message ignored (%d so far): %s", self.bad, e)
                self._last_log = now
            return
        if self._last_seq is not None and frame.seq != self._last_seq + 1:
            gap = frame.seq - self._last_seq - 1
            if 0 < gap <= MAX_SEQ_GAP:
                self.seq_gaps += gap
            else:
                self.seq_resets += 1
        self._last_seq = frame.seq
        self.slot.put(Arrival(frame, now))


class SourceReader(threading.Thread):
    """Camera, video or image folder read in-process at a rate, into the same one-frame slot."""

    def __init__(self, source: Source, slot: LatestSlot, stop: threading.Event, fps: float | None,
                 frame_id: str = "camera") -> None:
        super().__init__(name="source", daemon=True)
        self.source, self.slot, self.stop, self.frame_id = source, slot, stop, frame_id
        self.pacer = Pacer(fps)
        self.bad = 0
        self.seq_gaps = 0

    def run(self) -> None:
        seq = 0
        try:
            for sf in self.source:
                if self.stop.is_set():
                    break
                self.pacer.wait(self.stop)
                stamp = time.time_ns()
                try:
                    frame = P.make_frame(image=sf.image, data=sf.data, encoding=sf.encoding or "bgr8", seq=seq,
                                         stamp_ns=stamp, frame_id=self.frame_id)
                except ValueError as e:
                    self.bad += 1
                    log.warning("unreadable frame %s skipped: %s", sf.name, e)
                    continue
                self.slot.put(Arrival(frame, time.monotonic()))
                seq += 1
        finally:
            self.source.close()
            self.slot.end()


class Stats:
    """Rolling window of per-frame stage times and latencies for the `status` topic."""

    def __init__(self, window: int = 120) -> None:
        self.frames = 0
        self.done: deque[float] = deque(maxlen=window)  # monotonic completion times
        self.latency: deque[float] = deque(maxlen=window)
        self.stages: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}

    def add(self, stage_ms: dict[str, float], latency_ms: float) -> None:
        self.frames += 1
        self.done.append(time.monotonic())
        self.latency.append(latency_ms)
        for s in STAGES:
            self.stages[s].append(stage_ms.get(s, 0.0))

    def summary(self) -> dict:
        now = time.monotonic()
        recent = [t for t in self.done if now - t <= 5.0]
        span = (now - recent[0]) if len(recent) > 1 else 0.0
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        lat = np.array(self.latency) if self.latency else np.zeros(1)
        return {"fps": round(fps, 2), "frames": self.frames,
                "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
                "latency_p95_ms": round(float(np.percentile(lat, 95)), 2),
                "stage_ms": {s: round(float(np.mean(v)), 2) if v else 0.0 for s, v in self.stages.items()}}
