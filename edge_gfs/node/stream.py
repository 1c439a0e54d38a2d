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
from zmq.utils.monitor import recv_monitor_message

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
MAX_STREAMS = 64  # frame_ids whose last seq is remembered; a publisher inventing ids cannot grow memory


class SeqCounter:
    """Frames lost before they reached the node, counted per stream (frame_id), never by blind subtraction.

    Two cameras on one SUB, or one that restarts at seq 0, are not losses: each frame_id keeps its own last
    seq, and a seq that goes back or jumps past MAX_SEQ_GAP counts as a reset instead of a gap.
    """

    def __init__(self) -> None:
        self.gaps = 0
        self.resets = 0
        self._last: dict[str, int] = {}

    def add(self, stream: str, seq: int) -> None:
        last = self._last.pop(stream, None)  # pop + insert keeps the dict in least-recently-seen order
        if last is not None and seq != last + 1:
            gap = seq - last - 1
            if 0 < gap <= MAX_SEQ_GAP:
                self.gaps += gap
            else:
                self.resets += 1
        self._last[stream] = seq
        if len(self._last) > MAX_STREAMS:
            del self._last[next(iter(self._last))]


# libzmq drops a connection that sent a message over ZMQ_MAXMSGSIZE as a protocol error and, unlike after a
# publisher restart, never reconnects it: one oversized frame left the node deaf for good (issue 13). The
# reader watches its SUB with a monitor and re-creates it on a disconnect, or after IDLE_RESUBSCRIBE_S without
# a frame (a backstop for any other way a connection can die quietly).
IDLE_RESUBSCRIBE_S = 5.0
_WATCHED = zmq.EVENT_DISCONNECTED


def _close_monitored(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    if not sock.closed:
        sock.disable_monitor()
        sock.close(0)
    monitor.close(0)


class ZmqFrameReader(threading.Thread):
    """SUB to a frame publisher; validates headers (cheap) and keeps only the newest frame in the slot."""

    def __init__(self, ctx: zmq.Context, endpoint: str, slot: LatestSlot, stop: threading.Event,
                 limits: P.Limits = P.LIMITS, idle_resubscribe_s: float = IDLE_RESUBSCRIBE_S) -> None:
        super().__init__(name="frames", daemon=True)
        self.ctx, self.endpoint, self.idle_resubscribe_s = ctx, endpoint, idle_resubscribe_s
        self.slot, self.stop, self.limits = slot, stop, limits
        self.bad = 0
        self.seqs = SeqCounter()
        self.resubscribes = 0  # SUB sockets re-created after a dropped connection or a silence
        self.last_frame: float | None = None  # time.time() of the last good frame, for status
        self._last_log = 0.0
        self.sock, self.monitor = self._open()  # created here, used only by this thread from run() on
        self.poller = self._poller()

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes * P.SOCKET_SLACK)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.SUBSCRIBE, P.TOPIC_FRAME)
        monitor = sock.get_monitor_socket(_WATCHED)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError:
            _close_monitored(sock, monitor)
            raise
        return sock, monitor

    def close(self) -> None:
        """Close the sockets (run() does it on exit; Node.close() calls this for a reader that never started)."""
        _close_monitored(self.sock, self.monitor)

    def _resubscribe(self, why: str, level: int = logging.WARNING) -> None:
        log.log(level, "frames from %s: %s; subscribing again", self.endpoint, why)
        self.close()
        self.sock, self.monitor = self._open()
        self.poller = self._poller()
        self.resubscribes += 1

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        return poller

    def run(self) -> None:
        quiet_since = time.monotonic()
        try:
            while not self.stop.is_set():
                ready = dict(self.poller.poll(100))
                if self.monitor in ready and self._dropped():
                    self._resubscribe(f"the connection was dropped (a message over the socket's "
                                      f"{self.sock.getsockopt(zmq.MAXMSGSIZE):,}-byte limit, or the publisher left)")
                    quiet_since = time.monotonic()
                    continue
                if self.sock not in ready:
                    if time.monotonic() - quiet_since > self.idle_resubscribe_s:
                        if self.last_frame is not None:  # warn once per silence, not every few seconds
                            silent = time.time() - self.last_frame
                            self._resubscribe(f"no frame for {silent:.0f} s", logging.WARNING
                                              if silent < 2 * self.idle_resubscribe_s else logging.DEBUG)
                        quiet_since = time.monotonic()
                    continue
                quiet_since = time.monotonic()
                while True:
                    try:
                        parts = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._take(parts)
        finally:
            self.close()

    def _dropped(self) -> bool:
        """Drain the monitor; True when a connection went down."""
        dropped = False
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            dropped |= event["event"] == zmq.EVENT_DISCONNECTED
        return dropped

    def _take(self, parts: list[bytes]) -> None:
        now = time.monotonic()
        try:
            if len(parts) != 2 or parts[0] != P.TOPIC_FRAME:
                raise P.RequestError(P.BAD_REQUEST, f"expected [b'frame', payload], got {len(parts)} parts")
            frame = P.read_frame(parts[1], self.limits)
            self.seqs.add(frame.frame_id, frame.seq)  # it arrived: refused below is `bad`, not a gap as well
            P.check_frame(frame, self.limits)
        except P.RequestError as e:
            self.bad += 1
            if now - self._last_log > 5.0:
                log.warning("bad frame message ignored (%d so far): %s", self.bad, e)
                self._last_log = now
            return
        self.last_frame = time.time()
        self.slot.put(Arrival(frame, now))

    def status(self) -> dict:
        return input_status(self.last_frame, self.bad, self.seqs.gaps, self.seqs.resets, self.resubscribes)


def input_status(last_frame: float | None, bad: int, gaps: int = 0, resets: int = 0, resubscribes: int = 0) -> dict:
    """The input's part of the node's status: counters, and since when it has been silent (a robot's watchdog
    reads `input_state` instead of inferring a dead camera from fps 0)."""
    idle = None if last_frame is None else round(time.time() - last_frame, 1)
    if last_frame is None:
        note = "waiting for the first frame"
    elif idle < 2.0:
        note = "receiving"
    else:
        note = f"no input since {time.strftime('%H:%M:%S', time.localtime(last_frame))} ({idle:.0f} s)"
    return {"input_state": note, "input_idle_s": idle, "input_resubscribes": resubscribes, "drops_seq_gap": gaps,
            "seq_resets": resets, "bad_messages": bad}


class SourceReader(threading.Thread):
    """Camera, video or image folder read in-process at a rate, into the same one-frame slot."""

    def __init__(self, source: Source, slot: LatestSlot, stop: threading.Event, fps: float | None,
                 frame_id: str = "camera") -> None:
        super().__init__(name="source", daemon=True)
        self.source, self.slot, self.stop, self.frame_id = source, slot, stop, frame_id
        self.pacer = Pacer(fps)
        self.bad = 0
        self.last_frame: float | None = None

    def run(self) -> None:
        seq = 0
        try:
            for sf in self.source:
                if self.stop.is_set():
                    break
                self.pacer.wait(self.stop)
                stamp = sf.stamp_ns if sf.stamp_ns is not None else time.time_ns()
                try:
                    frame = P.make_frame(image=sf.image, data=sf.data, encoding=sf.encoding or "bgr8", seq=seq,
                                         stamp_ns=stamp, frame_id=self.frame_id)
                except ValueError as e:
                    self.bad += 1
                    log.warning("unreadable frame %s skipped: %s", sf.name, e)
                    continue
                self.last_frame = time.time()
                self.slot.put(Arrival(frame, time.monotonic()))
                seq += 1
        finally:
            self.source.close()
            self.slot.end()

    def status(self) -> dict:
        return input_status(self.last_frame, self.bad)


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
