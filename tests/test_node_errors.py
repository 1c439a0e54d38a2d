"""Bad input of every kind the contract lists gets an error reply with the right code; the node keeps running
and its state (the registry on disk, the class list, the version) is unchanged. Plus the start-up errors a
user meets: one line, exit code 2, no traceback."""

from __future__ import annotations

import cv2
import msgpack
import numpy as np
import pytest
import yaml
import zmq
from node_harness import NodeProc, cli, endpoint, require_camvid, require_model

from edge_gfs.cli import main as cli_main
from edge_gfs.node.registry import STATE_FILE, Registry, StateStore
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import TeachClient, TeachTimeout


@pytest.fixture(scope="module")
def frame():
    data = require_camvid()
    img, lab = data.read("train", data.names("train")[0])
    return cv2.resize(img, (128, 96)), cv2.resize(lab, (128, 96), interpolation=cv2.INTER_NEAREST)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node that holds no taught class and may not create one (--max-classes 0), set up from a YAML config."""
    require_model("camvid-fold0")
    tmp = tmp_path_factory.mktemp("errors")
    n = NodeProc(tmp, "camvid-fold0")
    config = tmp / "node.yaml"
    config.write_text(yaml.safe_dump({"model": "camvid-fold0", "state": str(n.state), "frames": n.frames,
                                      "labels": n.labels, "teach": n.teach, "threads": 1, "max-classes": 0}))
    n.args = lambda: ["run", "--config", str(config)]  # everything comes from the file
    n.start()
    n.wait_ready()
    yield n
    assert n.stop() == 0, n.log_text()


def png(a: np.ndarray) -> bytes:
    return P.encode_png(a)


def shot(img, mask=None, **extra) -> dict:
    if mask is None:
        mask = np.zeros(img.shape[:2], np.uint8)
        mask[40:80, 40:100] = 255
    return {"image": png(img), "mask": png(mask)} | extra


def teach(name: str, *shots, **extra) -> bytes:
    return P.pack({"op": "teach", "name": name, "shots": list(shots)} | extra)


def cases(img, lab):
    h, w = img.shape[:2]
    other_model = msgpack.packb({"format": "edge-gfs-classes/1", "model_checksum": "f" * 64, "model_name": "x",
                                 "dim": 128, "classes": []})
    return {
        "malformed msgpack": (b"\xc1\x00\x01", "bad_request"),
        "not a map": (P.pack([1, 2]), "bad_request"),
        "unknown op": (P.pack({"op": "explode"}), "bad_request"),
        "wrong type": (P.pack({"op": "teach", "name": 7, "shots": [shot(img)]}), "bad_request"),
        "shot without mask": (teach("Road", {"image": png(img)}), "bad_request"),
        "undecodable image": (teach("Road", shot(img) | {"image": b"\xff\xd8\xff\xe0 not a jpeg"}), "bad_image"),
        "not JPEG or PNG": (teach("Road", shot(img) | {"image": b"GIF89a......"}), "bad_image"),
        "mask size mismatch": (teach("Road", shot(img, np.full((h + 1, w), 255, np.uint8) * (np.arange(w) < 9))),
                               "bad_mask"),
        "empty mask": (teach("Road", shot(img, np.zeros((h, w), np.uint8))), "bad_mask"),
        "all-covering mask": (teach("Road", shot(img, np.full((h, w), 255, np.uint8))), "bad_mask"),
        "labels size mismatch": (teach("Road", shot(img, labels=png(lab[:-1]))), "bad_mask"),
        "too many shots": (teach("Road", *[shot(img)] * 17), "too_large"),
        "image too large": (teach("Road", shot(img) | {"image": png(np.zeros((1, 9000), np.uint8))}), "too_large"),
        "oversized message": (teach("Road", shot(img) | {"pad": b"\x00" * (P.LIMITS.max_teach_bytes + 1)}),
                              "too_large"),
        "unknown class": (P.pack({"op": "forget", "name": "Zebra"}), "unknown_class"),
        "base class with nothing taught": (P.pack({"op": "forget", "name": "road"}), "bad_request"),
        "name taken": (teach("road", shot(img), create=True), "name_taken"),
        "class limit": (teach("Zebra", shot(img)), "limit"),
        "preview of a broken image": (P.pack({"op": "preview", "name": "Road", "shots": [shot(img)],
                                              "image": b"\x89PNG\r\n\x1a\nbroken"}), "bad_image"),
        "garbage class pack": (P.pack({"op": "import", "pack": b"junk"}), "bad_request"),
        "another model's pack": (P.pack({"op": "import", "pack": other_model}), "model_mismatch"),
    }


CASE_NAMES = list(cases(np.zeros((96, 128, 3), np.uint8), np.zeros((96, 128), np.uint8)))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_request_gets_its_error_and_changes_nothing(node, frame, case):
    payload, code = cases(*frame)[case]
    state_file = node.state / STATE_FILE
    with node.client() as c:
        before, on_disk = c.list(), state_file.read_bytes()
        reply = c.request(payload)
        assert reply["ok"] is False and reply["error"]["code"] == code, reply
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        assert c.ping()["ok"]  # still running
        assert c.list() == before  # same classes, same version
    assert state_file.read_bytes() == on_disk
    assert node.alive()


def test_dealer_clients_and_multipart_bodies(node):
    with TeachClient(node.teach, timeout_s=30, dealer=True) as c:
        assert c.ping()["ok"]
        c.sock.send_multipart([b"", P.pack({"op": "ping"}), b"extra part"])
        assert c.sock.poll(30000)
        reply = P.unpack_map(c.sock.recv_multipart()[-1])
        assert reply["error"]["code"] == "bad_request"
        assert c.ping()["ok"]


def test_a_valid_base_context_teach_is_still_allowed(node, frame):
    """The limit is on new classes only; the refusals above were not the node refusing everything."""
    img, lab = frame
    with node.client() as c:
        v = c.ping()["version"]
        r = c.teach("Road", [(img, lab == 3)])
        assert r["id"] == 3 and r["version"] == v + 1
        assert c.forget("Road")["version"] == v + 2


# -- start-up errors ---------------------------------------------------------------------------------------------
def test_missing_camera_is_one_line_naming_the_alternatives():
    r = cli("run", "--camera", "97", "--model", "camvid-fold0")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for alt in ("--video", "--images", "--frames"):
        assert alt in r.stderr


@pytest.mark.parametrize("argv,expect", [
    (["--video", "/no/such/file.mp4"], "no video file"),
    (["--images", "/no/such/dir"], "no folder"),
    (["--backend", "compiled"], "edge-gfs compile"),
    (["--backend", "tensorrt"], "edge-gfs compile"),
    (["--video", "a.mp4", "--images", "b"], "give one frame source"),
])
def test_start_up_errors(argv, expect, capsys, tmp_path):
    assert cli_main(["run", "--model", "camvid-fold0", "--state", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1


def test_state_dir_of_another_model_is_refused(tmp_path, capsys):
    require_model("camvid-fold0")
    StateStore(tmp_path).save(Registry.fresh("0" * 64, "camvid", ["A"], [0], 128))
    assert cli_main(["run", "--model", "camvid-fold0", "--state", str(tmp_path), "--labels", endpoint(),
                     "--teach", endpoint()]) == 2
    assert "was made for model 'camvid'" in capsys.readouterr().err


def test_state_dir_in_use_is_refused(node, capsys):
    assert cli_main(["run", "--model", "camvid-fold0", "--state", str(node.state), "--labels", endpoint(),
                     "--teach", endpoint()]) == 2
    assert "in use by another node" in capsys.readouterr().err


def test_taken_port_is_refused(node, capsys, tmp_path):
    assert cli_main(["run", "--model", "camvid-fold0", "--state", str(tmp_path), "--labels", node.labels,
                     "--teach", endpoint()]) == 2
    assert "cannot bind --labels" in capsys.readouterr().err


def test_unknown_config_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: camvid-fold0\nframes_per_second: 3\n")
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "--config", str(cfg)])
    assert e.value.code == 2 and "unknown setting 'frames_per_second'" in capsys.readouterr().err


def test_view_without_a_display_asks_for_out(capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)  # the check runs before HighGUI, so no OpenCV build can abort here
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli_main(["view"]) == 2
    err = capsys.readouterr().err
    assert "no display" in err and "--out" in err


def test_operator_commands_without_a_node_say_so():
    r = cli("classes", "--teach", endpoint(), "--timeout", "0.5")
    assert r.returncode == 3 and "no reply" in r.stderr and "Traceback" not in r.stderr


def test_teach_client_times_out_instead_of_hanging():
    with TeachClient(endpoint(), timeout_s=0.3) as c:
        with pytest.raises(TeachTimeout):
            c.ping()
        with pytest.raises(TeachTimeout):  # and the socket is usable again after a timeout
            c.ping()


@pytest.mark.parametrize("cmd", ["run", "camera", "teach", "forget", "classes", "keys", "view", "launch"])
def test_every_node_command_has_help_with_an_example(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main([cmd, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"edge-gfs {cmd}" in out and "example" in out


def test_sockets_have_size_limits(node):
    """An absurdly large message is cut off by ZeroMQ (MAXMSGSIZE) before it is buffered; the node lives on."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(node.teach)
    s.send_multipart([b"", b"\x00" * (P.LIMITS.max_teach_bytes * P.SOCKET_SLACK + 1)])
    assert not s.poll(1500)  # dropped, no reply
    s.close(0)
    with node.client() as c:
        assert c.ping()["ok"]
