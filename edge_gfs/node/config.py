"""The node's settings, built once from flags and YAML (commands/run.py) and read-only afterwards.

Why a frozen dataclass and not the argparse Namespace: the node reads its settings from three threads, and a
Namespace invites late `setattr`s; here every field is typed, checked in one place (`check`, before any model
is loaded or folder created) and documented once.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from pathlib import Path

from edge_gfs.wire import protocol as P


class StartupError(Exception):
    """The node cannot start as configured (a port taken, missing keys, ...): one line for the user, exit 2."""


def is_loopback(endpoint: str) -> bool:
    """Only processes on this host can reach it (tcp on a loopback address or localhost, ipc, inproc)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface: reachable from elsewhere as far as we can tell


def default_state_dir(model: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edge-gfs" / Path(model).stem


@dataclass(frozen=True)
class NodeConfig:
    model: str = "camvid"  # bundled name or a .pt path
    input_hw: tuple[int, int] | None = None  # run the model at this size instead of its own (a profile)
    state: Path | None = None  # registry folder; None: default_state_dir(model)
    source: str | None = None  # a flag of node.sources.SOURCES; None: subscribe to `frames`
    source_value: str | None = None
    frames: str = P.DEFAULT_FRAMES  # SUB endpoint when source is None
    fps: float | None = None  # replay rate of an in-process source (None: the source's own)
    loop: bool = False
    frame_id: str = "camera"
    labels: str = P.DEFAULT_LABELS  # PUB: labels, classes, status
    teach: str = P.DEFAULT_TEACH  # ROUTER for teach requests
    curve_secret: Path | None = None
    curve_allow: Path | None = None
    backend: str = "auto"
    engine: Path | None = None
    confidence: bool = False
    threads: int = 0  # torch threads per worker thread; 0 = all cores
    max_classes: int = P.LIMITS.max_novel_classes
    max_shots: int = P.LIMITS.max_shots_per_class
    max_frame_pixels: int = P.LIMITS.max_frame_pixels
    status_period: float = 1.0
    classes_period: float = 2.0
    foxglove: str | None = None  # HOST:PORT of the Foxglove WebSocket live view (node/foxglove_view.py); None: off

    @property
    def state_dir(self) -> Path:
        return self.state or default_state_dir(self.model)

    @property
    def limits(self) -> P.Limits:
        return replace(P.LIMITS, max_novel_classes=self.max_classes, max_shots_per_class=self.max_shots,
                       max_frame_pixels=self.max_frame_pixels)

    @property
    def input_label(self) -> str:
        if self.source is None:
            return f"frames {self.frames}"
        return f"{self.source} {self.source_value}"

    def check(self) -> None:
        """Refuse a configuration that cannot work before anything is loaded or created (StartupError)."""
        if self.curve_secret is None:
            if self.curve_allow is not None:
                raise StartupError("--curve-allow needs --curve-secret (the node's own NAME.key_secret)")
            if not is_loopback(self.teach):
                raise StartupError(f"--teach {self.teach} is reachable from other hosts: that needs CURVE (create keys "
                                   f"with `edge-gfs keys`, pass --curve-secret and --curve-allow) or a 127.0.0.1 address")
        else:
            self._check_keys()
        if not 0 < self.max_frame_pixels <= P.LIMITS.max_image_pixels:
            raise StartupError(f"--max-frame-pixels must be 1..{P.LIMITS.max_image_pixels}, got {self.max_frame_pixels}")
        if self.foxglove is not None:
            from edge_gfs.wire import foxglove_msgs as F
            try:
                F.parse_address(self.foxglove)
                F.require()
            except (ValueError, F.FoxgloveMissing) as e:
                raise StartupError(f"--foxglove: {e}") from None
        for name, value in (("--status-period", self.status_period), ("--classes-period", self.classes_period)):
            if value <= 0:
                raise StartupError(f"{name} must be > 0 seconds, got {value}")

    def _check_keys(self) -> None:
        """CURVE files read and sane before the model loads: a typo costs one line, not a 5 s model load."""
        from zmq.auth import load_certificate
        if self.curve_allow is None or not self.curve_allow.is_dir():
            raise StartupError("--curve-secret needs --curve-allow DIR, a folder of the operators' public *.key files")
        try:
            _public, secret = load_certificate(str(self.curve_secret))
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot read --curve-secret {self.curve_secret}: {e}") from None
        if secret is None:
            raise StartupError(f"--curve-secret {self.curve_secret} holds no secret key (pass NAME.key_secret)")
        secrets = sorted(p.name for p in self.curve_allow.glob("*.key_secret"))
        if secrets:
            raise StartupError(f"--curve-allow {self.curve_allow} holds secret keys ({', '.join(secrets[:3])}): it is "
                               f"for operators' public NAME.key files only; keep each secret on its operator's machine")
        if not any(self.curve_allow.glob("*.key")):
            raise StartupError(f"--curve-allow {self.curve_allow} holds no public *.key file: no operator could "
                               f"connect (create one with `edge-gfs keys NAME` and copy NAME.key there)")
