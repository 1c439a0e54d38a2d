"""`edge-gfs compile` and the node's backends, on CPU (CI has no GPU).

The CPU artifact is really built (ONNX of the exported program, ONNX Runtime), parity-checked on CamVid val
frames and run by a real node. What TensorRT consumes is tested here too: the exported program at a static
size, the sidecar, the loader's checksum / size / version checks. The TensorRT build itself is skipped, with
the reason, where CUDA or torch_tensorrt is absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from node_harness import frames_with, require_camvid, require_model, running_node

from calib import export_extractor
from calib.build import build_artifact, recheck
from calib.compile_cmd import main as compile_main
from calib.parity import check_parity, val_frames
from edge_gfs.backends.artifact import (FORMAT, ArtifactError, Sidecar, artifacts_root, cache_path, env_problems,
                                        read_sidecar, sidecar_path, verify)
from edge_gfs.backends.select import environment, select
from edge_gfs.backends.tensorrt import available as tensorrt_available
from edge_gfs.core.model import model_checksum
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.wire.client import segment_via

MODEL = "camvid-fold0"


@pytest.fixture(scope="module")
def model():
    from edge_gfs.core import zoo
    require_model(MODEL)
    return zoo.load(MODEL)[0]


@pytest.fixture(scope="module")
def data():
    return require_camvid()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An artifact cache of this module's own (EDGE_GFS_ARTIFACTS), so no test sees the user's cache."""
    root = tmp_path_factory.mktemp("artifacts")
    old = os.environ.get("EDGE_GFS_ARTIFACTS")
    os.environ["EDGE_GFS_ARTIFACTS"] = str(root)
    yield root
    if old is None:
        os.environ.pop("EDGE_GFS_ARTIFACTS", None)
    else:
        os.environ["EDGE_GFS_ARTIFACTS"] = old


@pytest.fixture(scope="module")
def built(model, data, cache):
    """`edge-gfs compile --model camvid-fold0 --target cpu` into the module's cache (parity on 4 val frames)."""
    path, side = build_artifact(model, MODEL, "cpu", check_frames=4, progress=False)
    return path, side


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_GFS_ARTIFACTS", str(tmp_path / "empty"))
    return tmp_path / "empty"


# -- what TensorRT consumes --------------------------------------------------------------------------------------
def test_exported_program_is_static_at_the_model_input_size(model):
    ep = export_extractor(model)
    user = set(ep.graph_signature.user_inputs)
    (inp,) = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    shape = tuple(inp.meta["val"].shape)
    assert shape == (1, 3, *model.cfg.input_hw) and all(isinstance(d, int) for d in shape)  # static, no SymInts
    x = torch.rand(1, 3, *model.cfg.input_hw) * 255
    with torch.no_grad():
        ref = model.extractor(x)
        out = ep.module()(x)
    h, w = model.cfg.input_hw
    assert out.shape == (1, model.cfg.dim, h // 8, w // 8)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# -- the CPU artifact ---------------------------------------------------------------------------------------------
def test_cpu_artifact_lands_in_the_cache_with_its_sidecar(model, built, cache):
    path, side = built
    assert path == cache_path(model_checksum(model), "cpu", "fp32", model.cfg.input_hw)
    assert path.is_relative_to(cache) and artifacts_root() == cache
    d = json.loads(sidecar_path(path).read_text())
    assert d["format"] == FORMAT and d["model"] == MODEL and d["model_checksum"] == model_checksum(model)
    assert d["input_hw"] == list(model.cfg.input_hw) and d["target"] == "cpu" and d["precision"] == "fp32"
    timings = d["cpu"]["timings_ms"]  # the runtime was chosen by timing both on this machine
    assert d["runtime"] == min(timings, key=timings.get) and set(timings) <= {"onnxruntime", "openvino"}
    assert d["file"] == path.name and d["cpu"]["needs_any"] == []
    assert {"torch", "onnxruntime"} <= set(d["versions"]) and d["created"]
    assert d["parity"]["passed"] and d["parity"]["frames"] == 4 and d["parity"]["split"] == "val"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_cpu_artifact_passes_parity_and_gives_eager_features(model, built):
    path, side = built
    assert side.parity["pixel_agreement_pct"] >= 99.5 and side.parity["miou_delta"] <= 0.3
    from edge_gfs.backends.cpu import load_cpu
    for runtime in ("onnxruntime", "openvino"):  # whichever the build picked, both run the file
        runner = load_cpu(path, runtime, "fp32", threads=1)
        x = torch.rand(2, 3, *model.cfg.input_hw) * 255  # batch 2 on a batch-1 graph: frame by frame
        with torch.no_grad():
            ref = model.extractor(x)
        torch.testing.assert_close(runner(x), ref, rtol=1e-3, atol=1e-3)


def test_parity_catches_a_wrong_extractor(model, data):
    frames = val_frames(2)
    wrong = check_parity(model, lambda x: model.extractor(x).flip(-1), "fp32", frames, progress=False)
    assert not wrong["passed"] and wrong["pixel_agreement_pct"] < 99.5


def test_compile_check_reruns_parity_and_updates_the_sidecar(model, built):
    path, _ = built
    parity, side = recheck(model, MODEL, path, check_frames=2, progress=False)
    assert parity["passed"] and read_sidecar(path).parity["frames"] == 2


def test_compile_command_errors_say_what_to_do(capsys, built):
    assert compile_main(["--model", MODEL, "--target", "cpu", "--precision", "fp16", "--quiet"]) == 2
    assert "use one of fp32, bf16, int8 or auto" in capsys.readouterr().err
    assert compile_main(["--model", MODEL, "--target", "tensorrt", "--precision", "bf16", "--quiet"]) == 2
    assert "use one of fp32, fp16, int8" in capsys.readouterr().err
    assert compile_main(["--model", MODEL, "--target", "cpu", "--size", "64x96", "--check", "--quiet"]) == 2
    assert "edge-gfs compile" in capsys.readouterr().err  # no artifact at that size: how to build one


# -- the loader's checks ------------------------------------------------------------------------------------------
@pytest.fixture
def copy_of(built, tmp_path):
    path, _ = built
    dst = tmp_path / "a.onnx"
    shutil.copy(path, dst)
    shutil.copy(sidecar_path(path), sidecar_path(dst))
    return dst


def _edit_sidecar(path: Path, **changes) -> Sidecar:
    d = json.loads(sidecar_path(path).read_text()) | changes
    sidecar_path(path).write_text(json.dumps(d))
    return read_sidecar(path)


@pytest.mark.parametrize("changes,expect", [
    ({"model_checksum": "f" * 64}, "other weights"),
    ({"input_hw": [360, 480]}, "takes 360x480 frames"),
])
def test_loader_refuses_a_mismatch_and_says_how_to_rebuild(model, copy_of, changes, expect):
    side = _edit_sidecar(copy_of, **changes)
    with pytest.raises(ArtifactError, match=expect) as e:
        verify(copy_of, side, MODEL, model_checksum(model), model.cfg.input_hw, environment("cpu"))
    assert "edge-gfs compile --model camvid-fold0 --target cpu" in str(e.value)


def test_loader_refuses_a_file_that_does_not_match_its_sidecar(model, copy_of):
    with open(copy_of, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match its sidecar"):
        verify(copy_of, read_sidecar(copy_of), MODEL, model_checksum(model), model.cfg.input_hw, environment("cpu"))


def test_loader_refuses_a_missing_or_foreign_sidecar(copy_of):
    sidecar_path(copy_of).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not an edge-gfs artifact sidecar"):
        read_sidecar(copy_of)
    sidecar_path(copy_of).unlink()
    with pytest.raises(ArtifactError, match="no sidecar"):
        read_sidecar(copy_of)


def test_tensorrt_engines_are_tied_to_gpu_tensorrt_and_torch_version():
    """A JetPack 6 engine (Torch-TensorRT 2.8 + TensorRT 10.3, a real pairing: backends/support.py)."""
    side = Sidecar(model=MODEL, model_checksum="0" * 64, input_hw=[192, 256], target="tensorrt", precision="fp16",
                   runtime="torch_tensorrt", file="x.pt2", file_sha256="", versions={"tensorrt": "10.3.0",
                   "torch_tensorrt": "2.8.0", "torch": "2.8.0"}, device={"gpu": "Orin", "compute_capability": "8.7"})
    same = {"tensorrt": "10.3.0", "torch_tensorrt": "2.8.0", "torch": "2.8.0", "gpu": "Orin", "compute_capability": "8.7"}
    assert env_problems(side, same) == []
    other = same | {"tensorrt": "10.7.0", "gpu": "NVIDIA H100", "compute_capability": "9.0", "torch": "2.9.0"}
    problems = " ".join(env_problems(side, other))
    assert "TensorRT version 10.3.0, here 10.7.0" in problems and "GPU Orin, here NVIDIA H100" in problems
    assert "compute capability 8.7, here 9.0" in problems and "written by torch 2.8.0, here torch 2.9.0" in problems
    assert "here none" in " ".join(env_problems(side, {}))  # no TensorRT at all


# -- the node's backend -------------------------------------------------------------------------------------------
def test_auto_is_eager_without_an_artifact_and_explicit_backends_refuse(model, empty_cache):
    b = select(model, MODEL, "auto")
    assert b.name == "eager" and b.extractor is None and "edge-gfs compile --model camvid-fold0 --target cpu" in b.note
    with pytest.raises(ArtifactError, match="edge-gfs compile --model camvid-fold0 --target cpu"):
        select(model, MODEL, "cpu")
    if not tensorrt_available()[0]:
        with pytest.raises(ArtifactError, match="--backend tensorrt needs CUDA"):
            select(model, MODEL, "tensorrt")


def test_auto_picks_the_cpu_artifact_and_engine_names_one(model, built, cache):
    path, _ = built
    assert select(model, MODEL, "auto").name == "cpu"  # (no TensorRT engine in the cache, even on a GPU)
    b = select(model, MODEL, "cpu", engine=path)
    assert b.name == "cpu" and b.artifact == path
    with pytest.raises(ArtifactError, match="is a cpu artifact, not tensorrt"):
        select(model, MODEL, "tensorrt", engine=path)
    with pytest.raises(ArtifactError, match="--backend auto"):
        select(model, MODEL, "eager", engine=path)


def test_node_runs_the_cpu_artifact_and_teaches_through_it(built, data, tmp_path):
    """`edge-gfs run --backend auto` finds the cached artifact: status says cpu, label maps match eager."""
    path, _ = built
    img, lab = data.read("val", data.names("val")[3])
    with running_node(tmp_path, MODEL, extra=("--backend", "auto")) as w:
        status = w.sub.next("status", 20)
        assert status["backend"] == "cpu", w.node.log_text()
        lm = segment_via(w.pub, w.sub, image=img)
        from edge_gfs.core import zoo
        eager = Segmenter(zoo.load(MODEL)[0]).segment([img])[0]
        assert (lm.labels == eager).mean() >= 0.995
        shot = data.read("train", frames_with(data, "train", 8, 1)[0])
        reply = w.teach.teach("Car", [(shot[0], shot[1] == 8)])
        assert reply["id"] == 8  # teaching runs the same compiled extractor
    assert "backend cpu" in w.node.log_text()


def test_node_with_engine_file(built, tmp_path):
    path, _ = built
    with running_node(tmp_path, MODEL, extra=("--backend", "cpu", "--engine", str(path))) as w:
        assert w.sub.next("status", 20)["backend"] == "cpu"
