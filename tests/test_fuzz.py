"""A bounded, reproducible fuzz of the wire contract (issue 13), small enough for CI (well under 2 minutes on 2 cores).

Why here as well as bench/fuzz.py: the bench sends 10,000 hand-made hostile kinds and measures the node; this
lets hypothesis invent the structures nobody thought of (random msgpack trees under real op names, random field
types, random bytes behind image signatures) and shrink a failure to its smallest form. `derandomize=True`
makes every run draw the same examples, so a failure here is a failure on every machine, not a flake.

Two halves:
  - against ONE real node (module fixture, --threads 1): every reply is a msgpack map; a refusal carries a
    contract code (never `internal`) and stays under ~1 KB whatever was sent; ok:true only for the read-only ops
    (ping/list/export); at the end the node is alive, its class list is unchanged and its registry file loads;
  - pure functions (no node): protocol.parse_request, parse_frame(+decode_frame) and decode_image raise nothing
    but protocol.RequestError on arbitrary input.
"""

from __future__ import annotations

import struct

import cv2
import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from node_harness import NodeProc, require_model

from edge_gfs.node.registry import StateStore
from edge_gfs.wire import protocol as P

REPLY_CAP = 1024  # bytes: an error reply is a code and a short message, however big the request
READ_ONLY_OPS = ("ping", "list", "export")  # the only ops random input may legitimately get ok:true for
FIELDS = ("name", "shots", "image", "mask", "labels", "pack", "create", "color")

FUZZ = settings(derandomize=True, max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
PURE = settings(FUZZ, max_examples=300)


# -- strategies ------------------------------------------------------------------------------------------------
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"GIF89a", b"")
image_like = st.builds(lambda sig, tail: sig + tail, st.sampled_from(SIGNATURES), st.binary(max_size=300))
leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=24),
                   st.binary(max_size=64), image_like)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3)), inner, max_size=4),
                      max_leaves=12)
shots = st.lists(st.one_of(st.fixed_dictionaries({}, optional={"image": st.one_of(image_like, values),
                                                              "mask": st.one_of(image_like, values),
                                                              "labels": st.one_of(image_like, values)}), values),
                 max_size=3)
request_maps = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(P.OPS), st.text(max_size=40), values)},
    optional={"name": st.one_of(st.text(max_size=80), values), "shots": st.one_of(shots, values),
              "image": st.one_of(image_like, values), "pack": st.one_of(st.binary(max_size=200), values),
              "create": values, "color": st.one_of(st.lists(st.integers(-(2**63), 2**64 - 1), max_size=4), values)})


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@st.composite
def damaged(draw, inner: st.SearchStrategy) -> bytes:
    """A packed request cut short or followed by junk: msgpack's OutOfData and ExtraData paths."""
    data = pack(draw(inner))
    if draw(st.booleans()) and len(data) > 1:
        return data[:draw(st.integers(1, len(data) - 1))]
    return data + draw(st.binary(min_size=1, max_size=16))


teach_payloads = st.one_of(st.binary(max_size=512), request_maps.map(pack), values.map(pack), damaged(request_maps))


# -- one real node for the module ------------------------------------------------------------------------------
class RawTeach:
    """Plain pyzmq REQ (no edge_gfs client code), so what we assert on is exactly the bytes the node sent."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context.instance()
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        return s

    def send(self, payload: bytes, timeout_s: float = 10.0) -> bytes | None:
        self.sock.send(payload)
        if not self.sock.poll(int(timeout_s * 1000)):
            self.sock.close(0)
            self.sock = self._open()
            return None
        return self.sock.recv()

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    require_model("camvid-fold0")
    n = NodeProc(tmp_path_factory.mktemp("fuzz"), "camvid-fold0").start()
    n.wait_ready()
    raw = RawTeach(n.teach)
    baseline = msgpack.unpackb(raw.send(pack({"op": "list"})), raw=False)
    yield n, raw, baseline
    raw.close()
    assert n.stop() == 0, n.log_text()


def op_of(payload: bytes) -> object:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 - not even msgpack: no op
        return None
    return obj.get("op") if isinstance(obj, dict) else None


def check_reply(node: NodeProc, payload: bytes, body: bytes | None) -> None:
    """The contract for one request: a map, ok:bool; refusals coded, small, never internal."""
    assert body is not None, f"no reply within 10 s (node alive: {node.alive()})\n{node.log_text()}"
    reply = msgpack.unpackb(body, raw=False)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if reply["ok"]:
        assert op_of(payload) in READ_ONLY_OPS, f"ok:true for a request that must be refused: {reply}"
        return
    err = reply.get("error")
    assert isinstance(err, dict) and isinstance(err.get("message"), str), reply
    assert err.get("code") in P.ERROR_CODES, reply
    assert err["code"] != P.INTERNAL, f"internal error: {err['message']}\n{node.log_text()[-1500:]}"
    assert len(body) < REPLY_CAP, f"{len(body)}-byte error reply: {body[:200]!r}..."


PNG_SHOT = {"image": P.encode_png(np.zeros((96, 128, 3), np.uint8)),
            "mask": P.encode_png(np.pad(np.full((40, 60), 255, np.uint8), ((40, 16), (40, 28))))}


@FUZZ
@given(payload=teach_payloads)
@example(payload=pack({"op": "x" * 1_000_000}))  # issue 13: an unknown op was echoed whole in the reply and log
@example(payload=pack({"op": "teach", "name": "n" * 10_000, "shots": [PNG_SHOT]}))
@example(payload=pack({"op": "teach", "name": "\x1b[31mEVIL\n", "shots": [PNG_SHOT]}))
@example(payload=pack({"op": "ping"}) + b"\x00")
@example(payload=pack({"op": "forget", "name": "Road"}))
@example(payload=pack({"op": "import", "pack": b"\x80"}))
def test_hostile_teach_requests_get_small_coded_refusals(node, payload):
    """Random bytes, random msgpack trees and random fields under real op names, on one node in a row."""
    n, raw, _ = node
    check_reply(n, payload, raw.send(payload))
    assert n.alive()


@settings(FUZZ, max_examples=60)
@given(parts=st.lists(st.one_of(st.binary(max_size=64), teach_payloads), max_size=4))
def test_hostile_dealer_envelopes_get_replies(node, parts):
    """A DEALER may send any frames: none, empty ones, several bodies. Each message still gets one reply."""
    n, _, _ = node
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(n.teach)
    try:
        s.send_multipart([b"", *parts] if parts else [b""])
        assert s.poll(10_000), f"no reply to a DEALER message of {len(parts)} parts"
        body = s.recv_multipart()[-1]
        single = [p for p in parts if p]
        check_reply(n, single[0] if len(parts) == 1 and single else b"", body)
    finally:
        s.close(0)


def test_after_the_fuzz_the_node_serves_and_nothing_changed(node):
    """Runs after the fuzz (file order): alive, same class list and version, registry on disk loads and agrees."""
    n, raw, baseline = node
    assert n.alive(), n.log_text()
    ping = msgpack.unpackb(raw.send(pack({"op": "ping"})), raw=False)
    assert ping["ok"] and ping["version"] == baseline["version"]
    listed = msgpack.unpackb(raw.send(pack({"op": "list"})), raw=False)
    assert listed["classes"] == baseline["classes"]
    reg = StateStore(n.state).load()
    assert reg is not None and reg.classes() == baseline["classes"]


# -- pure functions --------------------------------------------------------------------------------------------
def only_request_errors(fn, *args) -> None:
    try:
        fn(*args)
    except P.RequestError as e:
        assert e.code in P.ERROR_CODES and e.code != P.INTERNAL
        assert len(e.message) < REPLY_CAP


@PURE
@given(payload=st.one_of(teach_payloads, st.binary(min_size=0, max_size=2048)))
def test_parse_request_only_raises_request_error(payload):
    only_request_errors(P.parse_request, payload)


_SMALL = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
REAL_IMAGES = (P.encode_png(_SMALL), P.encode_jpeg(_SMALL), P.encode_png(_SMALL[:, :, 0]))


@st.composite
def mangled_images(draw) -> bytes:
    """Real small PNG/JPEG bytes, cut, bit-flipped, or with their header's size rewritten (bombs included)."""
    data = bytearray(draw(st.sampled_from(REAL_IMAGES)))
    how = draw(st.sampled_from(["flip", "cut", "size", "garbage"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "size":
        side = st.one_of(st.sampled_from([0, 1, 4096, 4097, 8193, 12000, 30000, 65000, 65535, 100_000]),
                         st.integers(0, 70000))
        w, h = draw(side), draw(side)
        if data.startswith(b"\x89PNG"):
            data[16:24] = struct.pack(">II", w, h)
        elif (i := data.find(b"\xff\xc0")) > 0:
            data[i + 5:i + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
            if draw(st.booleans()):
                data[i:i] = b"\x00"  # a stray byte before the SOF marker
    else:
        data = bytearray(draw(image_like))
    return bytes(data)


def jpeg_bomb(side: int, stray: bool) -> bytes:
    """REAL_IMAGES' JPEG with its SOF saying side x side, optionally a stray byte before the SOF marker."""
    data = bytearray(REAL_IMAGES[1])
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", side, side)
    if stray:
        data[i:i] = b"\x00"
    return bytes(data)


@PURE
@given(data=st.one_of(mangled_images(), image_like, st.binary(max_size=256)))
@example(data=jpeg_bomb(65000, stray=False))
@example(data=jpeg_bomb(65000, stray=True))  # a naive header walk loses the size; OpenCV then raises cv2.error
@example(data=jpeg_bomb(12000, stray=True))  # under OpenCV's own 2^30-pixel cap: a 432 MB decode of grey
def test_decode_image_only_raises_request_error(data):
    only_request_errors(P.decode_image, data)


frame_maps = st.fixed_dictionaries(
    {"v": st.one_of(st.just(1), values), "seq": st.one_of(st.integers(-(2**63), 2**64 - 1), values),
     "stamp_ns": st.one_of(st.integers(-(2**63), 2**64 - 1), values),
     "frame_id": st.one_of(st.text(max_size=300), values),
     "encoding": st.one_of(st.sampled_from(P.FRAME_ENCODINGS), values),
     "width": st.one_of(st.integers(-3, 40), st.integers(-(2**63), 2**64 - 1), values),
     "height": st.one_of(st.integers(-3, 40), st.integers(-(2**63), 2**64 - 1), values),
     "data": st.one_of(mangled_images(), st.binary(max_size=4000), values)})


def parse_and_decode(payload: bytes) -> None:
    """The node's frame path: header checks in the reader thread, pixels in the stream thread."""
    frame = P.parse_frame(payload)
    img = P.decode_frame(frame)
    assert img.shape == (frame.height, frame.width, 3), "decoded frame is not its declared size"


def frame_payload(data: bytes, encoding: str = "jpeg", width: int = 16, height: int = 12, **over: object) -> bytes:
    return pack({"v": 1, "seq": 0, "stamp_ns": 0, "frame_id": "f", "encoding": encoding, "width": width,
                 "height": height, "data": data} | over)


@PURE
@given(payload=st.one_of(frame_maps.map(pack), damaged(frame_maps), values.map(pack), st.binary(max_size=1024)))
@example(payload=frame_payload(jpeg_bomb(65000, stray=True)))
@example(payload=frame_payload(jpeg_bomb(12000, stray=True)))
@example(payload=frame_payload(b"", "bgr8", 2**32, 2**32))  # width*height*3 must not overflow into a match
@example(payload=frame_payload(REAL_IMAGES[1], seq=2**64 - 1))
def test_parse_frame_and_decode_only_raise_request_error(payload):
    only_request_errors(parse_and_decode, payload)


def test_real_frame_still_parses():
    """The strategies above are not vacuous: a real frame goes through the same path."""
    img = cv2.resize(_SMALL, (32, 24))
    parse_and_decode(pack(P.frame_message(P.make_frame(img, encoding="png"))))
