"""The Foxglove live view (`edge-gfs run --foxglove`) through real parts: a node process, a real WebSocket client
(`websockets`) speaking the Foxglove protocol, and the node's own ZeroMQ labels socket for the same frames.

The client sees the advertised channels, subscribes, receives label images and decodes them (protobuf, with the
schema the server advertised) to exactly the ids of the ZeroMQ label map of the same frame.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from node_harness import REPO, free_port, require_camvid, require_model, running_node

from edge_gfs.ui.overlay import palette_rgb
from edge_gfs.wire import foxglove_msgs as F

pytest.importorskip("foxglove", reason=F.INSTALL_HINT)
websockets_sync = pytest.importorskip("websockets.sync.client", reason="pip install websockets")
mcap_log = pytest.importorskip("edge_gfs.wire.mcap_log")


class FoxgloveClient:
    """The client side of the Foxglove WebSocket protocol, as much of it as a viewer needs: channels, subscribe,
    message data (opcode 1: subscription id u32, log time u64, payload)."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        self._stack = contextlib.ExitStack()
        while True:
            try:
                self.ws = self._stack.enter_context(websockets_sync.connect(
                    url, subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"], max_size=None, open_timeout=5))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.channels: dict[str, dict] = {}
        self.subs: dict[int, dict] = {}

    def advertised(self, topics, timeout_s: float = 30.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        while not set(topics) <= set(self.channels) and time.monotonic() < deadline:
            msg = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(msg, str):
                m = json.loads(msg)
                if m.get("op") == "advertise":
                    self.channels.update({c["topic"]: c for c in m["channels"]})
        return self.channels

    def subscribe(self, topics) -> None:
        subs = []
        for k, topic in enumerate(topics, 1):
            self.subs[k] = self.channels[topic]
            subs.append({"id": k, "channelId": self.channels[topic]["id"]})
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))

    def message(self, timeout_s: float = 10.0) -> tuple[str, int, object] | None:
        """Next message data as (topic, log time, decoded message); None when nothing came in time."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.ws.recv(timeout=left)
            except TimeoutError:
                return None
            if isinstance(msg, bytes) and msg[0] == 1:
                sub_id, log_time = struct.unpack_from("<IQ", msg, 1)
                ch = self.subs[sub_id]
                schema = base64.b64decode(ch["schema"]) if ch["schemaEncoding"] == "protobuf" else ch["schema"]
                return ch["topic"], log_time, mcap_log.decode(ch["schemaName"], ch["schemaEncoding"], schema, msg[13:])
        return None

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def data():
    return require_camvid()


@pytest.fixture(scope="module")
def viewed(tmp_path_factory):
    """One node with --foxglove on a free port, shared by the tests of this file (in order)."""
    port = free_port()
    with running_node(tmp_path_factory.mktemp("fox"), extra=("--foxglove", f"127.0.0.1:{port}")) as wire:
        yield wire, port


def test_live_view_label_image_matches_the_zmq_label_map(viewed, data):
    wire, port = viewed
    fox = FoxgloveClient(f"ws://127.0.0.1:{port}")
    try:
        channels = fox.advertised(F.CHANNELS)
        assert set(F.CHANNELS) <= set(channels), channels.keys()
        assert channels[F.TOPIC_IDS]["schemaName"] == "foxglove.RawImage"
        assert channels[F.TOPIC_COLOR]["schemaName"] == "foxglove.RawImage"
        assert channels[F.TOPIC_IMAGE]["schemaName"] == "foxglove.CompressedImage"
        assert channels[F.TOPIC_CLASSES]["encoding"] == "json"
        for _ in range(3):  # connected but not subscribed: the node encodes nothing for the view
            seq = wire.pub.publish(data=data.image_path("test", data.names("test")[0]).read_bytes())
            assert wire.sub.labels_for(seq, 30) is not None
        status = wire.sub.next("status", 10)
        assert status["foxglove"]["frames_sent"] == 0 and status["frames"] >= 3
        fox.subscribe([F.TOPIC_IDS, F.TOPIC_COLOR, F.TOPIC_IMAGE, F.TOPIC_LEGEND, F.TOPIC_CLASSES])
        time.sleep(1.0)  # the subscription reaches the server before the frames do

        names = data.names("test")[:40:8]
        jpegs = [data.image_path("test", n).read_bytes() for n in names]
        zmq_maps: dict[int, np.ndarray] = {}
        for jpg in jpegs:  # lock-step: one frame, its ZeroMQ label map, the next
            seq = wire.pub.publish(data=jpg, encoding="jpeg")
            lm = wire.sub.labels_for(seq, 30)
            if lm is not None:
                zmq_maps[lm.stamp_ns] = lm.labels.copy()
        assert len(zmq_maps) >= 3, wire.node.log_text()

        got: dict[str, dict[int, object]] = {F.TOPIC_IDS: {}, F.TOPIC_COLOR: {}, F.TOPIC_IMAGE: {}, F.TOPIC_LEGEND: {}}
        classes = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                classes and all(set(zmq_maps) <= set(v) for v in got.values())):
            m = fox.message(2.0)
            if m is None:
                continue
            topic, log_time, msg = m
            if topic == F.TOPIC_CLASSES:
                classes = msg
            elif topic == F.TOPIC_LEGEND:
                got[topic][log_time] = msg
            else:
                assert log_time == mcap_log.stamp_ns(msg)  # the frame's stamp is the log time
                got[topic][log_time] = msg
    finally:
        fox.close()

    assert classes is not None and {c["id"] for c in classes["classes"]} >= set(range(8))
    common = set(zmq_maps) & set(got[F.TOPIC_IDS])
    assert len(common) >= 3, (len(zmq_maps), len(got[F.TOPIC_IDS]))  # the view sees the newest frame, not all
    lut = palette_rgb(classes["classes"])
    for stamp in common:
        ids = got[F.TOPIC_IDS][stamp]
        assert ids.encoding == "mono8" and ids.frame_id == "camera"
        assert np.array_equal(mcap_log.ids_of(ids), zmq_maps[stamp])  # same frame, same ids, both wires
        if stamp in got[F.TOPIC_COLOR]:
            color = got[F.TOPIC_COLOR][stamp]
            rgb = np.frombuffer(color.data, np.uint8).reshape(color.height, color.width, 3)
            assert color.encoding == "rgb8" and np.array_equal(rgb, lut[zmq_maps[stamp]])
        if stamp in got[F.TOPIC_LEGEND]:  # one row per class in the frame, named as in the class table
            names = {c["id"]: c["name"] for c in classes["classes"]}
            present = [int(i) for i in np.unique(zmq_maps[stamp])]
            assert [t.text.split(" ")[:2] for t in got[F.TOPIC_LEGEND][stamp].texts] == \
                [[str(i), names.get(i, "unknown")] for i in present]
        if stamp in got[F.TOPIC_IMAGE]:
            assert got[F.TOPIC_IMAGE][stamp].format == "jpeg"
            assert bytes(got[F.TOPIC_IMAGE][stamp].data) in jpegs  # the frame's own bytes, not re-encoded


def test_a_client_that_stops_reading_does_not_slow_the_stream(viewed, data):
    """A viewer subscribes to every image channel and then never reads: the SDK's per-client queue drops the
    oldest messages (or drops the client), the view's thread keeps only the newest frame, and every frame still
    gets its label map on the ZeroMQ socket."""
    wire, port = viewed
    fox = FoxgloveClient(f"ws://127.0.0.1:{port}")
    try:
        fox.advertised(F.CHANNELS)
        fox.subscribe(list(F.CHANNELS))
        time.sleep(1.0)
        jpg = data.image_path("test", data.names("test")[3]).read_bytes()
        t0 = time.monotonic()
        for _ in range(60):  # ~100 MB of label images a reader would have to take: far more than socket buffers
            seq = wire.pub.publish(data=jpg, encoding="jpeg")
            assert wire.sub.labels_for(seq, 30) is not None, wire.node.log_text()
        status = wire.sub.next("status", 10)
        assert status["foxglove"]["frames_sent"] > 0  # the view did send while the client was stalled
        assert wire.node.alive()
        print(f"60 lock-step frames with a stalled viewer: {time.monotonic() - t0:.1f} s")
    finally:
        fox.close()


def test_the_shipped_layout_is_the_generated_one_and_names_our_topics():
    from edge_gfs.wire.foxglove_layout import layout_json
    shipped = json.loads((REPO / "docs" / "foxglove-layout.json").read_text())
    assert shipped == json.loads(layout_json()), "regenerate: python -m edge_gfs.wire.foxglove_layout > docs/..."
    text = json.dumps(shipped)
    for topic in (F.TOPIC_IMAGE, F.TOPIC_COLOR, F.TOPIC_LEGEND, F.TOPIC_CLASSES, F.TOPIC_EVENTS, F.TOPIC_STATUS):
        assert f'"{topic}' in text


def test_without_the_package_the_node_says_what_to_install(tmp_path):
    """The live view is optional: without foxglove-sdk, --foxglove fails at once with the install line."""
    require_model()
    code = ("import sys; sys.modules['foxglove'] = None; from edge_gfs.cli import main; "
            f"sys.exit(main(['run', '--foxglove', '--state', {str(tmp_path / 's')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2
    assert "pip install 'edge-gfs[foxglove]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()  # refused before any model load or folder


def test_bad_address_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge_gfs.cli", "run", "--foxglove", "127.0.0.1:notaport", "--state",
                        str(tmp_path / "s")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "--foxglove" in r.stderr and "HOST:PORT" in r.stderr and "Traceback" not in r.stderr
