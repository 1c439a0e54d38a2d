"""Frames in, label maps out, through real processes and sockets: publisher -> node -> subscriber.

One node (camvid-fold0, --confidence) serves the tests of this file in order. No timing assertions: the
newest-frame behaviour is checked by what it implies (drops counted, skipped seqs, no backlog after the
publisher stops), not by how long anything took.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from node_harness import REPO, NodeProc, require_camvid, require_model, running_node

from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import FramePublisher, LabelSubscriber, segment_via

BASE = set(range(8))


@pytest.fixture(scope="module")
def data():
    return require_camvid()


@pytest.fixture(scope="module")
def wire(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("stream"), extra=("--confidence",)) as w:
        yield w


def collect(sub, until: threading.Event, quiet_s: float = 3.0) -> list[P.LabelMap]:
    """Label maps until `until` is set and then no label map came for quiet_s (other topics keep flowing)."""
    maps: list[P.LabelMap] = []
    quiet_since = None
    while True:
        got = sub.recv(0.2)
        if got is not None and got[0] == "labels":
            maps.append(got[1])
            quiet_since = None
        elif until.is_set():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return maps


def test_camera_process_to_node_to_subscriber(wire, data, tmp_path):
    """`edge-gfs camera` replays CamVid test JPEGs; the label maps carry each frame's seq, id and size."""
    names = data.names("test")[:: len(data.names("test")) // 10][:10]
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, n in enumerate(names):  # file names fix the replay order: seq k is names[k]
        (folder / f"{k:03d}.jpg").symlink_to(data.image_path("test", n))
    wire.pub.close()  # the camera process binds the frames endpoint now
    cam = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "camera", "--images", str(folder), "--fps", "3",
                            "--frames", wire.node.frames, "--frame-id", "front", "--wait", "60"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ended = threading.Event()
    threading.Thread(target=lambda: (cam.wait(120), ended.set()), daemon=True).start()
    maps = collect(wire.sub, ended)
    out, err = cam.communicate()
    assert cam.returncode == 0, err
    assert "published 10 frames" in out
    assert len(maps) >= 3, wire.node.log_text()
    seqs = [m.seq for m in maps]
    assert seqs == sorted(set(seqs)) and all(0 <= s < 10 for s in seqs)
    for m in maps:
        assert m.frame_id == "front" and m.labels.shape == (360, 480) and m.stamp_ns > 0
        assert set(np.unique(m.labels)) <= BASE
        gt = data.read("test", names[m.seq])[1]
        valid = gt != 255
        assert (m.labels[valid] == gt[valid]).mean() > 0.6  # it segments the frame it says it does
        assert m.confidence is not None and m.confidence.shape == (360, 480) and m.confidence.max() > 128
    wire.pub = FramePublisher(wire.node.frames)  # back to the test's own publisher
    assert wire.pub.wait_for_subscriber(30)


def test_view_records_overlays_headless(wire, data, tmp_path):
    out = tmp_path / "view"
    view = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "view", "--frames", wire.node.frames, "--labels",
                             wire.node.labels, "--out", str(out), "--count", "3"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    img = data.read("test", data.names("test")[3])[0]
    try:
        for _ in range(600):  # until the viewer has its 3 overlays (it joins late, so keep publishing)
            if view.poll() is not None:
                break
            segment_via(wire.pub, wire.sub, image=img, encoding="jpeg")
    finally:
        if view.poll() is None:
            view.kill()
    out_text, err = view.communicate(timeout=30)
    assert view.returncode == 0, err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and cv2.imread(str(pngs[0])).shape[:2] == (360, 480 + 170)


@pytest.mark.parametrize("encoding", ["png", "bgr8", "rgb8", "jpeg"])
def test_label_maps_have_each_frames_size(wire, data, encoding):
    img = data.read("test", data.names("test")[5])[0]
    small = cv2.resize(img, (200, 150))
    lm = segment_via(wire.pub, wire.sub, image=small, encoding=encoding)
    assert lm.labels.shape == (150, 200) and lm.confidence.shape == (150, 200)
    if encoding == "rgb8":  # rgb8 is converted, not misread: same map as the bgr8 frame
        assert np.array_equal(lm.labels, segment_via(wire.pub, wire.sub, image=small, encoding="bgr8").labels)


def test_bad_frames_are_counted_and_the_stream_goes_on(wire, data):
    before = wire.sub.next("status", 10)["bad_frames"]
    sock = wire.pub.sock
    good = P.frame_message(P.make_frame(np.zeros((32, 32, 3), np.uint8), encoding="bgr8", seq=10**6))
    sock.send_multipart([P.TOPIC_FRAME, b"\xc1junk"])
    sock.send_multipart([P.TOPIC_FRAME, P.pack(good | {"data": b"short"})])
    sock.send_multipart([P.TOPIC_FRAME, P.pack(good | {"encoding": "jpeg", "data": b"\xff\xd8\xff\xe0junk"})])
    sock.send_multipart([P.TOPIC_FRAME, P.pack(good), b"third part"])
    time.sleep(0.5)  # not a timing assertion: lets the junk arrive before the good frame
    lm = segment_via(wire.pub, wire.sub, image=data.read("test", data.names("test")[0])[0], encoding="jpeg")
    assert lm.labels.shape == (360, 480)
    status = wire.sub.next("status", 10)
    assert status["bad_frames"] >= before + 4


def test_overload_drops_frames_instead_of_queueing_them(wire, data):
    """Frames at ~100 Hz into a node that does a few per second: it skips to the newest frame, counts the
    drops, and goes quiet right after the publisher stops (a backlog would keep it busy for seconds)."""
    jpgs = [data.image_path("test", n).read_bytes() for n in data.names("test")[:20]]
    drops_before = wire.sub.next("status", 10)["drops"]
    pub = wire.pub
    start_seq = pub.seq  # consecutive with what was sent before: every drop below is a real one
    sent = 300
    done = threading.Event()
    last = {}

    def publish() -> None:
        for k in range(sent):
            last["seq"] = pub.publish(data=jpgs[k % len(jpgs)], encoding="jpeg", seq=start_seq + k)
            time.sleep(0.01)
        done.set()

    t = threading.Thread(target=publish)
    t.start()
    maps = [m for m in collect(wire.sub, done, quiet_s=3.0) if m.seq >= start_seq]
    t.join()
    status = wire.sub.next("status", 10)
    assert maps, wire.node.log_text()
    seqs = [m.seq for m in maps]
    gaps = np.diff(seqs)
    assert len(maps) < sent / 3  # most frames were skipped ...
    assert (gaps > 0).all() and np.median(gaps) > 1  # ... by jumping ahead, in order
    assert status["drops"] - drops_before >= sent - len(maps) - 5  # ... and counted
    assert seqs[-1] >= last["seq"] - 2  # the last map is of (about) the newest frame, not an old one
    print(f"\noverload: {sent} frames sent, {len(maps)} label maps, median seq step {np.median(gaps):.0f}, "
          f"drops {status['drops'] - drops_before}, node p95 latency {status['latency_p95_ms']} ms, "
          f"fps {status['fps']}, stages {status['stage_ms']}")


def test_status_topic_fields(wire):
    s = wire.sub.next("status", 10)
    for key in ("fps", "latency_p50_ms", "latency_p95_ms", "drops", "classes_version", "backend", "stage_ms"):
        assert key in s
    assert set(s["stage_ms"]) == {"decode", "preprocess", "extractor", "classifier", "upsample_argmax", "publish"}
    assert s["backend"] == "eager" and s["frames"] > 0


@pytest.mark.parametrize("kind", ["images", "video"])
def test_in_process_sources_replay_and_end(kind, data, tmp_path):
    """--images DIR / --video PATH: read in-process at --fps, label maps out, a clean exit at the end."""
    require_model("camvid-fold0")
    frames = [data.read("test", n)[0] for n in data.names("test")[:4]]
    if kind == "images":
        src = tmp_path / "imgs"
        src.mkdir()
        for k, f in enumerate(frames):
            cv2.imwrite(str(src / f"{k:02d}.png"), f)
    else:
        src = tmp_path / "clip.mp4"
        writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 5, (480, 360))
        for f in frames:
            writer.write(f)
        writer.release()
    node = NodeProc(tmp_path, "camvid-fold0", source=(f"--{kind}", str(src), "--fps", "1", "--frame-id", kind))
    sub = LabelSubscriber(node.labels)
    node.start()
    try:
        maps = []
        while True:  # until the node has exited and its last messages are read
            got = sub.recv(0.5)
            if got is not None:
                if got[0] == "labels":
                    maps.append(got[1])
            elif not node.alive():
                break
        assert node.proc.wait(30) == 0, node.log_text()
    finally:
        sub.close()
        node.stop()
    assert "input ended" in node.log_text()
    assert maps, node.log_text()
    assert all(m.frame_id == kind and m.labels.shape == (360, 480) and 0 <= m.seq < 4 for m in maps)
    if kind == "images":  # PNG frames: the map of seq k is the map of frame k
        gt = data.read("test", data.names("test")[maps[-1].seq])[1]
        assert (maps[-1].labels[gt != 255] == gt[gt != 255]).mean() > 0.6


def test_input_size_profile_runs_the_same_model_at_another_size(data, tmp_path):
    """`edge-gfs run --input-size HxW`: the network sees HxW (status says so), label maps keep the frame's size."""
    require_model("camvid-fold0")
    src = tmp_path / "imgs"
    src.mkdir()
    for k, n in enumerate(data.names("test")[:2]):
        cv2.imwrite(str(src / f"{k:02d}.png"), data.read("test", n)[0])
    node = NodeProc(tmp_path, "camvid-fold0", extra=("--input-size", "96x128"),
                    source=("--images", str(src), "--fps", "1"))
    sub = LabelSubscriber(node.labels)
    node.start()
    try:
        maps, statuses = [], []
        while True:
            got = sub.recv(0.5)
            if got is not None:
                (maps if got[0] == "labels" else statuses if got[0] == "status" else []).append(got[1])
            elif not node.alive():
                break
    finally:
        sub.close()
        node.stop()
    assert maps and all(m.labels.shape == (360, 480) for m in maps), node.log_text()
    assert statuses and all(s["input_hw"] == [96, 128] for s in statuses)


def test_seq_that_wraps_or_restarts_counts_resets_not_drops():
    """seq 2^64-1 -> 0 -> 2^64-1 (a wrap, a restarted publisher, random ids) are resets, not 2^64 lost frames:
    counting them as gaps once overflowed the status message and killed the node. Real wire messages through
    the reader's own parser; a plain gap still counts."""
    import zmq

    from edge_gfs.node.stream import MAX_SEQ_GAP, LatestSlot, ZmqFrameReader

    ctx = zmq.Context()
    reader = ZmqFrameReader(ctx, "tcp://127.0.0.1:1", LatestSlot(), threading.Event())
    try:
        img = np.zeros((16, 24, 3), np.uint8)
        for seq in (2**64 - 1, 0, 2**64 - 1, 5, 9, 9 + MAX_SEQ_GAP + 2, 3):
            reader._take([P.TOPIC_FRAME, P.pack(P.frame_message(P.make_frame(img, seq=seq, encoding="png")))])
        assert reader.bad == 0
        assert reader.seqs.gaps == 3  # 5 -> 9 lost 6, 7, 8
        assert reader.seqs.resets == 5  # wrap, back, wrap, the long jump, back
        P.pack(reader.status())  # packs: no overflow
    finally:
        reader.close()
        ctx.term()
