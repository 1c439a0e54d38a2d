"""Recording (`edge-gfs record`) and replay (`--mcap`) through real parts: node processes, the recorder process,
`edge-gfs camera`, and the `mcap` reader.

A short stream, with Car taught half-way, is recorded from a running node. Read back, the recording holds every
frame and label map the node published, with their stamps, and the teach event. Replayed into a second node that
holds the same classes, it gives the recorded label maps again, frame for frame; after `forget Car`, the frames
recorded before the teach match too. The tests of this file run in order and share the recording.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from node_harness import REPO, NodeProc, endpoint, require_camvid, running_node

from edge_gfs.data.evaluation import draw_supports
from edge_gfs.wire import foxglove_msgs as F
from edge_gfs.wire.client import FrameSubscriber, LabelSubscriber

pytest.importorskip("foxglove", reason=F.INSTALL_HINT)
pytest.importorskip("mcap", reason=F.INSTALL_HINT)
from edge_gfs.wire import mcap_log  # noqa: E402

CAR = 8  # held out of camvid-fold0
FRAMES_BEFORE, FRAMES_AFTER = 4, 4


@pytest.fixture(scope="module")
def data():
    return require_camvid()


@pytest.fixture(scope="module")
def session(tmp_path_factory, data) -> dict:
    """Node A streams CamVid test frames lock-step while `edge-gfs record` records; Car is taught half-way."""
    tmp = tmp_path_factory.mktemp("mcap")
    out = tmp / "run.mcap"
    names = data.names("test")[5:200:25][:FRAMES_BEFORE + FRAMES_AFTER]
    jpegs = [data.image_path("test", n).read_bytes() for n in names]
    shots = [(img, lab == CAR) for img, lab in
             (data.read("train", n) for n in draw_supports(data, [CAR], 2, seed=123)[CAR])]
    sent, seen = [], []
    (tmp / "a").mkdir()
    with running_node(tmp / "a") as wire:
        wire.pub.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # report the recorder's subscription to `frame` too
        rec = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "record", str(out), "--labels",
                                wire.node.labels, "--frames", wire.node.frames, "--progress", "0.5"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wire.pub.wait_for_subscriber(60), "the recorder never subscribed to the frames"
            deadline = time.monotonic() + 60
            while not out.exists() and time.monotonic() < deadline:  # first classes/status message written
                assert rec.poll() is None, rec.communicate()
                time.sleep(0.2)
            time.sleep(1.5)  # and a `classes` message (every 1 s): the table before the teach is known
            for k, jpg in enumerate(jpegs):
                if k == FRAMES_BEFORE:
                    reply = wire.teach.teach("Car", shots)
                    taught_version = reply["version"]
                    wire.sub.next("classes", 10)  # the node published the new table before the next frame
                stamp = 1_700_000_000_000_000_000 + k * 100_000_000  # 10 Hz stamps, known to the test
                seq = wire.pub.publish(data=jpg, encoding="jpeg", stamp_ns=stamp)
                sent.append(stamp)
                lm = wire.sub.labels_for(seq, 60)
                assert lm is not None, wire.node.log_text()
                seen.append(lm)
            time.sleep(1.5)  # the recorder writes what is in flight
        finally:
            rec.send_signal(signal.SIGINT)
            stdout, stderr = rec.communicate(timeout=30)
    assert rec.returncode == 0, stderr
    return {"out": out, "state": tmp / "a" / "node-state", "tmp": tmp, "sent": sent, "seen": seen,
            "taught_version": taught_version, "stdout": stdout, "stderr": stderr, "jpegs": jpegs}


def test_recording_holds_what_the_node_published(session):
    assert "wrote" in session["stdout"] and "label maps" in session["stdout"], session["stdout"]
    assert "MB/min" in session["stderr"]  # the progress line
    recs = list(mcap_log.read(session["out"]))
    by_topic: dict[str, list] = {}
    for r in recs:
        by_topic.setdefault(r.topic, []).append(r)
    images, ids = by_topic[F.TOPIC_IMAGE], by_topic[F.TOPIC_IDS]
    assert [r.log_time for r in images] == session["sent"]
    assert [mcap_log.stamp_ns(r.message) for r in images] == session["sent"]
    assert [bytes(r.message.data) for r in images] == session["jpegs"]  # the frames' own bytes
    assert [r.log_time for r in ids] == [lm.stamp_ns for lm in session["seen"]]
    for r, lm in zip(ids, session["seen"]):
        assert np.array_equal(mcap_log.ids_of(r.message), lm.labels)
    assert len(by_topic[F.TOPIC_COLOR]) == len(ids) == len(by_topic[F.TOPIC_LEGEND])
    legend = by_topic[F.TOPIC_LEGEND][-1].message  # after the teach: Car is in the last frames' legends
    assert any(t.text.split(" ")[1] == "Car" for r in by_topic[F.TOPIC_LEGEND][-FRAMES_AFTER:] for t in r.message.texts)
    assert legend.texts and all(t.background_color.a > 0 for t in legend.texts)
    assert by_topic[F.TOPIC_STATUS] and by_topic[F.TOPIC_CLASSES]
    events = [r.message for r in by_topic.get(F.TOPIC_EVENTS, [])]
    assert {"event": "teach", "name": "Car", "shots": 2, "version": session["taught_version"]}.items() <= \
        events[0].items(), events
    assert any(c["name"] == "Car" for c in by_topic[F.TOPIC_CLASSES][-1].message["classes"])


def replayed_maps(node: NodeProc, want: set[int], min_version: int, timeout_s: float = 120.0) -> dict:
    """Label maps of a looping replay, by stamp, until every stamp in `want` was seen at min_version or later."""
    sub = LabelSubscriber(node.labels, topics=("labels",))
    got: dict[int, np.ndarray] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while not want <= set(got) and time.monotonic() < deadline:
            m = sub.recv(1.0)
            if m is not None and m[1].classes_version >= min_version and m[1].stamp_ns in want:
                got[m[1].stamp_ns] = m[1].labels.copy()
    finally:
        sub.close()
    return got


def test_replay_gives_the_same_label_maps_frame_for_frame(session):
    """Node B replays the recording in-process (--mcap) with node A's classes: identical label maps."""
    state = session["tmp"] / "b-state"
    shutil.copytree(session["state"], state, ignore=shutil.ignore_patterns(".lock"))
    recorded = {r.log_time: mcap_log.ids_of(r.message) for r in mcap_log.read(session["out"], [F.TOPIC_IDS])}
    versions = {lm.stamp_ns: lm.classes_version for lm in session["seen"]}
    after = {s for s, v in versions.items() if v >= session["taught_version"]}
    before = set(recorded) - after
    assert len(after) == FRAMES_AFTER and len(before) == FRAMES_BEFORE
    node = NodeProc(session["tmp"], state=state, name="replay",
                    source=("--mcap", str(session["out"]), "--loop", "--fps", "4")).start()
    try:
        node.wait_ready()
        got = replayed_maps(node, after, session["taught_version"])
        assert set(got) == after, node.log_text()
        for s in after:
            assert np.array_equal(got[s], recorded[s]), f"frame {s} differs in {(got[s] != recorded[s]).sum()} pixels"
        with node.client() as c:
            forgot = c.forget("Car")["version"]
        got = replayed_maps(node, before, forgot)
        assert set(got) == before, node.log_text()
        for s in before:
            assert np.array_equal(got[s], recorded[s]), f"frame {s} differs in {(got[s] != recorded[s]).sum()} pixels"
    finally:
        assert node.stop() == 0, node.log_text()


def test_camera_replays_the_recording_with_its_stamps(session):
    frames = endpoint()
    sub = FrameSubscriber(frames)
    cam = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "camera", "--mcap", str(session["out"]), "--frames",
                            frames, "--wait", "30", "--fps", "20"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    got = []
    try:
        while len(got) < len(session["sent"]):
            m = sub.recv(30)
            assert m is not None, cam.communicate(timeout=10)
            got.append(m[0])
    finally:
        out, err = cam.communicate(timeout=60)
        sub.close()
    assert cam.returncode == 0, err
    assert f"published {len(session['sent'])} frames" in out
    assert [f.stamp_ns for f in got] == session["sent"]
    assert [f.data for f in got] == session["jpegs"]


# -- pure parts ---------------------------------------------------------------------------------------------------
def test_rotation_splits_into_whole_readable_files(tmp_path):
    log = mcap_log.McapLog(tmp_path / "r.mcap", split_bytes=64 << 10, chunk_size=16 << 10)
    rng = np.random.default_rng(0)
    for k in range(120):
        labels = rng.integers(0, 11, (60, 80), dtype=np.uint8)  # noise: barely compresses
        log.write(F.TOPIC_IDS, F.label_ids(k, "camera", labels), log_time=k)
    log.close()
    assert len(log.parts) > 2 and log.parts[0].name == "r-000.mcap"
    stamps = [r.log_time for p in log.parts for r in mcap_log.read(p)]
    assert stamps == list(range(120))
    assert log.total_bytes == sum(p.stat().st_size for p in log.parts)
    assert not list(tmp_path.glob("*.part"))


def test_time_rotation_and_an_unfinished_part_never_carries_the_final_name(tmp_path):
    log = mcap_log.McapLog(tmp_path / "t.mcap", split_s=0.2)
    labels = np.zeros((6, 8), np.uint8)
    for k in range(3):
        log.write(F.TOPIC_IDS, F.label_ids(k, "camera", labels), log_time=k)
        # while a part is open only its .part exists: a reader never opens a file without a summary
        assert not log.parts[-1].exists() and mcap_log.partial(log.parts[-1]).exists()
        time.sleep(0.25)
    log.close()
    assert [p.name for p in log.parts] == ["t-000.mcap", "t-001.mcap", "t-002.mcap"]
    assert [[r.log_time for r in mcap_log.read(p)] for p in log.parts] == [[0], [1], [2]]
    assert not list(tmp_path.glob("*.part"))


def test_class_events_from_table_changes():
    a = [{"id": 0, "name": "Sky", "kind": "base", "shots": 0}]
    b = a + [{"id": 11, "name": "Car", "kind": "novel", "shots": 2}]
    c = a + [{"id": 11, "name": "Car", "kind": "novel", "shots": 3}]
    assert F.class_events(None, b, 1) == []
    assert F.class_events(a, b, 1) == [{"event": "teach", "name": "Car", "id": 11, "shots": 2, "version": 1}]
    assert F.class_events(b, c, 2) == [{"event": "teach", "name": "Car", "id": 11, "shots": 3, "version": 2}]
    assert F.class_events(c, a, 3) == [{"event": "forget", "name": "Car", "id": 11, "shots": 0, "version": 3}]


def test_replay_of_a_missing_or_foreign_file_is_one_line(tmp_path):
    bad = tmp_path / "x.mcap"
    bad.write_bytes(b"not an mcap")
    for path in (tmp_path / "none.mcap", bad):
        r = subprocess.run([sys.executable, "-m", "edge_gfs.cli", "camera", "--mcap", str(path)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr and str(path) in r.stderr, r.stderr
