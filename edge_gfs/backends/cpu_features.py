"""The CPU's instruction-set features, and which ones a low-precision artifact needs to be worth running.

Why an artifact names what it needs: INT8 and bf16 only pay on CPUs with dot-product instructions for them.
Without VNNI, 8-bit convolutions run as several AVX2 instructions per multiply-add (1.2-1.4x over fp32 instead
of 2-2.5x, and ONNX Runtime's u8s8 path can saturate there); without AVX-512 BF16 or AMX, OpenVINO quietly runs a
bf16 request in fp32. A robot whose artifact was built on a bigger box must hear that, not run slowly and
differently. Linux only (/proc/cpuinfo); elsewhere the feature set is empty and only fp32 is offered.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# per precision: the artifact runs well if the CPU has ANY of these (flag names as in /proc/cpuinfo)
NEEDS_ANY: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
    "bf16": ("avx512_bf16", "amx_bf16"),
}
# what the sidecar records of this CPU: the flags that decide the precisions above, plus the vector width
REPORTED = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's `flags` line (x86) or `Features` line (Arm) of /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        return parse_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def describe(flags: frozenset[str] | None = None) -> dict[str, object]:
    """What the sidecar records: architecture and the deciding flags present."""
    flags = cpu_flags() if flags is None else flags
    return {"arch": platform.machine(), "features": sorted(f for f in REPORTED if f in flags)}


def supports(precision: str, flags: frozenset[str] | None = None) -> bool:
    return missing(NEEDS_ANY.get(precision, ()), flags) is None


def missing(needs_any: list[str] | tuple[str, ...], flags: frozenset[str] | None = None) -> str | None:
    """None if the CPU has one of `needs_any` (or nothing is needed), else a sentence saying what is missing."""
    flags = cpu_flags() if flags is None else flags
    if not needs_any or any(f in flags for f in needs_any):
        return None
    return f"it needs a CPU with {' or '.join(needs_any)}, and this CPU ({platform.machine()}) has none of them"
