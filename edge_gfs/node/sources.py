"""Where frames come from when the node (or `edge-gfs camera`) reads them in-process: a camera, a video file, a
folder of images, or anything else that yields frames.

A source is any object with `label`, `default_fps`, iteration over `SourceFrame`s and `close()` (the `Source`
protocol). `SOURCES` maps a command-line flag to how to open one; `edge-gfs run` and `edge-gfs camera` build
their flags and their "other sources" hints from it, so adding a source is one class and one table entry:

    class Pattern: ...                                           # label, default_fps, __iter__, close
    SOURCES["pattern"] = SourceKind("N", "a synthetic test pattern of N frames", lambda v, loop: Pattern(int(v)))

Frames from a socket (`--frames ENDPOINT`) are not a source in this sense: the node subscribes to them in
node/stream.py, with its own drop accounting.
"""

from __future__ import annotations

import argparse
import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np

from edge_gfs.wire import protocol as P

IMAGE_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


class SourceError(Exception):
    """A camera, video or folder that cannot be read: the message is the one line the user sees."""


@dataclass
class SourceFrame:
    """One frame from a source: decoded pixels (camera, video) or a file's bytes as they are (folder)."""

    name: str
    image: np.ndarray | None = None  # BGR uint8
    data: bytes | None = None  # encoded JPEG/PNG
    encoding: str | None = None  # encoding of `data`
    stamp_ns: int | None = None  # a recording's own stamp (MCAP replay); None: stamped when sent

    def bgr(self) -> np.ndarray:
        if self.image is None:
            self.image = P.decode_image(self.data or b"", self.name)
        return self.image


class Source(Protocol):
    label: str  # for logs and status ("camera 0", "images DIR")

    @property
    def default_fps(self) -> float | None: ...  # replay rate when none is given; None = as delivered

    def __iter__(self) -> Iterator[SourceFrame]: ...

    def close(self) -> None: ...


@contextmanager
def _quiet_opencv():
    """OpenCV logs its own warnings when a device is missing; the user should see our one line instead."""
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(level)


class CaptureSource:
    """An OpenCV camera index or video file. Opening reads a first frame, so a missing device fails here."""

    def __init__(self, target: int | str, label: str, loop: bool = False) -> None:
        self.label, self.loop, self.is_video = label, loop, isinstance(target, str)
        with _quiet_opencv():
            cap = cv2.VideoCapture(target)
            ok = cap.isOpened() and cap.read()[0]
        if not ok:
            cap.release()
            raise SourceError(f"cannot open {label}" + (" (not a format OpenCV decodes?)" if self.is_video else ""))
        fps = cap.get(cv2.CAP_PROP_FPS) if self.is_video else 0.0
        if self.is_video:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.native_fps = fps if fps and fps > 0 else None
        self._cap: cv2.VideoCapture | None = cap

    @property
    def default_fps(self) -> float | None:
        return self.native_fps  # a video's own rate; a camera as delivered

    def __iter__(self) -> Iterator[SourceFrame]:
        n = 0
        while self._cap is not None:
            ok, img = self._cap.read()
            if not ok:
                if self.is_video and self.loop and n:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                return
            n += 1
            yield SourceFrame(f"{'video' if self.is_video else 'camera'}{n:06d}", image=img)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource:
    """JPEG/PNG files of a folder in name order, sent as their own bytes (a replay re-encodes nothing)."""

    default_fps = 10.0

    def __init__(self, folder: Path | str, loop: bool = False) -> None:
        self.label, self.loop = f"images {folder}", loop
        folder = Path(folder)
        if not folder.is_dir():
            raise SourceError(f"no folder {folder}")
        self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"no .jpg/.png images in {folder}")

    def __iter__(self) -> Iterator[SourceFrame]:
        while True:
            for p in self._files:
                try:
                    data = p.read_bytes()
                except OSError:
                    continue  # a file removed while replaying: skip it, keep streaming
                yield SourceFrame(p.stem, data=data, encoding=IMAGE_SUFFIXES[p.suffix.lower()])
            if not self.loop:
                return

    def close(self) -> None:
        pass


class McapSource:
    """The images of an MCAP recording (`edge-gfs record`, or any file with a foxglove.CompressedImage/RawImage
    topic), at the recorded rate. Frames keep their recorded stamps, so label maps of a replay line up with the
    recording's own. JPEG/PNG bytes are passed on as they are: a replay decodes exactly what was recorded."""

    def __init__(self, path: Path | str, loop: bool = False) -> None:
        from edge_gfs.wire import foxglove_msgs as F
        from edge_gfs.wire import mcap_log
        self.path, self.loop = Path(path), loop
        if not self.path.is_file():
            raise SourceError(f"no MCAP file at {path}")
        try:
            self.topic = mcap_log.image_topic(self.path)
        except (F.FoxgloveMissing, ValueError) as e:
            raise SourceError(str(e)) from None
        self.label = f"mcap {path} {self.topic}"
        self._read = mcap_log.replay_images

    @functools.cached_property
    def default_fps(self) -> float | None:
        """The recorded rate; it reads every image message once, so only when no --fps was given."""
        from edge_gfs.wire import foxglove_msgs as F
        from edge_gfs.wire import mcap_log
        try:
            return mcap_log.recorded_fps(self.path, self.topic)
        except (F.FoxgloveMissing, ValueError) as e:
            raise SourceError(str(e)) from None

    def __iter__(self) -> Iterator[SourceFrame]:
        while True:
            n = 0
            for n, im in enumerate(self._read(self.path, self.topic), 1):
                yield SourceFrame(f"mcap{n:06d}", image=im.image, data=im.data, encoding=im.encoding,
                                  stamp_ns=im.stamp_ns)
            if not (self.loop and n):
                return

    def close(self) -> None:
        pass


def _video(value: str, loop: bool) -> CaptureSource:
    if not Path(value).is_file():
        raise SourceError(f"no video file at {value}")
    return CaptureSource(str(value), f"video {value}", loop)


def _camera(value: str, loop: bool) -> CaptureSource:
    try:
        index = int(value)
    except ValueError:
        raise SourceError(f"--camera takes an OpenCV camera index (0, 1, ...), got {value!r}") from None
    return CaptureSource(index, f"camera {index}", loop)


@dataclass(frozen=True)
class SourceKind:
    """How a `--FLAG VALUE` on the command line opens a source."""

    metavar: str
    help: str
    open: Callable[[str, bool], Source]  # (flag value, --loop) -> an opened Source, or SourceError


SOURCES: dict[str, SourceKind] = {
    "camera": SourceKind("N", "OpenCV camera index", _camera),
    "video": SourceKind("PATH", "a video file (at its own rate, or --fps)", _video),
    "images": SourceKind("DIR", "a folder of JPEG/PNG frames, in name order (10 fps, or --fps)", FolderSource),
    "mcap": SourceKind("FILE", "an MCAP recording's images (edge-gfs record), at the recorded rate or --fps; "
                               "stamps kept", McapSource),
}


def alternatives(extra: str = "") -> str:
    """The sources a user can pick from, for error messages ("other sources: ...")."""
    return ", ".join([f"--{flag} {kind.metavar}" for flag, kind in SOURCES.items()] + ([extra] if extra else []))


def add_source_flags(group: argparse._ActionGroup | argparse.ArgumentParser) -> None:
    for flag, kind in SOURCES.items():
        group.add_argument(f"--{flag}", metavar=kind.metavar, help=kind.help)


def chosen(args: argparse.Namespace) -> list[str]:
    """The source flags given (after flags and config are merged)."""
    return [flag for flag in SOURCES if getattr(args, flag, None) is not None]


def open_source(flag: str, value: str, loop: bool = False, extra: str = "") -> Source:
    """Open `--flag value`; a SourceError names the other sources, so the user knows what to do instead."""
    try:
        return SOURCES[flag].open(str(value), loop)
    except SourceError as e:
        raise SourceError(f"{e}; other sources: {alternatives(extra)}") from None


class Pacer:
    """Fixed-rate schedule that never bursts to catch up: a late frame shifts the schedule instead."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self.next = time.monotonic()

    def wait(self, stop=None) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.next > now:
            if stop is not None:
                stop.wait(self.next - now)
            else:
                time.sleep(self.next - now)
            self.next += self.period
        else:
            self.next = now + self.period
