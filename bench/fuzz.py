"""Hostile-input fuzz of a real `edge-gfs run` node over loopback (issue 13): teach, frame and labels sockets.

Why a bench and not only unit tests: the node's contract (../shared/spec/node.md, "Bad input of any kind ... gets
an error reply ... the node keeps running and its state is unchanged") is about a process, its sockets, its log
file and its memory. So this starts the node as deployed (a subprocess on free loopback ports, the bundled
camvid-fold0 model, --threads 1), talks to it with plain pyzmq + msgpack (no edge_gfs client code on the wire,
so a client-side check cannot hide a node-side hole), and measures what a robot operator would see: replies,
silence, crashes, log growth, memory, and whether the stream still produces label maps afterwards.

    python bench/fuzz.py                                   # 10,000 hostile messages -> bench/results/hardening/
    python bench/fuzz.py --messages 600 --out /tmp/fuzz_smoke
    python bench/fuzz.py --only teach_unknown_op_huge,frame_jpeg_bomb_stray --messages 40 --out /tmp/f
    python bench/fuzz.py --list-kinds                      # the table of kinds and what each must get
    python bench/fuzz.py --replay /tmp/fuzz_smoke/repro/teach_x.internal.0.msgpack   # one saved reproducer

Each *kind* of hostile input is a row of KINDS: the socket it goes to, a generator, and its expected outcome
(`refuse` with a set of error codes, `accept` for valid requests mixed in, `either`, or `drop` for messages over
the socket's byte cap). Teach messages go one at a time on REQ or DEALER sockets; a reply later than --timeout
(10 s) is a hang and the client socket is recreated. After every teach unit a `ping` checks that the node is alive
and that its classes version moved only where a request was accepted. Frame messages go in bursts of --burst on
a bound XPUB (the node SUBscribes, as to `edge-gfs camera`), spaced so the node's one-frame slot examines each;
after each burst a good CamVid frame must still get its label map (else the node is *deaf*), and the node's
`status` topic gives the deltas of bad_frames, drops, seq_resets, errors and any other counter. One more kind
goes to the labels socket, the node's PUB, whose only input is subscriptions: a flood of long distinct topics,
measured by the node's memory while the subscriber is connected and after it left.

Per kind the report (fuzz.json, fuzz.md) gives: sent, replies by code, internal replies, wrong accepts, wrong
refusals, unexpected codes, hangs, crashes, latency p50/p99, max reply size, log bytes, max log line length,
control characters and forged lines in the log, and peak-RSS growth; overall the node's peak RSS (VmHWM), the
log growth, whether the class list ended as it started and whether the registry file on disk still loads.
Every generator draws from numpy's default_rng([seed, crc32(kind), n]) for the kind's n-th unit, so
`--only KIND --seed S` regenerates exactly the payloads of a failing kind; the first failures of each kind
are also saved under OUT/repro/ (when under 2 MB) for `--replay`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Literal

import cv2
import msgpack
import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.wire import protocol as P  # noqa: E402  (constants and limits only; nothing of it on the wire)

Expect = Literal["refuse", "accept", "either", "drop"]
Socket = Literal["teach", "frame", "labels"]

DEFAULT_SEED = 1313
REPLY_CAP = 1024  # bytes: an error reply should be a code and a short message, whatever the request was
LOG_LINE_CAP = 1024  # bytes: one log line per refusal, never an echo of the payload
REPRO_CAP = 2 << 20  # reproducers above this are regenerated with --only/--seed instead of saved
REPROS_PER_CHECK = 2
ANY_REFUSAL = frozenset(c for c in P.ERROR_CODES if c != P.INTERNAL)
LOG_PREFIX = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
# stderr lines of libjpeg/libpng/OpenCV: not forged by a client, but unbounded noise a hostile image can cause
DECODER_NOISE = re.compile(rb"^(Corrupt JPEG data|Premature end of JPEG|Invalid SOS|Unsupported marker|"
                           rb"Bogus|libpng (warning|error)|\[ WARN|\[ERROR|Not a JPEG|JPEG datastream|Warning:|"
                           rb"Huffman|Empty JPEG|Quantization|Improper call|Unsupported JPEG|Wrong JPEG)")
CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xe2\x80[\xaa-\xae]|\xe2\x81[\xa6-\xa9]")  # C0, DEL, bidi


# =============================================================================================================
# payload crafting
# =============================================================================================================
def pk(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rbytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def pick(rng: np.random.Generator, seq: list | tuple):
    return seq[int(rng.integers(len(seq)))]


def rtext(rng: np.random.Generator, n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 -_") -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


_WRONG_VALUES: tuple = (True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), float("inf"), "", "text",
                        "\x00", b"", b"\x00\xff", [], [1, "a"], {}, {"k": 1}, msgpack.ExtType(7, b"xx"))


def wrong_value(rng: np.random.Generator, expected: type, allow_none: bool) -> object:
    """A value of any msgpack type but `expected` (bool is wrong for int and the reverse, as in protocol._get)."""
    def fits(v: object) -> bool:
        if expected is int:
            return isinstance(v, int) and not isinstance(v, bool)
        if expected is bool:
            return isinstance(v, bool)
        if expected is float:
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        return isinstance(v, expected)
    pool = [v for v in _WRONG_VALUES if not fits(v)] + ([None] if allow_none else [])
    return pick(rng, pool)


def png_bytes(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def jpeg_bomb(w: int, h: int, stray: bool) -> bytes:
    """A ~600-byte JPEG whose SOF0 says w x h. With `stray`, one byte before the SOF marker: libjpeg skips it
    ("extraneous bytes before marker") and still reads the size, a naive marker walk may not."""
    small = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    b = bytearray(jpeg_bytes(small, 50))
    i = b.find(b"\xff\xc0")
    b[i + 5:i + 9] = int(h).to_bytes(2, "big") + int(w).to_bytes(2, "big")
    if stray:
        b[i:i] = b"\x00"
    return bytes(b)


def png_bomb(w: int, h: int, fix_crc: bool = True) -> bytes:
    """A tiny PNG whose IHDR says w x h (CRC recomputed, so libpng reads the size and trusts it)."""
    b = bytearray(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    b[16:24] = int(w).to_bytes(4, "big") + int(h).to_bytes(4, "big")
    if fix_crc:
        b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")
    return bytes(b)


def flip_bytes(rng: np.random.Generator, data: bytes, n: int, start: int = 0) -> bytes:
    b = bytearray(data)
    for i in rng.integers(max(start, 0), len(b), n):
        b[int(i)] ^= int(rng.integers(1, 256))
    return bytes(b)


def deep_nesting(depth: int, as_op: bool) -> bytes:
    """msgpack arrays nested `depth` deep (built by hand: packb itself refuses deep recursion)."""
    inner = b"\x91" * depth + b"\xc0"
    return (b"\x81\xa2op" + inner) if as_op else inner


# =============================================================================================================
# what a kind produces
# =============================================================================================================
@dataclass
class TeachMsg:
    """One request as the client sends it: REQ adds the empty delimiter itself, DEALER sends `parts` verbatim."""

    parts: list[bytes]
    dealer: bool = False
    variant: str = ""  # sub-case, reported per kind (which field, which mutation)
    expect: Expect | None = None  # overrides the kind's
    codes: frozenset[str] | None = None
    op: str = "?"  # for the cleanup after a wrong accept

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass
class FrameMsg:
    """One PUB message to the node. `seq` is the frame's seq when the bench set it to a trackable value."""

    parts: list[bytes]
    seq: int | None = None
    wh: tuple[int, int] | None = None  # declared size, to check the label map of an accepted frame
    variant: str = ""

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass
class Material:
    """Real CamVid pixels and a real class pack the generators corrupt (built once, shared by all kinds)."""

    img: np.ndarray  # 96x128 BGR train frame
    img_png: bytes
    img_jpg: bytes
    mask_png: bytes  # valid mask (a box) for img
    labels_png: bytes  # the frame's label map, 8-bit
    frame_jpg: list[bytes]  # 360x480 test frames as the dataset stores them
    frame_png: bytes
    frame_bgr: bytes
    frame_wh: tuple[int, int]
    pack: bytes = b""  # export of the running node with one novel class and one base context (set at start)
    pack_names: tuple[str, ...] = ()
    base_names: tuple[str, ...] = ()
    seq: int = 10**12  # frames the bench numbers itself; far from any seq a kind picks at random

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def shot(self, **over: object) -> dict:
        return {"image": self.img_png, "mask": self.mask_png} | over

    def frame(self, **over: object) -> dict:
        w, h = self.frame_wh
        return {"v": 1, "seq": self.next_seq(), "stamp_ns": time.time_ns(), "frame_id": "fuzz", "encoding": "jpeg",
                "width": w, "height": h, "data": self.frame_jpg[0]} | over


def load_material() -> Material:
    data = camvid()
    name = data.names("train")[0]
    img, lab = data.read("train", name)
    img = cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA)
    lab = cv2.resize(lab, (128, 96), interpolation=cv2.INTER_NEAREST)
    mask = np.zeros((96, 128), np.uint8)
    mask[40:80, 40:100] = 255
    tests = [data.image_path("test", n).read_bytes() for n in data.names("test")[:8]]
    frame = cv2.imdecode(np.frombuffer(tests[0], np.uint8), cv2.IMREAD_COLOR)
    return Material(img=img, img_png=png_bytes(img), img_jpg=jpeg_bytes(img), mask_png=png_bytes(mask),
                    labels_png=png_bytes(lab), frame_jpg=tests, frame_png=png_bytes(frame),
                    frame_bgr=np.ascontiguousarray(frame).tobytes(), frame_wh=(frame.shape[1], frame.shape[0]))


Gen = Callable[[np.random.Generator, Material], list]


@dataclass(frozen=True)
class Kind:
    """A row of the table: which socket, how to make one unit, what the node must do with it, and why."""

    name: str
    socket: Socket
    expect: Expect
    codes: frozenset[str]  # acceptable error codes when refusing (teach); empty for frame kinds
    gen: Gen  # one unit: a list of TeachMsg (usually one) or of FrameMsg (one burst member)
    why: str
    weight: float = 1.0
    max_units: int | None = None  # heavy kinds (64 MiB messages, bombs that allocate) are capped
    burst: int | None = None  # messages per unit on the frame/labels sockets (default --burst)

    @property
    def valid(self) -> bool:
        """The well-formed requests mixed in (counted apart); odd-but-valid frames (seq wrap) count as hostile."""
        return self.expect == "accept" and self.socket == "teach"


KINDS: list[Kind] = []


def kind(name: str, socket_: Socket, expect: Expect, codes: Iterable[str] = (), weight: float = 1.0,
         max_units: int | None = None, burst: int | None = None) -> Callable[[Gen], Gen]:
    """Register a generator as a kind; its docstring is the `why` column of the report."""
    def deco(fn: Gen) -> Gen:
        KINDS.append(Kind(name, socket_, expect, frozenset(codes), fn, (fn.__doc__ or "").strip(), weight, max_units,
                          burst))
        return fn
    return deco


def req(obj: object, rng: np.random.Generator | None = None, variant: str = "", op: str = "?", raw: bool = False,
        **kw) -> TeachMsg:
    """One single-part request, on a DEALER one time in three (both socket types the node must serve)."""
    body = obj if raw else pk(obj)
    dealer = rng is not None and rng.random() < 1 / 3
    return TeachMsg([b"", body] if dealer else [body], dealer=dealer, variant=variant, op=op, **kw)


BR, BI, BM, TL = frozenset({P.BAD_REQUEST}), frozenset({P.BAD_IMAGE}), frozenset({P.BAD_MASK}), frozenset({P.TOO_LARGE})


# -- teach socket: framing and msgpack ------------------------------------------------------------------------
@kind("teach_garbage_bytes", "teach", "refuse", BR)
def _(rng, m):
    """Random bytes: never a traceback of msgpack's, always bad_request."""
    return [req(rbytes(rng, int(rng.integers(1, 4096))), rng, raw=True)]


@kind("teach_empty_body", "teach", "refuse", BR)
def _(rng, m):
    """A zero-byte request (also what a DEALER sends when it forgets the body)."""
    return [req(b"", rng, raw=True)]


@kind("teach_truncated_msgpack", "teach", "refuse", BR)
def _(rng, m):
    """A valid request cut short: msgpack's OutOfData must be a refusal, not a wait for more bytes."""
    full = pk(pick(rng, [{"op": "ping"}, {"op": "forget", "name": "Zebra"},
                         {"op": "teach", "name": "fuzz", "shots": [m.shot()]}]))
    return [req(full[:int(rng.integers(1, len(full)))], rng, raw=True)]


@kind("teach_trailing_bytes", "teach", "refuse", BR)
def _(rng, m):
    """A valid ping followed by junk (msgpack ExtraData): a request is exactly one object, so it is refused."""
    return [req(pk({"op": pick(rng, ["ping", "list"])}) + rbytes(rng, int(rng.integers(1, 64))), rng, raw=True)]


@kind("teach_not_a_map", "teach", "refuse", BR)
def _(rng, m):
    """Top level of another msgpack type (list, int, str, bin, nil, float, ext)."""
    v = pick(rng, [[1, 2], ["op", "ping"], 7, -1, "ping", b"ping", None, 1.5, True, msgpack.ExtType(1, b"x")])
    return [req(v, rng, variant=type(v).__name__)]


@kind("teach_bad_msgpack", "teach", "refuse", BR)
def _(rng, m):
    """Valid-looking msgpack the parser must refuse: deep nesting, non-string keys, invalid UTF-8, reserved byte."""
    v = pick(rng, ["deep", "deep_op", "int_key", "bin_key", "nil_key", "array_key", "bad_utf8", "c1_byte", "ext_op",
                   "timestamp_op"])
    body = {"deep": lambda: deep_nesting(int(rng.integers(600, 5000)), False),
            "deep_op": lambda: deep_nesting(int(rng.integers(600, 5000)), True),
            "int_key": lambda: pk({1: "ping"}),
            "bin_key": lambda: b"\x81\xc4\x02op\xa4ping",
            "nil_key": lambda: b"\x82\xa2op\xa4ping\xc0\xa1x",
            "array_key": lambda: b"\x82\xa2op\xa4ping\x91\x01\xa1x",
            "bad_utf8": lambda: b"\x81\xa2op\xa4\xff\xfe\xfd\xfc",
            "c1_byte": lambda: b"\x81\xa2op\xc1",
            "ext_op": lambda: pk({"op": msgpack.ExtType(int(rng.integers(0, 128)), b"ping")}),
            "timestamp_op": lambda: pk({"op": msgpack.Timestamp(1, 2)})}[v]()
    return [req(body, rng, variant=v, raw=True)]


@kind("teach_op_wrong_type", "teach", "refuse", BR)
def _(rng, m):
    """`op` missing or of a type other than str."""
    v = wrong_value(rng, str, allow_none=True)
    obj = {} if v is None and rng.random() < 0.5 else {"op": v}
    return [req(obj, rng, variant=type(v).__name__)]


@kind("teach_unknown_op_huge", "teach", "refuse", BR)
def _(rng, m):
    """An unknown op of 100 kB..1 MB: the reply and the log must name it without echoing it."""
    n = int(rng.integers(100_000, 1_000_001))
    return [req({"op": pick(rng, ["x", "\x1b[31m", "ping "]) * (n // 4)}, rng, variant="op_1MB")]


@kind("teach_unknown_op", "teach", "refuse", BR)
def _(rng, m):
    """Near-miss op names: case, whitespace, NUL (no normalisation must turn them into a real op)."""
    op = pick(rng, ["PING", "ping ", " list", "teach\x00", "forgett", "", "export\n", "Import", "delete", "shutdown"])
    return [req({"op": op}, rng, variant=repr(op))]


@kind("teach_multipart", "teach", "refuse", BR)
def _(rng, m):
    """More than one body part (REQ multipart, DEALER with extra parts or a doubled delimiter)."""
    ping = pk({"op": "ping"})
    v = pick(rng, ["req_2", "req_5", "dealer_extra", "dealer_double_delim"])
    if v == "req_2":
        return [TeachMsg([ping, b"extra"], variant=v)]
    if v == "req_5":
        return [TeachMsg([ping] * 5, variant=v)]
    if v == "dealer_extra":
        return [TeachMsg([b"", ping, rbytes(rng, 8)], dealer=True, variant=v)]
    return [TeachMsg([b"", b"", ping], dealer=True, variant=v)]


@kind("teach_dealer_empty", "teach", "refuse", BR)
def _(rng, m):
    """A DEALER sending only empty frames: no body at all."""
    return [TeachMsg(pick(rng, [[b""], [b"", b""]]), dealer=True)]


@kind("teach_oversized", "teach", "refuse", TL, weight=0.3, max_units=40)
def _(rng, m):
    """Just over the 64 MiB request cap (under the socket's 128 MiB): too_large, without holding it twice."""
    pad = P.LIMITS.max_teach_bytes + int(rng.integers(1, 4096))
    return [req({"op": "ping", "pad": bytes(pad)}, rng, variant="64MiB+")]


@kind("teach_over_socket_cap", "teach", "drop", TL, weight=0.05, max_units=2)
def _(rng, m):
    """Over the socket's MAXMSGSIZE: ZeroMQ drops the connection unread; no reply is the documented outcome."""
    return [TeachMsg([b"", bytes(P.LIMITS.max_teach_bytes * P.SOCKET_SLACK + 1)], dealer=True, variant="128MiB+")]


# -- teach socket: fields -------------------------------------------------------------------------------------
def _base_requests(m: Material) -> dict[str, tuple[dict, dict[str, tuple[type, bool]]]]:
    """Valid requests and their fields: name -> (expected type, required)."""
    return {
        "teach": ({"op": "teach", "name": "fuzz-field", "shots": [m.shot()], "create": False, "color": [1, 2, 3]},
                  {"name": (str, True), "shots": (list, True), "create": (bool, False), "color": (list, False)}),
        "forget": ({"op": "forget", "name": "fuzz-field"}, {"name": (str, True)}),
        "preview": ({"op": "preview", "name": "fuzz-field", "shots": [m.shot()], "image": m.img_png},
                    {"name": (str, True), "shots": (list, True), "image": (bytes, True)}),
        "import": ({"op": "import", "pack": m.pack}, {"pack": (bytes, True)}),
    }


@kind("teach_field_wrong_type", "teach", "refuse", BR, weight=2)
def _(rng, m):
    """Every field of every op (and of a shot) replaced by a value of another type; optional fields never by nil."""
    op = pick(rng, ["teach", "forget", "preview", "import"])
    base, fields = _base_requests(m)[op]
    obj = dict(base)
    if op in ("teach", "preview") and rng.random() < 0.4:  # a shot's field
        f = pick(rng, ["image", "mask", "labels"])
        obj["shots"] = [m.shot(**{f: wrong_value(rng, bytes, allow_none=f != "labels")})]
        return [req(obj, rng, variant=f"{op}.shot.{f}", op=op)]
    f = pick(rng, list(fields))
    typ, required = fields[f]
    obj[f] = wrong_value(rng, typ, allow_none=required)
    if op == "teach" and f == "shots":
        obj[f] = pick(rng, [obj[f], [1], ["x"], [[m.img_png, m.mask_png]], [None]])
    return [req(obj, rng, variant=f"{op}.{f}", op=op)]


@kind("teach_name_huge", "teach", "refuse", BR)
def _(rng, m):
    """A 10,000-character class name (teach or forget): refused, and neither echoed nor logged whole."""
    name = rtext(rng, 10_000)
    op = pick(rng, ["teach", "forget"])
    obj = {"op": op, "name": name} | ({"shots": [m.shot()]} if op == "teach" else {})
    return [req(obj, rng, variant=op, op=op)]


CONTROL_NAMES = ("\x1b[31mEVIL\x1b[0m", "Car\n2024-01-01 00:00:00,000 edge-gfs run: forged line", "a\rb", "nul\x00l",
                 "del\x7f", "\u202eraC", "zero\u200dwidth", "tab\tname", "\x1b]0;title\x07", "bell\x07")


@kind("teach_name_control_chars", "teach", "refuse", BR)
def _(rng, m):
    """Names with ANSI escapes, CR/LF (log forging), NUL, DEL, bidi override, zero-width joiner."""
    name = pick(rng, CONTROL_NAMES)
    op = pick(rng, ["teach", "forget", "preview"])
    obj = {"op": op, "name": name}
    if op != "forget":
        obj["shots"] = [m.shot()]
    if op == "preview":
        obj["image"] = m.img_png
    return [req(obj, rng, variant=repr(name[:12]), op=op)]


@kind("teach_name_blank", "teach", "refuse", BR)
def _(rng, m):
    """Empty or whitespace-only names."""
    name = pick(rng, ["", " ", "   ", "\u3000", "\u00a0"])
    return [req({"op": pick(rng, ["teach", "forget"]), "name": name, "shots": [m.shot()]}, rng, variant=repr(name),
                op="teach")]


@kind("teach_color_bad", "teach", "refuse", BR)
def _(rng, m):
    """`color` out of range or of the wrong shape: [256,0,0], [-1,..], two or four values, floats, bools, 2^64-1."""
    color = pick(rng, [[256, 0, 0], [-1, 0, 0], [1, 2], [1, 2, 3, 4], [1.5, 2, 3], [True, 0, 0], ["a", 0, 0],
                       [2**64 - 1, 0, 0], [-(2**63), 0, 0], [float("nan"), 0, 0], []])
    return [req({"op": "teach", "name": "fuzz-color", "shots": [m.shot()], "color": color}, rng, variant=repr(color),
                op="teach")]


@kind("teach_random_structure", "teach", "refuse", ANY_REFUSAL, weight=2)
def _(rng, m):
    """Random nested maps under a real op with random values for its fields: any refusal, never internal."""
    def value(depth: int) -> object:
        r = rng.random()
        if depth > 3 or r < 0.5:
            return pick(rng, [None, True, int(rng.integers(-2**62, 2**62)), float(rng.normal()), rtext(rng, 5),
                              rbytes(rng, int(rng.integers(0, 40))), b"\x89PNG\r\n\x1a\n" + rbytes(rng, 30),
                              b"\xff\xd8\xff" + rbytes(rng, 30)])
        if r < 0.75:
            return [value(depth + 1) for _ in range(int(rng.integers(0, 4)))]
        keys = ["name", "shots", "image", "mask", "labels", "pack", "create", "color", "x"]
        return {pick(rng, keys): value(depth + 1) for _ in range(int(rng.integers(0, 4)))}
    op = pick(rng, ["teach", "forget", "preview", "import"])
    obj = {"op": op}
    for _ in range(int(rng.integers(0, 5))):
        obj[pick(rng, ["name", "shots", "image", "pack", "create", "color", "labels", "extra"])] = value(0)
    if op == "forget" and isinstance(obj.get("name"), str):
        obj["name"] = "fuzz-rand-" + obj["name"]  # never a real class: forgetting one would be a correct accept
    return [req(obj, rng, variant=op, op=op)]


# -- teach socket: shots and images ---------------------------------------------------------------------------
def teach_with(m: Material, rng: np.random.Generator, variant: str, op: str = "teach", **shot_over: object) -> TeachMsg:
    obj: dict = {"op": op, "name": "fuzz-shot", "shots": [m.shot(**shot_over)]}
    if op == "preview":
        obj["image"] = m.img_png
    return req(obj, rng, variant=variant, op=op)


@kind("teach_too_many_shots", "teach", "refuse", TL)
def _(rng, m):
    """17..200 shots in one request: too_large before any shot is decoded."""
    n = int(rng.integers(P.LIMITS.max_shots_per_request + 1, 201))
    return [req({"op": "teach", "name": "fuzz-many", "shots": [m.shot()] * n}, rng, variant=str(n), op="teach")]


@kind("teach_shots_malformed", "teach", "refuse", BR)
def _(rng, m):
    """`shots` empty, or holding things that are not {image, mask} maps, or shots missing a field."""
    v = pick(rng, ["empty", "int", "str", "list", "no_mask", "no_image", "nil"])
    shots = {"empty": [], "int": [1], "str": ["shot"], "list": [[m.img_png, m.mask_png]],
             "no_mask": [{"image": m.img_png}], "no_image": [{"mask": m.mask_png}], "nil": [None]}[v]
    return [req({"op": "teach", "name": "fuzz-shots", "shots": shots}, rng, variant=v, op="teach")]


def _mask(m: Material, fill: str, rng: np.random.Generator) -> bytes:
    h, w = m.img.shape[:2]
    if fill == "empty":
        return png_bytes(np.zeros((h, w), np.uint8))
    if fill == "full":
        return png_bytes(np.full((h, w), int(rng.integers(1, 256)), np.uint8))
    if fill == "full_rgba":
        return png_bytes(np.full((h, w, 4), 255, np.uint8))
    dh, dw = pick(rng, [(1, 0), (0, 1), (-1, 0), (h, w), (-h + 1, -w + 1)])
    mk = np.zeros((h + dh, w + dw), np.uint8)
    mk[: mk.shape[0] // 2, : mk.shape[1] // 2] = 255
    return png_bytes(mk)


@kind("teach_mask_empty_or_full", "teach", "refuse", BM)
def _(rng, m):
    """Masks with no pixel or every pixel (also an all-255 RGBA paint): nothing to learn from."""
    v = pick(rng, ["empty", "full", "full_rgba"])
    return [teach_with(m, rng, v, op=pick(rng, ["teach", "preview"]), mask=_mask(m, v, rng))]


@kind("teach_mask_size_mismatch", "teach", "refuse", BM)
def _(rng, m):
    """A mask one pixel off, double the size, or almost nothing."""
    return [teach_with(m, rng, "size", mask=_mask(m, "size", rng))]


@kind("teach_mask_not_png", "teach", "refuse", BM)
def _(rng, m):
    """Masks that are a JPEG (lossy), garbage, a PNG header alone, or a 16-bit PNG of the wrong size."""
    h, w = m.img.shape[:2]
    v = pick(rng, ["jpeg", "garbage", "png_magic_only", "png16_wrong_size"])
    mask = {"jpeg": lambda: jpeg_bytes(np.full((h, w), 255, np.uint8)), "garbage": lambda: rbytes(rng, 300),
            "png_magic_only": lambda: b"\x89PNG\r\n\x1a\n",
            "png16_wrong_size": lambda: png_bytes(np.full((h + 3, w), 1000, np.uint16))}[v]()
    return [teach_with(m, rng, v, mask=mask)]


@kind("teach_labels_bad", "teach", "refuse", BM)
def _(rng, m):
    """The optional full label map: wrong size, RGB, 16-bit, JPEG or garbage."""
    h, w = m.img.shape[:2]
    v = pick(rng, ["size", "rgb", "u16", "jpeg", "garbage"])
    labels = {"size": lambda: png_bytes(np.zeros((h - 1, w), np.uint8)),
              "rgb": lambda: png_bytes(np.zeros((h, w, 3), np.uint8)),
              "u16": lambda: png_bytes(np.zeros((h, w), np.uint16)),
              "jpeg": lambda: jpeg_bytes(np.zeros((h, w), np.uint8)), "garbage": lambda: rbytes(rng, 100)}[v]()
    return [teach_with(m, rng, v, labels=labels)]


@kind("teach_image_corrupt", "teach", "refuse", BI)
def _(rng, m):
    """Images with a JPEG/PNG signature and garbage after it, a PNG with flipped bytes (CRC), a JPEG without scan."""
    v = pick(rng, ["jpeg_magic_garbage", "png_magic_garbage", "png_flipped", "jpeg_header_only", "png_no_idat"])
    image = {"jpeg_magic_garbage": lambda: b"\xff\xd8\xff" + rbytes(rng, int(rng.integers(10, 3000))),
             "png_magic_garbage": lambda: b"\x89PNG\r\n\x1a\n" + rbytes(rng, int(rng.integers(10, 3000))),
             "png_flipped": lambda: flip_bytes(rng, m.img_png, int(rng.integers(1, 20)), start=40),
             "jpeg_header_only": lambda: m.img_jpg[:m.img_jpg.find(b"\xff\xda")],
             "png_no_idat": lambda: m.img_png[:33] + b"\x00\x00\x00\x00IEND\xaeB`\x82"}[v]()
    return [teach_with(m, rng, v, op=pick(rng, ["teach", "preview"]), image=image)]


@kind("teach_image_truncated_png", "teach", "refuse", BI)
def _(rng, m):
    """A real PNG cut at 5..95 %."""
    cut = int(len(m.img_png) * rng.uniform(0.05, 0.95))
    return [teach_with(m, rng, "png", image=m.img_png[:cut])]


@kind("teach_image_truncated_jpeg", "teach", "refuse", BI)
def _(rng, m):
    """A real JPEG cut at 30..95 %: libjpeg pads the rest with grey and calls it a warning; a node that teaches
    from it learns a class from pixels nobody sent."""
    cut = int(len(m.img_jpg) * rng.uniform(0.3, 0.95))
    return [teach_with(m, rng, "jpeg", image=m.img_jpg[:cut])]


@kind("teach_image_not_jpeg_png", "teach", "refuse", BI)
def _(rng, m):
    """Formats outside the contract that OpenCV would decode anyway (BMP, TIFF, WebP) or a GIF header."""
    v = pick(rng, [".bmp", ".tiff", ".webp", "gif"])
    image = b"GIF89a" + rbytes(rng, 40) if v == "gif" else cv2.imencode(v, m.img)[1].tobytes()
    return [teach_with(m, rng, v, image=image)]


@kind("teach_jpeg_bomb", "teach", "refuse", TL | BI)
def _(rng, m):
    """A ~600-byte JPEG whose SOF says 65000x65000 (as shot image or preview image)."""
    op = pick(rng, ["teach", "preview"])
    if op == "preview" and rng.random() < 0.5:
        bomb = jpeg_bomb(65000, 65000, False)
        return [req({"op": "preview", "name": "fuzz-bomb", "shots": [m.shot()], "image": bomb}, rng,
                    variant="preview.image", op=op)]
    return [teach_with(m, rng, "shot.image", op=op, image=jpeg_bomb(65000, 65000, False))]


@kind("teach_jpeg_bomb_stray", "teach", "refuse", TL | BI)
def _(rng, m):
    """The same 65000x65000 JPEG with one stray byte before the SOF marker (a naive header walk misses the size)."""
    return [teach_with(m, rng, "65000", image=jpeg_bomb(65000, 65000, True))]


@kind("teach_jpeg_bomb_stray_mid", "teach", "refuse", TL | BI, weight=0.3, max_units=6)
def _(rng, m):
    """12000x12000 with a stray byte: under OpenCV's own 2^30-pixel cap, so only the node's checks stop a
    432 MB allocation and a full decode of grey (capped: it may really allocate)."""
    return [teach_with(m, rng, "12000", image=jpeg_bomb(12000, 12000, True))]


@kind("teach_png_bomb", "teach", "refuse", TL | BI)
def _(rng, m):
    """A tiny PNG whose IHDR says 100000x100000 (CRC fixed or not), also as the mask."""
    v = pick(rng, ["image", "image_badcrc", "mask"])
    bomb = png_bomb(100_000, 100_000, fix_crc=v != "image_badcrc")
    if v == "mask":
        return [replace(teach_with(m, rng, v, mask=bomb), codes=TL | BM | BI)]
    return [teach_with(m, rng, v, image=bomb)]


@kind("teach_max_size_shots", "teach", "refuse", BM, weight=0.2, max_units=4)
def _(rng, m):
    """16 shots of 4096x4096 PNG (the largest allowed, ~60 kB each compressed), the last mask empty: every image
    and mask is decoded before the refusal. Within the limits, but ~1 MB of request asks for ~1 GB of memory."""
    side = P.LIMITS.max_image_side // 2
    img = png_bytes(np.zeros((side, side, 3), np.uint8))
    mk = np.zeros((side, side), np.uint8)
    mk[: side // 2, : side // 2] = 255
    good, empty = png_bytes(mk), png_bytes(np.zeros((side, side), np.uint8))
    n = P.LIMITS.max_shots_per_request
    shots = [{"image": img, "mask": good}] * (n - 1) + [{"image": img, "mask": empty}]
    return [req({"op": "teach", "name": "fuzz-big", "shots": shots}, rng, variant=f"{n}x{side}", op="teach")]


@kind("teach_preview_max_image", "teach", "either", ANY_REFUSAL, weight=0.2, max_units=4)
def _(rng, m):
    """A valid preview of a 4096x4096 image (the largest allowed; ~50 kB as PNG): the node upsamples logits of
    every class to that size and replies with a 16 MB label map. Allowed by the limits; measured for memory."""
    side = P.LIMITS.max_image_side // 2
    image = png_bytes(np.zeros((side, side, 3), np.uint8))
    return [req({"op": "preview", "name": "fuzz-preview", "shots": [m.shot()], "image": image}, rng,
                variant=f"{side}x{side}", op="preview")]


# -- teach socket: registry ops -------------------------------------------------------------------------------
@kind("teach_forget_unknown", "teach", "refuse", frozenset({P.UNKNOWN_CLASS}))
def _(rng, m):
    """Forget of names the node never had (also model class names that are not base classes here)."""
    name = pick(rng, ["Zebra", "fuzz-" + rtext(rng, 8), "Car", "Pedestrian", "bicyclist", "ROAD2"])
    variant = "random" if name.startswith("fuzz") else name
    return [req({"op": "forget", "name": name}, rng, variant=variant, op="forget")]


@kind("teach_forget_base_empty", "teach", "refuse", BR)
def _(rng, m):
    """Forget of a base class that holds no taught shots: nothing to forget, and the class must stay."""
    return [req({"op": "forget", "name": pick(rng, list(m.base_names)).upper()}, rng, op="forget")]


@kind("teach_name_taken", "teach", "refuse", frozenset({P.NAME_TAKEN}))
def _(rng, m):
    """`create: true` for an existing (base) name, any case."""
    name = pick(rng, list(m.base_names))
    name = pick(rng, [name, name.lower(), name.upper(), f"  {name} "])
    return [req({"op": "teach", "name": name, "shots": [m.shot()], "create": True}, rng, variant=name.strip(),
                op="teach")]


@kind("teach_import_garbage", "teach", "refuse", BR)
def _(rng, m):
    """`pack` that is no class pack: random bytes, another msgpack type, a map without format, cut or padded."""
    v = pick(rng, ["random", "list", "map", "truncated", "trailing", "empty", "format_only"])
    pack = {"random": lambda: rbytes(rng, int(rng.integers(1, 2000))), "list": lambda: pk([1, 2, 3]),
            "map": lambda: pk({"a": 1}), "truncated": lambda: m.pack[:int(rng.integers(1, len(m.pack)))],
            "trailing": lambda: m.pack + rbytes(rng, 8), "empty": lambda: b"",
            "format_only": lambda: pk({"format": msgpack.unpackb(m.pack).get("format")})}[v]()
    return [req({"op": "import", "pack": pack}, rng, variant=v, op="import")]


def open_pack(raw: bytes) -> tuple[dict, Callable[[dict], bytes]]:
    """(the classes layer of a class pack, a function that packs an edited one back). A v2 pack is an envelope
    {format, content: bytes, sha256}: the edit is re-sealed with a fresh sha256, as any client can, so the node's
    field checks are reached instead of stopping at the checksum. A v1 pack is the classes layer itself."""
    env = msgpack.unpackb(raw, raw=False)
    if isinstance(env, dict) and isinstance(env.get("content"), bytes) and "sha256" in env:
        def seal(content: dict) -> bytes:
            body = pk(content)
            return pk(dict(env, content=body, sha256=hashlib.sha256(body).hexdigest()))
        return msgpack.unpackb(env["content"], raw=False), seal
    return env, pk


def _shots_of(pack: dict) -> list[dict]:
    classes = [c for c in pack.get("classes", []) if isinstance(c, dict)]
    return [s for c in classes for s in c.get("shots", []) if isinstance(s, dict)]


def _poison(arr_bytes: bytes, value: float, rng: np.random.Generator, dtype: str = "<f8") -> bytes:
    a = np.frombuffer(arr_bytes, dtype).copy()
    a[rng.integers(0, len(a), max(1, len(a) // 50))] = value
    return a.tobytes()


Mutation = Callable[[dict], bool]  # edits the classes layer in place; False when the pack has no such part


def _mutations(rng: np.random.Generator) -> dict[str, tuple[Mutation, frozenset[str]]]:
    """Edits of a decoded class pack that the node must refuse -> (edit, codes expected)."""
    def classes(p: dict) -> list[dict]:
        return [c for c in p.get("classes", []) if isinstance(c, dict)]

    def on_shots(fn: Callable[[dict], None]) -> Mutation:
        def apply(p: dict) -> bool:
            shots = _shots_of(p)
            if shots:
                fn(pick(rng, shots))
            return bool(shots)
        return apply

    def on_class(fn: Callable[[dict], None], kind_: str = "novel") -> Mutation:
        def apply(p: dict) -> bool:
            cs = [c for c in classes(p) if c.get("kind") == kind_] or classes(p)
            if cs:
                fn(pick(rng, cs))
            return bool(cs)
        return apply

    def setkey(key: str, value: Callable[[dict], object]) -> Mutation:
        def apply(p: dict) -> bool:
            p[key] = value(p)
            return True
        return apply

    def counts(v: int) -> Callable[[dict], None]:
        def fn(s: dict) -> None:
            s["counts"] = np.full(len(s["counts"]) // 8, v, "<i8").tobytes()
        return fn

    def many_shots(p: dict) -> bool:
        cs = [c for c in classes(p) if c.get("shots")]
        if not cs:
            return False
        proto = cs[0]["shots"][0]
        cs[0]["shots"] = [dict(proto, shot_id=f"{k:064x}") for k in range(P.LIMITS.max_shots_per_class + 1)]
        return True

    def many_classes(p: dict) -> bool:
        novel = [c for c in classes(p) if c.get("kind") == "novel"]
        if not novel:
            return False
        proto, old = novel[0], novel[0].get("id")

        def moved(c: dict, new: int) -> dict:  # a consistent copy under another id: only the count is wrong
            shots = [dict(s, target=new, shot_id=f"{new:08x}{j:056x}",
                          class_ids=sorted(new if i == old else i for i in s.get("class_ids", [])))
                     for j, s in enumerate(c.get("shots", []))]
            return dict(c, id=new, name=f"fuzz-many-{new}", shots=shots)
        extra = [moved(proto, 20 + k) for k in range(P.LIMITS.max_novel_classes + 1)]
        p["classes"] = classes(p) + extra
        return True

    def duplicate_class(p: dict) -> bool:
        novel = [c for c in classes(p) if c.get("kind") == "novel"]
        if novel:
            p["classes"] = classes(p) + [dict(novel[0])]
        return bool(novel)

    def poison(key: str, val: float) -> Mutation:
        return on_shots(lambda s: s.__setitem__(key, _poison(s[key], val, rng)))

    return {
        "nan_sums_raw": (poison("sums_raw", float("nan")), BR),
        "inf_sums_raw": (poison("sums_raw", float("inf")), BR),
        "ninf_sums_unit": (poison("sums_unit", float("-inf")), BR),
        "nan_sums_unit": (poison("sums_unit", float("nan")), BR),
        "huge_finite_sums": (poison("sums_raw", 1e300), BR),
        "negative_counts": (on_shots(counts(-5)), BR),
        "zero_counts": (on_shots(counts(0)), BR),
        "huge_counts": (on_shots(counts(2**62)), BR),
        "sums_short": (on_shots(lambda s: s.__setitem__("sums_raw", s["sums_raw"][:-8])), BR),
        "dim_plus_one": (setkey("dim", lambda p: int(p.get("dim", 0)) + 1), BR),
        "shot_mode_bogus": (on_shots(lambda s: s.__setitem__("mode", "\x1b[31mevil")), BR),
        "shot_target_mismatch": (on_shots(lambda s: s.__setitem__("target", 254)), BR),
        "shot_id_control": (on_shots(lambda s: s.__setitem__("shot_id", "\x1b[2J" + "a" * 60)), BR),
        "shot_class_ids_unsorted": (on_shots(lambda s: s.__setitem__(
            "class_ids", s["class_ids"][::-1] if len(s["class_ids"]) > 1 else s["class_ids"] * 2)), BR),
        "shot_unknown_field": (on_shots(lambda s: s.__setitem__("evil", b"x" * 100)), BR),
        "class_id_255": (on_class(lambda c: c.__setitem__("id", 255)), BR),
        "class_kind_bogus": (on_class(lambda c: c.__setitem__("kind", "evil")), BR),
        "class_color_out_of_range": (on_class(lambda c: c.__setitem__("color", [999, -1, 2**40])), BR),
        "class_name_control": (on_class(lambda c: c.__setitem__("name", pick(rng, CONTROL_NAMES))), BR),
        "class_name_10k": (on_class(lambda c: c.__setitem__("name", "N" * 10_000)), BR),
        "class_name_blank": (on_class(lambda c: c.__setitem__("name", pick(rng, ["", "  ", "\t"]))), BR),
        "class_name_like_base": (on_class(lambda c: c.__setitem__("name", "rOAD")), BR | frozenset({P.NAME_TAKEN})),
        "base_class_renamed": (on_class(lambda c: c.__setitem__("name", "Evil"), "base"), BR),
        "duplicate_class": (duplicate_class, BR),
        "classes_not_list": (setkey("classes", lambda p: "everything"), BR),
        "model_name_control": (setkey("model_name", lambda p: "\x1b[31m" + "m" * 300), BR),
        "unknown_top_field": (setkey("evil", lambda p: [1] * 1000), BR),
        "checksum_other_model": (setkey("model_checksum", lambda p: "f" * 64),
                                 frozenset({P.MODEL_MISMATCH, P.BAD_REQUEST})),
        "too_many_shots": (many_shots, frozenset({P.LIMIT, P.TOO_LARGE, P.BAD_REQUEST})),
        "too_many_classes": (many_classes, frozenset({P.LIMIT, P.TOO_LARGE, P.BAD_REQUEST})),
    }


def _envelope_mutations(rng: np.random.Generator, raw: bytes) -> dict[str, bytes]:
    """Damage to the pack's outer layer: checksum, format, the v1 layout."""
    env = msgpack.unpackb(raw, raw=False)
    out: dict[str, bytes] = {"format_wrong": pk(dict(env, format="edge-gfs-classes/999"))}
    if isinstance(env.get("content"), bytes):
        flipped = flip_bytes(rng, env["content"], 1, start=len(env["content"]) // 2)
        out["sha256_mismatch"] = pk(dict(env, content=flipped))
        out["sha256_missing"] = pk({k: v for k, v in env.items() if k != "sha256"})
        out["v1_layout"] = pk(dict(msgpack.unpackb(env["content"], raw=False), format="edge-gfs-classes/1"))
    return out


@kind("teach_import_corrupt", "teach", "refuse", BR | frozenset({P.MODEL_MISMATCH, P.LIMIT, P.TOO_LARGE, P.NAME_TAKEN}),
      weight=3)
def _(rng, m):
    """A real export of this node with one part corrupted and the checksum re-sealed: NaN/inf/huge statistics,
    negative counts, another dim, id 255, control characters or 10k chars in a name, a bogus colour, 65 shots,
    101 classes, another model's checksum; or the envelope damaged (sha256, format, v1 layout)."""
    muts = _mutations(rng)
    env_muts = _envelope_mutations(rng, m.pack)
    v = pick(rng, sorted(muts) + sorted(env_muts))
    if v in env_muts:
        return [req({"op": "import", "pack": env_muts[v]}, rng, variant=v, op="import",
                    codes=frozenset({P.BAD_REQUEST, P.MODEL_MISMATCH}))]
    edit, codes = muts[v]
    content, seal = open_pack(m.pack)
    if not isinstance(content, dict) or not edit(content):
        return [req({"op": "import", "pack": m.pack[: len(m.pack) // 2]}, rng, variant="truncated(fallback)",
                    op="import", codes=BR)]
    return [req({"op": "import", "pack": seal(content)}, rng, variant=v, op="import", codes=codes)]


# -- teach socket: valid requests mixed in --------------------------------------------------------------------
@kind("valid_ping", "teach", "accept", weight=1)
def _(rng, m):
    """ping on REQ or DEALER (with or without the empty delimiter), with unknown extra fields ignored."""
    v = pick(rng, ["req", "dealer", "dealer_no_delim", "extra_fields"])
    if v == "dealer":
        return [TeachMsg([b"", pk({"op": "ping"})], dealer=True, variant=v, op="ping")]
    if v == "dealer_no_delim":
        return [TeachMsg([pk({"op": "ping"})], dealer=True, variant=v, op="ping")]
    if v == "extra_fields":
        return [TeachMsg([pk({"op": "ping", "x": [1, {"y": b"z"}], "v": 1})], variant=v, op="ping")]
    return [TeachMsg([pk({"op": "ping"})], variant=v, op="ping")]


@kind("valid_list_export", "teach", "accept")
def _(rng, m):
    """list and export: the read-only ops still answer in full between hostile requests."""
    op = pick(rng, ["list", "export"])
    return [req({"op": op}, rng, variant=op, op=op)]


@kind("valid_teach_forget", "teach", "accept", weight=0.6)
def _(rng, m):
    """A real one-shot teach of a new class, then its forget: the node still learns after all the garbage."""
    name = "fuzz-valid-" + rtext(rng, 6, "abcdefghijklmnopqrstuvwxyz")
    return [req({"op": "teach", "name": name, "shots": [m.shot()], "create": True}, rng, variant="teach", op="teach"),
            req({"op": "forget", "name": name}, rng, variant="forget", op="forget")]


@kind("valid_import_forget", "teach", "accept", weight=0.4)
def _(rng, m):
    """The node's own pristine export imported back (classes reappear), then forgotten again."""
    return [req({"op": "import", "pack": m.pack}, rng, variant="import", op="import")] + \
        [req({"op": "forget", "name": n}, rng, variant="forget", op="forget") for n in m.pack_names]


# -- frame socket ---------------------------------------------------------------------------------------------
TOPIC = P.TOPIC_FRAME


def fmsg(payload: bytes, seq: int | None = None, wh: tuple[int, int] | None = None, variant: str = "",
         topic: bytes = TOPIC) -> FrameMsg:
    return FrameMsg([topic, payload], seq=seq, wh=wh, variant=variant)


def frame_of(m: Material, variant: str = "", **over: object) -> FrameMsg:
    """A frame message with some fields overridden; tracked by seq when the seq is the bench's own."""
    d = m.frame(**over)
    seq = d["seq"] if isinstance(d.get("seq"), int) and not isinstance(d.get("seq"), bool) else None
    wh = (d["width"], d["height"]) if all(isinstance(d.get(k), int) for k in ("width", "height")) else None
    return fmsg(pk(d), seq, wh, variant)


@kind("frame_garbage", "frame", "refuse")
def _(rng, m):
    """Random bytes as the payload."""
    return [fmsg(rbytes(rng, int(rng.integers(1, 4096))))]


@kind("frame_empty", "frame", "refuse")
def _(rng, m):
    """An empty payload, or a topic frame alone."""
    return [pick(rng, [fmsg(b"", variant="empty_payload"), FrameMsg([TOPIC], variant="topic_only"),
                       FrameMsg([TOPIC, b"", b""], variant="two_empty")])]


@kind("frame_truncated_msgpack", "frame", "refuse")
def _(rng, m):
    """A real frame message cut short."""
    full = pk(m.frame())
    return [fmsg(full[:int(rng.integers(1, len(full)))])]


@kind("frame_trailing_bytes", "frame", "refuse")
def _(rng, m):
    """A valid frame message with junk after it (msgpack ExtraData)."""
    d = m.frame()
    return [fmsg(pk(d) + rbytes(rng, int(rng.integers(1, 64))), d["seq"])]


@kind("frame_not_a_map", "frame", "refuse")
def _(rng, m):
    """Top level list/int/str/bin/nil, deep nesting, non-string keys."""
    v = pick(rng, ["list", "int", "str", "bin", "nil", "deep", "int_key"])
    payload = {"list": lambda: pk([1, 2]), "int": lambda: pk(5), "str": lambda: pk("frame"), "bin": lambda: pk(b"x"),
               "nil": lambda: pk(None), "deep": lambda: deep_nesting(int(rng.integers(600, 5000)), False),
               "int_key": lambda: pk({1: 2, "v": 1})}[v]()
    return [fmsg(payload, variant=v)]


FRAME_FIELDS: dict[str, type] = {"v": int, "seq": int, "stamp_ns": int, "frame_id": str, "encoding": str,
                                 "width": int, "height": int, "data": bytes}


@kind("frame_missing_field", "frame", "refuse")
def _(rng, m):
    """Each required field left out (or nil)."""
    d = m.frame()
    f = pick(rng, list(FRAME_FIELDS))
    if rng.random() < 0.5:
        del d[f]
    else:
        d[f] = None
    return [fmsg(pk(d), d.get("seq") if f != "seq" else None, variant=f)]


@kind("frame_wrong_types", "frame", "refuse", weight=1.5)
def _(rng, m):
    """Each field of another type (bool for int, str for bytes, NaN, lists, maps, ext)."""
    d = m.frame()
    f = pick(rng, list(FRAME_FIELDS))
    d[f] = wrong_value(rng, FRAME_FIELDS[f], allow_none=False)
    return [fmsg(pk(d), d["seq"] if f != "seq" else None, variant=f)]


@kind("frame_bad_version", "frame", "refuse")
def _(rng, m):
    """v other than 1: 0, 2, -1, 2^64-1."""
    v = pick(rng, [0, 2, -1, 2**64 - 1, 255])
    return [frame_of(m, str(v), v=v)]


@kind("frame_bad_encoding", "frame", "refuse")
def _(rng, m):
    """Encodings outside the list: case, spaces, control characters, 1 MB strings."""
    enc = pick(rng, ["JPEG", "jpg", " jpeg", "mono8", "h264", "", "\x1b[31mjpeg", "png\x00", "x" * 1_000_000])
    return [frame_of(m, repr(enc[:10]), encoding=enc)]


@kind("frame_nonpositive_size", "frame", "refuse")
def _(rng, m):
    """Width or height zero or negative (also with raw encodings, where the byte count is width*height*3)."""
    w, h = pick(rng, [(0, 360), (480, 0), (-480, 360), (480, -360), (-1, -1), (0, 0), (-(2**63), 1)])
    enc = pick(rng, ["jpeg", "bgr8", "rgb8"])
    data = b"" if enc != "jpeg" else m.frame_jpg[0]
    return [frame_of(m, f"{enc} {w}x{h}", width=w, height=h, encoding=enc, data=data)]


@kind("frame_huge_size", "frame", "refuse")
def _(rng, m):
    """Declared sizes of 65000, 2^31, 2^63-1 and 2^64-1 (raw: w*h*3 must not overflow or allocate)."""
    w, h = pick(rng, [(65000, 65000), (2**31, 2), (2**63 - 1, 2**63 - 1), (2**64 - 1, 1), (8193, 1), (1, 2**32)])
    enc = pick(rng, ["jpeg", "bgr8", "rgb8"])
    data = m.frame_jpg[0] if enc == "jpeg" else b"x"
    return [frame_of(m, f"{enc} {w}x{h}", width=w, height=h, encoding=enc, data=data)]


@kind("frame_wrong_declared_size", "frame", "refuse")
def _(rng, m):
    """A valid JPEG/PNG whose declared width/height differ from what it decodes to."""
    w, h = m.frame_wh
    dw, dh = pick(rng, [(1, 0), (0, -1), (-100, 50), (h - w, w - h), (480, 0), (-479, -359)])
    enc = pick(rng, ["jpeg", "png"])
    return [frame_of(m, f"{enc} {dw:+d},{dh:+d}", width=w + dw, height=h + dh, encoding=enc,
                     data=m.frame_jpg[0] if enc == "jpeg" else m.frame_png)]


@kind("frame_encoding_mismatch", "frame", "refuse")
def _(rng, m):
    """JPEG data declared png, PNG declared jpeg, raw pixels declared jpeg."""
    v = pick(rng, ["png_as_jpeg", "jpeg_as_png", "raw_as_jpeg"])
    data, enc = {"png_as_jpeg": (m.frame_png, "jpeg"), "jpeg_as_png": (m.frame_jpg[0], "png"),
                 "raw_as_jpeg": (m.frame_bgr, "jpeg")}[v]
    return [frame_of(m, v, encoding=enc, data=data)]


@kind("frame_raw_length_mismatch", "frame", "refuse")
def _(rng, m):
    """bgr8/rgb8 whose byte count is not width*height*3 (one byte short, one long, empty, a JPEG)."""
    raw = m.frame_bgr
    v = pick(rng, ["short", "long", "empty", "jpeg"])
    data = {"short": raw[:-1], "long": raw + b"\x00", "empty": b"", "jpeg": m.frame_jpg[0]}[v]
    return [frame_of(m, v, encoding=pick(rng, ["bgr8", "rgb8"]), data=data)]


@kind("frame_corrupt_image", "frame", "refuse")
def _(rng, m):
    """A JPEG/PNG signature followed by garbage, a PNG with flipped bytes, a JPEG header without scan data."""
    v = pick(rng, ["jpeg_magic", "png_magic", "png_flipped", "jpeg_no_scan"])
    jpg = m.frame_jpg[0]
    data, enc = {"jpeg_magic": (b"\xff\xd8\xff" + rbytes(rng, 2000), "jpeg"),
                 "png_magic": (b"\x89PNG\r\n\x1a\n" + rbytes(rng, 2000), "png"),
                 "png_flipped": (flip_bytes(rng, m.frame_png, 20, start=40), "png"),
                 "jpeg_no_scan": (jpg[:jpg.find(b"\xff\xda")], "jpeg")}[v]
    return [frame_of(m, v, encoding=enc, data=data)]


@kind("frame_truncated_png", "frame", "refuse")
def _(rng, m):
    """A real PNG frame cut at 5..95 %."""
    return [frame_of(m, "png", encoding="png", data=m.frame_png[:int(len(m.frame_png) * rng.uniform(0.05, 0.95))])]


@kind("frame_truncated_jpeg", "frame", "refuse")
def _(rng, m):
    """A real JPEG frame cut at 30..95 %: libjpeg fills the rest with grey; labelling it hands the robot a map of
    pixels the camera never saw."""
    jpg = pick(rng, m.frame_jpg)
    return [frame_of(m, "jpeg", data=jpg[:int(len(jpg) * rng.uniform(0.3, 0.95))])]


@kind("frame_jpeg_bitflips", "frame", "either")
def _(rng, m):
    """A real JPEG with bytes flipped in its scan data: may decode to garbage (accepting is fine), must not crash."""
    jpg = pick(rng, m.frame_jpg)
    scan = jpg.find(b"\xff\xda") + 20
    return [frame_of(m, "bitflips", data=flip_bytes(rng, jpg, int(rng.integers(1, 30)), start=scan))]


@kind("frame_jpeg_bomb", "frame", "refuse")
def _(rng, m):
    """A ~600-byte JPEG whose SOF says 65000x65000, declared as that or as a normal 480x360."""
    w, h = m.frame_wh
    declared = pick(rng, [(65000, 65000), (w, h)])
    return [frame_of(m, f"declared {declared[0]}x{declared[1]}", data=jpeg_bomb(65000, 65000, False),
                     width=declared[0], height=declared[1])]


@kind("frame_jpeg_bomb_stray", "frame", "refuse")
def _(rng, m):
    """65000x65000 (or 12000x12000, under OpenCV's own cap) with a stray byte before the SOF, declared 480x360."""
    w, h = m.frame_wh
    side = pick(rng, [65000, 65000, 12000])
    return [frame_of(m, str(side), data=jpeg_bomb(side, side, True), width=w, height=h)]


@kind("frame_png_bomb", "frame", "refuse")
def _(rng, m):
    """A tiny PNG whose IHDR says 100000x100000, declared 480x360 or 100000x100000."""
    w, h = m.frame_wh
    declared = pick(rng, [(100_000, 100_000), (w, h)])
    return [frame_of(m, f"declared {declared[0]}", encoding="png", data=png_bomb(100_000, 100_000),
                     width=declared[0], height=declared[1])]


@kind("frame_huge_frame_id", "frame", "refuse")
def _(rng, m):
    """frame_id over 256 characters (257 .. 1 MB)."""
    n = int(pick(rng, [257, 1000, 100_000, 1_000_000]))
    return [frame_of(m, str(n), frame_id="f" * n)]


@kind("frame_multipart", "frame", "refuse")
def _(rng, m):
    """Three parts, or a topic that only starts with `frame` (the SUB prefix match lets it in)."""
    d = m.frame()
    v = pick(rng, ["three_parts", "topic_suffix", "topic_only_payload_first"])
    if v == "three_parts":
        return [FrameMsg([TOPIC, pk(d), b"extra"], seq=d["seq"], variant=v)]
    if v == "topic_suffix":
        return [FrameMsg([TOPIC + b"s", pk(d)], seq=d["seq"], variant=v)]
    return [FrameMsg([TOPIC + pk(d)], seq=d["seq"], variant=v)]


@kind("frame_oversized", "frame", "refuse", weight=0.3, max_units=4)
def _(rng, m):
    """A frame message just over the 32 MiB frame cap (under the socket's 64 MiB)."""
    return [frame_of(m, "32MiB+", frame_id="fuzz", data=bytes(P.LIMITS.max_frame_bytes + int(rng.integers(1, 4096))),
                     encoding="bgr8")]


@kind("frame_control_frame_id", "frame", "either")
def _(rng, m):
    """frame_id with ANSI escapes, CR/LF, NUL (short enough to pass): echoed in labels, never raw into the log."""
    return [frame_of(m, "ctrl", frame_id=pick(rng, CONTROL_NAMES))]


def exif_orientation(jpg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment after SOI saying `orientation` (6 = rotate 90: decoders that honour it
    return height x width)."""
    ifd = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01" + \
        orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00"
    body = b"Exif\x00\x00" + ifd
    return jpg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpg[2:]


@kind("frame_format_variants", "frame", "accept")
def _(rng, m):
    """Valid frames in encodings a camera may really send: progressive or greyscale JPEG, restart markers, 4:4:4;
    greyscale, RGBA and 16-bit PNG. All of them are the declared size and must be labelled."""
    img = cv2.imdecode(np.frombuffer(m.frame_jpg[0], np.uint8), cv2.IMREAD_COLOR)
    v = pick(rng, ["progressive", "grey_jpeg", "restart", "jpeg444", "grey_png", "rgba_png", "png16"])
    if v == "progressive":
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    elif v == "grey_jpeg":
        data = jpeg_bytes(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    elif v == "restart":
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes()
    elif v == "jpeg444":
        flags = [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        data = cv2.imencode(".jpg", img, flags)[1].tobytes()
    elif v == "grey_png":
        data = png_bytes(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    elif v == "rgba_png":
        data = png_bytes(cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
    else:
        data = png_bytes(img.astype(np.uint16) * 257)
    return [frame_of(m, v, encoding="png" if v.endswith("png") or v == "png16" else "jpeg", data=data)]


@kind("frame_jpeg_exif_rotated", "frame", "either")
def _(rng, m):
    """A real frame with an Exif orientation (6 or 8: rotate 90) declared at its stored 480x360: OpenCV's
    IMREAD_COLOR honours Exif, so the node must either ignore the tag or refuse; it must never label a
    360x480 map as 480x360."""
    return [frame_of(m, "exif", data=exif_orientation(m.frame_jpg[0], pick(rng, [6, 8])))]


@kind("frame_seq_wrap", "frame", "accept")
def _(rng, m):
    """Valid frames whose seq wraps 2^64-1 -> 0 or goes back: counted as resets, each still segmented."""
    seq = pick(rng, [2**64 - 2, 2**64 - 1, 0, 1, 2**63, 2**63 - 1])
    return [frame_of(m, str(seq), seq=seq)]


@kind("frame_random_seq", "frame", "accept")
def _(rng, m):
    """Valid frames with random 64-bit and negative seqs and extreme stamps."""
    seq = int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64)) if rng.random() < 0.5 else \
        int(rng.integers(0, 2**63, dtype=np.int64)) * 2 + 1
    stamp = pick(rng, [0, -1, 2**64 - 1, -(2**63), time.time_ns()])
    return [frame_of(m, "random", seq=seq, stamp_ns=stamp)]


@kind("frame_tiny_valid", "frame", "accept")
def _(rng, m):
    """Valid frames of 1x1, 2x3 and 1x480 pixels (JPEG, PNG, bgr8): the resize path on degenerate shapes."""
    w, h = pick(rng, [(1, 1), (3, 2), (480, 1), (1, 360)])
    img = np.full((h, w, 3), 128, np.uint8)
    enc = pick(rng, ["jpeg", "png", "bgr8", "rgb8"])
    data = jpeg_bytes(img) if enc == "jpeg" else png_bytes(img) if enc == "png" else img.tobytes()
    return [frame_of(m, f"{enc} {w}x{h}", encoding=enc, data=data, width=w, height=h)]


# -- labels socket (the node's PUB: inbound it takes subscriptions only) ----------------------------------------
@dataclass
class SubMsg:
    """One subscription a client sends to the node's labels PUB (any bytes, up to the socket's 64 kB cap)."""

    topic: bytes
    variant: str = "subscribe"
    seq: int | None = None

    @property
    def size(self) -> int:
        return len(self.topic)

    @property
    def parts(self) -> list[bytes]:
        return [b"\x01" + self.topic]


@kind("labels_subscription_flood", "labels", "drop", weight=0.05, max_units=2, burst=250)
def _(rng, m):
    """250 distinct random subscriptions of 40..64 kB on the labels PUB: ZeroMQ keeps every prefix in a trie in
    the node's memory, for as long as the subscriber stays connected, whatever the topics the node publishes."""
    return [SubMsg(rbytes(rng, int(rng.integers(40_000, 64_000))))]


# =============================================================================================================
# the node and the wire
# =============================================================================================================
def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class NodeProcess:
    """`edge-gfs run` on free loopback ports; its stdout+stderr go to `log` (appended across restarts)."""

    def __init__(self, model: str, state: Path, log: Path, threads: int) -> None:
        self.model, self.state, self.log, self.threads = model, state, log, threads
        self.frames, self.labels, self.teach = free_endpoint(), free_endpoint(), free_endpoint()
        self.proc: subprocess.Popen | None = None
        self.exits: list[int] = []

    def args(self) -> list[str]:
        return [sys.executable, "-m", "edge_gfs.cli", "run", "--model", self.model, "--state", str(self.state),
                "--frames", self.frames, "--labels", self.labels, "--teach", self.teach, "--threads",
                str(self.threads), "--status-period", "0.2", "--classes-period", "1"]

    def start(self) -> None:
        env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.args(), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mem_kb(self) -> dict[str, int]:
        """VmHWM (peak) and VmRSS of the node, in kB; empty once it has exited."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return {}
        return {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in text.splitlines() if ":" in ln)
                if k in ("VmHWM", "VmRSS")}

    def stop(self, timeout_s: float = 20.0) -> tuple[int | None, float]:
        """SIGTERM; (exit code, seconds to exit); SIGKILL after timeout_s (exit code then is negative)."""
        if self.proc is None:
            return None, 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode, time.monotonic() - t0


class TeachLink:
    """One REQ and one DEALER socket to the node's ROUTER. A request without a reply in time closes and reopens
    the socket it went on (a REQ cannot send again; a DEALER would read the stale reply later)."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.ctx, self.endpoint = ctx, endpoint
        self.socks: dict[bool, zmq.Socket] = {}
        for dealer in (False, True):
            self._open(dealer)

    def _open(self, dealer: bool) -> None:
        old = self.socks.get(dealer)
        if old is not None:
            old.close(0)
        s = self.ctx.socket(zmq.DEALER if dealer else zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        self.socks[dealer] = s

    def exchange(self, msg: TeachMsg, timeout_s: float) -> list[bytes] | None:
        """Send, wait for one reply; None (and a fresh socket) after timeout_s."""
        s = self.socks[msg.dealer]
        try:
            s.send_multipart(msg.parts, copy=len(msg.parts[-1]) < 1 << 20)
        except zmq.ZMQError:
            self._open(msg.dealer)
            return None
        if s.poll(int(timeout_s * 1000)):
            return s.recv_multipart()
        self._open(msg.dealer)
        return None

    def call(self, obj: dict, timeout_s: float = 10.0) -> dict | None:
        """A bench-side request (ping, list, cleanup): the reply map, or None."""
        parts = self.exchange(TeachMsg([pk(obj)]), timeout_s)
        if parts is None:
            return None
        try:
            reply = msgpack.unpackb(parts[-1], raw=False)
        except Exception:
            return None
        return reply if isinstance(reply, dict) else None

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)


class Listener(threading.Thread):
    """SUB to the node's labels endpoint: remembers which seqs got label maps (and their size), the newest
    status and classes messages. Runs for the whole bench so the node's PUB never queues for us."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        super().__init__(name="listener", daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 10000)
        for t in (P.TOPIC_LABELS, P.TOPIC_STATUS, P.TOPIC_CLASSES):
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        self.sock.connect(endpoint)
        self.cond = threading.Condition()
        self.labels: dict[int, tuple[float, int, int]] = {}  # seq -> (monotonic receipt, width, height)
        self.status: tuple[float, dict] | None = None
        self.classes: tuple[float, dict] | None = None
        self.junk = 0  # messages from the node we could not parse (should stay 0)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            if not self.sock.poll(100):
                continue
            parts = self.sock.recv_multipart()
            now = time.monotonic()
            try:
                topic, msg = parts[0], msgpack.unpackb(parts[1], raw=False)
            except Exception:
                self.junk += 1
                continue
            with self.cond:
                if topic == P.TOPIC_LABELS and isinstance(msg, dict):
                    self.labels[msg.get("seq")] = (now, msg.get("width"), msg.get("height"))
                    if len(self.labels) > 20000:
                        cutoff = now - 120
                        self.labels = {k: v for k, v in self.labels.items() if v[0] >= cutoff}
                elif topic == P.TOPIC_STATUS and isinstance(msg, dict):
                    self.status = (now, msg)
                elif topic == P.TOPIC_CLASSES and isinstance(msg, dict):
                    self.classes = (now, msg)
                self.cond.notify_all()
        self.sock.close(0)

    def wait_label(self, seq: int, timeout_s: float) -> float | None:
        """Receipt time of the label map of `seq`, or None after timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while seq not in self.labels:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.labels[seq][0]

    def labels_since(self, seqs: Iterable[int], since: float) -> dict[int, tuple[int, int]]:
        with self.cond:
            return {s: (v[1], v[2]) for s in seqs if (v := self.labels.get(s)) is not None and v[0] >= since}

    def wait_status(self, after: float, timeout_s: float) -> dict | None:
        """The first status message received after `after` (monotonic), or None."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.status is None or self.status[0] <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.status[1]


class FramePub:
    """The bench's frames endpoint: a bound XPUB (it sees the node subscribe), with a deep send queue so a burst
    is never dropped on our side."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100000)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # a restarted node's subscription shows up again
        self.sock.bind(endpoint)

    def wait_subscriber(self, timeout_s: float) -> bool:
        if not self.sock.poll(int(timeout_s * 1000)):
            return False
        while self.sock.poll(0):
            self.sock.recv()
        return True

    def send(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts, copy=len(parts[-1]) < 1 << 20)

    def close(self) -> None:
        self.sock.close(0)


class LogWatcher:
    """Reads what the node appended to its log since the last call, and sizes it up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.in_traceback = False

    def take(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                new = f.read()
        except OSError:
            return {"bytes": 0, "max_line": 0, "ctrl_lines": 0, "forged_lines": 0, "decoder_noise": 0,
                    "tracebacks": 0, "sample": b""}
        self.offset += len(new)
        lines = new.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        out = {"bytes": len(new), "max_line": max((len(ln) for ln in lines), default=0), "ctrl_lines": 0,
               "forged_lines": 0, "decoder_noise": 0, "tracebacks": 0, "sample": b""}
        for ln in lines:
            if ln.startswith(b"Traceback"):
                self.in_traceback = True
                out["tracebacks"] += 1
            elif LOG_PREFIX.match(ln):
                self.in_traceback = False
            if CONTROL.search(ln.rstrip(b"\r")):
                out["ctrl_lines"] += 1
                out["sample"] = out["sample"] or ln[:200]
            if not LOG_PREFIX.match(ln) and not self.in_traceback:
                if DECODER_NOISE.match(ln):
                    out["decoder_noise"] += 1
                else:
                    out["forged_lines"] += 1
                    out["sample"] = out["sample"] or ln[:200]
        return out


# =============================================================================================================
# bookkeeping
# =============================================================================================================
@dataclass
class KindStats:
    """Everything measured for one kind. Counters are of messages unless named otherwise."""

    sent: int = 0
    units: int = 0
    bytes_sent: int = 0
    replies: Counter = field(default_factory=Counter)  # "ok" or the error code; "no_reply" for silence
    internal: int = 0
    wrong_accepts: int = 0
    wrong_refusals: int = 0
    wrong_codes: int = 0
    bad_replies: int = 0  # not a msgpack map with ok/error as the contract says
    big_replies: int = 0  # error replies over REPLY_CAP
    hangs: int = 0
    dropped: int = 0  # no reply where the socket cap is the documented outcome
    crashes: int = 0
    silent_state_changes: int = 0
    latency_ms: list[float] = field(default_factory=list)
    max_reply_bytes: int = 0
    log_bytes: int = 0
    max_log_line: int = 0
    log_ctrl_lines: int = 0
    log_forged_lines: int = 0
    log_decoder_noise: int = 0
    log_tracebacks: int = 0
    rss_hwm_growth_kb: int = 0
    rss_kept_kb: int = 0  # VmRSS growth over the kind's units (memory still held after them)
    memory_spikes: int = 0  # units after which the node's peak or resident memory grew by over MEMORY_SPIKE_KB
    variants: dict = field(default_factory=lambda: defaultdict(Counter))
    # frame kinds
    bursts: int = 0
    deaf: int = 0
    labels_for_hostile: int = 0
    labels_wrong_size: int = 0
    accepted_frames: int = 0
    status_deltas: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # a few error messages seen, to read in the report

    def summary(self, k: Kind) -> dict:
        lat = np.array(self.latency_ms) if self.latency_ms else None
        out = {"socket": k.socket, "expect": k.expect, "codes": sorted(k.codes), "sent": self.sent, "units": self.units,
               "bytes_sent": self.bytes_sent, "replies": dict(self.replies), "internal": self.internal,
               "wrong_accepts": self.wrong_accepts, "wrong_refusals": self.wrong_refusals,
               "wrong_codes": self.wrong_codes, "bad_replies": self.bad_replies, "big_replies": self.big_replies,
               "hangs": self.hangs, "dropped": self.dropped, "crashes": self.crashes,
               "silent_state_changes": self.silent_state_changes,
               "latency_ms": None if lat is None else {"p50": round(float(np.percentile(lat, 50)), 2),
                                                        "p99": round(float(np.percentile(lat, 99)), 2),
                                                        "max": round(float(lat.max()), 2)},
               "max_reply_bytes": self.max_reply_bytes, "log_bytes": self.log_bytes, "max_log_line": self.max_log_line,
               "log_ctrl_lines": self.log_ctrl_lines, "log_forged_lines": self.log_forged_lines,
               "log_decoder_noise": self.log_decoder_noise, "log_tracebacks": self.log_tracebacks,
               "rss_hwm_growth_kb": self.rss_hwm_growth_kb, "rss_kept_kb": self.rss_kept_kb,
               "memory_spikes": self.memory_spikes,
               "variants": {v: dict(c) for v, c in sorted(self.variants.items())}, "examples": self.examples}
        if k.socket != "teach":
            out |= {"bursts": self.bursts, "deaf": self.deaf, "labels_for_hostile": self.labels_for_hostile,
                    "labels_wrong_size": self.labels_wrong_size, "accepted_frames": self.accepted_frames,
                    "status_deltas": dict(self.status_deltas)}
        return out


# which counters make a kind fail, and how each is read in the report
CHECKS: dict[str, str] = {
    "crashes": "the node process exited",
    "hangs": "no reply within --timeout (teach) / no label map for a good frame after the burst (frames: `deaf`)",
    "deaf": "a good frame after the burst got no label map (twice 10 s)",
    "internal": "reply code `internal` (teach) or status `errors` grew (frames): an exception the checks missed",
    "wrong_accepts": "ok:true (teach) or a label map (frames) for input that must be refused",
    "wrong_refusals": "a valid request refused",
    "wrong_codes": "refused, but with a code outside the kind's expected set",
    "bad_replies": "a reply that is not a msgpack map with ok / error.code / error.message",
    "big_replies": f"an error reply over {REPLY_CAP} bytes",
    "silent_state_changes": "the classes version moved although every request was refused",
    "log_line_too_long": f"a log line over {LOG_LINE_CAP} bytes",
    "log_ctrl_lines": "client-supplied control characters (ANSI, CR, NUL, bidi) written raw into the log",
    "log_forged_lines": "log lines without the node's prefix (a client-forged line, or unprefixed output)",
    "labels_wrong_size": "a label map whose size is not the frame's declared size",
    "memory_spike": "the node's peak RSS, or the RSS it kept, grew by over 200 MB during one unit of this kind",
}
MEMORY_SPIKE_KB = 200 * 1024


def failures_of(s: KindStats) -> dict[str, int]:
    f = {"crashes": s.crashes, "hangs": s.hangs, "deaf": s.deaf,
         "internal": s.internal + s.status_deltas.get("errors", 0), "wrong_accepts": s.wrong_accepts +
         s.labels_for_hostile, "wrong_refusals": s.wrong_refusals, "wrong_codes": s.wrong_codes,
         "bad_replies": s.bad_replies, "big_replies": s.big_replies, "silent_state_changes": s.silent_state_changes,
         "log_line_too_long": int(s.max_log_line > LOG_LINE_CAP), "log_ctrl_lines": s.log_ctrl_lines,
         "log_forged_lines": s.log_forged_lines, "labels_wrong_size": s.labels_wrong_size,
         "memory_spike": s.memory_spikes}
    return {k: v for k, v in f.items() if v}


# =============================================================================================================
# the run
# =============================================================================================================
def kind_rng(seed: int, k: Kind, n: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(k.name.encode()), n])


def allocate(kinds: list[Kind], messages: int, burst: int) -> dict[str, int]:
    """Hostile messages per kind by weight (largest remainder), at least one unit each, heavy kinds capped; valid
    kinds get about one request per 20 hostile ones on top."""
    hostile = [k for k in kinds if not k.valid]
    valid = [k for k in kinds if k.valid]
    out: dict[str, int] = {}
    floor = {k.name: k.burst or 1 for k in kinds}  # a kind with its own burst size runs at least one whole unit

    def share(ks: list[Kind], total: int) -> None:
        free = list(ks)
        left = total
        while free and left > 0:
            w = sum(k.weight for k in free)
            raw = {k.name: left * k.weight / w for k in free}
            got = {n: max(floor[n], int(v)) for n, v in raw.items()}
            rest = left - sum(got.values())
            for n in sorted(raw, key=lambda n: raw[n] - int(raw[n]), reverse=True)[:max(rest, 0)]:
                got[n] += 1
            capped = False
            for k in list(free):
                cap = None if k.max_units is None else k.max_units * (1 if k.socket == "teach" else k.burst or burst)
                if cap is not None and got[k.name] > cap:
                    out[k.name] = cap
                    left -= cap
                    free.remove(k)
                    capped = True
            if not capped:
                out.update({k.name: got[k.name] for k in free})
                return
    share(hostile, messages)
    share(valid, max(len(valid), messages // 20))
    return out


@dataclass
class Unit:
    kind: Kind
    n: int  # this kind's n-th unit: seeds its generator
    size: int  # messages (frame bursts) or 1 (teach: the generator decides)


class Fuzzer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "repro").mkdir(exist_ok=True)
        self.log_path = self.out / "fuzz-node.log"
        self.log_path.write_bytes(b"")
        self.state_dir = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="fuzz-state-"))
        self.kinds = [k for k in KINDS if not args.only or k.name in args.only or k.valid]
        self.stats: dict[str, KindStats] = {k.name: KindStats() for k in self.kinds}
        self.ctx = zmq.Context()
        self.node = NodeProcess(args.model, self.state_dir, self.log_path, args.threads)
        self.material = load_material()
        self.repro_counts: Counter = Counter()
        self.failures: list[dict] = []
        self.restarts = 0
        self.version = 0
        self.baseline: list[dict] = []
        self.teach: TeachLink | None = None
        self.listener: Listener | None = None
        self.pub: FramePub | None = None
        self.crash_logs: list[dict] = []
        self.say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)

    # -- node lifecycle ---------------------------------------------------------------------------------------
    def connect(self, first: bool) -> None:
        """Start (or restart) the node and wait until it answers ping and subscribes to our frames."""
        if first:
            self.pub = FramePub(self.ctx, self.node.frames)
            self.listener = Listener(self.ctx, self.node.labels)
            self.listener.start()
        self.node.start()
        if self.teach is not None:
            self.teach.close()
        self.teach = TeachLink(self.ctx, self.node.teach)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if not self.node.alive():
                raise SystemExit(f"the node exited at start with {self.node.proc.returncode}; log: {self.log_path}")
            reply = self.teach.call({"op": "ping"}, 1.0)
            if reply and reply.get("ok"):
                self.version = int(reply["version"])
                break
        else:
            raise SystemExit(f"the node did not answer within 240 s; log: {self.log_path}")
        self.pub.wait_subscriber(60)
        deadline = time.monotonic() + 60
        while self.probe_frame(1.0, tries=1) is None:  # the SUB may join a moment after its first ping reply
            if time.monotonic() > deadline:
                raise SystemExit(f"no label map for a good frame within 60 s of the start; log: {self.log_path}")

    def setup_pack(self) -> None:
        """A real class pack from this node: a novel class and context on a base class, exported, then forgotten,
        so every corrupted pack differs from something the node itself wrote."""
        m = self.material
        listed = self.teach.call({"op": "list"})
        m.base_names = tuple(c["name"] for c in listed["classes"] if c["kind"] == "base")
        road = next((n for n in m.base_names if n.lower() == "road"), m.base_names[0])
        taught = [self.teach.call({"op": "teach", "name": "fuzzpack", "shots": [m.shot()]}, 60),
                  self.teach.call({"op": "teach", "name": road, "shots": [m.shot()]}, 60)]
        if not all(r and r.get("ok") for r in taught):
            raise SystemExit(f"could not teach the classes of the reference pack: {taught}")
        exported = self.teach.call({"op": "export"})
        m.pack = exported["pack"]
        m.pack_names = ("fuzzpack", road)
        for n in m.pack_names:
            self.teach.call({"op": "forget", "name": n})
        listed = self.teach.call({"op": "list"})
        self.baseline = listed["classes"]
        self.version = int(listed["version"])

    def restart_after_crash(self, k: Kind) -> None:
        code = self.node.proc.returncode
        self.node.exits.append(code)
        tail = self.log_path.read_bytes()[-3000:].decode(errors="replace").splitlines()[-25:]
        self.crash_logs.append({"kind": k.name, "exit_code": code, "log_tail": tail})
        self.say(f"node exited with {code} during {k.name}; restarting ({self.restarts + 1})")
        self.restarts += 1
        if self.restarts > self.args.max_restarts:
            raise SystemExit(f"the node crashed {self.restarts} times; stopping (log: {self.log_path})")
        self.connect(first=False)
        self.restore_baseline()

    def restore_baseline(self) -> int:
        """Undo what a wrongly accepted request taught: forget every class not in the baseline, and taught context
        on base classes that had none. Returns the number of forgets sent."""
        listed = self.teach.call({"op": "list"})
        if not listed:
            return 0
        base = {c["name"]: c for c in self.baseline}
        n = 0
        for c in listed["classes"]:
            if c["name"] not in base or c.get("shots") != base[c["name"]].get("shots"):
                self.teach.call({"op": "forget", "name": c["name"]})
                n += 1
        ping = self.teach.call({"op": "ping"})
        if ping:
            self.version = int(ping["version"])
        return n

    # -- units ------------------------------------------------------------------------------------------------
    def schedule(self) -> list[Unit]:
        counts = allocate(self.kinds, self.args.messages, self.args.burst)
        units: list[Unit] = []
        for k in self.kinds:
            total = counts.get(k.name, 0)
            if k.socket != "teach":
                b = k.burst or self.args.burst
                sizes = [b] * (total // b) + ([total % b] if total % b else [])
            else:
                sizes = [1] * total
            units += [Unit(k, n, s) for n, s in enumerate(sizes)]
        order = np.random.default_rng(self.args.seed).permutation(len(units))
        return [units[i] for i in order]

    def run_teach_unit(self, u: Unit) -> tuple[list[TeachMsg], dict[str, int]]:
        """Send a unit's requests one by one and judge each reply against the kind's expectation; then a ping
        (alive? version moved only where something was accepted?) and, if something hostile got in, undo it so the
        next units start from the same classes. Returns the messages and the failed checks with their counts."""
        k, st = u.kind, self.stats[u.kind.name]
        msgs: list[TeachMsg] = k.gen(kind_rng(self.args.seed, k, u.n), self.material)
        bad: Counter = Counter()
        accepted_change = False
        wrongly_changed = False
        for msg in msgs:
            expect, codes = msg.expect or k.expect, msg.codes or k.codes
            t0 = time.perf_counter()
            timeout = 3.0 if expect == "drop" else self.args.timeout
            parts = self.teach.exchange(msg, timeout)
            ms = (time.perf_counter() - t0) * 1000
            st.sent += 1
            st.bytes_sent += msg.size
            variant = st.variants[msg.variant or "-"]
            if parts is None:
                if not self.node.alive():
                    break
                if expect == "drop":
                    st.dropped += 1
                    st.replies["no_reply"] += 1
                    variant["no_reply"] += 1
                else:
                    st.hangs += 1
                    bad["hangs"] += 1
                    variant["HANG"] += 1
                continue
            st.latency_ms.append(ms)
            body = parts[-1]
            st.max_reply_bytes = max(st.max_reply_bytes, len(body))
            try:
                reply = msgpack.unpackb(body, raw=False)
                assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
                if not reply["ok"]:
                    err = reply["error"]
                    assert isinstance(err, dict) and isinstance(err.get("code"), str)
                    assert isinstance(err.get("message"), str)
            except Exception:
                st.bad_replies += 1
                bad["bad_replies"] += 1
                variant["BAD_REPLY"] += 1
                continue
            if reply["ok"]:
                st.replies["ok"] += 1
                variant["ok"] += 1
                if isinstance(reply.get("version"), int) and msg.op in ("teach", "forget", "import"):
                    if reply["version"] != self.version:
                        accepted_change = True
                    self.version = reply["version"]
                if expect == "refuse":
                    st.wrong_accepts += 1
                    bad["wrong_accepts"] += 1
                    wrongly_changed = wrongly_changed or msg.op in ("teach", "import", "forget")
                continue
            code = reply["error"]["code"]
            st.replies[code] += 1
            variant[code] += 1
            if len(st.examples) < 3 and reply["error"]["message"][:160] not in st.examples:
                st.examples.append(reply["error"]["message"][:160])
            if len(body) > REPLY_CAP:
                st.big_replies += 1
                bad["big_replies"] += 1
            if code == P.INTERNAL:
                st.internal += 1
                bad["internal"] += 1
            elif expect == "accept":
                st.wrong_refusals += 1
                bad["wrong_refusals"] += 1
            elif expect in ("refuse", "drop") and code not in codes:
                st.wrong_codes += 1
                bad["wrong_codes"] += 1
        if self.node.alive():
            ping = self.teach.call({"op": "ping"}, self.args.timeout)
            if ping is None and self.node.alive():
                st.hangs += 1
                bad["hangs"] += 1
            elif ping is not None and ping.get("version") != self.version:
                if not accepted_change:
                    st.silent_state_changes += 1
                    bad["silent_state_changes"] += 1
                self.version = ping.get("version", self.version)
            if wrongly_changed or (accepted_change and not k.valid):  # valid kinds undo their own changes
                self.restore_baseline()
        return msgs, dict(bad)

    def probe_frame(self, timeout_s: float, tries: int = 2) -> float | None:
        """A good CamVid frame; ms until its label map, or None if none came (`tries` frames, timeout_s each)."""
        m = self.material
        for _ in range(tries):
            d = m.frame(data=m.frame_jpg[int(m.seq) % len(m.frame_jpg)])
            t0 = time.monotonic()
            self.pub.send([TOPIC, pk(d)])
            got = self.listener.wait_label(d["seq"], timeout_s)
            if got is not None:
                return (got - t0) * 1000
        return None

    def run_frame_unit(self, u: Unit) -> tuple[list[FrameMsg], dict[str, int]]:
        """A burst of one kind's frames --gap apart (so the idle node takes each into its slot), a good frame that
        must get its label map, and the status counters before and after. Label maps for the burst's own seqs
        are wrong accepts for a `refuse` kind; bad_frames growth is a wrong refusal for an `accept` kind."""
        k, st = u.kind, self.stats[u.kind.name]
        rng = kind_rng(self.args.seed, k, u.n)
        msgs: list[FrameMsg] = [g for _ in range(u.size) for g in k.gen(rng, self.material)]
        before = self.listener.wait_status(time.monotonic(), 5.0) or {}
        t_start = time.monotonic()
        for msg in msgs:
            self.pub.send(msg.parts)
            st.sent += 1
            st.bytes_sent += msg.size
            st.variants[msg.variant or "-"]["sent"] += 1
            time.sleep(self.args.gap)
        st.bursts += 1
        bad: Counter = Counter()
        time.sleep(0.05)
        probe_ms = self.probe_frame(10.0) if self.node.alive() else None
        if probe_ms is None:
            if self.node.alive():
                st.deaf += 1
                bad["deaf"] += 1
            return msgs, dict(bad)
        st.latency_ms.append(probe_ms)
        after = self.listener.wait_status(time.monotonic(), 5.0) or {}
        for key, v in after.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(before.get(key), (int, float)):
                if key in ("fps", "threads") or key.endswith(("_s", "_ms")) or key.startswith("latency"):
                    continue  # gauges, not counters
                d = v - before[key]
                if d:
                    st.status_deltas[key] += d
        if after.get("errors", 0) - before.get("errors", 0) > 0:
            bad["internal"] += 1
        tracked = {msg.seq: msg for msg in msgs if msg.seq is not None}
        got = self.listener.labels_since(tracked, t_start)
        st.accepted_frames += len(got)
        for seq, wh in got.items():
            st.variants[tracked[seq].variant or "-"]["labelled"] += 1
            if tracked[seq].wh is not None and wh != tracked[seq].wh:
                st.labels_wrong_size += 1
                bad["labels_wrong_size"] += 1
        if k.expect == "refuse" and got:
            st.labels_for_hostile += len(got)
            bad["wrong_accepts"] += len(got)
        refused = after.get("bad_frames", 0) - before.get("bad_frames", 0)
        if k.expect == "accept" and refused > 0:  # valid (if odd) frames the node threw away
            st.wrong_refusals += refused
            bad["wrong_refusals"] += refused
        return msgs, dict(bad)

    def run_labels_unit(self, u: Unit) -> tuple[list[SubMsg], dict[str, int]]:
        """Subscribe a burst of topics from a fresh SUB, check the node still publishes, then disconnect and note
        how much of the memory it grew stays (VmRSS after the subscriber left)."""
        k, st = u.kind, self.stats[u.kind.name]
        rng = kind_rng(self.args.seed, k, u.n)
        msgs: list[SubMsg] = [g for _ in range(u.size) for g in k.gen(rng, self.material)]
        rss0 = self.node.mem_kb().get("VmRSS", 0)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.node.labels)
        for msg in msgs:
            sub.setsockopt(zmq.SUBSCRIBE, msg.topic)
            st.sent += 1
            st.bytes_sent += msg.size
        st.bursts += 1
        bad: Counter = Counter()
        time.sleep(1.0)  # let the node's I/O thread take them in
        t0 = time.monotonic()
        got = self.listener.wait_status(t0, 10.0)
        if got is None and self.node.alive():
            st.deaf += 1
            bad["deaf"] += 1
        else:
            st.latency_ms.append((time.monotonic() - t0) * 1000)
        grown = self.node.mem_kb().get("VmRSS", 0) - rss0
        sub.close(0)
        time.sleep(1.0)
        kept = self.node.mem_kb().get("VmRSS", 0) - rss0
        st.status_deltas["rss_grown_kb"] += grown
        st.status_deltas["rss_kept_after_disconnect_kb"] += kept
        return msgs, dict(bad)

    # -- reproducers ------------------------------------------------------------------------------------------
    def save_repro(self, k: Kind, u: Unit, msgs: list, bad: dict[str, int]) -> None:
        for check in bad:
            key = (k.name, check)
            if self.repro_counts[key] >= REPROS_PER_CHECK:
                continue
            self.repro_counts[key] += 1
            regen = (f"python bench/fuzz.py --only {k.name} --seed {self.args.seed} "
                     f"--messages {max(u.n + 1, 1) * max(u.size, 1)} --out /tmp/fuzz_{k.name}")
            size = sum(m.size for m in msgs)
            path = None
            if size <= REPRO_CAP:
                path = self.out / "repro" / f"{k.name}.{check}.{self.repro_counts[key] - 1}.msgpack"
                path.write_bytes(pk({"kind": k.name, "socket": k.socket, "check": check, "seed": self.args.seed,
                                     "unit": u.n, "messages": [{"parts": m.parts, "dealer": getattr(m, "dealer", False),
                                                                "variant": m.variant} for m in msgs]}))
            self.failures.append({"kind": k.name, "check": check, "unit": u.n, "count": bad[check],
                                  "variants": sorted({m.variant for m in msgs}), "bytes": size,
                                  "repro": str(path) if path else None, "regenerate": regen})

    # -- main loop --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm import tqdm
        t_start = time.monotonic()
        self.connect(first=True)
        self.setup_pack()
        watcher = LogWatcher(self.log_path)
        log_start = self.log_path.stat().st_size
        mem0 = self.node.mem_kb()
        units = self.schedule()
        total = sum(1 if u.kind.socket == "teach" else u.size for u in units)
        bar = tqdm(total=total, unit="msg", disable=self.args.quiet, dynamic_ncols=True, smoothing=0.05)
        self.say = bar.write  # messages between progress-bar updates
        n_bad = Counter()
        for u in units:
            k, st = u.kind, self.stats[u.kind.name]
            mem_before = self.node.mem_kb()
            if k.socket == "teach":
                msgs, bad = self.run_teach_unit(u)
                if len(msgs) != 1:
                    bar.total += len(msgs) - 1
            elif k.socket == "frame":
                msgs, bad = self.run_frame_unit(u)
            else:
                msgs, bad = self.run_labels_unit(u)
            st.units += 1
            if not self.node.alive():
                st.crashes += 1
                bad["crashes"] = 1
            else:
                mem_after = self.node.mem_kb()
                peak = mem_after.get("VmHWM", 0) - mem_before.get("VmHWM", 0)  # 0 under an earlier, higher peak
                kept = mem_after.get("VmRSS", 0) - mem_before.get("VmRSS", 0)  # so also what the unit left resident
                st.rss_hwm_growth_kb += max(0, peak)
                st.rss_kept_kb += max(0, kept)
                if max(peak, kept) > MEMORY_SPIKE_KB:
                    st.memory_spikes += 1
                    bad["memory_spike"] = 1
            lg = watcher.take()
            st.log_bytes += lg["bytes"]
            st.max_log_line = max(st.max_log_line, lg["max_line"])
            st.log_ctrl_lines += lg["ctrl_lines"]
            st.log_forged_lines += lg["forged_lines"]
            st.log_decoder_noise += lg["decoder_noise"]
            st.log_tracebacks += lg["tracebacks"]
            for key, cond in (("log_ctrl_lines", lg["ctrl_lines"]), ("log_forged_lines", lg["forged_lines"]),
                              ("log_line_too_long", lg["max_line"] > LOG_LINE_CAP)):
                if cond:
                    bad[key] = int(cond)
            if bad:
                self.save_repro(k, u, msgs, bad)
                n_bad.update(bad)
            bar.update(len(msgs))
            bar.set_postfix({c: n for c, n in n_bad.items()} or {"ok": "all"}, refresh=False)
            if bad.get("crashes"):
                self.restart_after_crash(k)
        bar.close()
        return self.finish(t_start, log_start, mem0)

    def finish(self, t_start: float, log_start: int, mem0: dict[str, int]) -> dict:
        """End checks: class list as at the start, the registry file loads, the node stops cleanly."""
        final: dict = {"node_alive": self.node.alive()}
        listed = self.teach.call({"op": "list"}, 30) if self.node.alive() else None
        final["classes_unchanged"] = bool(listed) and listed["classes"] == self.baseline
        if listed and not final["classes_unchanged"]:
            start = {c["id"]: c for c in self.baseline}
            end = {c["id"]: c for c in listed["classes"]}
            final["classes_diff"] = {"added": [c for i, c in end.items() if i not in start],
                                     "removed": [c for i, c in start.items() if i not in end],
                                     "changed": [[start[i], c] for i, c in end.items() if i in start and start[i] != c]}
        mem = self.node.mem_kb()
        log_end = self.log_path.stat().st_size
        code, stop_s = self.node.stop()
        final |= {"exit_code": code, "stop_s": round(stop_s, 2)}
        try:
            from edge_gfs.node.registry import StateStore  # read-only: the node has exited and released it
            reg = StateStore(self.state_dir).load()
            final["registry_loads"] = reg is not None
            final["registry_classes_match"] = bool(listed) and reg is not None and reg.classes() == listed["classes"]
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            final["registry_loads"] = False
            final["registry_error"] = f"{type(e).__name__}: {e}"[:300]
        self.listener.stop_event.set()
        self.pub.close()
        self.teach.close()
        kinds = {k.name: self.stats[k.name].summary(k) for k in self.kinds}
        failing = {k.name: f for k in self.kinds if (f := failures_of(self.stats[k.name]))}
        end_checks = {"node_alive": final["node_alive"], "classes_unchanged": final["classes_unchanged"],
                      "registry_loads": final.get("registry_loads", False), "clean_exit": code == 0}
        totals = Counter()
        for k in self.kinds:
            totals["hostile" if not k.valid else "valid"] += self.stats[k.name].sent
            totals[k.socket] += self.stats[k.name].sent
        return {
            "command": " ".join(shlex.quote(a) for a in ["python", "bench/fuzz.py", *sys.argv[1:]]),
            "seed": self.args.seed, "messages_requested": self.args.messages, "sent": dict(totals),
            "kinds_teach": sum(k.socket == "teach" and not k.valid for k in self.kinds),
            "kinds_frame": sum(k.socket == "frame" for k in self.kinds),
            "runtime_s": round(time.monotonic() - t_start, 1),
            "host": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "node": {"model": self.args.model, "threads": self.args.threads, "restarts": self.restarts,
                     "exits": self.node.exits, "crash_logs": self.crash_logs,
                     "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1),
                     "rss_start_mb": round(mem0.get("VmRSS", 0) / 1024, 1),
                     "rss_end_mb": round(mem.get("VmRSS", 0) / 1024, 1),
                     "log_growth_bytes": log_end - log_start, "log": str(self.log_path),
                     "state": str(self.state_dir), "listener_junk": self.listener.junk},
            "end_checks": end_checks, "final": final,
            "passed": not failing and all(end_checks.values()),
            "failing_kinds": failing, "failures": self.failures, "checks": CHECKS,
            "kinds": kinds, "why": {k.name: k.why for k in self.kinds},
        }


# =============================================================================================================
# report
# =============================================================================================================
def _codes_note(codes: list[str]) -> str:
    """' (bad_request)' for a short list of expected codes, ' (any)' for the any-refusal set."""
    if not codes:
        return ""
    return f" ({', '.join(codes)})" if len(codes) <= 3 else " (any)"


def _codes(replies: dict) -> str:
    return ", ".join(f"{c} {n}" for c, n in sorted(replies.items(), key=lambda x: -x[1])) or "-"


def _lat(s: dict) -> tuple[str, str]:
    lat = s.get("latency_ms")
    return ("-", "-") if not lat else (f"{lat['p50']:.1f}", f"{lat['p99']:.1f}")


def write_markdown(res: dict, path: Path) -> None:
    L: list[str] = ["# Hostile-input fuzz of `edge-gfs run` (issue 13)", "",
                    f"Command: `{res['command']}`", ""]
    sent = res["sent"]
    node = res["node"]
    L += [f"{sent.get('hostile', 0)} hostile messages ({res['kinds_teach']} teach kinds, {res['kinds_frame']} frame "
          f"kinds) and {sent.get('valid', 0)} valid requests mixed in; teach socket {sent.get('teach', 0)}, frame "
          f"socket {sent.get('frame', 0)}. Seed {res['seed']}, {res['runtime_s']} s, {res['host']['cpus']} CPUs "
          f"(load {res['host']['loadavg'][0]:.1f} at the end). Node: `{node['model']}`, --threads {node['threads']}, "
          f"peak RSS {node['peak_rss_mb']} MB (start {node['rss_start_mb']} MB, end {node['rss_end_mb']} MB), log "
          f"growth {node['log_growth_bytes']} bytes, restarts after a crash: {node['restarts']}.", ""]
    L += ["## Verdict", "", f"**{'PASS' if res['passed'] else 'FAIL'}**", "",
          "| end check | result |", "|---|---|"]
    for c, v in res["end_checks"].items():
        L.append(f"| {c} | {'yes' if v else '**NO**'} |")
    f = res["final"]
    if f.get("classes_diff"):
        L += ["", "Class list at the end vs the start: " + json.dumps(f["classes_diff"])]
    for c in res["node"]["crash_logs"]:
        L += ["", f"Crash during `{c['kind']}` (exit code {c['exit_code']}), last log lines:", "", "```",
              *c["log_tail"][-12:], "```"]
    loads = "loads" if f.get("registry_loads") else "DOES NOT LOAD: " + f.get("registry_error", "")
    L += ["", f"Node stop: exit code {f.get('exit_code')} after {f.get('stop_s')} s. Registry file: {loads}"
              f"{', matches the last list' if f.get('registry_classes_match') else ''}.", ""]
    if res["failing_kinds"]:
        L += ["## Failing checks", "", "| kind | check | count | variants | reproducer |", "|---|---|---|---|---|"]
        first: dict[tuple[str, str], dict] = {}
        for fl in res["failures"]:
            first.setdefault((fl["kind"], fl["check"]), fl)
        variants: dict[tuple[str, str], set[str]] = defaultdict(set)
        for fl in res["failures"]:
            variants[(fl["kind"], fl["check"])].update(v for v in fl["variants"] if v)
        for kname, checks in sorted(res["failing_kinds"].items()):
            for check, n in sorted(checks.items()):
                fl = first.get((kname, check))
                rep = "-" if fl is None else (f"`python bench/fuzz.py --replay {fl['repro']}`" if fl["repro"]
                                             else f"`{fl['regenerate']}`")
                vs = ", ".join(sorted(variants[(kname, check)])[:6]).replace("|", "\\|") or "-"
                L.append(f"| {kname} | {check} | {n} | {vs} | {rep} |")
        L += ["", "What each check means:", ""] + [f"- `{c}`: {d}" for c, d in res["checks"].items()] + [""]
    L += ["## Teach socket", "",
          "Latency: request to reply. Replies by code; *wrong* = ok:true for a request that must be refused, a refusal "
          "of a valid one, or a code outside the expected set.", "",
          "| kind | expect | sent | replies | internal | wrong acc/ref/code | hangs | crashes | p50 ms | p99 ms | "
          "max reply B | log B | max log line B | RSS peak +MB | RSS kept +MB |", "|" + "---|" * 15]
    for name, s in res["kinds"].items():
        if s["socket"] != "teach":
            continue
        exp = s["expect"] + _codes_note(s["codes"])
        p50, p99 = _lat(s)
        L.append(f"| {name} | {exp} | {s['sent']} | {_codes(s['replies'])} | {s['internal']} | {s['wrong_accepts']}/"
                 f"{s['wrong_refusals']}/{s['wrong_codes']} | {s['hangs']} | {s['crashes']} | {p50} | {p99} | "
                 f"{s['max_reply_bytes']} | {s['log_bytes']} | {s['max_log_line']} | "
                 f"{s['rss_hwm_growth_kb'] / 1024:.0f} | {s['rss_kept_kb'] / 1024:.0f} |")
    L += ["", "## Frame and labels sockets", "",
          f"Bursts of up to {res.get('burst', '?')} messages, then a good frame; latency = that frame to its label "
          "map. "
          "Status deltas summed over the kind's bursts (bad_frames, drops, seq_resets, errors, frames, ...). "
          "*labelled* = label maps published for the kind's own messages.", "",
          "| kind | expect | sent | bursts | labelled | deaf | crashes | status deltas | p50 ms | p99 ms | log B | "
          "max log line B | RSS peak +MB | RSS kept +MB |", "|" + "---|" * 14]
    for name, s in res["kinds"].items():
        if s["socket"] == "teach":
            continue
        p50, p99 = _lat(s)
        deltas = ", ".join(f"{k} {v:+g}" for k, v in sorted(s["status_deltas"].items())) or "-"
        L.append(f"| {name} | {s['expect']} | {s['sent']} | {s['bursts']} | {s['accepted_frames']} | {s['deaf']} | "
                 f"{s['crashes']} | {deltas} | {p50} | {p99} | {s['log_bytes']} | {s['max_log_line']} | "
                 f"{s['rss_hwm_growth_kb'] / 1024:.0f} | {s['rss_kept_kb'] / 1024:.0f} |")
    L += ["", "## Kinds", "", "| kind | socket | expect | why |", "|---|---|---|---|"]
    for name, s in res["kinds"].items():
        L.append(f"| {name} | {s['socket']} | {s['expect']} | {res['why'][name].replace(chr(10), ' ')} |")
    L += ["", "Per-variant outcomes, sample error messages and every saved reproducer are in fuzz.json; the node's "
          f"log is `{Path(node['log']).name}` beside it.", ""]
    path.write_text("\n".join(L))


# =============================================================================================================
# replay of one reproducer
# =============================================================================================================
def replay(args: argparse.Namespace) -> int:
    """Start a fresh node, send a saved reproducer, print what came back and the node's new log lines."""
    rep = msgpack.unpackb(Path(args.replay).read_bytes(), raw=False)
    out = Path(tempfile.mkdtemp(prefix="fuzz-replay-"))
    args.out, args.state = str(out), None
    fz = Fuzzer(args)
    try:
        return _replay(fz, rep, args)
    finally:
        fz.node.stop()
        if fz.listener is not None:
            fz.listener.stop_event.set()


def _replay(fz: "Fuzzer", rep: dict, args: argparse.Namespace) -> int:
    fz.connect(first=True)
    watcher = LogWatcher(fz.log_path)
    mem0 = fz.node.mem_kb()
    print(f"replaying {rep['kind']} ({rep['check']}) from {args.replay}: {len(rep['messages'])} message(s)")
    if rep["socket"] == "teach":
        for m in rep["messages"]:
            t0 = time.perf_counter()
            parts = fz.teach.exchange(TeachMsg(m["parts"], dealer=m["dealer"]), args.timeout)
            ms = (time.perf_counter() - t0) * 1000
            if parts is None:
                print(f"  {m['variant']!r}: no reply in {args.timeout} s (node alive: {fz.node.alive()})")
                continue
            body = parts[-1]
            try:
                shown = repr(msgpack.unpackb(body, raw=False))
            except Exception as e:  # noqa: BLE001
                shown = f"<not msgpack: {type(e).__name__}>"
            print(f"  {m['variant']!r}: {len(body)} B in {ms:.0f} ms: {shown[:400]}")
    elif rep["socket"] == "labels":
        rss0 = fz.node.mem_kb().get("VmRSS", 0)
        sub = fz.ctx.socket(zmq.SUB)
        sub.connect(fz.node.labels)
        for m in rep["messages"]:
            sub.setsockopt(zmq.SUBSCRIBE, m["parts"][0][1:])
        time.sleep(1.0)
        print(f"  node RSS grew by {(fz.node.mem_kb().get('VmRSS', 0) - rss0) / 1024:.0f} MB")
        sub.close(0)
    else:
        before = fz.listener.wait_status(time.monotonic(), 5) or {}
        for m in rep["messages"]:
            fz.pub.send(m["parts"])
            time.sleep(args.gap)
        probe = fz.probe_frame(10.0) if fz.node.alive() else None
        after = fz.listener.wait_status(time.monotonic(), 5) or {}
        print(f"  good frame afterwards: {'no label map' if probe is None else f'label map in {probe:.0f} ms'}")
        keys = ("bad_frames", "drops", "seq_resets", "errors", "frames")
        print("  status deltas:", {k: after[k] - before.get(k, 0) for k in keys if k in after})
    alive = fz.node.alive()
    lg = watcher.take()
    mem = fz.node.mem_kb()
    print(f"node alive: {alive}; peak RSS {mem.get('VmHWM', 0) / 1024:.0f} MB (was "
          f"{mem0.get('VmHWM', 0) / 1024:.0f} MB before the replay); log +{lg['bytes']} B, longest line "
          f"{lg['max_line']} B; log tail:")
    print(fz.log_path.read_bytes()[-1500:].decode(errors="replace"))
    return 0 if alive else 1


# =============================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/fuzz.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send hostile messages to a real edge-gfs node (teach and frame sockets) and report how it copes.",
        epilog="example:\n  python bench/fuzz.py --messages 600 --out /tmp/fuzz_smoke\n"
               "  python bench/fuzz.py        # the full 10,000-message run into bench/results/hardening\n"
               "  python bench/fuzz.py --only teach_unknown_op_huge --messages 5 --out /tmp/f\n"
               "  python bench/fuzz.py --replay OUT/repro/KIND.CHECK.0.msgpack")
    p.add_argument("--messages", type=int, default=10_000, help="hostile messages to send (valid ones come on top)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="makes the payloads and their order reproducible")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "hardening"),
                   help="fuzz.json, fuzz.md, fuzz-node.log and repro/ go here")
    p.add_argument("--model", default="camvid-fold0")
    p.add_argument("--threads", type=int, default=1, help="the node's --threads (the machine is shared)")
    p.add_argument("--burst", type=int, default=10, help="frame messages per burst before a good frame")
    p.add_argument("--gap", type=float, default=0.01, help="seconds between frame messages of a burst")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds without a teach reply that count as a hang")
    p.add_argument("--only", type=lambda s: set(s.split(",")), help="comma-separated kinds (valid kinds always run)")
    p.add_argument("--state", help="the node's --state DIR (default: a fresh temporary folder)")
    p.add_argument("--max-restarts", type=int, default=5, help="give up after this many node crashes")
    p.add_argument("--list-kinds", action="store_true", help="print the table of kinds and exit")
    p.add_argument("--replay", metavar="FILE", help="send one saved reproducer to a fresh node and print the outcome")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_kinds:
        for k in KINDS:
            print(f"{k.name:32s} {k.socket:6s} {k.expect}{_codes_note(sorted(k.codes))}\n    {k.why}")
        return 0
    if args.only and (unknown := args.only - {k.name for k in KINDS}):
        build_parser().error(f"unknown kinds: {', '.join(sorted(unknown))} (see --list-kinds)")
    if args.replay:
        return replay(args)
    fz = Fuzzer(args)
    try:
        res = fz.run()
    finally:  # an abort (SystemExit, Ctrl-C, a bench bug) must not leave a node running on the shared machine
        fz.node.stop()
    res["burst"] = args.burst
    out = Path(args.out)
    (out / "fuzz.json").write_text(json.dumps(res, indent=1, default=str))
    write_markdown(res, out / "fuzz.md")
    sent = res["sent"]
    print(f"{'PASS' if res['passed'] else 'FAIL'}: {sent.get('hostile', 0)} hostile + {sent.get('valid', 0)} "
          f"valid messages in {res['runtime_s']} s; "
          f"report {out / 'fuzz.md'}")
    for kname, checks in sorted(res["failing_kinds"].items()):
        print(f"  {kname}: " + ", ".join(f"{c} {n}" for c, n in sorted(checks.items())))
    for c, v in res["end_checks"].items():
        if not v:
            print(f"  end check failed: {c}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
