"""The `edge-gfs` command as a user runs it: help with examples, bundled models by name, segment overlays."""

from __future__ import annotations

import subprocess
import sys

import cv2
import pytest

from edge_gfs.core import zoo


def run(*args, **kw):
    return subprocess.run(["edge-gfs", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("cmd", ["segment", "train", "models"])
def test_every_command_has_help_with_an_example(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0
    assert f"edge-gfs {cmd}" in r.stdout and "example" in r.stdout


def test_unknown_command_lists_the_commands():
    r = run("frobnicate")
    assert r.returncode == 2 and "segment" in r.stderr


@pytest.mark.parametrize("name,n_base", [("camvid", 11), ("camvid-fold0", 8)])
def test_bundled_models_load_by_name(name, n_base):
    model, payload = zoo.load(name)
    assert len(model.cfg.base_classes) == n_base
    assert model.cfg.class_names[8] == "Car"
    assert payload["metrics"]["val"]["base_miou"] > 50  # a trained model, not random weights


def test_unknown_model_error_names_the_bundled_ones():
    with pytest.raises(FileNotFoundError, match="camvid-fold0"):
        zoo.resolve("no-such-model")


def test_segment_writes_overlays_of_camvid_frames(camvid_root, tmp_path):
    r = run("segment", "--model", "camvid", "--count", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    panel = cv2.imread(str(pngs[0]))
    assert panel.shape[0] == 360 and panel.shape[1] > 2 * 480  # frame | overlay | legend
    acc = [float(line.split("pixel accuracy ")[1].rstrip("%")) for line in r.stdout.splitlines() if "accuracy" in line]
    assert len(acc) == 2 and min(acc) > 70  # the bundled model actually segments road scenes


def test_segment_reports_a_corrupt_image_clearly(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    r = run("segment", "--images", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "cannot decode" in r.stderr and "Traceback" not in r.stderr


def test_node_package_never_imports_the_trainer():
    code = ("import importlib, pkgutil, sys, edge_gfs\n"
            "for m in pkgutil.iter_modules(edge_gfs.__path__):\n"
            "    importlib.import_module('edge_gfs.' + m.name)\n"
            "assert not any(k == 'trainer' or k.startswith('trainer.') for k in sys.modules), 'trainer imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_evaluate_runs_a_profile_at_another_input_size(camvid_root, tmp_path):
    """--input-size runs the same weights at another size (the accurate / fast profiles) and says so."""
    out = tmp_path / "r.json"
    r = run("evaluate", "--model", "camvid", "--split", "val", "--limit", "2", "--input-size", "96x128",
            "--json", str(out))
    assert r.returncode == 0, r.stderr
    import json
    small = json.loads(out.read_text())
    assert small["input_hw"] == [96, 128] and small["frames"] == 2
    r = run("evaluate", "--model", "camvid", "--split", "val", "--limit", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr
    own = json.loads(out.read_text())
    assert own["input_hw"] == list(zoo.load("camvid")[0].cfg.input_hw)
    assert own["per_class"] != small["per_class"]  # the size changed what the network saw
    bad = run("evaluate", "--model", "camvid", "--input-size", "big")
    assert bad.returncode == 2 and "352x480" in bad.stderr and "Traceback" not in bad.stderr
