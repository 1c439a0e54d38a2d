"""Compiled artifacts on disk: where they live, the JSON sidecar beside each, and the checks before use.

An artifact is only valid for the exact weights, input size, target and (for TensorRT) GPU and TensorRT
version it was built with. The sidecar records all of that plus the parity results, and `verify` refuses a
mismatch with a message that says which command rebuilds it, because a silently stale engine would give
wrong label maps with no error anywhere.

Layout: $EDGE_GFS_ARTIFACTS (default $XDG_CACHE_HOME/edge-gfs/artifacts, else ~/.cache/edge-gfs/artifacts)
/ <first 16 hex of the model checksum> / <target>-<precision>-<H>x<W>.<onnx|pt2>, sidecar = artifact + ".json".
TensorRT engines are torch.export archives (`.pt2`, what torch 2.14 wants; `.ep` it warns about).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_gfs.backends.cpu_features import missing
from edge_gfs.core.files import atomic_write_text

FORMAT = "edge-gfs-artifact/1"
TARGETS = ("cpu", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # fp16: TensorRT; bf16: CPU (OpenVINO)
SUFFIX = {"cpu": ".onnx", "tensorrt": ".pt2"}


class ArtifactError(Exception):
    """An artifact that cannot be used here; the message says what to run instead."""


def artifacts_root() -> Path:
    env = os.environ.get("EDGE_GFS_ARTIFACTS")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edge-gfs" / "artifacts"


def cache_path(checksum: str, target: str, precision: str, input_hw: tuple[int, int]) -> Path:
    """Where `edge-gfs compile` without --out writes, and where `edge-gfs run --backend auto` looks."""
    h, w = input_hw
    return artifacts_root() / checksum[:16] / f"{target}-{precision}-{h}x{w}{SUFFIX[target]}"


def cached(checksum: str, target: str) -> list[Path]:
    """Artifacts of one target for one model in the cache, newest first."""
    folder = artifacts_root() / checksum[:16]
    found = [p for p in folder.glob(f"{target}-*{SUFFIX[target]}") if sidecar_path(p).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: sidecar_path(p).stat().st_mtime, reverse=True)


def sidecar_path(artifact: Path) -> Path:
    return Path(str(artifact) + ".json")


def size_text(input_hw: tuple[int, int] | list[int]) -> str:
    return f"{input_hw[0]}x{input_hw[1]}"


def compile_command(model_name: str, target: str, input_hw: tuple[int, int] | list[int] | None = None,
                    precision: str | None = None) -> str:
    """The command that (re)builds an artifact, for error messages."""
    cmd = f"edge-gfs compile --model {model_name} --target {target}"
    if input_hw is not None:
        cmd += f" --size {size_text(input_hw)}"
    if precision and precision != "fp32":
        cmd += f" --precision {precision}"
    return cmd


@dataclass
class Sidecar:
    """What an artifact was built from and for; written next to it as JSON."""

    model: str
    model_checksum: str
    input_hw: list[int]
    target: str
    precision: str
    runtime: str  # what runs it: onnxruntime, openvino, torch_tensorrt
    file: str  # the artifact's file name (the sidecar sits beside it)
    file_sha256: str
    versions: dict[str, str]
    device: dict[str, str | int | float] = field(default_factory=dict)  # CPU model or GPU name + compute capability
    created: str = ""
    parity: dict | None = None
    engine: dict | None = None  # TensorRT: layers per precision and output dtype, read back from the engine
    platform: str | None = None  # TensorRT: the support-matrix row it was built on (backends/support.py)
    cpu: dict | None = None  # CPU: this CPU's features, what the artifact needs (needs_any), timings, runtime chosen
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict, where: Path) -> "Sidecar":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(f"{where} is not an edge-gfs artifact sidecar (expected format {FORMAT}, got "
                                f"{d.get('format') if isinstance(d, dict) else type(d).__name__}): rebuild it with "
                                f"edge-gfs compile")
        optional = ("device", "created", "parity", "engine", "platform", "cpu")
        missing = [k for k in cls.__dataclass_fields__ if k not in d and k not in optional]
        if missing:
            raise ArtifactError(f"{where} lacks {', '.join(missing)}: rebuild it with edge-gfs compile")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sidecar(artifact: Path, sidecar: Sidecar) -> Path:
    path = sidecar_path(artifact)
    atomic_write_text(path, sidecar.to_json())
    return path


def read_sidecar(artifact: Path) -> Sidecar:
    path = sidecar_path(artifact)
    if not Path(artifact).is_file():
        raise ArtifactError(f"no artifact at {artifact}: build one with edge-gfs compile")
    if not path.is_file():
        raise ArtifactError(f"{artifact} has no sidecar {path.name} (what it was built for is unknown): rebuild "
                            f"it with edge-gfs compile")
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path} ({e}): rebuild the artifact with edge-gfs compile") from e
    return Sidecar.from_dict(d, path)


def verify(artifact: Path, sidecar: Sidecar, model_name: str, checksum: str, input_hw: tuple[int, int],
           env: dict[str, str | int | float | None]) -> None:
    """Raise ArtifactError unless this artifact is for these weights, this size and this machine."""
    redo = compile_command(model_name, sidecar.target, input_hw, sidecar.precision)
    if sidecar.model_checksum != checksum:
        raise ArtifactError(f"{artifact} was compiled for other weights ({sidecar.model} "
                            f"{sidecar.model_checksum[:12]}, this model is {checksum[:12]}): re-run {redo}")
    if list(sidecar.input_hw) != list(input_hw):
        raise ArtifactError(f"{artifact} takes {size_text(sidecar.input_hw)} frames but the node feeds the model's "
                            f"input size {size_text(input_hw)}: re-run {redo}")
    if file_sha256(artifact) != sidecar.file_sha256:
        raise ArtifactError(f"{artifact} does not match its sidecar (changed or half-written): re-run {redo}")
    problems = env_problems(sidecar, env)
    if problems:
        if sidecar.target == "cpu" and sidecar.precision != "fp32":  # auto picks what this CPU runs well
            redo = compile_command(model_name, "cpu", input_hw, "auto")
        where = " on this device" if sidecar.target == "tensorrt" else ""
        tail = " (it builds the engine there from the .pt model: an engine never crosses machines or torch versions)" if where else ""
        raise ArtifactError(f"{artifact} cannot run here: {'; '.join(problems)}: re-run {redo}{where}{tail}")


def env_problems(sidecar: Sidecar, env: dict) -> list[str]:
    """What differs between where an artifact was built and here. A pure function of (sidecar, env).

    TensorRT engines are tied to the GPU model (compute capability) and the TensorRT version, so those must
    match exactly; the engine travels in a torch.export archive, which only the torch release that wrote it is
    sure to read, so torch must match too (local build tags such as +cu130 aside). An ONNX file is portable: it
    needs its runtime, and a bf16 or INT8 one a CPU with the instructions it was built for (env["cpu_flags"]:
    the flags of /proc/cpuinfo; sidecar.cpu["needs_any"]).
    """
    problems: list[str] = []
    if sidecar.target == "tensorrt":
        have, built = env.get("torch"), sidecar.versions.get("torch")
        if (have or "").split("+")[0] != (built or "").split("+")[0]:
            problems.append(f"its torch.export archive was written by torch {built}, here torch {have or 'none'}")
        for key, what in (("tensorrt", "TensorRT version"), ("torch_tensorrt", "Torch-TensorRT version")):
            have, built = env.get(key), sidecar.versions.get(key)
            if have != built:
                problems.append(f"built with {what} {built}, here {have or 'none'}")
        for key, what in (("gpu", "GPU"), ("compute_capability", "compute capability")):
            have, built = env.get(key), sidecar.device.get(key)
            if have != built:
                problems.append(f"built for {what} {built}, here {have or 'none'}")
    else:
        runtime = sidecar.runtime
        if not env.get(runtime):
            problems.append(f"its runtime {runtime} is not installed (pip install -e .)")
        needs = (sidecar.cpu or {}).get("needs_any") or []
        why = missing(needs, frozenset(env.get("cpu_flags") or ()))
        if why:
            problems.append(f"this {sidecar.precision} artifact was built on a {(sidecar.device or {}).get('cpu', 'CPU')} "
                            f"and {why}")
    return problems
