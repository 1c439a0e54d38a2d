"""CPU bf16 and INT8 artifacts (issue 16): built by `edge-gfs compile`'s code, gated, loaded, run in a node.

Everything is real: ONNX Runtime's quantizer calibrates on CamVid train frames, ONNX Runtime and OpenVINO are
timed and run the files, the parity gate scores CamVid val frames and teaches through the quantized features,
and the node is a subprocess on loopback sockets. A precision this CPU lacks the instructions for is skipped
with the reason (the build code itself refuses it there, which is tested too).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from node_harness import cli, frames_with, require_camvid, require_model, running_node

from calib.build import build_artifact, install_artifact
from calib.compile_cmd import main as compile_main
from calib.parity import GATES, ParityError, check_parity, val_frames
from calib.quantize import Recipe, conv_nodes
from edge_gfs.backends import cpu_features
from edge_gfs.backends.artifact import ArtifactError, read_sidecar, sidecar_path
from edge_gfs.backends.cpu import load_cpu
from edge_gfs.backends.select import environment, select
from edge_gfs.core.model import model_checksum
from edge_gfs.wire.client import segment_via

MODEL = "camvid-fold0"
INTEL = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile\nbogomips\t: 4000\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp bf16 i8mm\n"


def needs(precision: str):
    """Skip (with the reason) where this CPU cannot run `precision` well; the build refuses it there too."""
    return pytest.mark.skipif(not cpu_features.supports(precision),
                              reason=f"this CPU has none of {cpu_features.NEEDS_ANY[precision]}")


@pytest.fixture(scope="module")
def model():
    from edge_gfs.core import zoo
    require_model(MODEL)
    require_camvid()
    return zoo.load(MODEL)[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_GFS_ARTIFACTS", str(root))
        yield root


@pytest.fixture(scope="module")
def int8(model, cache):
    if not cpu_features.supports("int8"):
        pytest.skip(f"this CPU has none of {cpu_features.NEEDS_ANY['int8']}")
    return build_artifact(model, MODEL, "cpu", "int8", check_frames=4, progress=False)


@pytest.fixture(scope="module")
def bf16(model, cache):
    if not cpu_features.supports("bf16"):
        pytest.skip(f"this CPU has none of {cpu_features.NEEDS_ANY['bf16']}")
    return build_artifact(model, MODEL, "cpu", "bf16", check_frames=4, progress=False)


# -- CPU features (pure) ------------------------------------------------------------------------------------------
def test_cpu_flags_are_read_from_cpuinfo_on_x86_and_arm():
    assert {"avx512_vnni", "amx_int8"} <= cpu_features.parse_flags(INTEL)
    assert cpu_features.parse_flags(ARM) == {"fp", "asimd", "asimddp", "bf16", "i8mm"}
    assert cpu_features.parse_flags("no flags here") == frozenset()


def test_precisions_follow_the_instructions_the_cpu_has():
    intel, old = cpu_features.parse_flags(INTEL), cpu_features.parse_flags(OLD_X86)
    assert all(cpu_features.supports(p, intel) for p in ("fp32", "bf16", "int8"))
    assert cpu_features.supports("fp32", old) and not cpu_features.supports("int8", old)
    assert not cpu_features.supports("bf16", old)
    assert cpu_features.missing(["avx512_vnni", "amx_int8"], intel) is None
    why = cpu_features.missing(["avx512_vnni", "avx_vnni", "amx_int8"], old)
    assert "avx512_vnni or avx_vnni or amx_int8" in why and "none of them" in why
    assert cpu_features.missing([], old) is None


def test_compile_refuses_a_precision_the_cpu_cannot_run_well():
    from calib.cpu import check_runnable
    old = cpu_features.parse_flags(OLD_X86)
    assert check_runnable("fp32", old)  # always
    for precision in ("int8", "bf16"):
        with pytest.raises(ArtifactError, match="--precision fp32 \\(or auto\\), or compile on the CPU that will run it"):
            check_runnable(precision, old)
    assert "openvino" in check_runnable("bf16", cpu_features.parse_flags(INTEL))


# -- INT8 ---------------------------------------------------------------------------------------------------------
@needs("int8")
def test_int8_artifact_is_quantized_gated_and_records_what_it_needs(model, int8, cache):
    path, side = int8
    assert path.name == f"cpu-int8-{model.cfg.input_hw[0]}x{model.cfg.input_hw[1]}.onnx" and path.is_relative_to(cache)
    d = json.loads(sidecar_path(path).read_text())
    assert d["precision"] == "int8" and d["cpu"]["needs_any"] == list(cpu_features.NEEDS_ANY["int8"])
    assert set(d["cpu"]["features"]) & set(cpu_features.NEEDS_ANY["int8"])  # what this CPU had
    timings = d["cpu"]["timings_ms"]
    assert d["runtime"] == min(timings, key=timings.get)
    q = d["cpu"]["quantization"]
    assert q["calibration_frames"] == 64 and q["quantized_convs"] == q["convs"] - 1 == len(conv_nodes(path)) - 1 > 50
    import onnx
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > ops.count("Conv")
    parity = d["parity"]
    assert parity["passed"] and parity["thresholds"] == GATES["int8"].to_dict()
    assert parity["taught"]["classes"] == ["Car", "Pedestrian", "Bicyclist"] and "novel_miou_eager" in parity["taught"]
    assert parity["taught"]["loss"] <= 1.0 and min(parity["class_iou_change"].values()) >= -2.0
    assert q["excluded_nodes"] == conv_nodes(path)[:1]  # the shipped recipe keeps the first convolution in fp32


@needs("int8")
def test_int8_features_track_fp32_on_both_runtimes(model, int8):
    path, _ = int8
    x = torch.rand(1, 3, *model.cfg.input_hw) * 255
    with torch.no_grad():
        ref = model.extractor(x)
    for runtime in ("onnxruntime", "openvino"):
        y = load_cpu(path, runtime, "int8", threads=1)(x)
        cos = torch.nn.functional.cosine_similarity(y, ref, dim=1)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        assert float(cos.median()) > 0.98 and float((y - ref).abs().max()) > 1e-3  # close, and really quantized


def test_a_compile_below_its_gate_fails_loudly_and_installs_nothing(model, cache):
    """Percentile calibration clipped at the 50th percentile: activations saturate, labels collapse."""
    if not cpu_features.supports("int8"):
        pytest.skip("no INT8 instructions on this CPU")
    dest = cache / "bad-int8.onnx"
    with pytest.raises(ParityError, match="FAIL") as e:
        build_artifact(model, MODEL, "cpu", "int8", out=dest, check_frames=4, progress=False,
                       recipe=Recipe("percentile", percentile=50.0))
    assert "was not installed" in str(e.value)
    assert not dest.exists() and not sidecar_path(dest).exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp file left either


def test_the_gate_checks_classes_and_teaching_for_low_precision(model):
    """A shifted extractor keeps most pixels of big classes but must fail the bf16/int8 gate's extra checks."""
    def shifted(x):
        return torch.roll(model.extractor(x), shifts=1, dims=-1)
    r = check_parity(model, shifted, "int8", val_frames(2), progress=False)
    assert not r["passed"] and "taught" in r and r["worst_class"] in model.cfg.class_names
    assert set(r["thresholds"]) == {"min_pixel_agreement_pct", "max_miou_loss", "max_class_iou_loss",
                                    "max_taught_miou_loss"}
    fp32 = check_parity(model, model.extractor, "fp32", val_frames(2), progress=False)
    assert fp32["passed"] and "taught" not in fp32 and fp32["pixel_agreement_pct"] == 100.0


# -- bf16 ---------------------------------------------------------------------------------------------------------
@needs("bf16")
def test_bf16_artifact_runs_openvino_in_bf16_and_passes_its_gate(model, bf16):
    path, side = bf16
    assert side.precision == "bf16" and side.runtime == "openvino" and side.parity["passed"]
    assert side.cpu["needs_any"] == list(cpu_features.NEEDS_ANY["bf16"]) and "taught" in side.parity
    runner = load_cpu(path, side.runtime, side.precision, threads=1)
    import openvino as ov
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16  # as compiled, not just asked
    x = torch.rand(1, 3, *model.cfg.input_hw) * 255
    with torch.no_grad():
        ref = model.extractor(x)
    y = runner(x)
    assert float(torch.nn.functional.cosine_similarity(y, ref, dim=1).median()) > 0.995
    assert not torch.equal(y, ref) and float((y - ref).abs().max()) > 1e-3  # bf16 arithmetic, not fp32


# -- the node ------------------------------------------------------------------------------------------------------
@needs("int8")
def test_node_runs_the_int8_artifact_and_teaches_a_class_through_it(model, int8, tmp_path):
    """`edge-gfs run --backend auto` finds the INT8 artifact; a class taught over the wire then appears."""
    data = require_camvid()
    path, _ = int8
    with running_node(tmp_path, MODEL, extra=("--backend", "auto")) as w:
        status = w.sub.next("status", 30)
        assert status["backend"] == "cpu", w.node.log_text()
        names = frames_with(data, "train", 8, 5)
        shots = [(img, lab == 8) for img, lab in (data.read("train", n) for n in names)]
        reply = w.teach.teach("Car", shots)
        assert reply["id"] == 8
        img, lab = data.read("val", frames_with(data, "val", 8, 1)[0])
        lm = segment_via(w.pub, w.sub, image=img)
        cars = lm.labels == 8
        assert cars.sum() > 1000  # the taught class is segmented
        assert (cars & (lab == 8)).sum() / max(1, (cars | (lab == 8)).sum()) > 0.3  # where the cars are
    log = w.node.log_text()
    assert "backend cpu" in log and "int8" in log


@needs("bf16")
def test_node_runs_the_bf16_artifact(model, bf16, tmp_path):
    path, _ = bf16
    with running_node(tmp_path, MODEL, extra=("--backend", "cpu", "--engine", str(path))) as w:
        assert w.sub.next("status", 30)["backend"] == "cpu", w.node.log_text()
        data = require_camvid()
        lm = segment_via(w.pub, w.sub, image=data.read("val", data.names("val")[5])[0])
        assert lm.labels.shape == (360, 480) and len(np.unique(lm.labels)) >= 4


# -- refusing a missing instruction set ---------------------------------------------------------------------------
@needs("int8")
def test_node_refuses_an_artifact_built_for_instructions_this_cpu_lacks(model, int8, tmp_path):
    """A sidecar, written by the build code's install step, naming an instruction this CPU does not have
    (Arm's SME2, which no x86 CPU has): the loader and the node refuse it and say what to run."""
    src, side = int8
    dest = tmp_path / "foreign-int8.onnx"
    tmp = tmp_path / ".foreign.tmp"
    shutil.copy(src, tmp)
    side.cpu = side.cpu | {"needs_any": ["sme2"]}
    side.device = {"cpu": "Apple M4"}
    install_artifact(tmp, dest, side)
    assert read_sidecar(dest).cpu["needs_any"] == ["sme2"]
    with pytest.raises(ArtifactError, match="needs a CPU with sme2") as e:
        select(model, MODEL, "cpu", engine=dest)
    assert "built on a Apple M4" in str(e.value) and "--precision auto" in str(e.value)
    env = environment("cpu") | {"cpu_flags": frozenset(cpu_features.parse_flags(OLD_X86))}
    from edge_gfs.backends.artifact import env_problems
    assert "avx512_vnni or avx_vnni or amx_int8" in " ".join(env_problems(read_sidecar(src), env))
    r = cli("run", "--model", MODEL, "--backend", "cpu", "--engine", str(dest), "--state", str(tmp_path / "s"),
            timeout=120)
    assert r.returncode != 0 and "needs a CPU with sme2" in r.stderr


# -- auto ---------------------------------------------------------------------------------------------------------
def test_compile_auto_installs_the_fastest_precision_that_passes(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_GFS_ARTIFACTS", str(tmp_path / "auto"))
    assert compile_main(["--model", MODEL, "--target", "cpu", "--precision", "auto", "--check-frames", "2",
                         "--quiet"]) == 0
    out = capsys.readouterr().out
    (art,) = (tmp_path / "auto").rglob("cpu-*.onnx")
    side = read_sidecar(art)
    auto = side.cpu["auto"]
    passed = {t["precision"]: t["median_ms"] for t in auto["tried"] if t["passed"]}
    assert auto["chosen"] == side.precision == min(passed, key=passed.get)
    runnable = {p for p in ("int8", "bf16", "fp32") if cpu_features.supports(p)}
    assert {t["precision"] for t in auto["tried"]} == runnable and set(auto["skipped"]) == {"int8", "bf16", "fp32"} - runnable
    assert f"auto tried {side.precision}" in out and model_checksum(model)[:16] in str(art)
    assert compile_main(["--model", MODEL, "--target", "cpu", "--precision", "auto", "--check-frames", "0"]) == 2
    assert "--check-frames > 0" in capsys.readouterr().err


def test_a_forced_runtime_must_be_able_to_run_the_precision(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_GFS_ARTIFACTS", str(tmp_path))
    if not cpu_features.supports("bf16"):
        pytest.skip("no bf16 instructions on this CPU")
    assert compile_main(["--model", MODEL, "--target", "cpu", "--precision", "bf16", "--runtime", "onnxruntime",
                         "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--runtime onnxruntime cannot run --precision bf16" in err and "it can: openvino" in err
    assert not list(tmp_path.rglob("*.onnx"))
