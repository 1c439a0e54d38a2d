"""The node's wire contract (../shared/spec/node.md) as msgpack codecs and strict validators.

Everything that crosses a socket is checked here, before any model code sees it, so the node can answer
every malformed, oversized or undecodable input with an error code instead of crashing, and so the
client and the node can never disagree about a field. Pure functions only: no sockets, no model.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import cv2
import msgpack
import numpy as np

from edge_gfs.core.labels import mask_problem, support_mode

VERSION = 1

# the node's default endpoints (node.md): frames in, label maps out, teach requests
DEFAULT_FRAMES = "tcp://127.0.0.1:5555"
DEFAULT_LABELS = "tcp://127.0.0.1:5556"
DEFAULT_TEACH = "tcp://127.0.0.1:5557"

# topics of the PUB sockets (first frame of each two-frame message)
TOPIC_FRAME, TOPIC_LABELS, TOPIC_CLASSES, TOPIC_STATUS = b"frame", b"labels", b"classes", b"status"

FRAME_ENCODINGS = ("jpeg", "png", "bgr8", "rgb8")
OPS = ("ping", "list", "teach", "forget", "preview", "export", "import")

# error codes of teach replies; the first eight are the contract's, model_mismatch is ours (class packs)
BAD_REQUEST, BAD_IMAGE, BAD_MASK, TOO_LARGE = "bad_request", "bad_image", "bad_mask", "too_large"
UNKNOWN_CLASS, NAME_TAKEN, LIMIT, INTERNAL = "unknown_class", "name_taken", "limit", "internal"
MODEL_MISMATCH = "model_mismatch"
ERROR_CODES = (BAD_REQUEST, BAD_IMAGE, BAD_MASK, TOO_LARGE, UNKNOWN_CLASS, NAME_TAKEN, LIMIT, INTERNAL,
               MODEL_MISMATCH)


@dataclass(frozen=True)
class Limits:
    """Caps on what one message may ask for. Request-sized excess is `too_large`; registry capacity is `limit`.

    The sockets' ZMQ_MAXMSGSIZE sits above the byte caps (SOCKET_SLACK), so a message a little too big still
    gets a `too_large` reply instead of a silent disconnect; a grossly oversized one is cut off by ZeroMQ
    before it is ever buffered whole.
    """

    max_teach_bytes: int = 64 << 20  # one teach/preview/import request
    max_frame_bytes: int = 32 << 20  # one frame message
    max_shots_per_request: int = 16
    max_shots_per_class: int = 64
    max_novel_classes: int = 100
    max_image_side: int = 8192
    max_image_pixels: int = 4096 * 4096  # a teach/preview image
    max_frame_pixels: int = 1920 * 1200  # a streamed frame or a preview: decode + upsample stay a few frames' cost
    max_request_pixels: int = 2 * 4096 * 4096  # all images of one teach/preview request together
    max_name_chars: int = 64
    max_frame_id_chars: int = 256


LIMITS = Limits()
SOCKET_SLACK = 2  # socket MAXMSGSIZE = SOCKET_SLACK x the protocol cap


MAX_MESSAGE_CHARS = 300  # an error message (reply and log line) never carries more, whatever the client sent


def clip(value: object, chars: int = 40) -> str:
    """Client input for a message, cut to about `chars`: replies and logs name what was wrong without echoing
    it back. Containers show only their type: repr() of a big one would cost as much as the input is big."""
    if isinstance(value, (str, bytes, bytearray)):
        unit = "chars" if isinstance(value, str) else "bytes"
        return repr(value[:chars]) + (f"... ({len(value)} {unit})" if len(value) > chars else "")
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return repr(value)[:chars]
    return type(value).__name__


class RequestError(Exception):
    """A refusal with a contract error code; the node turns it into {"ok": false, "error": {...}}.

    The message is cut to MAX_MESSAGE_CHARS here, once, so no code path can turn a 60 MB request into a 60 MB
    reply or log line (issue 13: an echoed unknown `op` did exactly that).
    """

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# -- msgpack ---------------------------------------------------------------------------------------------------
def pack(msg: dict) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def _msgpack_problem(e: Exception) -> str:
    """What a user can fix, from msgpack's exception (whose own texts are terse and sometimes empty)."""
    if isinstance(e, msgpack.ExtraData):
        return "has bytes after its first msgpack object (send one map per message)"
    if isinstance(e, msgpack.StackError):
        return "nests msgpack containers too deeply"
    if isinstance(e, msgpack.FormatError):
        return "is not msgpack (an invalid type byte)"
    if isinstance(e, UnicodeDecodeError):
        return "has a msgpack string that is not UTF-8 (send binary data as bin, not str)"
    text = str(e)
    if "incomplete" in text or isinstance(e, msgpack.OutOfData):
        return "ends in the middle of a msgpack object (truncated?)"
    if "map key" in text:
        return "has a map key that is not a string"
    return f"is not valid msgpack ({type(e).__name__})"


def unpack_map(data: bytes, what: str = "message") -> dict:
    """msgpack bytes -> dict with str keys; anything else is a bad_request, never an exception of msgpack's."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises a zoo of types for garbage input
        raise RequestError(BAD_REQUEST, f"{what} {_msgpack_problem(e)}") from None
    if not isinstance(obj, dict):
        raise RequestError(BAD_REQUEST, f"{what} must be a msgpack map, got {type(obj).__name__}")
    return obj


def error_reply(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}


# -- field checks ----------------------------------------------------------------------------------------------
_TYPE_NAMES = {int: "an integer", str: "a string", bytes: "bytes", bool: "a boolean", list: "a list",
               dict: "a map", float: "a number"}


def _get(msg: dict, key: str, typ: type, required: bool = True, what: str = "message"):
    if key not in msg or msg[key] is None:
        if required:
            raise RequestError(BAD_REQUEST, f"{what} needs field {key!r} ({_TYPE_NAMES[typ]})")
        return None
    v = msg[key]
    ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
    if typ is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok:
        raise RequestError(BAD_REQUEST, f"field {key!r} of {what} must be {_TYPE_NAMES[typ]}, got {type(v).__name__}")
    return v


def check_name(name: object, limits: Limits = LIMITS) -> str:
    """Class names are what operators type: printable, trimmed, 1..max chars; matching is case-insensitive."""
    if not isinstance(name, str):
        raise RequestError(BAD_REQUEST, f"the class name must be a string, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise RequestError(BAD_REQUEST, "the class name is empty")
    if len(name) > limits.max_name_chars:
        raise RequestError(BAD_REQUEST, f"the class name is longer than {limits.max_name_chars} characters")
    if not name.isprintable():
        raise RequestError(BAD_REQUEST, "the class name has control characters")
    return name


# -- images ----------------------------------------------------------------------------------------------------
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def image_format(data: bytes) -> str | None:
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # libpng insists that IHDR is the first chunk, so its size is the size the decoder will allocate
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# JPEG markers that carry no length (libjpeg's read_markers): TEM and RST0..7; SOI is only valid first
_JPEG_BARE = {0x01, *range(0xD0, 0xD8)}
# start-of-frame markers hold the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


# libjpeg's next_marker(): skip any bytes up to an FF, skip fill FFs, and an FF/00 pair is no marker (search on);
# so a marker is the first byte other than 00 and FF that follows an FF. As one regex (no repetition, hence linear)
# so a 32 MB run of stray bytes, fill bytes or FF/00 pairs is scanned in C, not byte by byte in Python.
_NEXT_MARKER = re.compile(rb"\xff([^\x00\xff])")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size libjpeg will decode, found the way libjpeg finds it.

    Why mirror libjpeg and not the file format: libjpeg's next_marker() skips stray bytes before a marker
    (with a warning) and skips FF/00 pairs, so a parser that stops at the first unexpected byte reads no size
    while libjpeg goes on to allocate a 65000x65000 image (issue 13: a 630-byte file cost 5 GB). Anything
    libjpeg would reject (a marker length < 2, scan data before a frame header, EOI first) is None here.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while (found := _NEXT_MARKER.search(data, i)) is not None:
        marker, i = found.group(1)[0], found.end()
        if marker in _JPEG_BARE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second SOI, EOI or scan data before any frame header
            return None
        if i + 2 > n:
            return None
        seg_len = struct.unpack(">H", data[i:i + 2])[0]
        if seg_len < 2:
            return None
        if marker in _JPEG_SOF:
            if i + 7 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 3:i + 7])
            return w, h
        i += seg_len
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding: lets the node refuse a decompression bomb
    before allocating its pixels. None when no size can be read; callers then refuse the image unread."""
    fmt = image_format(data)
    if fmt == "png":
        return _png_size(data)
    if fmt == "jpeg":
        return _jpeg_size(data)
    return None


def _check_dims(w: int, h: int, what: str, limits: Limits, max_pixels: int | None = None) -> None:
    max_pixels = max_pixels or limits.max_image_pixels
    if w <= 0 or h <= 0:
        raise RequestError(BAD_IMAGE, f"{what} has size {w}x{h}")
    if w > limits.max_image_side or h > limits.max_image_side or w * h > max_pixels:
        raise RequestError(TOO_LARGE, f"{what} is {w}x{h}; the node takes at most {max_pixels} pixels "
                                      f"and {limits.max_image_side} per side")


def _check_encoded(data: bytes, what: str, code: str, formats: tuple[str, ...], limits: Limits,
                   wrong_format: str, max_pixels: int | None = None) -> tuple[int, int]:
    """Type, format and header size before decoding, so a huge, foreign or unreadable payload is refused unread.
    Returns the header's (width, height)."""
    if not isinstance(data, (bytes, bytearray)):
        raise RequestError(BAD_REQUEST, f"{what} must be bytes")
    if image_format(data) not in formats:
        raise RequestError(code, f"{what} {wrong_format}")
    size = header_size(data)
    if size is None:
        raise RequestError(code, f"{what} has no readable size in its header (corrupt or truncated file)")
    _check_dims(size[0], size[1], what, limits, max_pixels)
    return size


def _imdecode(data: bytes, flags: int, what: str, code: str) -> np.ndarray | None:
    """cv2.imdecode with OpenCV's own refusals (its pixel limit, edge_gfs.DECODER_MAX_PIXELS) as RequestErrors."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        raise RequestError(code, f"{what} was refused by the image decoder (too large or malformed)") from None


def decode_image(data: bytes, what: str = "image", limits: Limits = LIMITS, max_pixels: int | None = None,
                 expect_wh: tuple[int, int] | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> BGR uint8 (H,W,3). The size is checked from the header before any pixel is decoded;
    `expect_wh` refuses a header that disagrees with a size the message declared, also before decoding."""
    w, h = image_size(data, what, limits, max_pixels)
    if expect_wh is not None and (w, h) != tuple(expect_wh):
        raise RequestError(BAD_IMAGE, f"{what} says {expect_wh[0]}x{expect_wh[1]} but its header says {w}x{h}")
    img = _imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, what, BAD_IMAGE)  # the header's size
    if img is None:
        raise RequestError(BAD_IMAGE, f"{what} could not be decoded (corrupt or truncated)")
    if (img.shape[1], img.shape[0]) != (w, h):  # cannot happen while the header reader mirrors the decoder
        raise RequestError(BAD_IMAGE, f"{what} decodes to {img.shape[1]}x{img.shape[0]}, its header says {w}x{h}")
    return img


def _decode_png(data: bytes, what: str, code: str, limits: Limits, image_hw: tuple[int, int]) -> np.ndarray:
    """A mask or label map: refused unread unless its header says exactly the image's size."""
    w, h = _check_encoded(data, what, code, ("png",), limits, "must be a PNG file (lossless)")
    if (h, w) != tuple(image_hw):
        raise RequestError(code, f"{what} is {w}x{h} but the image is {image_hw[1]}x{image_hw[0]}: they must match")
    arr = _imdecode(data, cv2.IMREAD_UNCHANGED, what, code)
    if arr is None or arr.shape[:2] != (h, w):
        raise RequestError(code, f"{what} could not be decoded (corrupt or truncated PNG)")
    return arr


def decode_mask(data: bytes, image_hw: tuple[int, int], what: str = "mask", limits: Limits = LIMITS) -> np.ndarray:
    """PNG -> bool (H,W), True = the taught class. Any channel nonzero counts, so an RGB(A) paint works too."""
    arr = _decode_png(data, what, BAD_MASK, limits, image_hw)
    mask = arr != 0 if arr.ndim == 2 else np.any(arr != 0, axis=2)
    problem = mask_problem(mask, what)
    if problem:
        raise RequestError(BAD_MASK, problem)
    return mask


def decode_label_map(data: bytes, image_hw: tuple[int, int], what: str = "labels", limits: Limits = LIMITS) -> np.ndarray:
    """PNG -> uint8 (H,W) class ids (255 = ignore): the optional full label map of a shot."""
    arr = _decode_png(data, what, BAD_MASK, limits, image_hw)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise RequestError(BAD_MASK, f"{what} must be a single-channel 8-bit PNG of class ids")
    return arr


def image_size(data: bytes, what: str = "image", limits: Limits = LIMITS, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of a JPEG/PNG from its header, within the limits: what a request will cost, before any
    pixel is decoded."""
    return _check_encoded(data, what, BAD_IMAGE, ("jpeg", "png"), limits, "is not a JPEG or PNG file", max_pixels)


def check_request_pixels(sizes: list[tuple[int, int]], limits: Limits = LIMITS) -> None:
    """All images of one request together: 16 shots of 4096x4096 once took 1 GB and 4 s just to be refused."""
    total = sum(w * h for w, h in sizes)
    if total > limits.max_request_pixels:
        raise RequestError(TOO_LARGE, f"the request's images hold {total:,} pixels together; at most "
                                      f"{limits.max_request_pixels:,} (send fewer or smaller shots per request)")


def encode_png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(bgr: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


# -- frame topic -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    seq: int
    stamp_ns: int
    frame_id: str
    encoding: str
    width: int
    height: int
    data: bytes


def frame_message(frame: Frame) -> dict:
    return {"v": VERSION, "seq": frame.seq, "stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id,
            "encoding": frame.encoding, "width": frame.width, "height": frame.height, "data": frame.data}


def parse_frame(payload: bytes, limits: Limits = LIMITS) -> Frame:
    """Validate a `frame` payload (cheap: no pixel decoding; that is the node's measured decode stage)."""
    return check_frame(read_frame(payload, limits), limits)


def read_frame(payload: bytes, limits: Limits = LIMITS) -> Frame:
    """A `frame` payload's fields with their types checked, sizes not yet: the node's reader notes the seq of a
    frame it then refuses, so a refused frame counts as bad, not also as a drop at the next seq."""
    if len(payload) > limits.max_frame_bytes:
        raise RequestError(TOO_LARGE, f"frame message of {len(payload)} bytes exceeds {limits.max_frame_bytes}")
    msg = unpack_map(payload, "frame")
    w = "frame"
    v = _get(msg, "v", int, what=w)
    if v != VERSION:
        raise RequestError(BAD_REQUEST, f"frame version {v} is not supported (this node speaks v{VERSION})")
    enc = _get(msg, "encoding", str, what=w)
    if enc not in FRAME_ENCODINGS:
        raise RequestError(BAD_REQUEST, f"frame encoding {clip(enc)} is not one of {', '.join(FRAME_ENCODINGS)}")
    frame = Frame(seq=_get(msg, "seq", int, what=w), stamp_ns=_get(msg, "stamp_ns", int, what=w),
                  frame_id=_get(msg, "frame_id", str, what=w), encoding=enc,
                  width=_get(msg, "width", int, what=w), height=_get(msg, "height", int, what=w),
                  data=_get(msg, "data", bytes, what=w))
    if len(frame.frame_id) > limits.max_frame_id_chars:
        raise RequestError(BAD_REQUEST, f"frame_id longer than {limits.max_frame_id_chars} characters")
    return frame


def check_frame(frame: Frame, limits: Limits = LIMITS) -> Frame:
    """The declared size within --max-frame-pixels, and raw data of exactly that size."""
    _check_dims(frame.width, frame.height, "frame", limits, limits.max_frame_pixels)
    if frame.encoding in ("bgr8", "rgb8") and len(frame.data) != frame.width * frame.height * 3:
        raise RequestError(BAD_IMAGE, f"{frame.encoding} frame of {frame.width}x{frame.height} needs "
                                      f"{frame.width * frame.height * 3} bytes, got {len(frame.data)}")
    return frame


def decode_frame(frame: Frame, limits: Limits = LIMITS) -> np.ndarray:
    """Frame -> BGR uint8 of exactly the declared size (the label map's size is the frame's)."""
    if frame.encoding == "bgr8":
        return np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3)
    if frame.encoding == "rgb8":
        return cv2.cvtColor(np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3), cv2.COLOR_RGB2BGR)
    fmt = image_format(frame.data)
    if fmt != frame.encoding:
        raise RequestError(BAD_IMAGE, f"frame says {frame.encoding} but its data is {fmt or 'neither JPEG nor PNG'}")
    return decode_image(frame.data, "frame", limits, limits.max_frame_pixels, (frame.width, frame.height))


def make_frame(image: np.ndarray | None = None, data: bytes | None = None, encoding: str = "jpeg", seq: int = 0,
               stamp_ns: int = 0, frame_id: str = "camera", quality: int = 90) -> Frame:
    """A Frame from a BGR image (encoded here) or from already-encoded bytes (sent as they are)."""
    if encoding not in FRAME_ENCODINGS:
        raise ValueError(f"encoding must be one of {FRAME_ENCODINGS}")
    if data is None:
        if image is None:
            raise ValueError("give an image or encoded data")
        h, w = image.shape[:2]
        if encoding == "jpeg":
            data = encode_jpeg(image, quality)
        elif encoding == "png":
            data = encode_png(image)
        elif encoding == "bgr8":
            data = np.ascontiguousarray(image).tobytes()
        else:
            data = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).tobytes()
    else:
        size = header_size(data) if encoding in ("jpeg", "png") else None
        if size is None and image is None:
            raise ValueError("cannot read the size of the encoded data: pass image= too")
        w, h = size if size is not None else (image.shape[1], image.shape[0])
    return Frame(seq=seq, stamp_ns=stamp_ns, frame_id=frame_id, encoding=encoding, width=w, height=h, data=data)


# -- labels / classes / status topics -------------------------------------------------------------------------
def labels_message(frame: Frame, labels: np.ndarray, classes_version: int, latency_ms: float,
                   confidence: np.ndarray | None = None) -> dict:
    msg = {"v": VERSION, "seq": frame.seq, "stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id,
           "width": int(labels.shape[1]), "height": int(labels.shape[0]), "encoding": "mono8",
           "data": np.ascontiguousarray(labels, dtype=np.uint8).tobytes(), "classes_version": int(classes_version),
           "latency_ms": float(latency_ms)}
    if confidence is not None:
        msg["confidence"] = np.ascontiguousarray(confidence, dtype=np.uint8).tobytes()
    return msg


@dataclass
class LabelMap:
    seq: int
    stamp_ns: int
    frame_id: str
    labels: np.ndarray  # (H,W) uint8
    classes_version: int
    latency_ms: float
    confidence: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def parse_labels(payload: bytes) -> LabelMap:
    msg = unpack_map(payload, "labels")
    w, h = _get(msg, "width", int, what="labels"), _get(msg, "height", int, what="labels")
    if _get(msg, "encoding", str, what="labels") != "mono8":
        raise RequestError(BAD_REQUEST, "labels encoding must be mono8")
    data = _get(msg, "data", bytes, what="labels")
    if len(data) != w * h:
        raise RequestError(BAD_REQUEST, f"labels data has {len(data)} bytes for {w}x{h}")
    conf = msg.get("confidence")
    known = {"v", "seq", "stamp_ns", "frame_id", "width", "height", "encoding", "data", "classes_version",
             "latency_ms", "confidence"}
    return LabelMap(seq=_get(msg, "seq", int, what="labels"), stamp_ns=_get(msg, "stamp_ns", int, what="labels"),
                    frame_id=_get(msg, "frame_id", str, what="labels"),
                    labels=np.frombuffer(data, np.uint8).reshape(h, w),
                    classes_version=_get(msg, "classes_version", int, what="labels"),
                    latency_ms=float(_get(msg, "latency_ms", float, what="labels")),
                    confidence=None if conf is None else np.frombuffer(conf, np.uint8).reshape(h, w),
                    extra={k: v for k, v in msg.items() if k not in known})


def classes_message(version: int, classes: list[dict]) -> dict:
    return {"v": VERSION, "version": int(version), "classes": classes}


# -- teach requests --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShotBytes:
    image: bytes
    mask: bytes
    labels: bytes | None = None  # the frame's full label map (PNG), when the operator has one

    @property
    def mode(self) -> str:
        """core.labels.SUPPORT_MODES: `full` when a label map came with the mask, else `mask`."""
        return support_mode(self.labels)


@dataclass(frozen=True)
class Request:
    op: str
    name: str | None = None
    shots: tuple[ShotBytes, ...] = ()
    image: bytes | None = None  # preview
    pack: bytes | None = None  # import
    create: bool = False  # teach: refuse (name_taken) instead of adding to an existing class
    color: tuple[int, int, int] | None = None  # teach: colour of a new class


def _parse_shots(msg: dict, limits: Limits) -> tuple[ShotBytes, ...]:
    shots = _get(msg, "shots", list, what="request")
    if not shots:
        raise RequestError(BAD_REQUEST, "'shots' is empty: send at least one {image, mask}")
    if len(shots) > limits.max_shots_per_request:
        raise RequestError(TOO_LARGE, f"{len(shots)} shots in one request; at most {limits.max_shots_per_request}")
    out = []
    for k, s in enumerate(shots):
        if not isinstance(s, dict):
            raise RequestError(BAD_REQUEST, f"shot {k} must be a map with 'image' and 'mask'")
        w = f"shot {k}"
        out.append(ShotBytes(image=_get(s, "image", bytes, what=w), mask=_get(s, "mask", bytes, what=w),
                             labels=_get(s, "labels", bytes, required=False, what=w)))
    return tuple(out)


def parse_request(payload: bytes, limits: Limits = LIMITS) -> Request:
    """Teach-socket bytes -> Request, or RequestError with the contract's code. No pixel decoding here."""
    if len(payload) > limits.max_teach_bytes:
        raise RequestError(TOO_LARGE, f"request of {len(payload)} bytes exceeds {limits.max_teach_bytes}")
    msg = unpack_map(payload, "request")
    op = _get(msg, "op", str, what="request")
    if op not in OPS:
        raise RequestError(BAD_REQUEST, f"unknown op {clip(op)}; ops: {', '.join(OPS)}")
    if op in ("ping", "list", "export"):
        return Request(op=op)
    if op == "import":
        return Request(op=op, pack=_get(msg, "pack", bytes, what="request"))
    name = check_name(_get(msg, "name", str, what="request"), limits)
    if op == "forget":
        return Request(op=op, name=name)
    shots = _parse_shots(msg, limits)
    if op == "preview":
        return Request(op=op, name=name, shots=shots, image=_get(msg, "image", bytes, what="request"))
    create = _get(msg, "create", bool, required=False) or False
    color = _get(msg, "color", list, required=False)
    if color is not None:
        if len(color) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color):
            raise RequestError(BAD_REQUEST, "'color' must be [r, g, b] with integers 0..255")
        color = tuple(color)
    return Request(op=op, name=name, shots=shots, create=create, color=color)


def request_message(req: Request) -> dict:
    """Request -> the map a client sends (inverse of parse_request)."""
    msg: dict = {"op": req.op}
    if req.name is not None:
        msg["name"] = req.name
    if req.shots:
        msg["shots"] = [{"image": s.image, "mask": s.mask, **({"labels": s.labels} if s.labels is not None else {})}
                        for s in req.shots]
    if req.image is not None:
        msg["image"] = req.image
    if req.pack is not None:
        msg["pack"] = req.pack
    if req.create:
        msg["create"] = True
    if req.color is not None:
        msg["color"] = list(req.color)
    return msg
