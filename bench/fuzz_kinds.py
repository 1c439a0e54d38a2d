"""The table of hostile-message kinds that bench/fuzz.py sends to a real `edge-gfs run` node (issue 13).

A *kind* is one row of KINDS (`Kind`): the socket it goes to (`teach`, `frame` or `labels`), the outcome the
node's contract demands of it, the error codes a refusal may carry, why it matters (printed by
`python bench/fuzz.py --list-kinds` and in the report), and a generator `gen(rng, material)` that makes one *unit*:
one teach request (sometimes a few, e.g. a teach then its forget), or one member of a frame/labels burst. Most
generators pick a *variant* from a small table (which field, which mutation); the variant is reported per kind.
`weight` sets a kind's share of --messages, `max_units` caps the heavy ones (64 MiB messages, bombs that really
allocate), `burst` fixes a frame/labels kind's messages per unit. The generators corrupt real material
(`Material`: a CamVid shot and mask, real test frames, and the running node's own class export, set by the
runner at start), and their randomness is `kind_rng(seed, kind, n)` = default_rng([seed, crc32(kind), n]) for a
kind's n-th unit: `--only KIND --seed S` regenerates a failing kind's payloads byte for byte (a frame's stamp_ns
and the seq the bench numbers itself aside).

How bench/fuzz.py judges a kind's expectation (`expect`; a teach message may carry its own, with its codes):
  - `refuse`: teach: an error reply whose code is in `codes` (ok:true is a wrong accept, another code a wrong
    code); frame: no label map for any of the burst's own seqs (each one is a wrong accept).
  - `accept`: the valid requests mixed in, and valid-but-odd frames: teach: ok:true (a refusal is a wrong
    refusal); frame: the node's bad_frames counter does not grow over the burst (else wrong refusals).
  - `either`: accepting or refusing are both fine (a bit-flipped JPEG may decode); only the checks below apply.
  - `drop`: messages over the socket's byte cap, which ZeroMQ drops unread: no teach reply is the documented
    outcome (a refusal must still carry one of `codes`); the labels flood is judged by the node's memory.
Whatever the expectation, these fail a kind (bench/fuzz.py's CHECKS): a crash; a hang (no teach reply) or a deaf
node (no label map for a good frame after a burst); reply code `internal` or the status `errors` counter
growing; a reply off the contract or an error reply over 1 KB; the classes version moving with nothing
accepted; a label map not of the frame's declared size; a log line over 1 KB, with raw control characters or
without the node's prefix; the node's memory growing by over 200 MB in one unit.

No sockets, no node and no report here: a generator is a pure function of (rng, material) on numpy, OpenCV and
msgpack (load_material reads the CamVid files once), so payloads can be made and compared offline.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import cv2
import msgpack
import numpy as np

from hostile import bomb_jpeg, bomb_png, resized_jpeg
from node_proc import real_frames  # reads the dataset's JPEG bytes; importing it also puts the repo on sys.path

from edge_gfs.data.datasets import camvid
from edge_gfs.wire import protocol as P  # constants and limits only; nothing of it on the wire

Expect = Literal["refuse", "accept", "either", "drop"]
Socket = Literal["teach", "frame", "labels"]
Rng = np.random.Generator

ANY_REFUSAL = frozenset(c for c in P.ERROR_CODES if c != P.INTERNAL)
BR, BI, BM, TL = frozenset({P.BAD_REQUEST}), frozenset({P.BAD_IMAGE}), frozenset({P.BAD_MASK}), frozenset({P.TOO_LARGE})
TOPIC = P.TOPIC_FRAME
CONTROL_NAMES = ("\x1b[31mEVIL\x1b[0m", "Car\n2024-01-01 00:00:00,000 edge-gfs run: forged line", "a\rb", "nul\x00l",
                 "del\x7f", "\u202eraC", "zero\u200dwidth", "tab\tname", "\x1b]0;title\x07", "bell\x07")


# =============================================================================================================
# payload helpers
# =============================================================================================================
def pk(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rbytes(rng: Rng, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def between(rng: Rng, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi))


def pick(rng: Rng, seq: list | tuple):
    return seq[int(rng.integers(len(seq)))]


def rtext(rng: Rng, n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 -_") -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


def cut(rng: Rng, data: bytes, lo: float = 0.0, hi: float = 1.0) -> bytes:
    """`data` cut at a random fraction in [lo, hi) of its length, never to nothing and never whole."""
    return data[:min(len(data) - 1, max(1, int(len(data) * rng.uniform(lo, hi))))]


def flip_bytes(rng: Rng, data: bytes, n: int, start: int = 0) -> bytes:
    b = bytearray(data)
    for i in rng.integers(max(start, 0), len(b), n):
        b[int(i)] ^= int(rng.integers(1, 256))
    return bytes(b)


_WRONG_VALUES: tuple = (True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), float("inf"), "", "text",
                        "\x00", b"", b"\x00\xff", [], [1, "a"], {}, {"k": 1}, msgpack.ExtType(7, b"xx"))


def wrong_value(rng: Rng, expected: type, allow_none: bool) -> object:
    """A value of any msgpack type but `expected` (bool is wrong for int and the reverse, as in protocol._get)."""
    def fits(v: object) -> bool:
        if expected in (int, float) and isinstance(v, bool):
            return False
        return isinstance(v, (int, float) if expected is float else expected)
    return pick(rng, [v for v in _WRONG_VALUES if not fits(v)] + ([None] if allow_none else []))


def png_bytes(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def jpeg_bytes(arr: np.ndarray, *flags: int) -> bytes:
    return cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, 90, *flags])[1].tobytes()


def deep_nesting(depth: int, as_op: bool) -> bytes:
    """msgpack arrays nested `depth` deep (built by hand: packb itself refuses deep recursion)."""
    return (b"\x81\xa2op" if as_op else b"") + b"\x91" * depth + b"\xc0"


def exif_orientation(jpg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment after SOI saying `orientation` (6 = rotate 90: decoders that honour it
    return height x width)."""
    body = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01" + \
        orientation.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
    return jpg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpg[2:]


# =============================================================================================================
# what a kind produces, and the real material it corrupts
# =============================================================================================================
@dataclass
class Msg:
    """One message as the client sends it. Teach: a REQ adds the empty delimiter itself, a DEALER sends `parts`
    verbatim. Frame: [topic, payload]. Labels: one subscription, [b"\\x01" + topic]."""

    parts: list[bytes]
    variant: str = ""  # sub-case, reported per kind (which field, which mutation)
    dealer: bool = False  # teach: sent on the DEALER socket
    expect: Expect | None = None  # teach: this message's expectation and codes, where not the kind's
    codes: frozenset[str] | None = None
    op: str = "?"  # teach: the request's op, to know whether an accept changed the classes
    seq: int | None = None  # frame: its seq, when the bench set it to a value it can track
    wh: tuple[int, int] | None = None  # frame: declared size, to check the label map of an accepted frame

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass
class Material:
    """Real CamVid pixels and a real class pack the generators corrupt (built once, shared by all kinds)."""

    img: np.ndarray  # 96x128 BGR train frame, with a valid mask (a box) for it
    img_png: bytes
    img_jpg: bytes
    mask_png: bytes
    frame_jpg: list[bytes]  # 360x480 test frames as the dataset stores them
    frame_img: np.ndarray  # the first of them, decoded
    frame_png: bytes
    frame_at_cap: bytes  # a real 1920x1200 JPEG: the largest frame (and preview image) the node takes
    frame_over_cap: bytes  # a real 1921x1200 JPEG: one column more
    pack: bytes = b""  # export of the running node with one novel class and one base context (set at start)
    pack_names: tuple[str, ...] = ()
    base_names: tuple[str, ...] = ()
    seq: int = 10**12  # frames the bench numbers itself; far from any seq a kind picks at random

    @property
    def frame_wh(self) -> tuple[int, int]:
        return self.frame_img.shape[1], self.frame_img.shape[0]

    def shot(self, **over: object) -> dict:
        return {"image": self.img_png, "mask": self.mask_png} | over

    def frame(self, **over: object) -> dict:
        self.seq += 1
        return {"v": 1, "seq": self.seq, "stamp_ns": time.time_ns(), "frame_id": "fuzz", "encoding": "jpeg",
                "width": self.frame_wh[0], "height": self.frame_wh[1], "data": self.frame_jpg[0]} | over

    def request(self, op: str, name: str = "fuzz-shot", /, **over: object) -> dict:
        """A well-formed request of `op` (teach, preview or forget) for `name`, with fields replaced by `over`."""
        shots = {} if op == "forget" else {"shots": [self.shot()]}
        return {"op": op, "name": name} | shots | ({"image": self.img_png} if op == "preview" else {}) | over


def load_material() -> Material:
    data = camvid()
    img = cv2.resize(data.read("train", data.names("train")[0])[0], (128, 96), interpolation=cv2.INTER_AREA)
    mask = np.zeros((96, 128), np.uint8)
    mask[40:80, 40:100] = 255
    tests = real_frames(data)[:8]
    frame = cv2.imdecode(np.frombuffer(tests[0], np.uint8), cv2.IMREAD_COLOR)
    w, h = 1920, P.LIMITS.max_frame_pixels // 1920
    return Material(img, png_bytes(img), jpeg_bytes(img), png_bytes(mask), tests, frame, png_bytes(frame),
                    resized_jpeg(frame, w, h), resized_jpeg(frame, w + 1, h))


@dataclass(frozen=True)
class Kind:
    """A row of the table: which socket, how to make one unit, what the node must do with it, and why."""

    name: str
    socket: Socket
    expect: Expect
    codes: frozenset[str]  # acceptable error codes when refusing (teach); empty for frame kinds
    gen: Callable[[Rng, Material], list[Msg]]  # one teach unit (usually one request) or one member of a burst
    why: str
    weight: float = 1.0
    max_units: int | None = None  # heavy kinds (64 MiB messages, bombs that allocate) are capped
    burst: int | None = None  # messages per unit on the frame/labels sockets (default --burst)

    @property
    def valid(self) -> bool:
        """The well-formed requests mixed in (counted apart); odd-but-valid frames (seq wrap) count as hostile."""
        return self.expect == "accept" and self.socket == "teach"


KINDS: list[Kind] = []
Make = Callable[[Rng, Material], object]
Table = dict[str, object]  # variant name -> value, or a Make building it (see `picked`)


def req(body: object, rng: Rng | None = None, variant: str = "", **kw) -> Msg:
    """One single-part request (bytes go as they are, anything else is packed), on a DEALER one time in three
    when `rng` is given: the node must serve both socket types the same."""
    data = body if isinstance(body, bytes) else pk(body)
    op = body.get("op") if isinstance(body, dict) and isinstance(body.get("op"), str) else "?"
    dealer = rng is not None and rng.random() < 1 / 3
    return Msg([b"", data] if dealer else [data], variant, dealer=dealer, op=op, **kw)


def frame_msg(d: dict | bytes, variant: str = "") -> Msg:
    """A frame map (tracked by its seq and checked by its size where those are integers) or a raw payload."""
    if isinstance(d, bytes):
        return Msg([TOPIC, d], variant)
    num = {k: v for k in ("seq", "width", "height") if isinstance(v := d.get(k), int) and not isinstance(v, bool)}
    wh = (num["width"], num["height"]) if "width" in num and "height" in num else None
    return Msg([TOPIC, pk(d)], variant, seq=num.get("seq"), wh=wh)


def kind(name: str, socket_: Socket, codes: Iterable[str], why: str, make: Make | None = None,
         expect: Expect = "refuse", **kw) -> Callable:
    """Register a kind, directly or as a decorator. `make(rng, m)` returns one Msg, a list of them, or a
    (variant, body) pair or a bare body: a request (teach) or a frame map or raw payload (frame)."""
    def register(fn: Make) -> Make:
        def gen(rng: Rng, m: Material) -> list[Msg]:
            out = fn(rng, m)
            if isinstance(out, (Msg, list)):
                return out if isinstance(out, list) else [out]
            variant, body = out if isinstance(out, tuple) else ("", out)
            return [req(body, rng, variant) if socket_ == "teach" else frame_msg(body, variant)]
        KINDS.append(Kind(name, socket_, expect, frozenset(codes), gen, why, **kw))
        return fn
    return register if make is None else register(make)


def teach(name: str, codes: Iterable[str], why: str, make: Make | None = None, **kw) -> Callable:
    return kind(name, "teach", codes, why, make, **kw)


def frame(name: str, why: str, make: Make | None = None, **kw) -> Callable:
    return kind(name, "frame", (), why, make, **kw)


def picked(values: list | tuple | Table | Make, body: Callable[[Rng, Material, object], object] | None = None,
           label: Callable[[object], str] = repr) -> Make:
    """A generator from a table of variants. `values` is a list (each variant named label(value)), a Table (variant
    name -> value, or function of (rng, m) building it, called only once picked: some are megabytes), or a function
    of (rng, m) drawing a value. body(rng, m, value) makes the request or frame of it (default: the value itself)."""
    def make(rng: Rng, m: Material) -> tuple[str, object]:
        if isinstance(values, dict):
            name = pick(rng, list(values))
            v = values[name](rng, m) if callable(values[name]) else values[name]
        else:
            v = pick(rng, values) if isinstance(values, (list, tuple)) else values(rng, m)
            name = label(v)
        return name, v if body is None else body(rng, m, v)
    return make


# -- teach socket: framing and msgpack ------------------------------------------------------------------------
teach("teach_garbage_bytes", BR,
      "Random bytes: never a traceback of msgpack's, always bad_request.",
      lambda rng, m: rbytes(rng, between(rng, 1, 4096)))
teach("teach_empty_body", BR,
      "A zero-byte request (also what a DEALER sends when it forgets the body).",
      lambda rng, m: b"")
teach("teach_truncated_msgpack", BR,
      "A valid request cut short: msgpack's OutOfData must be a refusal, not a wait for more bytes.",
      lambda rng, m: cut(rng, pk(pick(rng, [{"op": "ping"}, m.request("forget", "Zebra"),
                                            m.request("teach", "fuzz")]))))
teach("teach_trailing_bytes", BR,
      "A valid ping followed by junk (msgpack ExtraData): a request is exactly one object, so it is refused.",
      lambda rng, m: pk({"op": pick(rng, ["ping", "list"])}) + rbytes(rng, between(rng, 1, 64)))
teach("teach_not_a_map", BR,
      "Top level of another msgpack type (list, int, str, bin, nil, float, ext).",
      picked([[1, 2], ["op", "ping"], 7, -1, "ping", b"ping", None, 1.5, True, msgpack.ExtType(1, b"x")],
             lambda rng, m, v: pk(v), lambda v: type(v).__name__))
teach("teach_bad_msgpack", BR,
      "Valid-looking msgpack the parser must refuse: deep nesting, non-string keys, invalid UTF-8, reserved byte.",
      picked({"deep": lambda rng, m: deep_nesting(between(rng, 600, 5000), False),
              "deep_op": lambda rng, m: deep_nesting(between(rng, 600, 5000), True),
              "int_key": pk({1: "ping"}), "bin_key": b"\x81\xc4\x02op\xa4ping",
              "nil_key": b"\x82\xa2op\xa4ping\xc0\xa1x", "array_key": b"\x82\xa2op\xa4ping\x91\x01\xa1x",
              "bad_utf8": b"\x81\xa2op\xa4\xff\xfe\xfd\xfc", "c1_byte": b"\x81\xa2op\xc1",
              "ext_op": lambda rng, m: pk({"op": msgpack.ExtType(between(rng, 0, 128), b"ping")}),
              "timestamp_op": pk({"op": msgpack.Timestamp(1, 2)})}))
teach("teach_op_wrong_type", BR,
      "`op` missing or of a type other than str.",
      picked(lambda rng, m: wrong_value(rng, str, allow_none=True),
             lambda rng, m, v: {} if v is None and rng.random() < 0.5 else {"op": v}, lambda v: type(v).__name__))
teach("teach_unknown_op_huge", BR,
      "An unknown op of 100 kB..1 MB: the reply and the log must name it without echoing it.",
      picked(["x", "\x1b[31m", "ping "], lambda rng, m, s: {"op": s * (between(rng, 100_000, 1_000_001) // 4)},
             lambda s: "op_1MB"))
teach("teach_unknown_op", BR,
      "Near-miss op names: case, whitespace, NUL (no normalisation must turn them into a real op).",
      picked(["PING", "ping ", " list", "teach\x00", "forgett", "", "export\n", "Import", "delete", "shutdown"],
             lambda rng, m, op: {"op": op}))


@teach("teach_multipart", BR,
       "More than one body part (REQ multipart, DEALER with extra parts or a doubled delimiter).")
def _(rng: Rng, m: Material) -> Msg:
    ping, v = pk({"op": "ping"}), pick(rng, ["req_2", "req_5", "dealer_extra", "dealer_double_delim"])
    parts = {"req_2": [ping, b"extra"], "req_5": [ping] * 5, "dealer_extra": [b"", ping, rbytes(rng, 8)],
             "dealer_double_delim": [b"", b"", ping]}[v]
    return Msg(parts, v, dealer=v.startswith("dealer"))


teach("teach_dealer_empty", BR,
      "A DEALER sending only empty frames: no body at all.",
      lambda rng, m: Msg(pick(rng, [[b""], [b"", b""]]), dealer=True))
teach("teach_oversized", TL,
      "Just over the 64 MiB request cap (under the socket's 128 MiB): too_large, without holding it twice.",
      lambda rng, m: ("64MiB+", {"op": "ping", "pad": bytes(P.LIMITS.max_teach_bytes + between(rng, 1, 4096))}),
      weight=0.3, max_units=40)
teach("teach_over_socket_cap", TL,
      "Over the socket's MAXMSGSIZE: ZeroMQ drops the connection unread; no reply is the documented outcome.",
      lambda rng, m: Msg([b"", bytes(P.LIMITS.max_teach_bytes * P.SOCKET_SLACK + 1)], "128MiB+", dealer=True),
      expect="drop", weight=0.05, max_units=2)


# -- teach socket: fields -------------------------------------------------------------------------------------
@teach("teach_field_wrong_type", BR, "Every field of every op (and of a shot) replaced by a value of another type; "
       "optional fields never by nil.", weight=2)
def _(rng: Rng, m: Material) -> object:
    fields: dict[str, tuple[dict, dict[str, tuple[type, bool]]]] = {  # op -> (request, field -> (type, required))
        "teach": (m.request("teach", "fuzz-field", create=False, color=[1, 2, 3]),
                  {"name": (str, True), "shots": (list, True), "create": (bool, False), "color": (list, False)}),
        "forget": (m.request("forget", "fuzz-field"), {"name": (str, True)}),
        "preview": (m.request("preview", "fuzz-field"), {"name": (str, True), "shots": (list, True),
                                                         "image": (bytes, True)}),
        "import": ({"op": "import", "pack": m.pack}, {"pack": (bytes, True)})}
    op = pick(rng, list(fields))
    obj, types = fields[op]
    if op in ("teach", "preview") and rng.random() < 0.4:  # a shot's field
        f = pick(rng, ["image", "mask", "labels"])
        return f"{op}.shot.{f}", obj | {"shots": [m.shot(**{f: wrong_value(rng, bytes, allow_none=f != "labels")})]}
    f = pick(rng, list(types))
    v = wrong_value(rng, types[f][0], allow_none=types[f][1])
    if op == "teach" and f == "shots":
        v = pick(rng, [v, [1], ["x"], [[m.img_png, m.mask_png]], [None]])
    return f"{op}.{f}", obj | {f: v}


teach("teach_name_huge", BR,
      "A 10,000-character class name (teach or forget): refused, and neither echoed nor logged whole.",
      picked(["teach", "forget"], lambda rng, m, op: m.request(op, rtext(rng, 10_000)), str))
teach("teach_name_control_chars", BR,
      "Names with ANSI escapes, CR/LF (log forging), NUL, DEL, bidi override, zero-width joiner.",
      picked(CONTROL_NAMES, lambda rng, m, name: m.request(pick(rng, ["teach", "forget", "preview"]), name),
             lambda name: repr(name[:12])))
teach("teach_name_blank", BR,
      "Empty or whitespace-only names.",
      picked(["", " ", "   ", "\u3000", "\u00a0"],
             lambda rng, m, name: m.request("teach", name, op=pick(rng, ["teach", "forget"]))))
teach("teach_color_bad", BR,
      "`color` out of range or of the wrong shape: [256,0,0], [-1,..], two or four values, floats, bools, 2^64-1.",
      picked([[256, 0, 0], [-1, 0, 0], [1, 2], [1, 2, 3, 4], [1.5, 2, 3], [True, 0, 0], ["a", 0, 0], [2**64 - 1, 0, 0],
              [-(2**63), 0, 0], [float("nan"), 0, 0], []],
             lambda rng, m, color: m.request("teach", "fuzz-color", color=color)))


@teach("teach_random_structure", ANY_REFUSAL,
       "Random nested maps under a real op with random values for its fields: any refusal, never internal.", weight=2)
def _(rng: Rng, m: Material) -> object:
    def value(depth: int) -> object:
        r = rng.random()
        if depth > 3 or r < 0.5:
            return pick(rng, [None, True, between(rng, -2**62, 2**62), float(rng.normal()), rtext(rng, 5),
                              rbytes(rng, between(rng, 0, 40)), b"\x89PNG\r\n\x1a\n" + rbytes(rng, 30),
                              b"\xff\xd8\xff" + rbytes(rng, 30)])
        if r < 0.75:
            return [value(depth + 1) for _ in range(between(rng, 0, 4))]
        keys = ["name", "shots", "image", "mask", "labels", "pack", "create", "color", "x"]
        return {pick(rng, keys): value(depth + 1) for _ in range(between(rng, 0, 4))}
    obj = {"op": (op := pick(rng, ["teach", "forget", "preview", "import"]))}
    for _ in range(between(rng, 0, 5)):
        obj[pick(rng, ["name", "shots", "image", "pack", "create", "color", "labels", "extra"])] = value(0)
    if op == "forget" and isinstance(obj.get("name"), str):
        obj["name"] = "fuzz-rand-" + obj["name"]  # never a real class: forgetting one would be a correct accept
    return op, obj


# -- teach socket: shots and images ---------------------------------------------------------------------------
def shot_kind(name: str, codes: Iterable[str], why: str, part: str, table: Table, ops: tuple[str, ...] = ("teach",),
              **kw) -> None:
    """A kind that replaces one part of a shot (image, mask or labels) by a variant of `table`, in a request of
    one of `ops` (teach, preview)."""
    teach(name, codes, why, picked(table, lambda rng, m, data: m.request(pick(rng, list(ops)),
                                                                         shots=[m.shot(**{part: data})])), **kw)


def plane(m: Material, dh: int = 0, dw: int = 0, *channels: int, fill: int = 0, dtype: type = np.uint8) -> np.ndarray:
    """An array of the shot image's size plus dh rows and dw columns, filled with `fill`."""
    return np.full((m.img.shape[0] + dh, m.img.shape[1] + dw, *channels), fill, dtype)


def quarter(h: int, w: int) -> np.ndarray:
    """A mask of h x w whose top-left quarter is set."""
    mk = np.zeros((h, w), np.uint8)
    mk[: h // 2, : w // 2] = 255
    return mk


teach("teach_too_many_shots", TL,
      "17..200 shots in one request: too_large before any shot is decoded.",
      picked(lambda rng, m: between(rng, P.LIMITS.max_shots_per_request + 1, 201),
             lambda rng, m, n: m.request("teach", "fuzz-many", shots=[m.shot()] * n), str))
teach("teach_shots_malformed", BR,
      "`shots` empty, or holding things that are not {image, mask} maps, or shots missing a field.",
      picked({"empty": [], "int": [1], "str": ["shot"], "list": lambda rng, m: [[m.img_png, m.mask_png]],
              "no_mask": lambda rng, m: [{"image": m.img_png}], "no_image": lambda rng, m: [{"mask": m.mask_png}],
              "nil": [None]}, lambda rng, m, shots: m.request("teach", "fuzz-shots", shots=shots)))
shot_kind("teach_mask_empty_or_full", BM,
          "Masks with no pixel or every pixel (also an all-255 RGBA paint): nothing to learn from.",
          "mask", {"empty": lambda rng, m: png_bytes(plane(m)),
                   "full": lambda rng, m: png_bytes(plane(m, fill=between(rng, 1, 256))),
                   "full_rgba": lambda rng, m: png_bytes(plane(m, 0, 0, 4, fill=255))}, ops=("teach", "preview"))
shot_kind("teach_mask_size_mismatch", BM,
          "A mask one pixel off, double the size, or almost nothing.",
          "mask", {"size": lambda rng, m: png_bytes(quarter(*plane(m, *pick(rng, [
              (1, 0), (0, 1), (-1, 0), m.img.shape[:2], (1 - m.img.shape[0], 1 - m.img.shape[1])])).shape))})
shot_kind("teach_mask_not_png", BM,
          "Masks that are a JPEG (lossy), garbage, a PNG header alone, or a 16-bit PNG of the wrong size.",
          "mask", {"jpeg": lambda rng, m: jpeg_bytes(plane(m, fill=255)), "garbage": lambda rng, m: rbytes(rng, 300),
                   "png_magic_only": b"\x89PNG\r\n\x1a\n",
                   "png16_wrong_size": lambda rng, m: png_bytes(plane(m, 3, fill=1000, dtype=np.uint16))})
shot_kind("teach_labels_bad", BM,
          "The optional full label map: wrong size, RGB, 16-bit, JPEG or garbage.",
          "labels", {"size": lambda rng, m: png_bytes(plane(m, -1)), "rgb": lambda rng, m: png_bytes(plane(m, 0, 0, 3)),
                     "u16": lambda rng, m: png_bytes(plane(m, dtype=np.uint16)),
                     "jpeg": lambda rng, m: jpeg_bytes(plane(m)), "garbage": lambda rng, m: rbytes(rng, 100)})
shot_kind("teach_image_corrupt", BI | TL,
          "Images with a JPEG/PNG signature and garbage after it, a PNG with flipped bytes (CRC), a JPEG without "
          "scan, a PNG without IDAT. too_large is right too: random bytes after FF D8 FF can hold a marker that "
          "libjpeg (and the node's header reader, which follows it) reads as a frame header of a huge size.",
          "image", {"jpeg_magic_garbage": lambda rng, m: b"\xff\xd8\xff" + rbytes(rng, between(rng, 10, 3000)),
                    "png_magic_garbage": lambda rng, m: b"\x89PNG\r\n\x1a\n" + rbytes(rng, between(rng, 10, 3000)),
                    "png_flipped": lambda rng, m: flip_bytes(rng, m.img_png, between(rng, 1, 20), start=40),
                    "jpeg_header_only": lambda rng, m: m.img_jpg[:m.img_jpg.find(b"\xff\xda")],
                    "png_no_idat": lambda rng, m: m.img_png[:33] + b"\x00\x00\x00\x00IEND\xaeB`\x82"},
          ops=("teach", "preview"))
shot_kind("teach_image_truncated_png", BI,
          "A real PNG cut at 5..95 %.",
          "image", {"png": lambda rng, m: cut(rng, m.img_png, 0.05, 0.95)})
shot_kind("teach_image_truncated_jpeg", BI,
          "A real JPEG cut at 30..95 %: libjpeg pads the rest with grey and calls it a warning; a node that teaches "
          "from it learns a class from pixels nobody sent.",
          "image", {"jpeg": lambda rng, m: cut(rng, m.img_jpg, 0.3, 0.95)})
shot_kind("teach_image_not_jpeg_png", BI,
          "Formats outside the contract that OpenCV would decode anyway (BMP, TIFF, WebP) or a GIF header.",
          "image", {**{ext: lambda rng, m, ext=ext: cv2.imencode(ext, m.img)[1].tobytes() for ext in (".bmp", ".tiff",
                                                                                                     ".webp")},
                    "gif": lambda rng, m: b"GIF89a" + rbytes(rng, 40)})


@teach("teach_jpeg_bomb", TL | BI,
       "A ~630-byte JPEG whose SOF says 65000x65000 (as shot image or preview image).")
def _(rng: Rng, m: Material) -> object:
    op = pick(rng, ["teach", "preview"])
    if op == "preview" and rng.random() < 0.5:
        return "preview.image", m.request("preview", "fuzz-bomb", image=bomb_jpeg(65000, 65000))
    return "shot.image", m.request(op, shots=[m.shot(image=bomb_jpeg(65000, 65000))])


shot_kind("teach_jpeg_bomb_stray", TL | BI,
          "The 65000x65000 JPEG with one stray byte before the SOF marker (a naive header walk misses the size).",
          "image", {"65000": lambda rng, m: bomb_jpeg(65000, 65000, True)})
shot_kind("teach_jpeg_bomb_stray_mid", TL | BI,
          "12000x12000 with a stray byte: under OpenCV's own 2^30-pixel cap, so only the node's checks stop a 432 MB "
          "allocation and a full decode of grey (capped: it may really allocate).",
          "image", {"12000": lambda rng, m: bomb_jpeg(12000, 12000, True)}, weight=0.3, max_units=6)


@teach("teach_png_bomb", TL | BI,
       "A tiny PNG whose IHDR says 100000x100000 (CRC fixed or not), also as the mask.")
def _(rng: Rng, m: Material) -> Msg:
    v = pick(rng, ["image", "image_badcrc", "mask"])
    shot = m.shot(**{v[:5]: bomb_png(100_000, 100_000, fix_crc=v != "image_badcrc")})
    return req(m.request("teach", shots=[shot]), rng, v, codes=TL | BM | BI if v == "mask" else None)


@teach("teach_max_size_shots", TL | BM,
       "Shots of 4096x4096 PNG (the largest image allowed, ~60 kB each), the last mask empty. 16 of them ask ~1 GB "
       "of ~1 MB of request: too_large from the headers alone (the request's pixel budget). 2 fill the budget "
       "exactly: masks are checked before images, so the empty mask is refused before any image is decoded.",
       weight=0.2, max_units=4)
def _(rng: Rng, m: Material) -> Msg:
    side = P.LIMITS.max_image_side // 2
    n = pick(rng, [P.LIMITS.max_shots_per_request, P.LIMITS.max_request_pixels // (side * side)])
    img, empty = png_bytes(np.zeros((side, side, 3), np.uint8)), png_bytes(np.zeros((side, side), np.uint8))
    shots = [{"image": img, "mask": png_bytes(quarter(side, side))}] * (n - 1) + [{"image": img, "mask": empty}]
    over = n * side * side > P.LIMITS.max_request_pixels
    return req(m.request("teach", "fuzz-big", shots=shots), rng, f"{n}x{side}", codes=TL if over else BM)


@teach("teach_preview_max_image", ANY_REFUSAL,
       "A preview of a real 1920x1200 image (the largest preview allowed: a frame's cap): the node upsamples logits "
       "of every class to that size and replies with a 2.3 MB label map; measured for memory. Or a 4096x4096 one, "
       "over that cap: too_large from its header.", expect="either", weight=0.2, max_units=4)
def _(rng: Rng, m: Material) -> object:
    if rng.random() < 0.5:
        return "1920x1200", m.request("preview", "fuzz-preview", image=m.frame_at_cap)
    image = png_bytes(np.zeros((4096, 4096, 3), np.uint8))
    return req(m.request("preview", "fuzz-preview", image=image), rng, "4096x4096", expect="refuse", codes=TL)


# -- teach socket: registry ops -------------------------------------------------------------------------------
teach("teach_forget_unknown", {P.UNKNOWN_CLASS},
      "Forget of names the node never had (also model class names that are not base classes here).",
      picked(lambda rng, m: pick(rng, ["Zebra", "fuzz-" + rtext(rng, 8), "Car", "Pedestrian", "bicyclist", "ROAD2"]),
             lambda rng, m, name: m.request("forget", name),
             lambda name: "random" if name.startswith("fuzz") else name))
teach("teach_forget_base_empty", BR,
      "Forget of a base class that holds no taught shots: nothing to forget, and the class must stay.",
      lambda rng, m: m.request("forget", pick(rng, list(m.base_names)).upper()))


@teach("teach_name_taken", {P.NAME_TAKEN},
       "`create: true` for an existing (base) name, any case.")
def _(rng: Rng, m: Material) -> object:
    base = pick(rng, list(m.base_names))
    name = pick(rng, [base, base.lower(), base.upper(), f"  {base} "])
    return name.strip(), m.request("teach", name, create=True)


teach("teach_import_garbage", BR,
      "`pack` that is no class pack: random bytes, another msgpack type, a map without format, cut or padded.",
      picked({"random": lambda rng, m: rbytes(rng, between(rng, 1, 2000)), "list": pk([1, 2, 3]), "map": pk({"a": 1}),
              "truncated": lambda rng, m: cut(rng, m.pack), "trailing": lambda rng, m: m.pack + rbytes(rng, 8),
              "empty": b"", "format_only": lambda rng, m: pk({"format": msgpack.unpackb(m.pack).get("format")})},
             lambda rng, m, pack: {"op": "import", "pack": pack}))


# -- teach socket: class packs --------------------------------------------------------------------------------
Mutation = Callable[[dict, Rng], bool]  # edits a pack's classes layer in place; False when it has no such part


def classes_of(p: dict) -> list[dict]:
    return [c for c in p.get("classes", []) if isinstance(c, dict)]


def edit(where: str, key: str, value: Callable[[object, Rng], object]) -> Mutation:
    """Set `key` of one random part of the pack (a `shot`, a `novel` or `base` class, or the `pack` itself) to
    value(its old value, rng)."""
    def apply(p: dict, rng: Rng) -> bool:
        cs = classes_of(p)
        parts = {"pack": [p], "shot": [s for c in cs for s in c.get("shots", []) if isinstance(s, dict)]}.get(
            where, [c for c in cs if c.get("kind") == where] or cs)
        if parts:
            part = pick(rng, parts)
            part[key] = value(part.get(key), rng)
        return bool(parts)
    return apply


def to(value: object) -> Callable[[object, Rng], object]:
    return lambda old, rng: value


def poisoned(value: float) -> Callable[[bytes, Rng], bytes]:
    """~2 % of a shot's float64 statistics set to `value` (NaN, inf, 1e300)."""
    def change(raw: bytes, rng: Rng) -> bytes:
        a = np.frombuffer(raw, "<f8").copy()
        a[rng.integers(0, len(a), max(1, len(a) // 50))] = value
        return a.tobytes()
    return change


def more_classes(extra: Callable[[dict], list[dict]]) -> Mutation:
    """Append extra(the first novel class) to the pack's classes: copies the node must refuse for their number."""
    def apply(p: dict, rng: Rng) -> bool:
        if novel := [c for c in classes_of(p) if c.get("kind") == "novel"]:
            p["classes"] = classes_of(p) + extra(novel[0])
        return bool(novel)
    return apply


def moved(c: dict, new: int) -> dict:
    """A consistent copy of class `c` under id `new` and another name: nothing wrong with it but the count."""
    shots = [dict(s, target=new, shot_id=f"{new:08x}{j:056x}",
                  class_ids=sorted(new if i == c.get("id") else i for i in s.get("class_ids", [])))
             for j, s in enumerate(c.get("shots", []))]
    return dict(c, id=new, name=f"fuzz-many-{new}", shots=shots)


def many_shots(p: dict, rng: Rng) -> bool:
    """One class with 65 shots (distinct ids, else the node would merge them)."""
    if cs := [c for c in classes_of(p) if c.get("shots")]:
        cs[0]["shots"] = [dict(cs[0]["shots"][0], shot_id=f"{k:064x}") for k in range(P.LIMITS.max_shots_per_class + 1)]
    return bool(cs)


COUNTED = frozenset({P.LIMIT, P.TOO_LARGE, P.BAD_REQUEST})
# edits of a decoded class pack that the node must refuse -> (edit, codes expected)
MUTATIONS: dict[str, tuple[Mutation, frozenset[str]]] = {
    "nan_sums_raw": (edit("shot", "sums_raw", poisoned(float("nan"))), BR),
    "inf_sums_raw": (edit("shot", "sums_raw", poisoned(float("inf"))), BR),
    "ninf_sums_unit": (edit("shot", "sums_unit", poisoned(float("-inf"))), BR),
    "nan_sums_unit": (edit("shot", "sums_unit", poisoned(float("nan"))), BR),
    "huge_finite_sums": (edit("shot", "sums_raw", poisoned(1e300)), BR),
    **{f"{name}_counts": (edit("shot", "counts", lambda raw, rng, v=v: np.full(len(raw) // 8, v, "<i8").tobytes()), BR)
       for name, v in (("negative", -5), ("zero", 0), ("huge", 2**62))},
    "sums_short": (edit("shot", "sums_raw", lambda raw, rng: raw[:-8]), BR),
    "dim_plus_one": (edit("pack", "dim", lambda dim, rng: int(dim or 0) + 1), BR),
    "shot_mode_bogus": (edit("shot", "mode", to("\x1b[31mevil")), BR),
    "shot_target_mismatch": (edit("shot", "target", to(254)), BR),
    "shot_id_control": (edit("shot", "shot_id", to("\x1b[2J" + "a" * 60)), BR),
    "shot_class_ids_unsorted": (edit("shot", "class_ids", lambda ids, rng: ids[::-1] if len(ids) > 1 else ids * 2), BR),
    "shot_unknown_field": (edit("shot", "evil", to(b"x" * 100)), BR),
    "class_id_255": (edit("novel", "id", to(255)), BR), "class_kind_bogus": (edit("novel", "kind", to("evil")), BR),
    "class_color_out_of_range": (edit("novel", "color", to([999, -1, 2**40])), BR),
    "class_name_control": (edit("novel", "name", lambda old, rng: pick(rng, CONTROL_NAMES)), BR),
    "class_name_10k": (edit("novel", "name", to("N" * 10_000)), BR),
    "class_name_blank": (edit("novel", "name", lambda old, rng: pick(rng, ["", "  ", "\t"])), BR),
    "class_name_like_base": (edit("novel", "name", to("rOAD")), BR | {P.NAME_TAKEN}),
    "base_class_renamed": (edit("base", "name", to("Evil")), BR),
    "duplicate_class": (more_classes(lambda c: [dict(c)]), BR),
    "classes_not_list": (edit("pack", "classes", to("everything")), BR),
    "model_name_control": (edit("pack", "model_name", to("\x1b[31m" + "m" * 300)), BR),
    "unknown_top_field": (edit("pack", "evil", to([1] * 1000)), BR),
    "checksum_other_model": (edit("pack", "model_checksum", to("f" * 64)), BR | {P.MODEL_MISMATCH}),
    "too_many_shots": (many_shots, COUNTED),
    "too_many_classes": (more_classes(lambda c: [moved(c, 20 + k) for k in range(P.LIMITS.max_novel_classes + 1)]),
                         COUNTED)}
# damage to the pack's outer layer {format, content, sha256}: checksum, format, the old v1 layout (no checksum)
ENVELOPE: dict[str, Callable[[dict, Rng], bytes]] = {
    "format_wrong": lambda env, rng: pk(env | {"format": "edge-gfs-classes/999"}),
    "sha256_mismatch": lambda env, rng: pk(env | {"content": flip_bytes(rng, env["content"], 1,
                                                                        len(env["content"]) // 2)}),
    "sha256_missing": lambda env, rng: pk({k: v for k, v in env.items() if k != "sha256"}),
    "v1_layout": lambda env, rng: pk(msgpack.unpackb(env["content"], raw=False) | {"format": "edge-gfs-classes/1"})}


@teach("teach_import_corrupt", BR | {P.MODEL_MISMATCH, P.LIMIT, P.TOO_LARGE, P.NAME_TAKEN},
       "A real export of this node with one part corrupted and the checksum re-sealed: NaN/inf/huge statistics, "
       "negative counts, another dim, id 255, control characters or 10k chars in a name, a bogus colour, 65 shots, "
       "101 classes, another model's checksum; or the envelope damaged (sha256, format, v1 layout).", weight=3)
def _(rng: Rng, m: Material) -> Msg:
    v, env = pick(rng, sorted(MUTATIONS) + sorted(ENVELOPE)), msgpack.unpackb(m.pack, raw=False)
    if v in ENVELOPE:
        return req({"op": "import", "pack": ENVELOPE[v](env, rng)}, rng, v, codes=BR | {P.MODEL_MISMATCH})
    (edit, codes), content = MUTATIONS[v], msgpack.unpackb(env["content"], raw=False)
    if not edit(content, rng):
        return req({"op": "import", "pack": m.pack[: len(m.pack) // 2]}, rng, "truncated(fallback)", codes=BR)
    body = pk(content)  # re-sealed, as any client can: the node's field checks are reached, not only the checksum
    return req({"op": "import", "pack": pk(env | {"content": body, "sha256": hashlib.sha256(body).hexdigest()})},
               rng, v, codes=codes)


# -- teach socket: valid requests mixed in --------------------------------------------------------------------
@teach("valid_ping", (),
       "ping on REQ or DEALER (with or without the empty delimiter), with unknown extra fields ignored.",
       expect="accept")
def _(rng: Rng, m: Material) -> Msg:
    v = pick(rng, ["req", "dealer", "dealer_no_delim", "extra_fields"])
    body = pk({"op": "ping"} | ({"x": [1, {"y": b"z"}], "v": 1} if v == "extra_fields" else {}))
    return Msg([b"", body] if v == "dealer" else [body], v, dealer=v.startswith("dealer"), op="ping")


teach("valid_list_export", (),
      "list and export: the read-only ops still answer in full between hostile requests.",
      picked(["list", "export"], lambda rng, m, op: {"op": op}, str), expect="accept")


@teach("valid_teach_forget", (),
       "A real one-shot teach of a new class, then its forget: the node still learns after all the garbage.",
       expect="accept", weight=0.6)
def _(rng: Rng, m: Material) -> list[Msg]:
    name = "fuzz-valid-" + rtext(rng, 6, "abcdefghijklmnopqrstuvwxyz")
    return [req(m.request("teach", name, create=True), rng, "teach"), req(m.request("forget", name), rng, "forget")]


teach("valid_import_forget", (),
      "The node's own pristine export imported back (classes reappear), then forgotten again.",
      lambda rng, m: [req({"op": "import", "pack": m.pack}, rng, "import")] +
      [req(m.request("forget", n), rng, "forget") for n in m.pack_names], expect="accept", weight=0.4)


# -- frame socket ---------------------------------------------------------------------------------------------
FRAME_FIELDS: dict[str, type] = {"v": int, "seq": int, "stamp_ns": int, "frame_id": str, "encoding": str,
                                 "width": int, "height": int, "data": bytes}


def with_field(key: str, values: list, label: Callable[[object], str] = str) -> Make:
    """Good frames with field `key` set to one of `values`."""
    return picked(values, lambda rng, m, v: m.frame(**{key: v}), label)


def encoded(table: Table) -> Make:
    """Good frames with their data and encoding from a table of variant -> (data, encoding)."""
    return picked(table, lambda rng, m, de: m.frame(data=de[0], encoding=de[1]))


def declared(sizes: list[tuple[int, int]], raw: bytes) -> Make:
    """Frames declaring one of `sizes`, as JPEG (the real 480x360 data) or raw (`raw` as the data)."""
    def make(rng: Rng, m: Material) -> tuple[str, dict]:
        (w, h), enc = pick(rng, sizes), pick(rng, ["jpeg", "bgr8", "rgb8"])
        return f"{enc} {w}x{h}", m.frame(width=w, height=h, encoding=enc, data=m.frame_jpg[0] if enc == "jpeg" else raw)
    return make


frame("frame_garbage",
      "Random bytes as the payload.",
      lambda rng, m: rbytes(rng, between(rng, 1, 4096)))
frame("frame_empty",
      "An empty payload, or a topic frame alone.",
      lambda rng, m: pick(rng, [Msg([TOPIC, b""], "empty_payload"), Msg([TOPIC], "topic_only"),
                                Msg([TOPIC, b"", b""], "two_empty")]))
frame("frame_truncated_msgpack",
      "A real frame message cut short.",
      lambda rng, m: cut(rng, pk(m.frame())))


@frame("frame_trailing_bytes",
       "A valid frame message with junk after it (msgpack ExtraData).")
def _(rng: Rng, m: Material) -> Msg:
    d = m.frame()
    return Msg([TOPIC, pk(d) + rbytes(rng, between(rng, 1, 64))], seq=d["seq"])


frame("frame_not_a_map",
      "Top level list/int/str/bin/nil, deep nesting, non-string keys.",
      picked({"list": pk([1, 2]), "int": pk(5), "str": pk("frame"), "bin": pk(b"x"), "nil": pk(None),
              "deep": lambda rng, m: deep_nesting(between(rng, 600, 5000), False), "int_key": pk({1: 2, "v": 1})}))
frame("frame_missing_field",
      "Each required field left out (or nil).",
      picked(list(FRAME_FIELDS), lambda rng, m, f: m.frame(**{f: None}) if rng.random() >= 0.5 else
             {k: v for k, v in m.frame().items() if k != f}, str))
frame("frame_wrong_types",
      "Each field of another type (bool for int, str for bytes, NaN, lists, maps, ext).",
      picked(list(FRAME_FIELDS), lambda rng, m, f: m.frame(**{f: wrong_value(rng, FRAME_FIELDS[f], False)}), str),
      weight=1.5)
frame("frame_bad_version",
      "v other than 1: 0, 2, -1, 2^64-1.",
      with_field("v", [0, 2, -1, 2**64 - 1, 255]))
frame("frame_bad_encoding",
      "Encodings outside the list: case, spaces, control characters, 1 MB strings.",
      with_field("encoding", ["JPEG", "jpg", " jpeg", "mono8", "h264", "", "\x1b[31mjpeg", "png\x00", "x" * 1_000_000],
                 lambda e: repr(e[:10])))
frame("frame_nonpositive_size",
      "Width or height zero or negative (also with raw encodings, where the byte count is width*height*3).",
      declared([(0, 360), (480, 0), (-480, 360), (480, -360), (-1, -1), (0, 0), (-(2**63), 1)], b""))
frame("frame_huge_size",
      "Declared sizes of 65000, 2^31, 2^63-1 and 2^64-1 (raw: w*h*3 must not overflow or allocate); or a real "
      "1921x1200 JPEG declared as such: one column over the node's frame cap.",
      lambda rng, m: ("real jpeg 1921x1200", m.frame(width=1921, height=1200, data=m.frame_over_cap))
      if rng.random() < 1 / 7 else declared([(65000, 65000), (2**31, 2), (2**63 - 1, 2**63 - 1), (2**64 - 1, 1),
                                             (8193, 1), (1, 2**32)], b"x")(rng, m))


@frame("frame_wrong_declared_size",
       "A valid JPEG/PNG whose declared width/height differ from what it decodes to.")
def _(rng: Rng, m: Material) -> tuple[str, dict]:
    (w, h), enc = m.frame_wh, pick(rng, ["jpeg", "png"])
    dw, dh = pick(rng, [(1, 0), (0, -1), (-100, 50), (h - w, w - h), (480, 0), (-479, -359)])
    return f"{enc} {dw:+d},{dh:+d}", m.frame(width=w + dw, height=h + dh, encoding=enc,
                                             data=m.frame_jpg[0] if enc == "jpeg" else m.frame_png)


frame("frame_encoding_mismatch",
      "JPEG data declared png, PNG declared jpeg, raw pixels declared jpeg.",
      encoded({"png_as_jpeg": lambda rng, m: (m.frame_png, "jpeg"),
               "jpeg_as_png": lambda rng, m: (m.frame_jpg[0], "png"),
               "raw_as_jpeg": lambda rng, m: (m.frame_img.tobytes(), "jpeg")}))
frame("frame_raw_length_mismatch",
      "bgr8/rgb8 whose byte count is not width*height*3 (one byte short, one long, empty, a JPEG).",
      picked({"short": lambda rng, m: m.frame_img.tobytes()[:-1], "empty": b"", "jpeg": lambda rng, m: m.frame_jpg[0],
              "long": lambda rng, m: m.frame_img.tobytes() + b"\x00"},
             lambda rng, m, data: m.frame(data=data, encoding=pick(rng, ["bgr8", "rgb8"]))))
frame("frame_corrupt_image",
      "A JPEG/PNG signature followed by garbage, a PNG with flipped bytes, a JPEG header without scan data.",
      encoded({"jpeg_magic": lambda rng, m: (b"\xff\xd8\xff" + rbytes(rng, 2000), "jpeg"),
               "png_magic": lambda rng, m: (b"\x89PNG\r\n\x1a\n" + rbytes(rng, 2000), "png"),
               "png_flipped": lambda rng, m: (flip_bytes(rng, m.frame_png, 20, start=40), "png"),
               "jpeg_no_scan": lambda rng, m: (m.frame_jpg[0][:m.frame_jpg[0].find(b"\xff\xda")], "jpeg")}))
frame("frame_truncated_png",
      "A real PNG frame cut at 5..95 %.",
      encoded({"png": lambda rng, m: (cut(rng, m.frame_png, 0.05, 0.95), "png")}))
frame("frame_truncated_jpeg",
      "A real JPEG frame cut at 30..95 %: libjpeg fills the rest with grey; labelling it hands the robot a map of "
      "pixels the camera never saw.",
      encoded({"jpeg": lambda rng, m: (cut(rng, pick(rng, m.frame_jpg), 0.3, 0.95), "jpeg")}))
frame("frame_jpeg_bitflips",
      "A real JPEG with bytes flipped in its scan data: may decode to garbage (accepting is fine), must not crash.",
      picked(lambda rng, m: pick(rng, m.frame_jpg), lambda rng, m, jpg: m.frame(
          data=flip_bytes(rng, jpg, between(rng, 1, 30), start=jpg.find(b"\xff\xda") + 20)), lambda jpg: "bitflips"),
      expect="either")
frame("frame_jpeg_bomb",
      "A ~630-byte JPEG whose SOF says 65000x65000, declared as that or as a normal 480x360.",
      picked(lambda rng, m: pick(rng, [(65000, 65000), m.frame_wh]), lambda rng, m, wh: m.frame(
          data=bomb_jpeg(65000, 65000), width=wh[0], height=wh[1]), lambda wh: f"declared {wh[0]}x{wh[1]}"))
frame("frame_jpeg_bomb_stray",
      "65000x65000 (or 12000x12000, under OpenCV's own cap) with a stray byte before the SOF, declared 480x360.",
      picked([65000, 65000, 12000], lambda rng, m, side: m.frame(data=bomb_jpeg(side, side, True))))
frame("frame_png_bomb",
      "A tiny PNG whose IHDR says 100000x100000, declared 480x360 or 100000x100000.",
      picked(lambda rng, m: pick(rng, [(100_000, 100_000), m.frame_wh]), lambda rng, m, wh: m.frame(
          encoding="png", data=bomb_png(100_000, 100_000), width=wh[0], height=wh[1]), lambda wh: f"declared {wh[0]}"))
frame("frame_huge_frame_id",
      "frame_id over 256 characters (257 .. 1 MB).",
      picked([257, 1000, 100_000, 1_000_000], lambda rng, m, n: m.frame(frame_id="f" * n), str))


@frame("frame_multipart",
       "Three parts, or a topic that only starts with `frame` (the SUB prefix match lets it in).")
def _(rng: Rng, m: Material) -> Msg:
    d, v = m.frame(), pick(rng, ["three_parts", "topic_suffix", "topic_only_payload_first"])
    return Msg({"three_parts": [TOPIC, pk(d), b"extra"], "topic_suffix": [TOPIC + b"s", pk(d)],
                "topic_only_payload_first": [TOPIC + pk(d)]}[v], v, seq=d["seq"])


frame("frame_oversized",
      "A frame message just over the 32 MiB frame cap (under the socket's 64 MiB).",
      encoded({"32MiB+": lambda rng, m: (bytes(P.LIMITS.max_frame_bytes + between(rng, 1, 4096)), "bgr8")}),
      weight=0.3, max_units=4)
frame("frame_control_frame_id",
      "frame_id with ANSI escapes, CR/LF, NUL (short enough to pass): echoed in labels, never raw into the log.",
      with_field("frame_id", list(CONTROL_NAMES), lambda s: "ctrl"), expect="either")
frame("frame_format_variants",
      "Valid frames in encodings a camera may really send: progressive or greyscale JPEG, restart markers, 4:4:4; "
      "greyscale, RGBA and 16-bit PNG. All of them are the declared size and must be labelled.",
      encoded({"progressive": lambda rng, m: (jpeg_bytes(m.frame_img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg"),
               "grey_jpeg": lambda rng, m: (jpeg_bytes(cv2.cvtColor(m.frame_img, cv2.COLOR_BGR2GRAY)), "jpeg"),
               "restart": lambda rng, m: (jpeg_bytes(m.frame_img, cv2.IMWRITE_JPEG_RST_INTERVAL, 4), "jpeg"),
               "jpeg444": lambda rng, m: (jpeg_bytes(m.frame_img, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                     cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444), "jpeg"),
               "grey_png": lambda rng, m: (png_bytes(cv2.cvtColor(m.frame_img, cv2.COLOR_BGR2GRAY)), "png"),
               "rgba_png": lambda rng, m: (png_bytes(cv2.cvtColor(m.frame_img, cv2.COLOR_BGR2BGRA)), "png"),
               "png16": lambda rng, m: (png_bytes(m.frame_img.astype(np.uint16) * 257), "png")}), expect="accept")
frame("frame_jpeg_exif_rotated",
      "A real frame with an Exif orientation (6 or 8: rotate 90) declared at its stored 480x360: the node ignores "
      "the tag (the stored size counts, as for every image), so it must label it at 480x360, never 360x480.",
      picked([6, 8], lambda rng, m, o: m.frame(data=exif_orientation(m.frame_jpg[0], o)), lambda o: "exif"),
      expect="accept")
frame("frame_seq_wrap",
      "Valid frames whose seq wraps 2^64-1 -> 0 or goes back: counted as resets, each still segmented.",
      with_field("seq", [2**64 - 2, 2**64 - 1, 0, 1, 2**63, 2**63 - 1]), expect="accept")
frame("frame_random_seq",
      "Valid frames with random 64-bit and negative seqs and extreme stamps.",
      lambda rng, m: ("random", m.frame(
          seq=int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64)) if rng.random() < 0.5 else
          int(rng.integers(0, 2**63, dtype=np.int64)) * 2 + 1, stamp_ns=pick(rng, [0, -1, 2**64 - 1, -(2**63),
                                                                                   time.time_ns()]))),
      expect="accept")


@frame("frame_tiny_valid",
       "Valid frames of 1x1, 2x3 and 1x480 pixels (JPEG, PNG, bgr8): the resize path on degenerate shapes.",
       expect="accept")
def _(rng: Rng, m: Material) -> tuple[str, dict]:
    (w, h), enc = pick(rng, [(1, 1), (3, 2), (480, 1), (1, 360)]), pick(rng, ["jpeg", "png", "bgr8", "rgb8"])
    img = np.full((h, w, 3), 128, np.uint8)
    data = jpeg_bytes(img) if enc == "jpeg" else png_bytes(img) if enc == "png" else img.tobytes()
    return f"{enc} {w}x{h}", m.frame(encoding=enc, data=data, width=w, height=h)


# -- labels socket (the node's XPUB: inbound it takes subscriptions only) ---------------------------------------
@kind("labels_subscription_flood", "labels", (),
      "250 distinct random subscriptions on the labels socket: half `long` (40..64 kB), half `short` (9..63 bytes, "
      "no prefix of a node topic). A plain PUB keeps every prefix of every one in a trie, in the node's memory, "
      "while the subscriber stays connected (2,000 of 60 kB took a node from 0.8 to 3.6 GB). The node keeps only "
      "prefixes of its own topics and drops a connection that sends one over 64 bytes: memory must not grow.",
      expect="drop", weight=0.05, max_units=2, burst=250)
def _(rng: Rng, m: Material) -> Msg:
    long = rng.random() < 0.5
    topic = rbytes(rng, between(rng, 40_000, 64_000)) if long else b"\xff" + rbytes(rng, between(rng, 8, 63))
    return Msg([b"\x01" + topic], "long" if long else "short")


def kind_rng(seed: int, k: Kind, n: int) -> Rng:
    """The generator of kind `k`'s n-th unit for --seed `seed`: a unit's payloads depend on nothing else."""
    return np.random.default_rng([seed, zlib.crc32(k.name.encode()), n])
