"""Running real node processes for the tests: free loopback ports, the bundled model, logs on failure.

Every node runs with --threads 1 (the tests share a 2-core machine) and short status/classes periods, so a
test never waits long for a periodic message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_gfs.core import zoo
from edge_gfs.data.datasets import camvid
from edge_gfs.wire.client import FramePublisher, LabelSubscriber, TeachClient, free_endpoint

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return int(free_endpoint().rsplit(":", 1)[1])


endpoint = free_endpoint


def require_model(name: str = "camvid-fold0") -> str:
    path = zoo.models_dir() / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"bundled model {name} not there yet ({path}); it is trained by the trainer issue "
                    f"(or set EDGE_GFS_MODELS to a folder holding {name}.pt)")
    return name


def require_camvid():
    try:
        return camvid()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def cli(*args: str, timeout: float = 120, drop_env: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in drop_env} | {"OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "edge_gfs.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO, **kw)


class NodeProc:
    """`edge-gfs run` as a subprocess on free ports, subscribing to a frames endpoint the test binds."""

    def __init__(self, workdir: Path, model: str = "camvid-fold0", state: Path | None = None,
                 extra: tuple[str, ...] = (), name: str = "node", source: tuple[str, ...] | None = None) -> None:
        self.workdir = Path(workdir)
        self.model = model
        self.state = state or self.workdir / f"{name}-state"
        self.frames, self.labels, self.teach = endpoint(), endpoint(), endpoint()
        self.extra = extra
        self.source = source or ("--frames", self.frames)  # or an in-process source: ("--video", PATH)
        self.log = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def args(self) -> list[str]:
        return ["run", "--model", self.model, "--state", str(self.state), *self.source,
                "--labels", self.labels, "--teach", self.teach, "--threads", "1", "--status-period", "0.3",
                "--classes-period", "1", *self.extra]

    def start(self) -> "NodeProc":
        env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", *self.args()], stdout=self._logf,
                                     stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    def client(self, timeout_s: float = 60.0) -> TeachClient:
        return TeachClient(self.teach, timeout_s=timeout_s)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"node exited with {self.proc.returncode}:\n{self.log_text()}")
                try:
                    c.ping(1.0)
                    return
                except TimeoutError:
                    continue
        pytest.fail(f"node not ready after {timeout_s} s:\n{self.log_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._logf.close()
        return self.proc.returncode

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._logf.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else "(no log)"


class Wire:
    """A test's side of one node: frame publisher (bound), label subscriber, teach client."""

    def __init__(self, node: NodeProc) -> None:
        self.node = node
        self.pub = FramePublisher(node.frames)
        self.sub = LabelSubscriber(node.labels)
        self.teach = node.client()

    def connect(self, timeout_s: float = 30.0) -> None:
        """Both PUB/SUB links up: the node subscribed to our frames, we to its topics (it repeats `classes`)."""
        assert self.pub.wait_for_subscriber(timeout_s), "the node never subscribed to the frames"
        assert self.sub.next("classes", timeout_s) is not None, "no classes message from the node"

    def close(self) -> None:
        self.pub.close()
        self.sub.close()
        self.teach.close()


def frames_with(data, split: str, class_id: int, count: int, min_pixels: int = 5000) -> list[str]:
    """`count` frames of a split that show `class_id` well, spread over the split (deterministic)."""
    names = [n for n in data.names(split) if (data.read(split, n)[1] == class_id).sum() >= min_pixels]
    idx = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in idx]


@contextlib.contextmanager
def running_node(state_dir, model: str = "camvid-fold0", extra: tuple[str, ...] = ()):
    """A node process with connected client sockets; stopped cleanly (exit code 0) afterwards."""
    require_model(model)
    node = NodeProc(state_dir, model, extra=extra).start()
    try:
        node.wait_ready()
        w = Wire(node)
        w.connect()
    except BaseException:  # a failed start must not leave a node running after the tests
        node.stop()
        raise
    yield w
    w.close()
    assert node.stop() == 0, node.log_text()
