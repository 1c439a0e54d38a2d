"""`edge-gfs launch FILE.yaml`: start a whole pipeline (publisher, node, ...) from one file and keep it up.

Why a supervisor of our own rather than systemd units: on a robot under test people start and stop the whole
pipeline many times a day; one file, one Ctrl-C. A child that crashes (non-zero exit or a signal) is started
again after a delay; one that finishes normally (exit 0, e.g. a replay without --loop) is left alone. Ctrl-C
or SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period) and exits.

File format:
    processes:
      - name: camera
        command: camera --images ../shared/datasets/camvid/test/images --fps 5 --loop
      - name: node
        command: [run, --model, camvid-fold0, --state, state/fold0]
    restart: true          # default true
    restart_delay_s: 1.0   # default 1.0
Each command is an edge-gfs subcommand with its flags (a string or a list).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_gfs.commands.flags import read_yaml

EXAMPLE = """examples:
  edge-gfs launch launch/replay.yaml        # CamVid replay publisher + node (camvid-fold0)
"""


class LaunchError(Exception):
    pass


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    done: bool = False
    next_start: float = 0.0
    log: list[str] = field(default_factory=list)


def load(path: Path) -> tuple[list[Child], bool, float]:
    from edge_gfs.cli import COMMANDS
    spec = read_yaml(path, LaunchError)
    procs = spec.get("processes") if isinstance(spec, dict) else None
    if not isinstance(procs, list) or not procs:
        raise LaunchError(f"{path}: needs a non-empty 'processes' list of {{name, command}}")
    children, names = [], set()
    for k, p in enumerate(procs):
        if not isinstance(p, dict) or "command" not in p:
            raise LaunchError(f"{path}: process {k} needs a 'command'")
        cmd = p["command"]
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        if argv and argv[0] == "edge-gfs":
            argv = argv[1:]
        if not argv or argv[0] not in COMMANDS or argv[0] == "launch":
            raise LaunchError(f"{path}: process {k}: {' '.join(argv[:1]) or '(empty)'} is not an edge-gfs command; "
                              f"commands: {', '.join(c for c in COMMANDS if c != 'launch')}")
        name = str(p.get("name") or argv[0])
        if name in names:
            raise LaunchError(f"{path}: two processes named {name!r}")
        names.add(name)
        children.append(Child(name, argv))
    return children, bool(spec.get("restart", True)), float(spec.get("restart_delay_s", 1.0))


class Supervisor:
    def __init__(self, children: list[Child], restart: bool, delay: float) -> None:
        self.children, self.restart, self.delay = children, restart, delay
        self.stop = threading.Event()

    def start(self, c: Child) -> None:
        c.proc = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", *c.argv])
        print(f"edge-gfs launch: started {c.name} (pid {c.proc.pid}): edge-gfs {' '.join(c.argv)}", flush=True)

    def run(self) -> int:
        for c in self.children:
            self.start(c)
        while not self.stop.is_set():
            now = time.monotonic()
            for c in self.children:
                if c.done or c.proc is None:
                    if not c.done and c.proc is None and now >= c.next_start:
                        self.start(c)
                    continue
                rc = c.proc.poll()
                if rc is None:
                    continue
                if rc == 0 or not self.restart:
                    print(f"edge-gfs launch: {c.name} exited with {rc}", flush=True)
                    c.done = True
                    continue
                c.restarts += 1
                print(f"edge-gfs launch: {c.name} died ({rc}); restart {c.restarts} in {self.delay:g} s", flush=True)
                c.proc, c.next_start = None, now + self.delay
            if all(c.done for c in self.children):
                return 0 if all(c.proc is not None and c.proc.returncode == 0 for c in self.children) else 1
            self.stop.wait(0.2)
        self.shutdown()
        return 0

    def shutdown(self, grace_s: float = 10.0) -> None:
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in live:
            c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in live:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
        print(f"edge-gfs launch: stopped {len(live)} processes", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-gfs launch", description="Start a pipeline from a YAML file; restart "
                                "crashed children; stop all on Ctrl-C.", epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, help="launch file (see edge_gfs/commands/launch.py for the format)")
    args = p.parse_args(argv)
    try:
        children, restart, delay = load(args.file)
    except LaunchError as e:
        print(f"edge-gfs launch: {e}", file=sys.stderr)
        return 2
    sup = Supervisor(children, restart, delay)
    signal.signal(signal.SIGINT, lambda *_: sup.stop.set())
    signal.signal(signal.SIGTERM, lambda *_: sup.stop.set())
    try:
        return sup.run()
    finally:
        if not sup.stop.is_set():
            sup.shutdown()
