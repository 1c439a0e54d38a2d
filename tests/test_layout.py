"""The walls between edge_gfs's layers (docs/architecture.md), checked on the source and in fresh interpreters,
and the promise that a new frame source is one class plus one table entry."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_gfs.node import sources
from edge_gfs.wire.client import LabelSubscriber, free_endpoint

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "edge_gfs"

# layer -> the edge_gfs layers it may import (itself always). cli dispatches by module name only.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "wire": {"core.labels"},
    "ui": {"core.labels", "wire"},
    "backends": {"core"},
    "node": {"core", "data", "wire", "ui", "backends"},
    "commands": {"core", "data", "wire", "ui", "backends", "node", "cli"},  # launch checks names in cli.COMMANDS
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every edge_gfs/calib/trainer module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in ("edge_gfs", "calib", "trainer", "torch")}


FILES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_each_module_imports_only_the_layers_below_it(path):
    name = module_name(path)
    layer = name.split(".")[1] if name.count(".") else None
    for mod in imports_of(path):
        assert not mod.startswith(("calib", "trainer")), f"{name} imports {mod}: the node package never needs them"
        if layer is None or layer not in ALLOWED or not mod.startswith("edge_gfs."):
            continue
        target = mod.split(".")[1]
        allowed = ALLOWED[layer] | {layer}
        ok = target in allowed or any(mod.startswith(f"edge_gfs.{a}") for a in allowed if "." in a)
        assert ok, f"{name} (layer {layer}) imports {mod}; {layer} may use only {sorted(allowed)}"


def test_capl_is_pure_tensor_math():
    mods = imports_of(PKG / "core" / "capl.py")
    assert {m for m in mods if not m.startswith("torch")} <= {"edge_gfs.core.labels", "edge_gfs.core.labels.IGNORE"}


def test_no_import_cycles_between_modules():
    graph = {}
    known = {module_name(p) for p in FILES}
    for p in FILES:
        graph[module_name(p)] = {m for m in imports_of(p) if m in known and m != module_name(p)}
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [n, m]))
            if m not in state:
                visit(m, trail + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def fresh_imports(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_the_wire_never_imports_torch():
    loaded = fresh_imports("import edge_gfs.wire.protocol, edge_gfs.wire.client")
    assert "torch" not in loaded


def test_the_whole_node_package_never_imports_calib_or_the_trainer():
    loaded = fresh_imports("import importlib, pkgutil, edge_gfs\n"
                           "for m in pkgutil.walk_packages(edge_gfs.__path__, 'edge_gfs.'):\n"
                           "    importlib.import_module(m.name)")
    assert not {m for m in loaded if m.split(".")[0] in ("calib", "trainer")}


# -- a new frame source: one class and one table entry ----------------------------------------------------------
class Pattern:
    """A synthetic test pattern: N frames of moving colour bars (no camera, no files)."""

    default_fps = 20.0

    def __init__(self, count: int) -> None:
        self.label, self.count = f"pattern {count}", count

    def __iter__(self):
        x = np.arange(160)[None, :, None]
        for k in range(self.count):
            bars = ((x + 8 * k) // 20 % 2) * np.array([[[40, 200, 90]]])
            yield sources.SourceFrame(f"pattern{k:04d}", image=np.broadcast_to(bars, (120, 160, 3)).astype(np.uint8))

    def close(self) -> None:
        pass


def test_a_new_source_is_one_class_and_one_table_entry(monkeypatch, tmp_path, camvid_root):
    monkeypatch.setitem(sources.SOURCES, "pattern", sources.SourceKind("N", "a synthetic pattern of N frames",
                                                                      lambda v, loop: Pattern(int(v))))
    from edge_gfs.commands import run

    assert "--pattern" in run.build_parser().format_help()
    labels = free_endpoint()
    got, done = [], threading.Event()
    sub = LabelSubscriber(labels, topics=("labels",))

    def listen():  # the socket is used by this thread only, then closed by it
        while not done.is_set():
            if (lm := sub.next("labels", timeout_s=0.2)) is not None:
                got.append(lm)
        sub.close()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    rc = run.main(["--pattern", "60", "--fps", "20", "--model", "camvid-fold0", "--backend", "eager", "--labels",
                   labels, "--teach", free_endpoint(), "--state", str(tmp_path / "state"), "--threads", "1",
                   "--log-level", "warning"])
    done.set()
    listener.join(10)
    assert rc == 0
    assert got, "no label map came back from the pattern source"
    assert all(lm.labels.shape == (120, 160) and lm.frame_id == "camera" for lm in got)
