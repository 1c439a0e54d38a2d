"""The node's class registry (edge_gfs/node/registry.py): stable ids, limits, exact persistence, class packs."""

from __future__ import annotations

import os

import cv2
import msgpack
import numpy as np
import pytest
import torch
from synthetic_registry import DIM, FOLD0_BASE, fresh, shot

from edge_gfs.core.classifier import build_classifier
from edge_gfs.core.config import CAMVID_CLASSES
from edge_gfs.core.files import atomic_open, atomic_write, stale_temps
from edge_gfs.core.model import GSup
from edge_gfs.node.registry import STATE_FILE, Registry, StateError, StateStore, export_pack, import_pack, retarget
from edge_gfs.ui.overlay import CAMVID_RGB, class_colors, overlay
from edge_gfs.wire import protocol as P


def teach(reg: Registry, name: str, n: int = 1, **kw) -> Registry:
    cid, _ = reg.target_for(name, **{k: v for k, v in kw.items() if k in ("create", "limits")})
    shots = [shot(cid, f"{name}-{reg.version}-{i}", seed=i) for i in range(n)]
    return reg.with_shots(name, cid, shots, limits=kw.get("limits", P.LIMITS))


def code_of(fn, *a, **kw) -> str:
    with pytest.raises(P.RequestError) as e:
        fn(*a, **kw)
    return e.value.code


def test_fresh_registry_lists_the_base_classes():
    reg = fresh()
    assert [c["name"] for c in reg.classes()] == list(CAMVID_CLASSES[:8])
    assert all(c["kind"] == "base" and c["shots"] == 0 for c in reg.classes())
    assert reg.classes()[3] == {"id": 3, "name": "Road", "kind": "base", "color": [128, 64, 128], "shots": 0}


def _lab(rgb) -> np.ndarray:
    lab = cv2.cvtColor(np.array([[rgb]], np.uint8), cv2.COLOR_RGB2LAB).astype(np.float64)[0, 0]
    return lab * np.array([100 / 255, 1, 1]) - np.array([0, 128, 128])


def test_taught_classes_get_colours_no_base_class_is_near():
    """The demo's complaint: a taught Car drawn in CamVid's Car purple is lost on Road's purple."""
    reg = teach(teach(teach(fresh(), "Car"), "Pedestrian"), "cone")
    taught = [e.color for e in reg.entries if e.kind == "novel"]
    assert len(set(taught)) == 3  # and no two taught classes share one
    for c in taught:
        assert min(np.linalg.norm(_lab(c) - _lab(b)) for b in CAMVID_RGB) >= 50
    # a freed colour goes to the next new class; the live ones keep theirs
    reg2 = teach(reg.without("Pedestrian"), "buoy")
    assert reg2.find("buoy").color == reg.find("Pedestrian").color
    assert reg2.find("Car").color == reg.find("Car").color


def test_overlays_draw_the_class_tables_colours():
    reg = teach(fresh(), "Car")
    colors = class_colors(reg.classes())
    labels = np.full((2, 2), 8, np.uint8)
    drawn = overlay(np.zeros((2, 2, 3), np.uint8), labels, 1.0, colors)
    assert tuple(int(v) for v in drawn[0, 0][::-1]) == reg.find("Car").color != CAMVID_RGB[8]
    assert tuple(int(v) for v in overlay(np.zeros((2, 2, 3), np.uint8), labels, 1.0)[0, 0][::-1]) == CAMVID_RGB[8]


def test_model_class_names_take_their_own_id():
    reg = teach(fresh(), "car")  # case-insensitive, shown with the model's spelling
    assert reg.find("CAR").id == 8 and reg.find("Car").name == "Car" and reg.find("Car").kind == "novel"
    reg = teach(reg, "Bicyclist")
    assert reg.find("bicyclist").id == 10


def test_new_names_never_reuse_an_id_while_fresh_ones_remain():
    reg = teach(fresh(), "Dog")
    assert reg.find("Dog").id == 11  # 8, 9, 10 stay for Car, Pedestrian, Bicyclist
    reg = teach(reg, "Cat")
    assert reg.find("Cat").id == 12
    reg = reg.without("Dog")
    reg = teach(reg, "Emu")
    assert reg.find("Emu").id == 13  # not 11: a stale consumer must not read Emu as Dog
    reg = teach(reg, "dog")
    assert reg.find("dog").id == 14
    reg = teach(reg.without("Car") if reg.find("Car") else reg, "Car")
    reg = teach(reg.without("Car"), "Car")
    assert reg.find("Car").id == 8  # the model's own class comes back under its own id


def test_ids_are_reused_only_when_none_is_fresh():
    reg = fresh()
    from dataclasses import replace
    reg = replace(reg, used_ids=frozenset(range(11, 255)))
    assert reg.target_for("Dog") == (11, True)
    assert 255 not in [reg.target_for(f"x{i}")[0] for i in range(3)]


def test_versions_count_changes_only():
    reg = teach(fresh(), "Car", 2)
    assert reg.version == 1 and reg.find("Car").shots and len(reg.find("Car").shots) == 2
    same = reg.with_shots("Car", 8, list(reg.find("Car").shots))
    assert same is reg  # the same shots again change nothing
    more = teach(reg, "Car", 1)
    assert more.version == 2 and len(more.find("Car").shots) == 3


def test_limits_and_name_taken():
    small = P.Limits(max_novel_classes=1, max_shots_per_class=2)
    reg = teach(fresh(), "Car", 2, limits=small)
    assert code_of(teach, reg, "Dog", limits=small) == "limit"
    assert code_of(teach, reg, "Car", 1, limits=small) == "limit"
    assert code_of(reg.target_for, "car", create=True) == "name_taken"
    assert code_of(reg.target_for, "Road", create=True) == "name_taken"


def test_forget():
    reg = teach(fresh(), "Car")
    assert code_of(reg.without, "Zebra") == "unknown_class"
    assert code_of(reg.without, "Road") == "bad_request"  # a base class with nothing taught
    gone = reg.without("car")
    assert gone.find("Car") is None and gone.version == reg.version + 1 and gone.shots() == []
    ctx = teach(gone, "Road")  # a base class name adds context shots ...
    assert ctx.find("Road").kind == "base" and len(ctx.find("Road").shots) == 1
    back = ctx.without("road")  # ... and forgetting it drops them, the class stays
    assert back.find("Road") is not None and back.find("Road").shots == ()


def test_retarget_keeps_rows_with_their_ids():
    s = shot(11, "s", ctx=(0, 3, 7))
    t = retarget(s, 5)
    assert t.class_ids == (0, 3, 5, 7) and t.target == 5
    for cid in (0, 3, 7):
        assert np.array_equal(t.sums_raw[t.class_ids.index(cid)], s.sums_raw[s.class_ids.index(cid)])
    assert np.array_equal(t.sums_raw[2], s.sums_raw[s.class_ids.index(11)])


def test_store_round_trip_is_exact(tmp_path):
    reg = teach(teach(teach(fresh(), "Car", 3), "Dog", 2), "Road")
    store = StateStore(tmp_path / "st")
    store.lock()
    store.save(reg)
    back = StateStore(tmp_path / "st").load()
    assert back.to_dict() == reg.to_dict()
    for a, b in zip(back.shots(), reg.shots()):
        assert a.sums_raw.tobytes() == b.sums_raw.tobytes() and a.counts.tobytes() == b.counts.tobytes()
    torch.manual_seed(0)
    gate, p_cls = GSup(DIM).eval(), torch.randn(8, DIM)
    c1 = build_classifier(p_cls, gate, FOLD0_BASE, reg.shots())
    c2 = build_classifier(p_cls, gate, FOLD0_BASE, back.shots())
    assert c1.row_ids == c2.row_ids and torch.equal(c1.base_rows, c2.base_rows) and torch.equal(c1.novel_rows, c2.novel_rows)
    assert sorted(os.listdir(tmp_path / "st")) == [".lock", STATE_FILE]  # no temp file left behind


def test_store_refuses_another_models_state(tmp_path):
    store = StateStore(tmp_path)
    store.open(fresh("a" * 64))
    with pytest.raises(StateError, match="made for model 'camvid-fold0' \\(checksum aaaaaaaaaaaa\\)"):
        StateStore(tmp_path).open(fresh("b" * 64))
    assert StateStore(tmp_path).open(fresh("a" * 64)).version == 0


def test_store_lock_and_corrupt_file(tmp_path):
    a = StateStore(tmp_path)
    a.lock()
    with pytest.raises(StateError, match="in use by another node"):
        StateStore(tmp_path).lock()
    a.unlock()
    StateStore(tmp_path).lock()
    atomic_write(tmp_path / STATE_FILE, b"\x00garbage")
    with pytest.raises(StateError, match="unreadable"):
        StateStore(tmp_path).load()


def test_atomic_write_leaves_the_old_file_on_error_and_a_lock_clears_stale_temps(tmp_path):
    target = tmp_path / STATE_FILE
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and stale_temps(tmp_path, STATE_FILE) == []
    # a writer killed by SIGKILL cannot clean up: its temp file stays until the next node takes the lock
    leftover = tmp_path / f".{STATE_FILE}.abc123.tmp"
    legacy = tmp_path / f".{STATE_FILE}.tmp.4242"  # the name older versions used
    leftover.write_bytes(b"x")
    legacy.write_bytes(b"x")
    store = StateStore(tmp_path)
    store.lock()
    assert not leftover.exists() and not legacy.exists() and target.read_bytes() == b"old"
    store.unlock()


def test_class_packs_move_classes_between_nodes():
    src = teach(teach(teach(fresh(), "Dog", 2), "Car", 2), "Road")
    dst = teach(teach(fresh(), "Cat"), "Emu")  # Dog will get another id here
    out = import_pack(dst, export_pack(src))
    assert out.version == dst.version + 1
    assert out.find("Dog").id == 13 and src.find("Dog").id == 11
    assert out.find("Car").id == 8 and len(out.find("Road").shots) == 1
    assert all(s.target == 13 for s in out.find("Dog").shots)
    a = {s.shot_id: s for s in src.find("Dog").shots}
    for s in out.find("Dog").shots:  # the same statistics under the local id
        assert np.array_equal(s.sums_raw[s.class_ids.index(13)], a[s.shot_id].sums_raw[a[s.shot_id].class_ids.index(11)])
    assert import_pack(out, export_pack(src)) is out  # importing twice changes nothing


def test_class_packs_are_refused_for_another_model_or_garbage():
    pack = export_pack(teach(fresh("a" * 64), "Dog"))
    assert code_of(import_pack, fresh("b" * 64), pack) == "model_mismatch"
    assert code_of(import_pack, fresh(), b"junk") == "bad_request"
    assert code_of(import_pack, fresh(), msgpack.packb({"format": "edge-gfs-classes/1"})) == "bad_request"
