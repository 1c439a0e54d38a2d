"""Teaching through the wire: a real node process, real CamVid frames, the bundled camvid-fold0 model.

Car is held out of camvid-fold0's training. Taught from 5 mask-only train frames over the teach socket (the
same frames the GFS-CamVid benchmark draws with seed 123), it must appear on test frames read back off the
labels socket, agree with the in-process per-frame path, and vanish again when forgotten. The tests in this
file share one node and run in order.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch
from node_harness import Wire, cli, frames_with, require_camvid, running_node

from edge_gfs.core import zoo
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.evaluation import draw_supports
from edge_gfs.wire.client import segment_via

CAR = 8
# Measured 66.0 on these 8 car-rich test frames with the bundled camvid-fold0 (recipe 4) and its shipped
# registration (margin 0.15, one mean row); the previous release measured 17.1 here. GFS-CamVid reports Car 58.3
# over all 233 test frames with all three held-out classes taught. The floor leaves room for teach numerics.
CAR_IOU_FLOOR = 50.0
MEASURED: dict = {}


@pytest.fixture(scope="module")
def data():
    return require_camvid()


@pytest.fixture(scope="module")
def wire(tmp_path_factory, data):
    with running_node(tmp_path_factory.mktemp("teach")) as w:
        yield w


@pytest.fixture(scope="module")
def support(data):
    names = draw_supports(data, [CAR], 5, seed=123)[CAR]
    return [(img, lab == CAR) for img, lab in (data.read("train", n) for n in names)]


@pytest.fixture(scope="module")
def test_frames(data):
    names = frames_with(data, "test", CAR, 8)
    return [(data.image_path("test", n).read_bytes(), data.read("test", n)[1]) for n in names]


def segment_all(wire: Wire, frames) -> list:
    return [segment_via(wire.pub, wire.sub, data=jpg, encoding="jpeg") for jpg, _ in frames]


def iou(preds: list[np.ndarray], gts: list[np.ndarray], cid: int) -> float:
    inter = sum(int(((p == cid) & (g == cid)).sum()) for p, g in zip(preds, gts))
    union = sum(int((((p == cid) | (g == cid)) & (g != 255)).sum()) for p, g in zip(preds, gts))
    return 100.0 * inter / max(union, 1)


def test_before_teaching_there_is_no_car(wire, test_frames):
    maps = segment_all(wire, test_frames)
    assert all(m.classes_version == 0 for m in maps)
    assert not any((m.labels == CAR).any() for m in maps)
    assert [m.labels.shape for m in maps] == [g.shape for _, g in test_frames]


def test_teach_car_over_the_wire(wire, support, test_frames):
    t0 = time.perf_counter()
    reply = wire.teach.teach("Car", support)
    MEASURED["teach_k5_s"] = time.perf_counter() - t0
    assert reply["ok"] and reply["id"] == CAR and reply["shots"] == 5 and reply["version"] == 1
    listed = {c["name"]: c for c in wire.teach.list()["classes"]}
    assert listed["Car"] == {"id": CAR, "name": "Car", "kind": "novel", "color": [255, 230, 0], "shots": 5}
    maps = segment_all(wire, test_frames)
    assert all(m.classes_version == 1 for m in maps)
    MEASURED["maps"] = [m.labels.copy() for m in maps]
    car_iou = iou(MEASURED["maps"], [g for _, g in test_frames], CAR)
    MEASURED["car_iou"] = car_iou
    print(f"\nCar IoU over {len(maps)} test frames after teaching 5 mask-only shots: {car_iou:.1f}; "
          f"teach request K=5 took {MEASURED['teach_k5_s']:.2f} s")
    assert car_iou >= CAR_IOU_FLOOR
    classes = wire.sub.next("classes", 10)
    assert classes["version"] == 1 and any(c["name"] == "Car" and c["shots"] == 5 for c in classes["classes"])


def test_node_agrees_with_the_in_process_path(wire, support, test_frames):
    """What the benchmark computes in-process and what comes off the wire are the same label maps."""
    if "maps" not in MEASURED:
        pytest.skip("needs test_teach_car_over_the_wire")
    model, _ = zoo.load("camvid-fold0")
    seg = Segmenter(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the node runs
    try:
        seg.set_shots([seg.make_shot(img, mask, CAR) for img, mask in support])
        local = [seg.segment([cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)])[0] for jpg, _ in test_frames]
    finally:
        torch.set_num_threads(threads)
    same = np.mean([(a == b).mean() for a, b in zip(local, MEASURED["maps"])])
    MEASURED["agreement"] = same
    print(f"\nnode vs in-process label maps: {100 * same:.4f}% of pixels equal")
    assert same >= 0.999, f"only {100 * same:.3f}% of pixels agree"
    gts = [g for _, g in test_frames]
    assert abs(iou(local, gts, CAR) - MEASURED["car_iou"]) < 0.5


def test_preview_commits_nothing(wire, data, support, test_frames):
    before = wire.teach.list()
    # a car frame that Car was not taught from: Car has a row per shot, so one of its own shots would tie
    taught = set(draw_supports(data, [CAR], 5, seed=123)[CAR])
    other = next(n for n in draw_supports(data, [CAR], 10, seed=7)[CAR] if n not in taught)
    img, lab = data.read("train", other)
    frame = cv2.imencode(".png", img)[1].tobytes()
    labels = wire.teach.preview("Dog", [(img, lab == CAR)], frame)
    assert labels.shape == lab.shape
    # Dog would take id 11; on its own shot's frame its row is that car's own prototype, so it wins car pixels
    assert ((labels == 11) & (lab == CAR)).sum() > 100
    assert wire.teach.list() == before


def test_cli_list_export_forget_import(wire, test_frames, tmp_path):
    if "maps" not in MEASURED:
        pytest.skip("needs test_teach_car_over_the_wire")
    ep = ("--teach", wire.node.teach)
    r = cli("classes", *ep)
    assert r.returncode == 0, r.stderr
    assert "Car" in r.stdout and "novel" in r.stdout
    pack = tmp_path / "fold0.pack"
    r = cli("classes", "export", str(pack), *ep)
    assert r.returncode == 0 and pack.stat().st_size > 0, r.stderr
    r = cli("forget", "car", *ep)
    assert r.returncode == 0, r.stderr
    maps = segment_all(wire, test_frames)
    assert not any((m.labels == CAR).any() for m in maps)  # forgotten: no pixel is Car
    assert all(m.classes_version == 2 for m in maps)
    r = cli("forget", "car", *ep)
    assert r.returncode == 1 and "unknown_class" in r.stderr
    r = cli("classes", "import", str(pack), *ep)
    assert r.returncode == 0, r.stderr
    maps = segment_all(wire, test_frames)
    for m, before in zip(maps, MEASURED["maps"]):
        assert np.array_equal(m.labels, before)  # the same classifier bits as before the forget


def test_cli_teach_from_files(wire, data, tmp_path):
    names = draw_supports(data, [9], 2, seed=123)[9]
    args = []
    for n in names:
        img_path = data.image_path("train", n)
        mask = tmp_path / f"{n}_ped.png"
        cv2.imwrite(str(mask), (data.read("train", n)[1] == 9).astype(np.uint8) * 255)
        args += ["--image", str(img_path), "--mask", str(mask)]
    r = cli("teach", "pedestrian", *args, "--teach", wire.node.teach)
    assert r.returncode == 0, r.stderr
    assert "id 9" in r.stdout and "2 shots" in r.stdout
    before = wire.teach.list()
    preview = tmp_path / "preview.png"
    r = cli("teach", "Bicyclist", *args[:4], "--preview", str(data.image_path("test", data.names("test")[0])),
            "--out", str(preview), "--teach", wire.node.teach)
    assert r.returncode == 0 and "class ids" in r.stdout, r.stderr
    assert cv2.imread(str(preview)).shape == (360, 480, 3)
    assert wire.teach.list() == before  # a preview commits nothing
    r = cli("teach", "Road", "--mask", "x.png", "--teach", wire.node.teach)
    assert r.returncode == 2 and "must follow its --image" in r.stderr
