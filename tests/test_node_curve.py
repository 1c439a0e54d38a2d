"""Security of the teach socket (node.md): loopback by default; beyond loopback only with CURVE, and then only
operators whose public keys the node was given get an answer."""

from __future__ import annotations

import shutil
import time

import pytest
from node_harness import NodeProc, cli, free_port, require_model

from edge_gfs.cli import main as cli_main
from edge_gfs.wire.client import TeachClient, TeachTimeout


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """As `edge-gfs keys --help` says: each pair in its owner's folder; the node's allowed folder gets alice's
    public key only."""
    d = tmp_path_factory.mktemp("keys")
    for name, folder in (("node", d / "node"), ("alice", d / "alice"), ("mallory", d / "mallory")):
        assert cli_main(["keys", name, "--dir", str(folder)]) == 0
    (d / "ops").mkdir()
    shutil.copy(d / "alice" / "alice.key", d / "ops")
    return d


def test_keys_are_not_overwritten(keys, capsys):
    assert cli_main(["keys", "alice", "--dir", str(keys / "alice")]) == 2
    assert "not overwriting" in capsys.readouterr().err


def test_bad_key_configurations_are_refused_before_the_model_loads(keys, tmp_path, capsys):
    """One line each, exit 2, no --state folder created (the checks run before the model and the state)."""
    teach = f"tcp://0.0.0.0:{free_port()}"
    secret = str(keys / "node" / "node.key_secret")
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    shutil.copy(keys / "alice" / "alice.key_secret", leaky)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["--curve-secret", secret, "--curve-allow", str(leaky)], "holds secret keys"),
             (["--curve-secret", secret, "--curve-allow", str(empty)], "holds no public *.key"),
             (["--curve-secret", str(keys / "node" / "node.key"), "--curve-allow", str(keys / "ops")], "no secret key"),
             (["--curve-secret", str(tmp_path / "nope"), "--curve-allow", str(keys / "ops")], "cannot read")]
    for flags, expect in cases:
        state = tmp_path / "state"
        assert cli_main(["run", "--model", "camvid-fold0", "--state", str(state), "--teach", teach, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert expect in err and len(err.splitlines()) == 1, err
        assert not state.exists()


def test_teach_beyond_loopback_needs_curve(tmp_path, capsys):
    require_model("camvid-fold0")
    assert cli_main(["run", "--model", "camvid-fold0", "--state", str(tmp_path), "--teach",
                     f"tcp://0.0.0.0:{free_port()}", "--labels", f"tcp://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "needs CURVE" in err and "edge-gfs keys" in err


def test_only_allowed_operators_get_answers(keys, tmp_path):
    require_model("camvid-fold0")
    node = NodeProc(tmp_path, "camvid-fold0", extra=("--curve-secret", str(keys / "node" / "node.key_secret"),
                                                      "--curve-allow", str(keys / "ops"))).start()
    server = keys / "node" / "node.key"
    try:
        alice = TeachClient(node.teach, timeout_s=2, curve_secret=keys / "alice" / "alice.key_secret",
                            curve_server_key=server)
        deadline = time.monotonic() + 180
        while True:
            assert node.alive(), node.log_text()
            try:
                assert alice.ping()["ok"]
                break
            except TeachTimeout:
                assert time.monotonic() < deadline, node.log_text()
        mallory = TeachClient(node.teach, timeout_s=2, curve_secret=keys / "mallory" / "mallory.key_secret",
                              curve_server_key=server)
        with pytest.raises(TeachTimeout, match="refused our CURVE key"):  # not "is edge-gfs run running there?"
            mallory.ping()
        assert "refused a CURVE client" in node.log_text()  # a warning the robot's operator sees
        with pytest.raises(TeachTimeout), TeachClient(node.teach, timeout_s=2) as plain:
            plain.ping()
        r = cli("classes", "--teach", node.teach, "--curve-secret", str(keys / "alice" / "alice.key_secret"),
                "--curve-server-key", str(server))
        assert r.returncode == 0 and "Road" in r.stdout, r.stderr
        assert alice.ping()["ok"]
        alice.close()
        mallory.close()
    finally:
        assert node.stop() == 0, node.log_text()
