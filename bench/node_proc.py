"""What the hardening benches (soak, kill9, attack; issue 13) share: a node subprocess with its own log, a frame
publisher thread, a label-map collector, real Car shots, and the JSON + Markdown + log files of a run.

Why a module of its own: bench/node_latency.py starts its node inline (no log file, no SIGKILL, no restart on
the same ports), and tests/node_harness.py reports through pytest.fail; the hardening benches need to kill and
restart a node on the same endpoints and keep its log beside the results, so that lives here, once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_gfs.data.datasets import Dataset  # noqa: E402
from edge_gfs.wire.client import FramePublisher, LabelSubscriber, TeachClient, TeachTimeout, free_endpoint  # noqa: E402

CAR = 8  # CamVid's Car: held out of camvid-fold0's training, so teaching it is a real novel class
RESULTS = REPO / "bench" / "results" / "hardening"


# -- the node process --------------------------------------------------------------------------------------------
def proc_mb(pid: int, key: str = "VmRSS") -> float:
    """A memory line of /proc/PID/status in MB (VmRSS now, VmHWM the peak); NaN once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class NodeProcess:
    """`edge-gfs run` as a subprocess on fixed endpoints, so it can be SIGKILLed and restarted on the same ports
    (a bench's publisher and subscriber stay connected across restarts); stdout and stderr go to `log`.

    `src` is the source tree the node runs from (`python -m` finds edge_gfs in its working directory): this
    checkout by default, or an export of another commit to measure the node before and after a fix."""

    def __init__(self, log: Path, state: Path, model: str = "camvid-fold0", threads: int = 1,
                 extra: tuple[str, ...] = (), src: Path = REPO, source: tuple[str, ...] | None = None) -> None:
        self.log, self.state, self.model, self.threads, self.extra = Path(log), Path(state), model, threads, extra
        self.source = source  # an in-process source (e.g. --mcap FILE); None: frames on self.frames
        self.src = Path(src).resolve()
        self.frames, self.labels, self.teach = free_endpoint(), free_endpoint(), free_endpoint()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.code: str | None = None  # the source version the node first started from (a long bench outlives commits)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "NodeProcess":
        """The node of a bench run (add_node_flags): log and --state DIR beside the results, named after the run."""
        return cls(args.out / f"{args.name}-node.log", args.out / f"{args.name}-state", args.model, args.threads,
                   src=args.node_src)

    def command(self) -> list[str]:
        source = ("--frames", self.frames) if self.source is None else self.source
        return [sys.executable, "-m", "edge_gfs.cli", "run", "--model", self.model, "--state", str(self.state),
                *source, "--labels", self.labels, "--teach", self.teach,
                "--threads", str(self.threads), "--status-period", "1", "--classes-period", "2", *self.extra]

    def start(self) -> "NodeProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.code = self.code or code_version(self.src)
        with open(self.log, "ab") as f:
            f.write(f"\n=== start {self.starts} at {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n".encode())
            # OMP_WAIT_POLICY=PASSIVE: an idle OpenMP pool must not spin on a machine the bench shares
            self.proc = subprocess.Popen(self.command(), stdout=f, stderr=subprocess.STDOUT, cwd=self.src,
                                         env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Ping until the node answers; returns the seconds it took. RuntimeError (with the log's tail) if the
        process exits or stays silent: a node that cannot start is a finding, not a hang."""
        t0 = time.monotonic()
        with TeachClient(self.teach, timeout_s=1.0) as c:
            while time.monotonic() - t0 < timeout_s:
                if not self.alive():
                    raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    c.ping(1.0)
                    return time.monotonic() - t0
                except TeachTimeout:
                    continue
        raise RuntimeError(f"node not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 20 s; the exit code (0 = a clean stop)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def remove_state(self) -> None:
        """Delete --state DIR after a run whose registry holds no evidence, so the results folder stays lean."""
        shutil.rmtree(self.state, ignore_errors=True)

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


# -- frames in, label maps out -----------------------------------------------------------------------------------
def real_frames(data: Dataset) -> list[bytes]:
    """CamVid test frames as the dataset stores them (360x480 JPEG bytes): what a camera publisher would send."""
    return [data.image_path("test", n).read_bytes() for n in data.names("test")]


def car_shots(data: Dataset, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` distinct (BGR image, Car mask) train shots, drawn as the GFS-CamVid benchmark draws supports."""
    from edge_gfs.data.evaluation import draw_supports
    names = draw_supports(data, [CAR], count, seed=seed)[CAR]
    return [(img, lab == CAR) for img, lab in (data.read("train", n) for n in names)]


Inject = Callable[[FramePublisher], None]


class FrameStream(threading.Thread):
    """Publishes real frames at `hz` (open loop, like a camera) and remembers each one's seq.

    Everything goes out from this one thread because a ZeroMQ socket must not be shared between threads: a
    bench that interleaves other messages on the same socket passes `inject`, called half-way between two good
    frames. Why half-way: right after a good frame, an injected frame would replace it in the node's newest-frame
    slot before the node took it, and the bench would measure that race instead of the injected frame's cost.
    """

    def __init__(self, pub: FramePublisher, jpegs: list[bytes], hz: float, inject: Inject | None = None) -> None:
        super().__init__(name="frames", daemon=True)
        self.pub, self.jpegs, self.hz, self.inject = pub, jpegs, hz, inject
        self.halt = threading.Event()
        self.good: set[int] = set()  # seqs of the real frames sent (reads of a set are safe under the GIL)
        self.sent = 0

    def run(self) -> None:
        nxt = time.monotonic()
        k = 0
        while not self.halt.is_set():
            seq = self.pub.publish(data=self.jpegs[k % len(self.jpegs)], encoding="jpeg")
            self.good.add(seq)
            self.sent += 1
            k += 1
            if self.inject is not None and not self.halt.wait(max(0.0, nxt + 0.5 / self.hz - time.monotonic())):
                self.inject(self.pub)
            nxt += 1.0 / self.hz
            self.halt.wait(max(0.0, nxt - time.monotonic()))

    def finish(self) -> None:
        self.halt.set()
        self.join(10)


class Collector:
    """Reads the node's labels socket: per label map (seq, receipt time, end-to-end latency), the last status."""

    def __init__(self, sub: LabelSubscriber) -> None:
        self.sub = sub
        self.maps: list[tuple[int, float, float]] = []  # (seq, time.monotonic() at receipt, latency ms)
        self.status: dict | None = None

    def poll(self, timeout_s: float) -> None:
        """Everything that arrives within timeout_s (at least one wait, then whatever is already queued)."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.sub.recv(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return
            topic, m = msg
            if topic == "labels":
                self.maps.append((m.seq, time.monotonic(), (time.time_ns() - m.stamp_ns) / 1e6))
            elif topic == "status":
                self.status = m
            if time.monotonic() >= deadline:
                return


def connect(node: NodeProcess, timeout_s: float = 60.0) -> tuple[FramePublisher, LabelSubscriber]:
    """Bind the frames endpoint, subscribe to the node, and wait until both links carry messages."""
    pub, sub = FramePublisher(node.frames), LabelSubscriber(node.labels)
    if not pub.wait_for_subscriber(timeout_s):
        raise RuntimeError(f"the node never subscribed to {node.frames}:\n{node.log_tail()}")
    if sub.next("classes", timeout_s) is None:
        raise RuntimeError(f"no classes message from {node.labels}:\n{node.log_tail()}")
    return pub, sub


# -- numbers and files ---------------------------------------------------------------------------------------------
def pct(values: list[float] | np.ndarray, q: float, digits: int = 1) -> float | None:
    """Percentile rounded for a report; None for no values (JSON null, '-' in Markdown)."""
    return round(float(np.percentile(values, q)), digits) if len(values) else None


def cell(v: object) -> str:
    return "-" if v is None else str(v)


def md_table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]


def command_line() -> str:
    """The command as typed (for the top of a report), so a reader can rerun it."""
    return "python " + " ".join(sys.argv)


def machine() -> str:
    return f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"


def code_version(src: Path = REPO) -> str:
    """HEAD and the node files changed since it: a hardening number belongs to the node code it measured."""
    if Path(src).resolve() != REPO:
        return f"the source tree {src}"

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"
    dirty = git("status", "--porcelain", "--", "edge_gfs").splitlines()
    head = git("rev-parse", "--short", "HEAD")
    return head + (f" + uncommitted changes to {len(dirty)} edge_gfs files" if dirty else "")


def add_node_flags(p: argparse.ArgumentParser, name: str, seed_help: str) -> None:
    """The flags every hardening bench takes: which node, how it runs, the seed, where the files go."""
    p.add_argument("--model", default="camvid-fold0")
    p.add_argument("--threads", type=int, default=1, help="the node's --threads")
    p.add_argument("--node-src", type=Path, default=REPO, metavar="DIR",
                   help="source tree the node runs from (default: this checkout); e.g. after "
                        "`git archive HEAD | tar -x -C /tmp/head`, /tmp/head measures the last commit")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: bench/results/hardening)")
    p.add_argument("--name", default=name, help="file stem of the results, logs and state dir")


def bench_log(out: Path, name: str) -> logging.Logger:
    """The bench's own log, `out/NAME.log` (appended), also echoed to stderr above the progress bar."""
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(name)s: %(message)s")
    for h in (logging.FileHandler(out / f"{name}.log"), logging.StreamHandler(sys.stderr)):
        h.setFormatter(fmt)
        log.addHandler(h)
    return log


def write_report(out: Path, name: str, result: dict, markdown: str) -> Path:
    """`out/NAME.json` and `out/NAME.md`; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    md = out / f"{name}.md"
    md.write_text(markdown)
    return md
