"""`edge-gfs launch`: one file starts the pipeline, a crashed child comes back, SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from node_harness import REPO, endpoint, require_camvid, require_model

from edge_gfs.commands.launch import LaunchError, load
from edge_gfs.wire.client import LabelSubscriber, TeachClient, TeachTimeout


def test_bad_launch_files(tmp_path):
    f = tmp_path / "l.yaml"
    for text, msg in (("processes: []", "non-empty"), ("processes: [{command: rm -rf /}]", "not an edge-gfs command"),
                      ("processes: [{command: run}, {command: run}]", "two processes named")):
        f.write_text(text)
        with pytest.raises(LaunchError, match=msg):
            load(f)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def ping(teach: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    with TeachClient(teach, timeout_s=2) as c:
        while True:
            try:
                c.ping()
                return
            except TeachTimeout:
                assert time.monotonic() < deadline


def test_launch_restarts_a_crashed_node_and_stops_everything(tmp_path):
    require_model("camvid-fold0")
    data = require_camvid()
    frames, labels, teach = endpoint(), endpoint(), endpoint()
    spec = {"processes": [
        {"name": "camera", "command": ["camera", "--images", str(data.root / "test" / "images"), "--fps", "2",
                                       "--loop", "--frames", frames]},
        {"name": "node", "command": ["run", "--model", "camvid-fold0", "--state", str(tmp_path / "st"), "--frames",
                                     frames, "--labels", labels, "--teach", teach, "--threads", "1"]}],
        "restart_delay_s": 0.5}
    f = tmp_path / "launch.yaml"
    f.write_text(yaml.safe_dump(spec))
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    sup = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "launch", str(f)], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ping(teach)
        sub = LabelSubscriber(labels, topics=("labels",))
        assert sub.next("labels", 60) is not None  # camera -> node -> labels
        kids = children_of(sup.pid)
        assert len(kids) == 2
        node_pid = next(k for k in kids if b"\x00run\x00" in open(f"/proc/{k}/cmdline", "rb").read())
        os.kill(node_pid, signal.SIGKILL)
        time.sleep(1.0)  # not a timing assertion: lets the supervisor notice
        ping(teach)  # a new node answers on the same endpoint
        assert node_pid not in children_of(sup.pid) and len(children_of(sup.pid)) == 2
        assert sub.next("labels", 60) is not None
        sub.close()
    finally:
        kids = children_of(sup.pid)
        sup.send_signal(signal.SIGTERM)
        out = sup.communicate(timeout=60)[0]
    assert sup.returncode == 0, out
    assert "node died" in out and "stopped 2 processes" in out
    for pid in kids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
