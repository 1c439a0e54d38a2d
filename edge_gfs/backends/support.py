"""The platforms the TensorRT path supports, as data: the table docs/compile.md shows and the checks use.

Why encode it: Torch-TensorRT is built against one torch minor release and one TensorRT minor release, and a
mismatch fails deep inside an import or a build, with an error that names neither. `edge-gfs compile --target
tensorrt` checks the machine against this table first and says which row it is and how to install it; the
sidecar records the row, so an engine's provenance is readable without a Python shell.

Each row pins what its vendor pairs (Torch-TensorRT's release notes and its JetPack guide); the installable
pins are in constraints/<row>.txt. edge-gfs itself needs only `torch>=2.8` (pyproject.toml): the lowest row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    key: str
    name: str
    machine: str  # x86_64 | aarch64
    torch: str  # major.minor
    torchvision: str
    torch_tensorrt: str
    tensorrt: str  # major.minor
    cuda: str
    python: str
    constraints: str  # the pins, under constraints/
    install: str  # the route, one line (docs/compile.md has the steps)
    tested: str  # what has run on it, honestly


MATRIX: tuple[Platform, ...] = (
    Platform("cuda13", "desktop / data-centre GPU, CUDA 13 (driver >= 580)", "x86_64", torch="2.14",
             torchvision="0.29", torch_tensorrt="2.14", tensorrt="11.1", cuda="13.0", python="3.10-3.13", constraints="cuda13.txt",
             install="pip install -e '.[tensorrt]' -c constraints/cuda13.txt --extra-index-url https://pypi.nvidia.com",
             tested="CPU checks here (export, INT8 program by ModelOpt emulation, sidecar round trip); "
                    "pip resolves the pins (dry run); no CUDA machine was at hand"),
    Platform("jetpack6", "Jetson Orin, JetPack 6.2 (L4T r36.4)", "aarch64", torch="2.8", torchvision="0.23",
             torch_tensorrt="2.8", tensorrt="10.3", cuda="12.6", python="3.10", constraints="jetpack6.txt",
             install="pip install -e '.[tensorrt]' -c constraints/jetpack6.txt --extra-index-url "
                     "https://pypi.jetson-ai-lab.dev/jp6/cu126",
             tested="the code's lower bound (torch 2.8) is exercised on CPU by .ci/lower-bound; no Jetson was at hand"),
    Platform("jetpack7", "Jetson Thor, JetPack 7 (CUDA 13, SBSA)", "aarch64", torch="2.14", torchvision="0.29",
             torch_tensorrt="2.14", tensorrt="11.1", cuda="13.0", python="3.12", constraints="cuda13.txt",
             install="pip install -e '.[tensorrt]' -c constraints/cuda13.txt --extra-index-url https://pypi.nvidia.com "
                     "(Torch-TensorRT ships aarch64 SBSA wheels for Thor on PyPI)",
             tested="not run: the same pins as cuda13 on aarch64"),
)


def minor(version: str | None) -> str | None:
    """'2.14.1+cu130' -> '2.14'; None stays None."""
    if not version:
        return None
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2])


def rows_for(env: dict) -> list[Platform]:
    """The rows whose torch and Torch-TensorRT minor versions this environment has."""
    return [p for p in MATRIX if minor(env.get("torch")) == p.torch and minor(env.get("torch_tensorrt")) == p.torch_tensorrt]


def pairing_problems(env: dict) -> list[str]:
    """Why this torch / Torch-TensorRT / TensorRT combination cannot build an engine (empty: it can).

    Torch-TensorRT X.Y is built against torch X.Y exactly and one TensorRT minor; these are the mismatches
    that otherwise surface as an undefined symbol or a converter missing at build time."""
    torch_v, trt_v, ttrt_v = minor(env.get("torch")), minor(env.get("tensorrt")), minor(env.get("torch_tensorrt"))
    if ttrt_v is None:
        return ["torch_tensorrt is not installed"]
    problems = []
    if torch_v != ttrt_v:
        problems.append(f"torch_tensorrt {env.get('torch_tensorrt')} is built for torch {ttrt_v}, but torch is "
                        f"{env.get('torch')}")
    known = [p for p in MATRIX if p.torch_tensorrt == ttrt_v]
    if known and trt_v is not None and all(p.tensorrt != trt_v for p in known):
        problems.append(f"torch_tensorrt {ttrt_v} pairs with TensorRT {known[0].tensorrt}, but TensorRT is "
                        f"{env.get('tensorrt')}")
    return problems


def describe(env: dict) -> str:
    """One line for logs and errors: the row this machine is, or the rows there are."""
    rows = rows_for(env)
    if rows:
        return " or ".join(f"{p.key} ({p.name})" for p in rows)
    return ("none of the supported platforms (" + "; ".join(
        f"{p.key}: torch {p.torch} + torch_tensorrt {p.torch_tensorrt}" for p in MATRIX) + "): docs/compile.md")


def markdown_table() -> str:
    """The matrix as docs/compile.md shows it (a test keeps the two equal)."""
    lines = ["| row | platform | machine | torch | torchvision | Torch-TensorRT | TensorRT | CUDA | Python | install | tested |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in MATRIX:
        lines.append(f"| `{p.key}` | {p.name} | {p.machine} | {p.torch} | {p.torchvision} | {p.torch_tensorrt} | "
                     f"{p.tensorrt} | {p.cuda} | {p.python} | `{p.install}` | {p.tested} |")
    return "\n".join(lines)
