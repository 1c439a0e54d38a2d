"""The node's topics as Foxglove messages: one table of channels and pure functions that build each message's bytes.

Why one module for both the live view (node/foxglove_view.py) and the recorder (wire/mcap_log.py, `edge-gfs
record`): a panel laid out on the live node must work unchanged on a recording, so both write the same topics
with the same schemas. Images use Foxglove's well-known protobuf schemas (CompressedImage, RawImage), encoded by
the official `foxglove-sdk`; the class table, status and teach/forget events are JSON with a JSON schema.

Nothing here opens a socket or a file; `foxglove` is imported on first use (see `require`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from edge_gfs.wire import protocol as P

INSTALL_HINT = "pip install 'edge-gfs[foxglove]'"

TOPIC_IMAGE = "/camera/image"  # foxglove.CompressedImage: the frame's JPEG/PNG bytes as they came
TOPIC_COLOR = "/labels/color"  # foxglove.RawImage rgb8: label map in the project's palette
TOPIC_IDS = "/labels/ids"  # foxglove.RawImage mono8: class ids (255 = unknown), what downstream code reads
TOPIC_LEGEND = "/labels/legend"  # foxglove.ImageAnnotations: the classes in this frame, in their colours
TOPIC_CLASSES = "/classes"  # JSON: the `classes` message (version, ids, names, colours, kinds, shots)
TOPIC_STATUS = "/status"  # JSON: the `status` message
TOPIC_EVENTS = "/events"  # JSON: teach/forget events derived from class-table changes

_CLASSES_SCHEMA = {
    "title": "edge_gfs.Classes", "type": "object",
    "properties": {"version": {"type": "integer"}, "classes": {"type": "array", "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                                         "kind": {"type": "string"}, "shots": {"type": "integer"},
                                         "color": {"type": "array", "items": {"type": "integer"}}}}}}}
_STATUS_SCHEMA = {"title": "edge_gfs.Status", "type": "object",
                  "properties": {"fps": {"type": "number"}, "frames": {"type": "integer"},
                                 "latency_p50_ms": {"type": "number"}, "drops": {"type": "integer"},
                                 "classes_version": {"type": "integer"}}}
_EVENT_SCHEMA = {"title": "edge_gfs.ClassEvent", "type": "object",
                 "properties": {"event": {"type": "string", "enum": ["teach", "forget"]}, "name": {"type": "string"},
                                "id": {"type": "integer"}, "shots": {"type": "integer"},
                                "version": {"type": "integer"}}}

# topic -> foxglove.messages class name, or a JSON schema
CHANNELS: dict[str, str | dict] = {
    TOPIC_IMAGE: "CompressedImage", TOPIC_COLOR: "RawImage", TOPIC_IDS: "RawImage", TOPIC_LEGEND: "ImageAnnotations",
    TOPIC_CLASSES: _CLASSES_SCHEMA, TOPIC_STATUS: _STATUS_SCHEMA, TOPIC_EVENTS: _EVENT_SCHEMA,
}


DEFAULT_ADDRESS = "127.0.0.1:8765"  # loopback, like the teach socket


def parse_address(value: str) -> tuple[str, int]:
    """HOST:PORT, :PORT or PORT -> (host, port); loopback when the host is left out (ValueError otherwise)."""
    host, _, port = value.rpartition(":") if ":" in value else ("", "", value)
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"takes HOST:PORT (default {DEFAULT_ADDRESS}), got {value!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"port must be 0..65535, got {number}")
    return (host.strip("[]") or "127.0.0.1"), number


class FoxgloveMissing(ImportError):
    """foxglove-sdk (or mcap) is not installed: the message says how to install it."""


def require(what: str = "foxglove"):
    """Import `foxglove` (or `mcap`) on first use; a missing package is one line telling the user what to run."""
    try:
        return __import__(what)
    except ImportError:
        raise FoxgloveMissing(f"this needs the `{what}` package: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class SchemaSpec:
    """What an MCAP file (or a Foxglove channel) needs to know about a topic."""

    name: str
    encoding: str  # schema encoding: protobuf | jsonschema
    data: bytes
    message_encoding: str  # protobuf | json


def schema_of(topic: str) -> SchemaSpec:
    kind = CHANNELS[topic]
    if isinstance(kind, dict):
        return SchemaSpec(kind["title"], "jsonschema", json.dumps(kind).encode(), "json")
    schema = getattr(require().messages, kind).get_schema()
    return SchemaSpec(schema.name, schema.encoding, bytes(schema.data), "protobuf")


def _stamp(stamp_ns: int):
    return require().messages.Timestamp(sec=int(stamp_ns // 1_000_000_000), nsec=int(stamp_ns % 1_000_000_000))


def image_format(frame: P.Frame) -> str | None:
    """CompressedImage format of a frame's own bytes, or None when they are raw pixels (bgr8/rgb8)."""
    return frame.encoding if frame.encoding in ("jpeg", "png") else None


def camera_image(frame: P.Frame, bgr: np.ndarray | None = None) -> bytes:
    """CompressedImage of a frame: its JPEG/PNG bytes as they are (no re-encoding), raw pixels as JPEG."""
    fmt, data = image_format(frame), frame.data
    if fmt is None:
        pixels = bgr if bgr is not None else P.decode_frame(frame)
        fmt, data = "jpeg", P.encode_jpeg(pixels, 90)
    msg = require().messages.CompressedImage(timestamp=_stamp(frame.stamp_ns), frame_id=frame.frame_id,
                                             data=data, format=fmt)
    return msg.encode()


def raw_image(stamp_ns: int, frame_id: str, pixels: np.ndarray, encoding: str) -> bytes:
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    msg = require().messages.RawImage(timestamp=_stamp(stamp_ns), frame_id=frame_id, width=w, height=h,
                                      encoding=encoding, step=w * channels,
                                      data=np.ascontiguousarray(pixels, np.uint8).tobytes())
    return msg.encode()


def label_ids(stamp_ns: int, frame_id: str, labels: np.ndarray) -> bytes:
    """RawImage mono8 of the class ids: byte for byte the `labels` message's data."""
    return raw_image(stamp_ns, frame_id, labels, "mono8")


def label_color(stamp_ns: int, frame_id: str, labels: np.ndarray, lut: np.ndarray) -> bytes:
    """RawImage rgb8 of the label map in the class table's colours (what `edge-gfs view` draws)."""
    return raw_image(stamp_ns, frame_id, lut[labels], "rgb8")


LEGEND_ROW_PX = 18


def legend(stamp_ns: int, labels: np.ndarray, classes: list[dict]) -> bytes:
    """ImageAnnotations listing the classes present in this label map (id, name, share of pixels), each on its
    class colour, one row each from the top-left corner: the legend drawn on the image in Foxglove's Image panel."""
    fox = require()
    m = fox.messages
    counts = np.bincount(labels.ravel(), minlength=256)
    total = max(1, labels.size)
    by_id = {int(c["id"]): c for c in classes}
    texts = []
    for cid in np.flatnonzero(counts):
        c = by_id.get(int(cid))
        name = c["name"] if c is not None else ("unknown" if cid == 255 else f"class {cid}")
        r, g, b = (tuple(int(v) for v in c["color"]) if c is not None and "color" in c else (0, 0, 0))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 128
        texts.append(m.TextAnnotation(
            timestamp=_stamp(stamp_ns), position=m.Point2(x=4.0, y=float(LEGEND_ROW_PX * (len(texts) + 1))),
            text=f"{cid} {name} {100.0 * counts[cid] / total:.0f}%", font_size=14.0,
            text_color=m.Color(r=1.0, g=1.0, b=1.0, a=1.0) if dark else m.Color(r=0.0, g=0.0, b=0.0, a=1.0),
            background_color=m.Color(r=r / 255, g=g / 255, b=b / 255, a=0.85)))
    return m.ImageAnnotations(texts=texts).encode()


def json_bytes(msg: dict) -> bytes:
    """JSON of a node message; bytes fields (none today) would not survive, so they are dropped."""
    return json.dumps({k: v for k, v in msg.items() if not isinstance(v, (bytes, bytearray))}).encode()


def class_events(before: list[dict] | None, after: list[dict], version: int) -> list[dict]:
    """Teach and forget events implied by one class-table change: a new class or more shots is a teach; a
    class gone is a forget. Why derived: the node's PUB topics carry the table, not the requests, and a recorder
    must not need the teach socket. `before` None (the first table seen) implies no events."""
    if before is None:
        return []
    old = {c["name"]: c for c in before}
    new = {c["name"]: c for c in after}
    events = [{"event": "teach", "name": n, "id": int(c["id"]), "shots": int(c.get("shots", 0)), "version": version}
              for n, c in new.items() if n not in old or int(c.get("shots", 0)) != int(old[n].get("shots", 0))]
    events += [{"event": "forget", "name": n, "id": int(c["id"]), "shots": 0, "version": version}
               for n, c in old.items() if n not in new]
    return events
