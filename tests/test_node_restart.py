"""A registry that survives anything: kill -9 after a teach (and during one), restart on the same --state,
and the node comes back with the same classes and bit-identical label maps."""

from __future__ import annotations

import numpy as np
from node_harness import NodeProc, Wire, require_camvid, require_model

from edge_gfs.data.evaluation import draw_supports
from edge_gfs.node.registry import STATE_FILE, StateStore
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import segment_via, shot_bytes


def start(workdir, state, name) -> tuple[NodeProc, Wire]:
    node = NodeProc(workdir, "camvid-fold0", state=state, name=name).start()
    node.wait_ready()
    w = Wire(node)
    w.connect()
    return node, w


def mask_shots(data, class_id: int, k: int, seed: int) -> list:
    names = draw_supports(data, [class_id], k, seed=seed)[class_id]
    return [(img, lab == class_id) for img, lab in (data.read("train", n) for n in names)]


def test_kill_9_after_teach_then_restart_gives_the_same_node(tmp_path):
    require_model("camvid-fold0")
    data = require_camvid()
    state = tmp_path / "state"
    shots = mask_shots(data, 8, 2, seed=7)
    test_jpg = data.image_path("test", data.names("test")[40]).read_bytes()

    node, w = start(tmp_path, state, "first")
    try:
        assert w.teach.teach("Car", shots)["id"] == 8
        assert w.teach.teach("Trolley", shots[:1])["id"] == 11  # a name the model does not know
        listed = w.teach.list()
        before = segment_via(w.pub, w.sub, data=test_jpg, encoding="jpeg")
        assert (before.labels == 8).any() and before.classes_version == listed["version"] == 2
    finally:
        w.close()
        node.kill9()  # no clean shutdown: whatever was acknowledged must be on disk already

    node, w = start(tmp_path, state, "second")
    try:
        assert w.teach.list() == listed  # same names, ids, colours, shot counts and version
        after = segment_via(w.pub, w.sub, data=test_jpg, encoding="jpeg")
        assert after.classes_version == before.classes_version
        assert np.array_equal(after.labels, before.labels)  # bit-identical label map
        assert w.teach.forget("Trolley")["version"] == 3
        assert w.teach.teach("Cart", shots[1:])["id"] == 12  # 11 is not handed out again
    finally:
        w.close()
        assert node.stop() == 0, node.log_text()
    assert sorted(p.name for p in state.iterdir()) == [".lock", STATE_FILE]  # no temp files left


def test_kill_9_during_a_teach_leaves_a_loadable_registry(tmp_path):
    require_model("camvid-fold0")
    data = require_camvid()
    state = tmp_path / "state"
    shots = mask_shots(data, 9, 5, seed=3)
    node, w = start(tmp_path, state, "first")
    try:
        v0 = w.teach.list()["version"]
        req = P.request_message(P.Request("teach", name="Pedestrian", shots=tuple(shot_bytes(s) for s in shots)))
        w.teach.sock.send(P.pack(req))  # no waiting for the reply: kill while the node works on it
    finally:
        node.kill9()
        w.close()
    reg = StateStore(state).load()  # old or new, never torn
    assert reg is not None and reg.version in (v0, v0 + 1)
    assert reg.find("Pedestrian") is None or len(reg.find("Pedestrian").shots) == 5
    node, w = start(tmp_path, state, "second")
    try:
        assert w.teach.list()["version"] == reg.version
    finally:
        w.close()
        assert node.stop() == 0
