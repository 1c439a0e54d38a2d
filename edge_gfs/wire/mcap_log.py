"""MCAP files of the node's topics: a rotating writer (`edge-gfs record`) and readers (replay, tests, benches).

Why MCAP: it is the open log format of Foxglove and ROS 2, so a recording opens in the tools robot teams already
use. Topics and schemas are wire/foxglove_msgs.py's, the same as the live view. Messages are stamped with the
frame's stamp (log_time) and the time they were received (publish_time), so a replay can keep the original stamps.

The `mcap` package is imported on first use; without it, the caller gets one line saying what to install.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_gfs.wire import foxglove_msgs as F


def _mcap():
    F.require("mcap")
    import mcap.reader
    import mcap.writer
    return mcap


def part_path(out: Path, index: int, rotating: bool) -> Path:
    """OUT.mcap, or OUT-000.mcap, OUT-001.mcap, ... when the recording rotates (each part is a whole MCAP)."""
    return out.with_name(f"{out.stem}-{index:03d}{out.suffix or '.mcap'}") if rotating else out


def partial(path: Path) -> Path:
    """Where a part is written until it is finished."""
    return path.with_name(path.name + ".part")


@dataclass
class McapLog:
    """Writes messages of the node's topics; starts a new file past `split_bytes` or `split_s` (0 = never).

    Bytes are counted as written (chunks are zstd-compressed by the writer), so a part ends within one chunk
    (1 MiB by default) of the limit. Each part is written as NAME.mcap.part and renamed when its summary is
    written, so a file named .mcap is always whole; a recorder killed mid-part leaves the .part, which
    `mcap recover` repairs."""

    out: Path
    split_bytes: int = 0
    split_s: float = 0.0
    chunk_size: int = 1 << 20
    parts: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    closed_bytes: int = 0  # bytes of finished parts

    def __post_init__(self) -> None:
        self._file = self._writer = None
        self._channels: dict[str, int] = {}
        self._opened = 0.0

    @property
    def rotating(self) -> bool:
        return self.split_bytes > 0 or self.split_s > 0

    def _open(self) -> None:
        m = _mcap()
        path = part_path(self.out, len(self.parts), self.rotating)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(partial(path), "wb")
        self._writer = m.writer.Writer(self._file, chunk_size=self.chunk_size)
        self._writer.start(profile="", library="edge-gfs")
        self._channels = {}
        self._opened = time.monotonic()
        self.parts.append(path)

    def _channel(self, topic: str) -> int:
        if topic not in self._channels:
            spec = F.schema_of(topic)
            schema_id = self._writer.register_schema(spec.name, spec.encoding, spec.data)
            self._channels[topic] = self._writer.register_channel(topic, spec.message_encoding, schema_id)
        return self._channels[topic]

    def current_bytes(self) -> int:
        return self._file.tell() if self._file is not None else 0

    @property
    def total_bytes(self) -> int:
        return self.closed_bytes + self.current_bytes()

    def write(self, topic: str, data: bytes, log_time: int, publish_time: int | None = None) -> None:
        if self._writer is not None and (
                (self.split_bytes and self.current_bytes() >= self.split_bytes)
                or (self.split_s and time.monotonic() - self._opened >= self.split_s)):
            self._finish()
        if self._writer is None:
            self._open()
        seq = self.counts.get(topic, 0)
        self._writer.add_message(self._channel(topic), log_time=int(log_time), data=data,
                                 publish_time=int(publish_time if publish_time is not None else log_time), sequence=seq)
        self.counts[topic] = seq + 1

    def _finish(self) -> None:
        self._writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(partial(self.parts[-1]), self.parts[-1])
        self.closed_bytes += self.parts[-1].stat().st_size
        self._file = self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            self._finish()


# -- reading -----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _message_class(name: str, data: bytes):
    """The protobuf class of a schema from its FileDescriptorSet (what every protobuf MCAP channel carries)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def decode(schema_name: str, schema_encoding: str, schema_data: bytes, data: bytes):
    """A message as a protobuf object (protobuf channels) or a dict (JSON channels)."""
    if schema_encoding == "protobuf":
        return _message_class(schema_name, bytes(schema_data)).FromString(data)
    return json.loads(data)


@dataclass(frozen=True)
class Record:
    topic: str
    log_time: int
    publish_time: int
    message: object  # protobuf message or dict


def read(path: Path | str, topics: list[str] | None = None) -> Iterator[Record]:
    """Every message of `topics` (all when None) in log-time order, decoded."""
    m = _mcap()
    with open(path, "rb") as f:
        reader = m.reader.make_reader(f)
        for schema, channel, msg in reader.iter_messages(topics=topics):
            yield Record(channel.topic, msg.log_time, msg.publish_time,
                         decode(schema.name, schema.encoding, schema.data, msg.data))


def raw_messages(path: Path | str, topics: list[str] | None = None) -> Iterator[tuple[str, int, int, bytes]]:
    """(topic, log_time, publish_time, bytes) of every message, not decoded: for sizes and copies."""
    m = _mcap()
    with open(path, "rb") as f:
        for _schema, channel, msg in m.reader.make_reader(f).iter_messages(topics=topics):
            yield channel.topic, msg.log_time, msg.publish_time, msg.data


def stamp_ns(image) -> int:
    """A foxglove image message's timestamp in nanoseconds."""
    return int(image.timestamp.seconds) * 1_000_000_000 + int(image.timestamp.nanos)


def ids_of(raw) -> np.ndarray:
    """A RawImage mono8 (the /labels/ids topic) as an (H, W) uint8 array."""
    arr = np.frombuffer(raw.data, np.uint8).reshape(raw.height, raw.step)
    return arr[:, :raw.width]


@dataclass(frozen=True)
class ReplayImage:
    """One image of a recording, as a frame source yields it."""

    stamp_ns: int
    frame_id: str
    data: bytes | None = None  # JPEG/PNG bytes (CompressedImage)
    encoding: str | None = None
    image: np.ndarray | None = None  # BGR pixels (RawImage rgb8/bgr8/mono8)


def image_topic(path: Path | str) -> str:
    """The topic a replay reads: /camera/image if present, else the first CompressedImage or RawImage topic that is
    not a label map. ValueError (one line) when the file has none."""
    m = _mcap()
    try:
        with open(path, "rb") as f:
            summary = m.reader.make_reader(f).get_summary()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # the mcap package raises several types for a file that is not MCAP
        raise ValueError(f"{path} is not a readable MCAP file ({e})") from None
    if summary is None:
        raise ValueError(f"{path} has no summary section (an unfinished recording?); `mcap recover` can repair it")
    images = {}
    for ch in summary.channels.values():
        schema = summary.schemas.get(ch.schema_id)
        if schema is not None and schema.name in ("foxglove.CompressedImage", "foxglove.RawImage") \
                and not ch.topic.startswith("/labels/"):
            images[ch.topic] = schema.name
    if F.TOPIC_IMAGE in images:
        return F.TOPIC_IMAGE
    if not images:
        raise ValueError(f"{path} has no image topic (foxglove.CompressedImage or RawImage)")
    return sorted(images)[0]


def replay_images(path: Path | str, topic: str) -> Iterator[ReplayImage]:
    """The images of one topic in log-time order: compressed bytes as they are, raw pixels as BGR."""
    import cv2
    for rec in read(path, [topic]):
        msg = rec.message
        if hasattr(msg, "format"):
            fmt = {"jpg": "jpeg"}.get(msg.format, msg.format)
            yield ReplayImage(stamp_ns(msg), msg.frame_id, data=bytes(msg.data), encoding=fmt)
            continue
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
        channels = {"mono8": 1, "rgb8": 3, "bgr8": 3}.get(msg.encoding)
        if channels is None:
            continue  # an encoding the node does not take (16-bit, yuv): skipped
        pixels = rows[:, :msg.width * channels].reshape(msg.height, msg.width, channels)
        conv = {"mono8": cv2.COLOR_GRAY2BGR, "rgb8": cv2.COLOR_RGB2BGR}.get(msg.encoding)
        bgr = cv2.cvtColor(pixels, conv) if conv is not None else pixels.copy()
        yield ReplayImage(stamp_ns(msg), msg.frame_id, image=bgr)


def recorded_fps(path: Path | str, topic: str) -> float | None:
    """The recording's rate on a topic, from its first and last log times (None for fewer than two messages)."""
    m = _mcap()
    first = last = None
    n = 0
    with open(path, "rb") as f:
        for _schema, _channel, msg in m.reader.make_reader(f).iter_messages(topics=[topic]):
            first = msg.log_time if first is None else first
            last, n = msg.log_time, n + 1
    span = (last - first) / 1e9 if n > 1 else 0.0
    return (n - 1) / span if span > 0 else None
