"""Hostile-input fuzz of a real `edge-gfs run` node over loopback (issue 13): teach, frame and labels sockets.

Why a bench and not only unit tests: the node's contract (../shared/spec/node.md, "Bad input of any kind ... gets
an error reply ... the node keeps running and its state is unchanged") is about a process, its sockets, its log
and its memory. So this starts the node as deployed (bench/node_proc.py: a subprocess on free loopback ports, the
bundled camvid-fold0 model, --threads 1), talks to it with plain pyzmq + msgpack (no edge_gfs client code on the
wire, so a client-side check cannot hide a node-side hole), and measures what a robot operator would see.

    python bench/fuzz.py                                   # 10,000 hostile messages -> bench/results/hardening/
    python bench/fuzz.py --messages 600 --out /tmp/fuzz_smoke
    python bench/fuzz.py --only teach_unknown_op_huge,frame_jpeg_bomb_stray --messages 40 --out /tmp/f
    python bench/fuzz.py --list-kinds                      # the table of kinds and what each must get
    python bench/fuzz.py --replay /tmp/fuzz_smoke/repro/teach_x.internal.0.msgpack   # one saved reproducer

What it sends is the table of *kinds* in bench/fuzz_kinds.py (KINDS: each kind's socket, expected outcome and
error codes, why it matters, and its payload generator; how an expectation is judged is said there); this file is
the runner. Teach requests go one at a time on REQ or DEALER sockets (no reply within --timeout: a hang), each
unit followed by a `ping` (alive? classes version moved only where a request was accepted?). Frames go in bursts
on a bound XPUB, --gap apart so the node's one-frame slot examines each; then a good CamVid frame must still get
its label map (else the node is *deaf*), and the node's `status` topic gives the deltas of its counters. The
labels socket takes only subscriptions: a flood of them is measured by the node's memory.

The report (fuzz.json, fuzz.md, the command at its top) gives per kind replies by code and every check of CHECKS,
latency p50/p99, reply and log sizes, memory growth; overall the node's peak RSS, log growth and the end checks.
Generators draw from default_rng([seed, crc32(kind), n]) for a kind's n-th unit, so `--only KIND --seed S`
regenerates a failing kind's payloads; the first failures are also saved under OUT/repro/ for `--replay`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import msgpack
import numpy as np
import zmq

from fuzz_kinds import KINDS, TOPIC, Kind, Msg, kind_rng, load_material, pk
from node_proc import REPO, NodeProcess, md_table, proc_mb

from edge_gfs.wire import protocol as P  # constants and limits only; nothing of it on the wire

DEFAULT_SEED = 1313
REPLY_CAP = 1024  # bytes: an error reply should be a code and a short message, whatever the request was
LOG_LINE_CAP = 1024  # bytes: one log line per refusal, never an echo of the payload
REPRO_CAP = 2 << 20  # reproducers above this are regenerated with --only/--seed instead of saved
REPROS_PER_CHECK = 2
MEMORY_SPIKE_KB = 200 * 1024
# after node_proc's own --status-period 1 --classes-period 2, so these win: each frame burst waits for a status
NODE_FLAGS = ("--status-period", "0.2", "--classes-period", "1")
CHANGING_OPS = ("teach", "forget", "import")
LOG_PREFIX = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
# stderr lines of libjpeg/libpng/OpenCV: not forged by a client, but unbounded noise a hostile image can cause
DECODER_NOISE = re.compile(rb"^(Corrupt JPEG data|Premature end of JPEG|Invalid SOS|Unsupported marker|"
                           rb"Bogus|libpng (warning|error)|\[ WARN|\[ERROR|Not a JPEG|JPEG datastream|Warning:|"
                           rb"Huffman|Empty JPEG|Quantization|Improper call|Unsupported JPEG|Wrong JPEG)")
CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xe2\x80[\xaa-\xae]|\xe2\x81[\xa6-\xa9]")  # C0, DEL, bidi


# =============================================================================================================
# the wire
# =============================================================================================================
def mem_kb(node: NodeProcess) -> dict[str, int]:
    """VmHWM (peak) and VmRSS of the node in kB; empty once it has exited."""
    mb = {k: proc_mb(node.pid, k) for k in ("VmHWM", "VmRSS")} if node.alive() else {}
    return {k: round(v * 1024) for k, v in mb.items() if v == v}  # NaN: it exited meanwhile


def unpack_reply(body: bytes) -> dict | None:
    """The reply if it is what the contract says (a map, ok: bool; a refusal with error.code and .message)."""
    try:
        r = msgpack.unpackb(body, raw=False)
    except Exception:  # noqa: BLE001 - not msgpack at all
        return None
    err = r.get("error") if isinstance(r, dict) else None
    if not isinstance(r, dict) or not isinstance(r.get("ok"), bool) or not r["ok"] and not (
            isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
        return None
    return r


class TeachLink:
    """One REQ and one DEALER socket to the node's ROUTER. A request without a reply in time closes and reopens
    the socket it went on (a REQ cannot send again; a DEALER would read the stale reply later)."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.ctx, self.endpoint, self.socks = ctx, endpoint, {}
        for dealer in (False, True):
            self._open(dealer)

    def _open(self, dealer: bool) -> None:
        if dealer in self.socks:
            self.socks[dealer].close(0)
        s = self.socks[dealer] = self.ctx.socket(zmq.DEALER if dealer else zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)

    def exchange(self, msg: Msg, timeout_s: float) -> list[bytes] | None:
        """Send, wait for one reply; None (and a fresh socket) after timeout_s."""
        s = self.socks[msg.dealer]
        try:
            s.send_multipart(msg.parts, copy=len(msg.parts[-1]) < 1 << 20)
            if s.poll(int(timeout_s * 1000)):
                return s.recv_multipart()
        except zmq.ZMQError:
            pass
        self._open(msg.dealer)
        return None

    def call(self, obj: dict, timeout_s: float = 10.0) -> dict | None:
        """A bench-side request (ping, list, cleanup): the reply map, or None."""
        parts = self.exchange(Msg([pk(obj)]), timeout_s)
        try:
            reply = msgpack.unpackb(parts[-1], raw=False) if parts else None
        except Exception:  # noqa: BLE001
            return None
        return reply if isinstance(reply, dict) else None

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)


class Listener(threading.Thread):
    """SUB to the node's labels endpoint: remembers which seqs got label maps (and their size) and the newest status.
    Runs for the whole bench so the node's PUB never queues for us."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        super().__init__(name="listener", daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        for opt, v in ((zmq.LINGER, 0), (zmq.RCVHWM, 10000), (zmq.SUBSCRIBE, P.TOPIC_LABELS),
                       (zmq.SUBSCRIBE, P.TOPIC_STATUS), (zmq.SUBSCRIBE, P.TOPIC_CLASSES)):
            self.sock.setsockopt(opt, v)
        self.sock.connect(endpoint)
        self.cond, self.stop_event = threading.Condition(), threading.Event()
        self.labels: dict[int, tuple[float, int, int]] = {}  # seq -> (monotonic receipt, width, height)
        self.status: tuple[float, dict] | None = None
        self.junk = 0  # messages from the node we could not parse (should stay 0)

    def run(self) -> None:
        while not self.stop_event.is_set():
            if not self.sock.poll(100):
                continue
            parts, now = self.sock.recv_multipart(), time.monotonic()
            try:
                topic, msg = parts[0], msgpack.unpackb(parts[1], raw=False)
                assert isinstance(msg, dict)
            except Exception:  # noqa: BLE001
                self.junk += 1
                continue
            with self.cond:
                if topic == P.TOPIC_LABELS:
                    self.labels[msg.get("seq")] = (now, msg.get("width"), msg.get("height"))
                    if len(self.labels) > 20000:
                        self.labels = {k: v for k, v in self.labels.items() if v[0] >= now - 120}
                elif topic == P.TOPIC_STATUS:
                    self.status = (now, msg)
                self.cond.notify_all()
        self.sock.close(0)

    def wait_label(self, seq: int, timeout_s: float) -> float | None:
        """Receipt time of the label map of `seq`, or None after timeout_s."""
        with self.cond:
            return self.labels[seq][0] if self.cond.wait_for(lambda: seq in self.labels, timeout_s) else None

    def labels_since(self, seqs: Iterable[int], since: float) -> dict[int, tuple[int, int]]:
        with self.cond:
            return {s: (v[1], v[2]) for s in seqs if (v := self.labels.get(s)) is not None and v[0] >= since}

    def wait_status(self, after: float, timeout_s: float) -> dict | None:
        """The first status message received after `after` (monotonic), or None."""
        with self.cond:
            fresh = self.cond.wait_for(lambda: self.status is not None and self.status[0] > after, timeout_s)
            return self.status[1] if fresh else None


class LogWatcher:
    """Reads what the node appended to its log since the last call, and sizes it up."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.in_traceback = path, path.stat().st_size if path.exists() else 0, False

    def take(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                new = f.read()
        except OSError:
            new = b""
        self.offset += len(new)
        # empty lines and node_proc's "=== start N" markers are the bench's own, written at a (re)start
        lines = [ln for ln in new.split(b"\n") if ln and not ln.startswith(b"=== start ")]
        out = {"bytes": len(new), "max_line": max(map(len, lines), default=0), "ctrl_lines": 0, "forged_lines": 0,
               "decoder_noise": 0, "tracebacks": 0, "sample": b""}
        for ln in lines:
            if ln.startswith(b"Traceback"):
                self.in_traceback = True
                out["tracebacks"] += 1
            elif LOG_PREFIX.match(ln):
                self.in_traceback = False
            unprefixed = not LOG_PREFIX.match(ln) and not self.in_traceback
            noise = unprefixed and bool(DECODER_NOISE.match(ln))
            ctrl, forged = bool(CONTROL.search(ln.rstrip(b"\r"))), unprefixed and not noise
            out["ctrl_lines"], out["forged_lines"] = out["ctrl_lines"] + ctrl, out["forged_lines"] + forged
            out["decoder_noise"] += noise
            out["sample"] = out["sample"] or (ln[:200] if ctrl or forged else b"")
        return out


# =============================================================================================================
# bookkeeping
# =============================================================================================================
# the counters of a kind, reported under these names (of messages unless named otherwise); CHECKS says which fail it
TEACH_COUNTS = ("sent", "units", "bytes_sent", "internal", "wrong_accepts", "wrong_refusals", "wrong_codes",
                "bad_replies", "big_replies", "hangs", "dropped", "crashes", "silent_state_changes",
                "max_reply_bytes", "log_bytes", "max_log_line", "log_ctrl_lines", "log_forged_lines",
                "log_decoder_noise", "log_tracebacks", "rss_hwm_growth_kb", "rss_kept_kb", "memory_spikes")
FRAME_COUNTS = ("bursts", "deaf", "labels_for_hostile", "labels_wrong_size", "accepted_frames")
LOG_COUNTS = ("ctrl_lines", "forged_lines", "decoder_noise", "tracebacks")  # of LogWatcher.take(), as log_*


@dataclass
class KindStats:
    """Everything measured for one kind. `dropped`: no reply where the socket cap is the documented outcome;
    `rss_kept_kb`: VmRSS growth over its units; `memory_spikes`: units after which peak or resident memory grew by
    over MEMORY_SPIKE_KB; `bad_replies`: not a msgpack map with ok/error as the contract says."""

    n: Counter = field(default_factory=Counter)  # TEACH_COUNTS and FRAME_COUNTS by name
    replies: Counter = field(default_factory=Counter)  # "ok" or the error code; "no_reply" for silence
    latency_ms: list[float] = field(default_factory=list)
    variants: dict = field(default_factory=lambda: defaultdict(Counter))
    examples: list[str] = field(default_factory=list)  # a few error messages seen, to read in the report
    status_deltas: Counter = field(default_factory=Counter)  # frame sockets: the node's status counters

    def summary(self, k: Kind) -> dict:
        lat = {q: round(float(np.percentile(self.latency_ms, p)), 2) for q, p in (("p50", 50), ("p99", 99),
                                                                                    ("max", 100))} \
            if self.latency_ms else None
        out = {"socket": k.socket, "expect": k.expect, "codes": sorted(k.codes), **{c: self.n[c] for c in TEACH_COUNTS},
               "replies": dict(self.replies), "latency_ms": lat,
               "variants": {v: dict(c) for v, c in sorted(self.variants.items())}, "examples": self.examples}
        if k.socket != "teach":
            out |= {c: self.n[c] for c in FRAME_COUNTS} | {"status_deltas": dict(self.status_deltas)}
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


def failures_of(s: KindStats) -> dict[str, int]:
    n = s.n
    f = {c: n[c] for c in ("crashes", "hangs", "deaf", "wrong_refusals", "wrong_codes", "bad_replies", "big_replies",
                           "silent_state_changes", "log_ctrl_lines", "log_forged_lines", "labels_wrong_size")}
    f |= {"internal": n["internal"] + s.status_deltas.get("errors", 0), "memory_spike": n["memory_spikes"],
          "wrong_accepts": n["wrong_accepts"] + n["labels_for_hostile"],
          "log_line_too_long": int(n["max_log_line"] > LOG_LINE_CAP)}
    return {c: f[c] for c in CHECKS if f.get(c)}


def count(st: KindStats, bad: Counter, check: str, n: int = 1) -> None:
    """`n` more failures of `check`: in the kind's totals and in the unit's (which saves a reproducer)."""
    st.n[check] += n
    bad[check] += n


def allocate(kinds: list[Kind], messages: int, burst: int) -> dict[str, int]:
    """Hostile messages per kind by weight (largest remainder), at least one unit each, heavy kinds capped; valid
    kinds get about one request per 20 hostile ones on top."""
    out: dict[str, int] = {}
    floor = {k.name: k.burst or 1 for k in kinds}  # a kind with its own burst size runs at least one whole unit
    cap = {k.name: k.max_units * (1 if k.socket == "teach" else k.burst or burst) for k in kinds if k.max_units}

    def share(free: list[Kind], left: int) -> None:
        while free and left > 0:
            w = sum(k.weight for k in free)
            raw = {k.name: left * k.weight / w for k in free}
            got = {n: max(floor[n], int(v)) for n, v in raw.items()}
            for n in sorted(raw, key=lambda n: raw[n] - int(raw[n]), reverse=True)[:max(left - sum(got.values()), 0)]:
                got[n] += 1
            if not (capped := [k for k in free if got[k.name] > cap.get(k.name, got[k.name])]):
                out.update({k.name: got[k.name] for k in free})
                return
            for k in capped:
                out[k.name] = cap[k.name]
                left -= cap[k.name]
                free.remove(k)
    valid = [k for k in kinds if k.valid]
    share([k for k in kinds if not k.valid], messages)
    share(valid, max(len(valid), messages // 20))
    return out


@dataclass
class Unit:
    kind: Kind
    n: int  # this kind's n-th unit: seeds its generator
    size: int  # messages (frame bursts) or 1 (teach: the generator decides)


# =============================================================================================================
# the run
# =============================================================================================================
class Fuzzer:
    """One node (node_proc.NodeProcess, its log in OUT/fuzz-node.log), the bench's sockets to it, and the stats."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        (self.out / "repro").mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "fuzz-node.log"
        self.log_path.write_bytes(b"")
        self.state_dir = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="fuzz-state-"))
        self.kinds = [k for k in KINDS if not args.only or k.name in args.only or k.valid]
        self.stats: dict[str, KindStats] = {k.name: KindStats() for k in self.kinds}
        self.ctx = zmq.Context()
        self.node = NodeProcess(self.log_path, self.state_dir, args.model, args.threads, extra=NODE_FLAGS)
        self.material = load_material()
        self.repro_counts: Counter = Counter()
        self.failures: list[dict] = []
        self.exits: list[int | None] = []
        self.crash_logs: list[dict] = []
        self.version, self.baseline = 0, []
        self.teach: TeachLink | None = None
        self.listener: Listener | None = None
        self.pub: zmq.Socket | None = None
        self.say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)

    # -- node lifecycle ---------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Start (or restart) the node and wait until it answers ping and labels our frames. The frames XPUB
        (XPUB_VERBOSE: a restarted node's subscription shows up again; a deep queue, so a burst is never dropped on
        our side) and the listener are made once and outlive restarts on the same endpoints."""
        if self.pub is None:
            self.pub = self.ctx.socket(zmq.XPUB)
            for opt, v in ((zmq.LINGER, 0), (zmq.SNDHWM, 100000), (zmq.XPUB_VERBOSE, 1)):
                self.pub.setsockopt(opt, v)
            self.pub.bind(self.node.frames)
            self.listener = Listener(self.ctx, self.node.labels)
            self.listener.start()
        try:
            self.node.start().wait_ready(240)
        except RuntimeError as e:
            raise SystemExit(f"the node did not start: {e}\nlog: {self.log_path}") from None
        if self.teach is not None:
            self.teach.close()
        self.teach = TeachLink(self.ctx, self.node.teach)
        ping = self.teach.call({"op": "ping"}, 10)
        self.version = int(ping["version"]) if ping and ping.get("ok") else self.version
        if self.pub.poll(60_000):
            while self.pub.poll(0):
                self.pub.recv()
        deadline = time.monotonic() + 60
        while self.probe_frame(1.0, tries=1) is None:  # the SUB may join a moment after its first ping reply
            if time.monotonic() > deadline:
                raise SystemExit(f"no label map for a good frame within 60 s of the start; log: {self.log_path}")

    def setup_pack(self) -> None:
        """A real class pack from this node: a novel class and context on a base class, exported, then forgotten,
        so every corrupted pack differs from something the node itself wrote."""
        m = self.material
        m.base_names = tuple(c["name"] for c in self.teach.call({"op": "list"})["classes"] if c["kind"] == "base")
        road = next((n for n in m.base_names if n.lower() == "road"), m.base_names[0])
        taught = [self.teach.call(m.request("teach", n), 60) for n in ("fuzzpack", road)]
        if not all(r and r.get("ok") for r in taught):
            raise SystemExit(f"could not teach the classes of the reference pack: {taught}")
        m.pack, m.pack_names = self.teach.call({"op": "export"})["pack"], ("fuzzpack", road)
        for n in m.pack_names:
            self.teach.call(m.request("forget", n))
        listed = self.teach.call({"op": "list"})
        self.baseline, self.version = listed["classes"], int(listed["version"])

    def restart_after_crash(self, k: Kind) -> None:
        code = self.node.proc.returncode
        self.exits.append(code)
        tail = self.log_path.read_bytes()[-3000:].decode(errors="replace").splitlines()[-25:]
        self.crash_logs.append({"kind": k.name, "exit_code": code, "log_tail": tail})
        self.say(f"node exited with {code} during {k.name}; restarting ({len(self.exits)})")
        if len(self.exits) > self.args.max_restarts:
            raise SystemExit(f"the node crashed {len(self.exits)} times; stopping (log: {self.log_path})")
        self.connect()
        self.restore_baseline()

    def restore_baseline(self) -> None:
        """Undo what a wrongly accepted request taught: forget every class not in the baseline, and taught context
        on base classes that had none."""
        listed = self.teach.call({"op": "list"})
        base = {c["name"]: c for c in self.baseline}
        for c in listed["classes"] if listed else []:
            if c["name"] not in base or c.get("shots") != base[c["name"]].get("shots"):
                self.teach.call({"op": "forget", "name": c["name"]})
        ping = self.teach.call({"op": "ping"})
        self.version = int(ping["version"]) if ping else self.version

    # -- units ------------------------------------------------------------------------------------------------
    def schedule(self) -> list[Unit]:
        """Every kind's units (frame and labels kinds in bursts), in one order shuffled by --seed."""
        counts, units = allocate(self.kinds, self.args.messages, self.args.burst), []
        for k in self.kinds:
            total, b = counts.get(k.name, 0), 1 if k.socket == "teach" else k.burst or self.args.burst
            sizes = [b] * (total // b) + ([total % b] if total % b else [])
            units += [Unit(k, n, s) for n, s in enumerate(sizes)]
        return [units[i] for i in np.random.default_rng(self.args.seed).permutation(len(units))]

    def run_teach_unit(self, u: Unit) -> tuple[list[Msg], Counter]:
        """Send a unit's requests one by one and judge each reply against the kind's expectation; then a ping
        (alive? version moved only where something was accepted?) and, if something hostile got in, undo it so the
        next units start from the same classes. Returns the messages and the failed checks with their counts."""
        k, st, bad = u.kind, self.stats[u.kind.name], Counter()
        msgs = k.gen(kind_rng(self.args.seed, k, u.n), self.material)
        changed = wrongly_changed = False
        for msg in msgs:
            expect, codes = msg.expect or k.expect, msg.codes or k.codes
            t0 = time.perf_counter()
            parts = self.teach.exchange(msg, 3.0 if expect == "drop" else self.args.timeout)
            st.n.update(sent=1, bytes_sent=msg.size)
            seen = st.variants[msg.variant or "-"]
            if parts is None:
                if not self.node.alive():
                    break
                if expect == "drop":
                    st.n["dropped"] += 1
                    st.replies["no_reply"] += 1
                    seen["no_reply"] += 1
                else:
                    count(st, bad, "hangs")
                    seen["HANG"] += 1
                continue
            st.latency_ms.append((time.perf_counter() - t0) * 1000)
            st.n["max_reply_bytes"] = max(st.n["max_reply_bytes"], len(parts[-1]))
            reply = unpack_reply(parts[-1])
            if reply is None:
                count(st, bad, "bad_replies")
                seen["BAD_REPLY"] += 1
                continue
            code = "ok" if reply["ok"] else reply["error"]["code"]
            st.replies[code] += 1
            seen[code] += 1
            if reply["ok"]:
                if isinstance(reply.get("version"), int) and msg.op in CHANGING_OPS:
                    changed = changed or reply["version"] != self.version
                    self.version = reply["version"]
                if expect == "refuse":
                    count(st, bad, "wrong_accepts")
                    wrongly_changed = wrongly_changed or msg.op in CHANGING_OPS
                continue
            if len(st.examples) < 3 and (text := reply["error"]["message"][:160]) not in st.examples:
                st.examples.append(text)
            if len(parts[-1]) > REPLY_CAP:
                count(st, bad, "big_replies")
            if code == P.INTERNAL:
                count(st, bad, "internal")
            elif expect == "accept":
                count(st, bad, "wrong_refusals")
            elif expect in ("refuse", "drop") and code not in codes:
                count(st, bad, "wrong_codes")
        if self.node.alive():
            ping = self.teach.call({"op": "ping"}, self.args.timeout)
            if ping is None and self.node.alive():
                count(st, bad, "hangs")
            elif ping is not None and ping.get("version") != self.version:
                if not changed:
                    count(st, bad, "silent_state_changes")
                self.version = ping.get("version", self.version)
            if wrongly_changed or (changed and not k.valid):  # valid kinds undo their own changes
                self.restore_baseline()
        return msgs, bad

    def probe_frame(self, timeout_s: float, tries: int = 2) -> float | None:
        """A good CamVid frame; ms until its label map, or None if none came (`tries` frames, timeout_s each)."""
        m = self.material
        for _ in range(tries):
            d = m.frame(data=m.frame_jpg[m.seq % len(m.frame_jpg)])
            t0 = time.monotonic()
            self.pub.send_multipart([TOPIC, pk(d)])
            if (got := self.listener.wait_label(d["seq"], timeout_s)) is not None:
                return (got - t0) * 1000
        return None

    def run_frame_unit(self, u: Unit) -> tuple[list[Msg], Counter]:
        """A burst of one kind's frames --gap apart (so the idle node takes each into its slot), a good frame that
        must get its label map, and the status counters before and after. Label maps for the burst's own seqs
        are wrong accepts for a `refuse` kind; bad_frames growth is a wrong refusal for an `accept` kind."""
        k, st, bad = u.kind, self.stats[u.kind.name], Counter()
        rng = kind_rng(self.args.seed, k, u.n)
        msgs = [g for _ in range(u.size) for g in k.gen(rng, self.material)]
        before = self.listener.wait_status(time.monotonic(), 5.0) or {}
        t_start = time.monotonic()
        for msg in msgs:
            self.pub.send_multipart(msg.parts, copy=len(msg.parts[-1]) < 1 << 20)
            st.n.update(sent=1, bytes_sent=msg.size)
            st.variants[msg.variant or "-"]["sent"] += 1
            time.sleep(self.args.gap)
        st.n["bursts"] += 1
        time.sleep(0.05)
        probe_ms = self.probe_frame(10.0) if self.node.alive() else None
        if probe_ms is None:
            if self.node.alive():
                count(st, bad, "deaf")
            return msgs, bad
        st.latency_ms.append(probe_ms)
        after = self.listener.wait_status(time.monotonic(), 5.0) or {}
        for key, v in after.items():  # counters only: gauges (fps, threads, *_s, *_ms, latency*) are left out
            gauge = key in ("fps", "threads") or key.endswith(("_s", "_ms")) or key.startswith("latency")
            if not gauge and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (v, before.get(key))):
                if d := v - before[key]:
                    st.status_deltas[key] += d
        if after.get("errors", 0) - before.get("errors", 0) > 0:
            bad["internal"] += 1
        tracked = {msg.seq: msg for msg in msgs if msg.seq is not None}
        got = self.listener.labels_since(tracked, t_start)
        st.n["accepted_frames"] += len(got)
        for seq, wh in got.items():
            st.variants[tracked[seq].variant or "-"]["labelled"] += 1
            if tracked[seq].wh is not None and wh != tracked[seq].wh:
                count(st, bad, "labels_wrong_size")
        if k.expect == "refuse" and got:
            st.n["labels_for_hostile"] += len(got)
            bad["wrong_accepts"] += len(got)
        refused = after.get("bad_frames", 0) - before.get("bad_frames", 0)
        if k.expect == "accept" and refused > 0:  # valid (if odd) frames the node threw away
            count(st, bad, "wrong_refusals", refused)
        return msgs, bad

    def run_labels_unit(self, u: Unit) -> tuple[list[Msg], Counter]:
        """Subscribe a burst of topics from a fresh SUB, check the node still publishes, then disconnect and note
        how much of the memory it grew stays (VmRSS after the subscriber left)."""
        k, st, bad = u.kind, self.stats[u.kind.name], Counter()
        rng = kind_rng(self.args.seed, k, u.n)
        msgs = [g for _ in range(u.size) for g in k.gen(rng, self.material)]
        rss0 = mem_kb(self.node).get("VmRSS", 0)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.node.labels)
        for msg in msgs:
            sub.setsockopt(zmq.SUBSCRIBE, msg.parts[0][1:])
            st.n.update(sent=1, bytes_sent=msg.size)
            st.variants[msg.variant]["sent"] += 1
        st.n["bursts"] += 1
        time.sleep(1.0)  # let the node's I/O thread take them in
        t0 = time.monotonic()
        if self.listener.wait_status(t0, 10.0) is None and self.node.alive():
            count(st, bad, "deaf")
        else:
            st.latency_ms.append((time.monotonic() - t0) * 1000)
        grown = mem_kb(self.node).get("VmRSS", 0) - rss0
        sub.close(0)
        time.sleep(1.0)
        st.status_deltas["rss_grown_kb"] += grown
        st.status_deltas["rss_kept_after_disconnect_kb"] += mem_kb(self.node).get("VmRSS", 0) - rss0
        return msgs, bad

    def save_repro(self, k: Kind, u: Unit, msgs: list[Msg], bad: Counter) -> None:
        """The first REPROS_PER_CHECK failures of each (kind, check): saved for --replay when small enough, and
        always the command that regenerates them."""
        for check in bad:
            if self.repro_counts[(k.name, check)] >= REPROS_PER_CHECK:
                continue
            self.repro_counts[(k.name, check)] += 1
            size, path = sum(m.size for m in msgs), None
            if size <= REPRO_CAP:
                path = self.out / "repro" / f"{k.name}.{check}.{self.repro_counts[(k.name, check)] - 1}.msgpack"
                path.write_bytes(pk({"kind": k.name, "socket": k.socket, "check": check, "seed": self.args.seed,
                                     "unit": u.n, "messages": [{"parts": m.parts, "dealer": m.dealer,
                                                                "variant": m.variant} for m in msgs]}))
            self.failures.append({"kind": k.name, "check": check, "unit": u.n, "count": bad[check],
                                  "variants": sorted({m.variant for m in msgs}), "bytes": size,
                                  "repro": str(path) if path else None,
                                  "regenerate": f"python bench/fuzz.py --only {k.name} --seed {self.args.seed} "
                                                f"--messages {(u.n + 1) * max(u.size, 1)} --out /tmp/fuzz_{k.name}"})

    # -- main loop --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm import tqdm
        t_start = time.monotonic()
        self.connect()
        self.setup_pack()
        watcher, log_start, mem0 = LogWatcher(self.log_path), self.log_path.stat().st_size, mem_kb(self.node)
        units = self.schedule()
        bar = tqdm(total=sum(1 if u.kind.socket == "teach" else u.size for u in units), unit="msg",
                   disable=self.args.quiet, dynamic_ncols=True, smoothing=0.05)
        self.say = bar.write  # messages between progress-bar updates
        runner = {"teach": self.run_teach_unit, "frame": self.run_frame_unit, "labels": self.run_labels_unit}
        n_bad: Counter = Counter()
        for u in units:
            k, st = u.kind, self.stats[u.kind.name]
            mem_before = mem_kb(self.node)
            msgs, bad = runner[k.socket](u)
            if k.socket == "teach":
                bar.total += len(msgs) - 1
            st.n["units"] += 1
            if not self.node.alive():
                st.n["crashes"] += 1
                bad["crashes"] = 1
            else:
                mem_after = mem_kb(self.node)
                peak = mem_after.get("VmHWM", 0) - mem_before.get("VmHWM", 0)  # 0 under an earlier, higher peak
                kept = mem_after.get("VmRSS", 0) - mem_before.get("VmRSS", 0)  # so also what the unit left resident
                st.n.update(rss_hwm_growth_kb=max(0, peak), rss_kept_kb=max(0, kept))
                if max(peak, kept) > MEMORY_SPIKE_KB:
                    st.n["memory_spikes"] += 1
                    bad["memory_spike"] = 1
            lg = watcher.take()
            st.n.update({"log_bytes": lg["bytes"]} | {f"log_{c}": lg[c] for c in LOG_COUNTS})
            st.n["max_log_line"] = max(st.n["max_log_line"], lg["max_line"])
            hits = {"log_ctrl_lines": lg["ctrl_lines"], "log_forged_lines": lg["forged_lines"],
                    "log_line_too_long": lg["max_line"] > LOG_LINE_CAP}
            bad.update({c: 1 for c, hit in hits.items() if hit})
            if bad:
                self.save_repro(k, u, msgs, bad)
                n_bad.update(bad)
            bar.update(len(msgs))
            bar.set_postfix(dict(n_bad) or {"ok": "all"}, refresh=False)
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
            start, end = {c["id"]: c for c in self.baseline}, {c["id"]: c for c in listed["classes"]}
            final["classes_diff"] = {"added": [c for i, c in end.items() if i not in start],
                                     "removed": [c for i, c in start.items() if i not in end],
                                     "changed": [[start[i], c] for i, c in end.items() if i in start and start[i] != c]}
        mem, log_end, t_stop = mem_kb(self.node), self.log_path.stat().st_size, time.monotonic()
        code = self.node.stop()
        final |= {"exit_code": code, "stop_s": round(time.monotonic() - t_stop, 2)}
        try:
            from edge_gfs.node.registry import StateStore  # read-only: the node has exited and released it
            reg = StateStore(self.state_dir).load()
            final["registry_loads"] = reg is not None
            final["registry_classes_match"] = bool(listed) and reg is not None and reg.classes() == listed["classes"]
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            final["registry_loads"], final["registry_error"] = False, f"{type(e).__name__}: {e}"[:300]
        self.listener.stop_event.set()
        self.pub.close(0)
        self.teach.close()
        failing = {k.name: f for k in self.kinds if (f := failures_of(self.stats[k.name]))}
        end_checks = {"node_alive": final["node_alive"], "classes_unchanged": final["classes_unchanged"],
                      "registry_loads": final.get("registry_loads", False), "clean_exit": code == 0}
        totals: Counter = Counter()
        for k in self.kinds:
            sent = self.stats[k.name].n["sent"]
            totals.update({"valid" if k.valid else "hostile": sent, k.socket: sent})
        return {
            "command": " ".join(shlex.quote(a) for a in ["python", "bench/fuzz.py", *sys.argv[1:]]),
            "seed": self.args.seed, "messages_requested": self.args.messages, "sent": dict(totals),
            "kinds_teach": sum(k.socket == "teach" and not k.valid for k in self.kinds),
            "kinds_frame": sum(k.socket == "frame" for k in self.kinds),
            "runtime_s": round(time.monotonic() - t_start, 1),
            "host": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "node": {"model": self.args.model, "threads": self.args.threads, "restarts": len(self.crash_logs),
                     "exits": self.exits, "crash_logs": self.crash_logs,
                     "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1),
                     "rss_start_mb": round(mem0.get("VmRSS", 0) / 1024, 1),
                     "rss_end_mb": round(mem.get("VmRSS", 0) / 1024, 1), "log_growth_bytes": log_end - log_start,
                     "log": str(self.log_path), "state": str(self.state_dir), "listener_junk": self.listener.junk},
            "end_checks": end_checks, "final": final, "passed": not failing and all(end_checks.values()),
            "failing_kinds": failing, "failures": self.failures, "checks": CHECKS,
            "kinds": {k.name: self.stats[k.name].summary(k) for k in self.kinds},
            "why": {k.name: k.why for k in self.kinds}, "burst": self.args.burst}


# =============================================================================================================
# report
# =============================================================================================================
def codes_note(codes: list[str]) -> str:
    """' (bad_request)' for a short list of expected codes, ' (any)' for the any-refusal set."""
    return "" if not codes else f" ({', '.join(codes)})" if len(codes) <= 3 else " (any)"


def write_markdown(res: dict, path: Path) -> None:
    sent, node, f = res["sent"], res["node"], res["final"]
    L: list[str] = [
        "# Hostile-input fuzz of `edge-gfs run` (issue 13)", "", f"Command: `{res['command']}`", "",
        f"{sent.get('hostile', 0)} hostile messages ({res['kinds_teach']} teach kinds, {res['kinds_frame']} frame "
        f"kinds) and {sent.get('valid', 0)} valid requests mixed in; teach socket {sent.get('teach', 0)}, frame "
        f"socket {sent.get('frame', 0)}. Seed {res['seed']}, {res['runtime_s']} s, {res['host']['cpus']} CPUs "
        f"(load {res['host']['loadavg'][0]:.1f} at the end). Node: `{node['model']}`, --threads {node['threads']}, "
        f"peak RSS {node['peak_rss_mb']} MB (start {node['rss_start_mb']} MB, end {node['rss_end_mb']} MB), log "
        f"growth {node['log_growth_bytes']} bytes, restarts after a crash: {node['restarts']}.", "",
        "## Verdict", "", f"**{'PASS' if res['passed'] else 'FAIL'}**", ""]
    L += md_table(["end check", "result"], [[c, "yes" if v else "**NO**"] for c, v in res["end_checks"].items()])
    if f.get("classes_diff"):
        L += ["", "Class list at the end vs the start: " + json.dumps(f["classes_diff"])]
    for c in node["crash_logs"]:
        L += ["", f"Crash during `{c['kind']}` (exit code {c['exit_code']}), last log lines:", "", "```",
              *c["log_tail"][-12:], "```"]
    loads = "loads" if f.get("registry_loads") else "DOES NOT LOAD: " + f.get("registry_error", "")
    L += ["", f"Node stop: exit code {f.get('exit_code')} after {f.get('stop_s')} s. Registry file: {loads}"
              f"{', matches the last list' if f.get('registry_classes_match') else ''}.", ""]
    if res["failing_kinds"]:
        first: dict[tuple[str, str], dict] = {}
        variants: dict[tuple[str, str], set[str]] = defaultdict(set)
        for fl in res["failures"]:
            first.setdefault((fl["kind"], fl["check"]), fl)
            variants[(fl["kind"], fl["check"])].update(v for v in fl["variants"] if v)
        rows = []
        for kname, checks in sorted(res["failing_kinds"].items()):
            for check, n in sorted(checks.items()):
                fl = first.get((kname, check))
                rep = "-" if fl is None else f"`python bench/fuzz.py --replay {fl['repro']}`" if fl["repro"] \
                    else f"`{fl['regenerate']}`"
                vs = ", ".join(sorted(variants[(kname, check)])[:6]).replace("|", "\\|") or "-"
                rows.append([kname, check, n, vs, rep])
        L += ["## Failing checks", ""] + md_table(["kind", "check", "count", "variants", "reproducer"], rows)
        L += ["", "What each check means:", ""] + [f"- `{c}`: {d}" for c, d in res["checks"].items()] + [""]

    def lat(s: dict) -> list[str]:
        return [f"{s['latency_ms'][q]:.1f}" if s["latency_ms"] else "-" for q in ("p50", "p99")]

    def log_mem(s: dict) -> list[object]:
        return [s["log_bytes"], s["max_log_line"], f"{s['rss_hwm_growth_kb'] / 1024:.0f}",
                f"{s['rss_kept_kb'] / 1024:.0f}"]
    kinds = res["kinds"].items()
    L += ["## Teach socket", "", "Latency: request to reply. Replies by code; *wrong* = ok:true for a request that "
          "must be refused, a refusal of a valid one, or a code outside the expected set.", ""]
    L += md_table(["kind", "expect", "sent", "replies", "internal", "wrong acc/ref/code", "hangs", "crashes", "p50 ms",
                   "p99 ms", "max reply B", "log B", "max log line B", "RSS peak +MB", "RSS kept +MB"],
                  [[n, s["expect"] + codes_note(s["codes"]), s["sent"],
                    ", ".join(f"{c} {k}" for c, k in sorted(s["replies"].items(), key=lambda x: -x[1])) or "-",
                    s["internal"], f"{s['wrong_accepts']}/{s['wrong_refusals']}/{s['wrong_codes']}", s["hangs"],
                    s["crashes"], *lat(s), s["max_reply_bytes"], *log_mem(s)]
                   for n, s in kinds if s["socket"] == "teach"])
    L += ["", "## Frame and labels sockets", "", f"Bursts of up to {res['burst']} messages, then a good frame; latency "
          "= that frame to its label map. Status deltas summed over the kind's bursts (bad_frames, drops, seq_resets, "
          "errors, frames, ...). *labelled* = label maps published for the kind's own messages.", ""]
    L += md_table(["kind", "expect", "sent", "bursts", "labelled", "deaf", "crashes", "status deltas", "p50 ms",
                   "p99 ms", "log B", "max log line B", "RSS peak +MB", "RSS kept +MB"],
                  [[n, s["expect"], s["sent"], s["bursts"], s["accepted_frames"], s["deaf"], s["crashes"],
                    ", ".join(f"{k} {v:+g}" for k, v in sorted(s["status_deltas"].items())) or "-", *lat(s),
                    *log_mem(s)]
                   for n, s in kinds if s["socket"] != "teach"])
    L += ["", "## Kinds", ""] + md_table(["kind", "socket", "expect", "why"],
                                         [[n, s["socket"], s["expect"], res["why"][n]] for n, s in kinds])
    L += ["", "Per-variant outcomes, sample error messages and every saved reproducer are in fuzz.json; the node's "
          f"log is `{Path(node['log']).name}` beside it.", ""]
    path.write_text("\n".join(L))


# =============================================================================================================
# replay of one reproducer, and the command line
# =============================================================================================================
def replay(args: argparse.Namespace) -> int:
    """Start a fresh node, send a saved reproducer, print what came back and the node's new log lines."""
    rep = msgpack.unpackb(Path(args.replay).read_bytes(), raw=False)
    args.out, args.state = tempfile.mkdtemp(prefix="fuzz-replay-"), None
    fz = Fuzzer(args)
    try:
        fz.connect()
        watcher, mem0 = LogWatcher(fz.log_path), mem_kb(fz.node)
        print(f"replaying {rep['kind']} ({rep['check']}) from {args.replay}: {len(rep['messages'])} message(s)")
        if rep["socket"] == "teach":
            for m in rep["messages"]:
                t0 = time.perf_counter()
                parts = fz.teach.exchange(Msg(m["parts"], dealer=m["dealer"]), args.timeout)
                if parts is None:
                    print(f"  {m['variant']!r}: no reply in {args.timeout} s (node alive: {fz.node.alive()})")
                    continue
                try:
                    shown = repr(msgpack.unpackb(parts[-1], raw=False))
                except Exception as e:  # noqa: BLE001
                    shown = f"<not msgpack: {type(e).__name__}>"
                print(f"  {m['variant']!r}: {len(parts[-1])} B in {(time.perf_counter() - t0) * 1000:.0f} ms: "
                      f"{shown[:400]}")
        elif rep["socket"] == "labels":
            rss0 = mem_kb(fz.node).get("VmRSS", 0)
            sub = fz.ctx.socket(zmq.SUB)
            sub.connect(fz.node.labels)
            for m in rep["messages"]:
                sub.setsockopt(zmq.SUBSCRIBE, m["parts"][0][1:])
            time.sleep(1.0)
            print(f"  node RSS grew by {(mem_kb(fz.node).get('VmRSS', 0) - rss0) / 1024:.0f} MB")
            sub.close(0)
        else:
            before = fz.listener.wait_status(time.monotonic(), 5) or {}
            for m in rep["messages"]:
                fz.pub.send_multipart(m["parts"])
                time.sleep(args.gap)
            probe = fz.probe_frame(10.0) if fz.node.alive() else None
            after = fz.listener.wait_status(time.monotonic(), 5) or {}
            print(f"  good frame afterwards: {'no label map' if probe is None else f'label map in {probe:.0f} ms'}")
            print("  status deltas:", {k: after[k] - before.get(k, 0) for k in
                                       ("bad_frames", "drops", "seq_resets", "errors", "frames") if k in after})
        alive, lg, mem = fz.node.alive(), watcher.take(), mem_kb(fz.node)
        print(f"node alive: {alive}; peak RSS {mem.get('VmHWM', 0) / 1024:.0f} MB (was "
              f"{mem0.get('VmHWM', 0) / 1024:.0f} MB before the replay); log +{lg['bytes']} B, longest line "
              f"{lg['max_line']} B; log tail:")
        print(fz.log_path.read_bytes()[-1500:].decode(errors="replace"))
        return 0 if alive else 1
    finally:
        fz.node.stop()
        if fz.listener is not None:
            fz.listener.stop_event.set()


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
            print(f"{k.name:32s} {k.socket:6s} {k.expect}{codes_note(sorted(k.codes))}\n    {k.why}")
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
    (fz.out / "fuzz.json").write_text(json.dumps(res, indent=1, default=str))
    write_markdown(res, fz.out / "fuzz.md")
    print(f"{'PASS' if res['passed'] else 'FAIL'}: {res['sent'].get('hostile', 0)} hostile + "
          f"{res['sent'].get('valid', 0)} valid messages in {res['runtime_s']} s; report {fz.out / 'fuzz.md'}")
    for kname, checks in sorted(res["failing_kinds"].items()):
        print(f"  {kname}: " + ", ".join(f"{c} {n}" for c, n in sorted(checks.items())))
    for c in (c for c, v in res["end_checks"].items() if not v):
        print(f"  end check failed: {c}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
