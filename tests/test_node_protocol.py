"""The wire contract's validators (edge_gfs/wire/protocol.py): every malformed input maps to its error code, never
to an exception of msgpack's or OpenCV's, and valid messages survive a round trip unchanged."""

from __future__ import annotations

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gfs.wire import protocol as P

RNG = np.random.default_rng(5)
IMG = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
MASK = np.zeros((48, 64), np.uint8)
MASK[10:20, 10:30] = 255


def png(a: np.ndarray) -> bytes:
    return P.encode_png(a)


def teach(**shot) -> bytes:
    s = {"image": png(IMG), "mask": png(MASK)} | shot
    return P.pack({"op": "teach", "name": "Car", "shots": [s]})


def code_of(fn, *a, **kw) -> str:
    with pytest.raises(P.RequestError) as e:
        fn(*a, **kw)
    return e.value.code


# -- requests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload,code", [
    (b"\xc1\x00garbage", "bad_request"),  # 0xc1 is never valid msgpack
    (P.pack([1, 2, 3]), "bad_request"),  # not a map
    (P.pack({}), "bad_request"),  # no op
    (P.pack({"op": 7}), "bad_request"),
    (P.pack({"op": "explode"}), "bad_request"),
    (P.pack({"op": "teach", "name": 5, "shots": []}), "bad_request"),
    (P.pack({"op": "teach", "name": "  ", "shots": []}), "bad_request"),
    (P.pack({"op": "teach", "name": "x" * 65, "shots": []}), "bad_request"),
    (P.pack({"op": "teach", "name": "a\x00b", "shots": []}), "bad_request"),
    (P.pack({"op": "teach", "name": "Car", "shots": "abc"}), "bad_request"),
    (P.pack({"op": "teach", "name": "Car", "shots": []}), "bad_request"),
    (P.pack({"op": "teach", "name": "Car", "shots": [7]}), "bad_request"),
    (P.pack({"op": "teach", "name": "Car", "shots": [{"image": b"x"}]}), "bad_request"),
    (P.pack({"op": "teach", "name": "Car", "shots": [{"image": "str", "mask": b"x"}]}), "bad_request"),
    (P.pack({"op": "teach", "name": "Car", "shots": [{"image": b"i", "mask": b"m"}] * 17}), "too_large"),
    (P.pack({"op": "teach", "name": "Car", "shots": [{"image": b"i", "mask": b"m"}], "create": 1}), "bad_request"),
    (P.pack({"op": "teach", "name": "Car", "shots": [{"image": b"i", "mask": b"m"}], "color": [1, 2]}), "bad_request"),
    (P.pack({"op": "forget"}), "bad_request"),
    (P.pack({"op": "preview", "name": "Car", "shots": [{"image": b"i", "mask": b"m"}]}), "bad_request"),
    (P.pack({"op": "import"}), "bad_request"),
    (msgpack.packb({1: "int key"}), "bad_request"),
])
def test_bad_requests_get_their_code(payload, code):
    assert code_of(P.parse_request, payload) == code


def test_oversized_request_is_too_large_before_unpacking():
    small = P.Limits(max_teach_bytes=1000)
    assert code_of(P.parse_request, teach(), small) == "too_large"


def test_request_round_trip():
    req = P.Request("teach", name="Car", shots=(P.ShotBytes(b"i", b"m", b"l"), P.ShotBytes(b"j", b"n")), create=True,
                    color=(1, 2, 3))
    assert P.parse_request(P.pack(P.request_message(req))) == req
    for op in ("ping", "list", "export"):
        assert P.parse_request(P.pack({"op": op})).op == op
    assert P.parse_request(P.pack({"op": "forget", "name": " car "})).name == "car"


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_exceptions(data):
    try:
        P.parse_request(data)
    except P.RequestError as e:
        assert e.code in ("bad_request", "too_large")


@settings(max_examples=100, deadline=None, database=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=5) | st.binary(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                    max_leaves=12))
def test_random_structures_never_escape(obj):
    for o in (obj, {"op": "teach", "name": "x", "shots": obj}, {"op": "teach", "name": "x", "shots": [obj]}):
        try:
            P.parse_request(P.pack(o))
        except P.RequestError:
            pass


# -- images and masks ------------------------------------------------------------------------------------------
def test_decode_image_png_and_jpeg():
    assert np.array_equal(P.decode_image(png(IMG)), IMG)
    smooth = cv2.resize(IMG[:6, :8], (64, 48), interpolation=cv2.INTER_LINEAR)  # JPEG is lossy on noise
    out = P.decode_image(P.encode_jpeg(smooth, 95))
    assert out.shape == IMG.shape and np.abs(out.astype(int) - smooth).mean() < 4


@pytest.mark.parametrize("data,code", [
    (b"hello world", "bad_image"),
    (b"\xff\xd8\xff\xe0 truncated jpeg", "bad_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "bad_image"),
    (cv2.imencode(".bmp", IMG)[1].tobytes(), "bad_image"),  # a real image, but not JPEG/PNG
])
def test_undecodable_images(data, code):
    assert code_of(P.decode_image, data) == code


def test_image_too_large_is_refused_from_its_header():
    wide = png(np.zeros((1, 9000), np.uint8))
    assert P.header_size(wide) == (9000, 1)
    assert code_of(P.decode_image, wide) == "too_large"
    jpg = P.encode_jpeg(np.zeros((16, 8200, 3), np.uint8))
    assert P.header_size(jpg) == (8200, 16)
    assert code_of(P.decode_image, jpg) == "too_large"


def test_header_size_of_jpeg_and_png():
    assert P.header_size(P.encode_jpeg(IMG)) == (64, 48)
    assert P.header_size(png(IMG)) == (64, 48)
    assert P.header_size(b"nonsense") is None


def test_masks():
    m = P.decode_mask(png(MASK), (48, 64))
    assert m.dtype == bool and m.sum() == 200
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[0, 0, 2] = 1
    assert P.decode_mask(png(rgba), (48, 64)).sum() == 1  # any channel nonzero counts
    assert code_of(P.decode_mask, png(MASK), (48, 65)) == "bad_mask"
    assert code_of(P.decode_mask, png(np.zeros_like(MASK)), (48, 64)) == "bad_mask"
    assert code_of(P.decode_mask, png(np.ones_like(MASK)), (48, 64)) == "bad_mask"
    assert code_of(P.decode_mask, P.encode_jpeg(IMG), (48, 64)) == "bad_mask"
    assert code_of(P.decode_mask, b"\x89PNG\r\n\x1a\nbroken", (48, 64)) == "bad_mask"


def test_label_maps():
    lab = RNG.integers(0, 12, (48, 64), dtype=np.uint8)
    assert np.array_equal(P.decode_label_map(png(lab), (48, 64)), lab)
    assert code_of(P.decode_label_map, png(IMG), (48, 64)) == "bad_mask"  # 3 channels
    assert code_of(P.decode_label_map, png(lab.astype(np.uint16)), (48, 64)) == "bad_mask"
    assert code_of(P.decode_label_map, png(lab), (40, 64)) == "bad_mask"


# -- frames and labels -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", P.FRAME_ENCODINGS)
def test_frame_round_trip(encoding):
    f = P.make_frame(IMG, encoding=encoding, seq=42, stamp_ns=123, frame_id="cam")
    g = P.parse_frame(P.pack(P.frame_message(f)))
    assert g == f and (g.width, g.height) == (64, 48)
    out = P.decode_frame(g)
    assert out.shape == IMG.shape
    if encoding != "jpeg":
        assert np.array_equal(out, IMG)


def test_frame_from_file_bytes_keeps_them():
    data = P.encode_jpeg(IMG)
    f = P.make_frame(data=data, encoding="jpeg")
    assert f.data is data and (f.width, f.height) == (64, 48)


@pytest.mark.parametrize("change,code", [
    ({"v": 2}, "bad_request"),
    ({"encoding": "gif"}, "bad_request"),
    ({"seq": "1"}, "bad_request"),
    ({"seq": True}, "bad_request"),
    ({"width": 0}, "bad_image"),
    ({"width": 10000}, "too_large"),
    ({"data": b"short"}, "bad_image"),  # bgr8 size check
    ({"frame_id": "x" * 300}, "bad_request"),
])
def test_bad_frames(change, code):
    msg = P.frame_message(P.make_frame(IMG, encoding="bgr8")) | change
    assert code_of(P.parse_frame, P.pack(msg)) == code


def test_frame_whose_pixels_disagree_with_its_header():
    f = P.make_frame(IMG, encoding="png")
    lying = P.Frame(f.seq, f.stamp_ns, f.frame_id, "png", 65, 48, f.data)
    assert code_of(P.decode_frame, lying) == "bad_image"
    wrong = P.Frame(f.seq, f.stamp_ns, f.frame_id, "jpeg", 64, 48, f.data)
    assert code_of(P.decode_frame, wrong) == "bad_image"


def test_labels_message_round_trip():
    f = P.make_frame(IMG, encoding="bgr8", seq=9, stamp_ns=77, frame_id="cam")
    lab = RNG.integers(0, 11, (48, 64), dtype=np.uint8)
    conf = RNG.integers(0, 256, (48, 64), dtype=np.uint8)
    lm = P.parse_labels(P.pack(P.labels_message(f, lab, 3, 12.5, conf)))
    assert (lm.seq, lm.stamp_ns, lm.frame_id, lm.classes_version, lm.latency_ms) == (9, 77, "cam", 3, 12.5)
    assert np.array_equal(lm.labels, lab) and np.array_equal(lm.confidence, conf)
    raw = msgpack.unpackb(P.pack(P.labels_message(f, lab, 3, 12.5)))
    assert set(raw) == {"v", "seq", "stamp_ns", "frame_id", "width", "height", "encoding", "data",
                        "classes_version", "latency_ms"}  # the contract's field names, nothing renamed
