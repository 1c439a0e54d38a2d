"""The TensorRT path up to the GPU boundary, on CPU (CI has no GPU; torch_tensorrt cannot be installed here).

What runs for real: the support matrix against the constraints files and pyproject; the compile settings per
Torch-TensorRT release; ModelOpt's INT8 quantization and the export of the INT8 program (ModelOpt's CUDA
kernels are stood in for by its own CPU emulation: a library kernel missing on a machine without CUDA, not our
code); the engine-precision check on TensorRT's inspector format; the `.pt2` artifact and its sidecar written
by the build code and opened by the node's loader, with its version, GPU and torch refusals. The stand-in for
an engine is the exported program itself saved as `.pt2` (the format torch_tensorrt.save writes, without the
TensorRT op). What needs a GPU is in the skipped tests at the end, each naming what it checks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections import Counter

import pytest
import torch
from node_harness import REPO, require_camvid, require_model

from calib import export_extractor
from calib import tensorrt as trt
from calib.build import calibration_batches, install_artifact
from edge_gfs.backends import support
from edge_gfs.backends.artifact import ArtifactError, Sidecar, cached, file_sha256, now_iso
from edge_gfs.backends.select import open_artifact, select
from edge_gfs.backends.tensorrt import available as tensorrt_available
from edge_gfs.backends.tensorrt import sidecar_fields
from edge_gfs.core.model import model_checksum

MODEL = "camvid-fold0"


@pytest.fixture(scope="module")
def model():
    from edge_gfs.core import zoo
    require_model(MODEL)
    return zoo.load(MODEL)[0]


def row_env(p: support.Platform, gpu: str = "NVIDIA Jetson AGX Orin", cc: str = "8.7") -> dict:
    """This machine's torch, with one matrix row's Torch-TensorRT / TensorRT / GPU: what environment() returns there."""
    return {"torch": torch.__version__, "torch_tensorrt": f"{p.torch_tensorrt}.0", "tensorrt": f"{p.tensorrt}.0",
            "cuda": p.cuda, "gpu": gpu, "compute_capability": cc}


# -- the support matrix -------------------------------------------------------------------------------------------
def test_matrix_rows_are_real_pairings_and_wrong_ones_are_named():
    for p in support.MATRIX:
        env = {"torch": f"{p.torch}.0", "torch_tensorrt": f"{p.torch_tensorrt}.0", "tensorrt": f"{p.tensorrt}.0"}
        assert support.pairing_problems(env) == [] and p in support.rows_for(env)
    # the combination an old test fixture used: TensorRT 10.3 (JetPack 6) with torch_tensorrt 2.14
    bad = support.pairing_problems({"torch": "2.14.1", "torch_tensorrt": "2.14.0", "tensorrt": "10.3.0"})
    assert bad == ["torch_tensorrt 2.14 pairs with TensorRT 11.1, but TensorRT is 10.3.0"]
    bad = support.pairing_problems({"torch": "2.14.1+cu130", "torch_tensorrt": "2.8.0", "tensorrt": "10.3.0"})
    assert bad == ["torch_tensorrt 2.8.0 is built for torch 2.8, but torch is 2.14.1+cu130"]
    assert support.pairing_problems({"torch": "2.14.1"}) == ["torch_tensorrt is not installed"]
    assert "none of the supported platforms" in support.describe({"torch": "2.9.0", "torch_tensorrt": "2.9.0"})


def test_docs_constraints_and_pyproject_agree_with_the_matrix():
    assert support.markdown_table() in (REPO / "docs" / "compile.md").read_text()
    for p in support.MATRIX:
        pins = dict(re.findall(r"^([\w-]+)==([\w.+]+)", (REPO / "constraints" / p.constraints).read_text(), re.M))
        assert support.minor(pins["torch"]) == p.torch and support.minor(pins["torchvision"]) == p.torchvision
        assert support.minor(pins["torch-tensorrt"]) == p.torch_tensorrt
        assert f"constraints/{p.constraints}" in p.install
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lowest = min(support.MATRIX, key=lambda p: tuple(map(int, p.torch.split("."))))
    assert f"torch>={lowest.torch}" in meta["dependencies"]  # the runtime pins nothing tighter than the lowest row
    assert not [d for d in meta["dependencies"] if d.startswith("torch") and "==" in d]
    trt_extra = meta["optional-dependencies"]["tensorrt"]
    assert "requests" in trt_extra  # ModelOpt imports it without declaring it
    ci = (REPO / "constraints" / "ci-cpu.txt").read_text()
    assert re.search(r"^torch==2\.\d+\.\d+$", ci, re.M) and "-c constraints/ci-cpu.txt" in (REPO / ".ci" / "run").read_text()
    lower = (REPO / "constraints" / "lower-bound.txt").read_text()
    assert f"torch=={lowest.torch}.0" in lower


# -- compile settings ---------------------------------------------------------------------------------------------
def test_precision_settings_follow_the_release_not_a_signature_guess():
    auto = {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    assert trt.precision_settings("fp16", "2.14.0") == auto
    assert trt.precision_settings("int8", "2.14.0") == auto  # QDQ convs int8, the rest fp16 (was: all fp32)
    assert trt.precision_settings("fp16", "2.8.0") == {"enabled_precisions": {torch.float16}}
    assert trt.precision_settings("int8", "2.8.0") == {"enabled_precisions": {torch.float16, torch.int8}}
    assert trt.precision_settings("fp32", "2.14.0") == {}

    def compile_2_14(exported_program, inputs=None, *, enable_autocast=False, autocast_low_precision_type=None,
                     **kwargs):  # the shape of torch_tensorrt 2.14's dynamo.compile: unknown kwargs swallowed
        return kwargs

    assert trt.checked_settings(auto, compile_2_14) == auto
    with pytest.raises(RuntimeError, match="does not take enabled_precisions"):
        trt.checked_settings(trt.precision_settings("fp16", "2.8.0"), compile_2_14)


# -- INT8: the exported program ModelOpt produces -----------------------------------------------------------------
def test_modelopt_import_error_is_the_real_one():
    """A dependency ModelOpt needs but does not declare (requests, in 0.47.0) must not read as 'install ModelOpt'."""
    code = ("import sys; sys.modules['requests'] = None\n"  # as on a clean install without requests
            "from calib.tensorrt import import_modelopt\n"
            "try:\n    import_modelopt()\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "installed but does not import" in out.stdout and "requests" in out.stdout, out.stdout + out.stderr
    assert "pip install nvidia-modelopt" not in out.stdout


@pytest.fixture(scope="module")
def modelopt_on_cpu():
    """ModelOpt's CUDA kernel stood in for by its own CPU emulation: a library kernel missing on a machine
    without CUDA, not our code (calib/modelopt_emulation.py says exactly what is replaced)."""
    pytest.importorskip("modelopt.torch.quantization", reason="pip install -e '.[dev]' (nvidia-modelopt)")
    from calib.modelopt_emulation import on_cpu
    with on_cpu():
        yield


@pytest.fixture(scope="module")
def int8_program(model, modelopt_on_cpu):
    require_camvid()
    hw = (96, 128)  # small: the emulation is slow; the flow is the same at any static size
    batches = calibration_batches("camvid", hw, count=4)
    return hw, trt.quantized_program(model, hw, batches, device="cpu")


def test_int8_program_has_qdq_nodes_and_tracks_the_fp32_features(model, int8_program, tmp_path):
    hw, ep = int8_program
    targets = Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
    quant = targets["tensorrt.quantize_op.default"]  # the op Torch-TensorRT converts to TensorRT Q/DQ layers
    convs = sum(c for t, c in targets.items() if "conv" in t)
    assert convs > 20 and quant >= 2 * convs  # the input and the weight of every convolution
    x = calibration_batches("camvid", hw, count=6)[5]  # a train frame not among the 4 calibrated on
    net = ep.module()
    with torch.no_grad():
        ref = model.extractor(x)
        out = net(x)
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert out.shape == ref.shape and 0.9 < cos < 0.99999  # quantized (not identical), and close
    from calib.parity import GATES, check_parity, val_frames
    from edge_gfs.core.model import at_size
    gate = check_parity(at_size(model, hw), net, "int8", val_frames(2), progress=False)
    # the int8 gate's thresholds; at this toy size and 4 calibration frames agreement is lower than the 99.33% of
    # the model's own size (bench/int8_gate.py), but a broken program is far below 90 (a flipped map: ~50)
    assert gate["thresholds"] == GATES["int8"].to_dict() and "taught" in gate  # the INT8 gate, teaching included
    assert gate["pixel_agreement_pct"] > 90, gate
    path = tmp_path / "int8.pt2"
    torch.export.save(ep, str(path))  # the .pt2 archive torch_tensorrt.save also writes
    again = torch.export.load(str(path)).module()
    with torch.no_grad():
        torch.testing.assert_close(again(x), out)


# -- the built engine's precision ---------------------------------------------------------------------------------
def _inspector(*datatypes: str) -> dict:
    """TensorRT's engine-inspector JSON at ProfilingVerbosity.DETAILED (the fields we read)."""
    return {"Layers": [{"Name": f"layer{i}", "LayerType": "CaskConvolution",
                        "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP32"}],
                        "Outputs": [{"Name": f"y{i}", "Format/Datatype": d}]} for i, d in enumerate(datatypes)],
            "Bindings": ["x", "y"]}


FP16 = "Channel major FP16 format where channel % 8 == 0"
INT8 = "Thirty-two wide channel vectorized row major Int8 format"
FP32 = "Row major linear FP32"


def test_engine_precision_is_read_back_and_a_mislabelled_engine_refused():
    assert trt.layer_datatypes(_inspector(FP16, FP16, INT8, FP32)) == Counter(fp16=2, int8=1, fp32=1)
    assert trt.layer_datatypes({"Layers": ["conv1", "conv2"], "Bindings": []}) is None  # names only
    fp32_engine = trt.layer_datatypes(_inspector(FP32, FP32))
    assert "no layer runs in fp16" in trt.precision_problems("fp16", fp32_engine, torch.float32)[0]
    assert "no layer runs in int8" in trt.precision_problems("int8", trt.layer_datatypes(_inspector(FP16)), None)[0]
    assert trt.precision_problems("fp16", trt.layer_datatypes(_inspector(FP16, FP32)), torch.float16) == []
    assert trt.precision_problems("int8", trt.layer_datatypes(_inspector(INT8, FP16)), torch.float16) == []
    assert trt.precision_problems("fp32", fp32_engine, torch.float32) == []
    assert len(trt.precision_problems("fp32", trt.layer_datatypes(_inspector(FP16)), torch.float16)) == 2
    assert "only layer names" in trt.precision_problems("fp16", None, torch.float16)[0]


# -- the artifact: written by the build code, opened by the node's loader -----------------------------------------
@pytest.fixture(scope="module")
def engine_artifact(model, tmp_path_factory):
    """A TensorRT artifact as calib/build.py installs it, with the program itself as the engine stand-in."""
    hw = tuple(model.cfg.input_hw)
    row = support.MATRIX[1]  # jetpack6
    env = row_env(row)
    tmp = tmp_path_factory.mktemp("engine") / ".staging.pt2"
    torch.export.save(export_extractor(model, hw), str(tmp))
    dest = tmp.with_name("tensorrt-fp16-%dx%d.pt2" % hw)
    versions, device = sidecar_fields(env)
    side = Sidecar(model=MODEL, model_checksum=model_checksum(model), input_hw=list(hw), target="tensorrt",
                   precision="fp16", runtime="torch_tensorrt", file=dest.name, file_sha256=file_sha256(tmp),
                   versions=versions, device=device, created=now_iso(), engine={"layer_datatypes": {"fp16": 90}},
                   platform=row.key)
    install_artifact(tmp, dest, side)
    return dest, env


def test_sidecar_records_versions_and_never_the_string_none(engine_artifact):
    dest, env = engine_artifact
    d = json.loads(dest.with_name(dest.name + ".json").read_text())
    assert d["versions"] == {"torch": torch.__version__, "tensorrt": "10.3.0", "torch_tensorrt": "2.8.0", "cuda": "12.6"}
    assert d["device"] == {"gpu": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"} and d["platform"] == "jetpack6"
    versions, _ = sidecar_fields({"torch": "2.14.1", "tensorrt": None, "cuda": None})
    assert versions == {"torch": "2.14.1"} and "None" not in json.dumps(versions)


def test_node_loader_opens_the_engine_artifact_where_it_was_built(model, engine_artifact):
    dest, env = engine_artifact
    side, runner = open_artifact(dest, MODEL, model_checksum(model), tuple(model.cfg.input_hw), env=env, device="cpu")
    assert side.precision == "fp16" and side.file == dest.name
    x = torch.rand(2, 3, *model.cfg.input_hw) * 255
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model.extractor(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change,expect", [
    ({"tensorrt": "10.7.0"}, "built with TensorRT version 10.3.0, here 10.7.0"),
    ({"torch_tensorrt": "2.14.0"}, "built with Torch-TensorRT version 2.8.0, here 2.14.0"),
    ({"gpu": "NVIDIA H200", "compute_capability": "9.0"}, "built for GPU NVIDIA Jetson AGX Orin, here NVIDIA H200"),
    ({"torch": "2.99.0"}, f"written by torch {torch.__version__}, here torch 2.99.0"),
])
def test_node_loader_refuses_an_engine_from_elsewhere(model, engine_artifact, change, expect):
    dest, env = engine_artifact
    with pytest.raises(ArtifactError, match=re.escape(expect)) as e:
        open_artifact(dest, MODEL, model_checksum(model), tuple(model.cfg.input_hw), env=env | change, device="cpu")
    assert "edge-gfs compile --model camvid-fold0 --target tensorrt" in str(e.value) and "on this device" in str(e.value)


def test_on_a_machine_without_cuda_the_engine_is_refused_with_the_cpu_route(model, engine_artifact):
    if tensorrt_available()[0]:
        pytest.skip("this machine has CUDA and torch_tensorrt")
    dest, _ = engine_artifact
    with pytest.raises(ArtifactError, match="is a TensorRT engine but .*--target cpu"):
        select(model, MODEL, "auto", engine=dest)
    assert dest.suffix == ".pt2" and cached(model_checksum(model), "tensorrt") == []  # (not in the cache: --out)


def test_cuda_backend_needs_a_cuda_device(model):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bench/gpu_smoke.py measures the cuda backend")
    with pytest.raises(ArtifactError, match="--backend cuda needs a CUDA device"):
        select(model, MODEL, "cuda")


# -- on a GPU ---------------------------------------------------------------------------------------------------------
GPU_SKIP = ("needs CUDA and torch_tensorrt ({why}); on a GPU this builds the {precision} engine with the build code, "
            "reads its layer precisions back ({expect}), checks parity on 4 val frames, saves .pt2 + sidecar and "
            "opens it through the node's loader in this process. bench/gpu_smoke.py does more (fresh process, two "
            "threads, fps)")


@pytest.mark.parametrize("precision,expect", [("fp16", "fp16 layers, no int8"), ("int8", "int8 layers")])
def test_tensorrt_engine_on_a_gpu(model, tmp_path, precision, expect):
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(GPU_SKIP.format(why=why, precision=precision, expect=expect))
    require_camvid()
    from calib.build import build_artifact
    path, side = build_artifact(model, MODEL, "tensorrt", precision, out=tmp_path / f"e-{precision}.pt2",
                                check_frames=4, progress=False)
    assert side.parity["passed"] and side.engine["layer_datatypes"].get(precision, 0) > 0
    open_artifact(path, MODEL, model_checksum(model), tuple(model.cfg.input_hw))
