"""Class packs and the registry file as untrusted input (issue 13): a checksum over the exact content bytes,
every field validated on import and on load, refusals that change nothing and echo little of what was sent.

Pure functions only: registries are built from synthetic shots, no model and no node.
"""

from __future__ import annotations

import hashlib
import re

import msgpack
import numpy as np
import pytest
from synthetic_registry import DIM, fresh, shot

from edge_gfs.core.files import atomic_write
from edge_gfs.node.registry import STATE_FILE, Registry, StateError, StateStore, export_pack, import_pack
from edge_gfs.wire import protocol as P

MAX_ECHO = 300  # no refusal may be longer than this, whatever the pack held


def teach(reg: Registry, name: str, n: int = 1, limits: P.Limits = P.LIMITS) -> Registry:
    cid, _ = reg.target_for(name, limits=limits)
    return reg.with_shots(name, cid, [shot(cid, f"{name}-{reg.version}-{i}", seed=i) for i in range(n)],
                          limits=limits)


def seal(content: dict) -> bytes:
    """A format-2 pack around `content`, as the format is documented (docs/protocol.md, Class packs)."""
    body = msgpack.packb(content, use_bin_type=True)
    return msgpack.packb({"format": "edge-gfs-classes/2", "content": body,
                          "sha256": hashlib.sha256(body).hexdigest()}, use_bin_type=True)


def content_of(pack: bytes) -> dict:
    return msgpack.unpackb(msgpack.unpackb(pack, raw=False)["content"], raw=False)


def tampered(pack: bytes, change) -> bytes:
    """The pack with its content changed by `change(content)` and a checksum that matches again: what a
    careless tool (or a hostile client, who can always recompute a checksum) sends."""
    content = content_of(pack)
    change(content)
    return seal(content)


def refusal(reg: Registry, data: bytes, limits: P.Limits = P.LIMITS) -> P.RequestError:
    before = reg.to_dict()
    with pytest.raises(P.RequestError) as e:
        import_pack(reg, data, limits)
    assert reg.to_dict() == before
    assert len(e.value.message.encode()) <= MAX_ECHO, e.value.message[:400]
    return e.value


def source() -> Registry:
    return teach(teach(teach(fresh(), "Dog", 2), "Car", 2), "Road")


def set_shot_array(cls: int, key: str, value: float, row: int = 0, col: int = 0):
    def change(c: dict) -> None:
        s = c["classes"][cls]["shots"][0]
        dt = "<i8" if key == "counts" else "<f8"
        a = np.frombuffer(s[key], dt).copy()
        a.reshape(len(s["class_ids"]), -1)[row, col] = value
        s[key] = a.tobytes()
    return change


# ------------------------------------------------------------------------------------------------ the format
def test_export_is_format_2_with_a_sha256_over_the_exact_content_bytes_and_round_trips():
    src = source()
    pack = export_pack(src)
    env = msgpack.unpackb(pack, raw=False)
    assert set(env) == {"format", "content", "sha256"} and env["format"] == "edge-gfs-classes/2"
    assert env["sha256"] == hashlib.sha256(env["content"]).hexdigest()
    assert content_of(pack)["model_checksum"] == src.model_checksum
    out = import_pack(fresh(), pack)
    assert [(e.name, e.kind, e.color, len(e.shots)) for e in out.entries if e.shots] == \
           [(e.name, e.kind, e.color, len(e.shots)) for e in src.entries if e.shots]
    for a, b in zip(out.shots(), src.shots()):
        assert a.sums_raw.tobytes() == b.sums_raw.tobytes() and a.counts.tobytes() == b.counts.tobytes()
    assert import_pack(out, pack) is out  # importing twice changes nothing


def test_300_one_byte_flips_are_all_refused():
    """The attacker's finding: 295 of 300 flips were accepted, 31 changed >20% of a frame's labels."""
    dst = teach(fresh(), "Cat")
    before = dst.to_dict()
    pack = export_pack(source())
    refused = accepted_changes = 0
    for k, pos in enumerate(np.linspace(0, len(pack) - 1, 300).astype(int)):  # envelope and content alike
        flipped = bytearray(pack)
        flipped[pos] ^= (k * 37) % 255 + 1  # never 0: every try changes its byte
        try:
            out = import_pack(dst, bytes(flipped))
        except P.RequestError as e:
            assert e.code in ("bad_request", "model_mismatch") and len(e.message.encode()) <= MAX_ECHO
            refused += 1
            continue
        accepted_changes += out.to_dict() != before
    assert accepted_changes == 0 and refused == 300  # the envelope has no byte a flip leaves harmless
    assert dst.to_dict() == before


def test_v1_packs_are_refused_with_what_to_do():
    v1 = {"format": "edge-gfs-classes/1", "model_checksum": "a" * 64, "model_name": "camvid-fold0", "dim": DIM,
          "classes": content_of(export_pack(source()))["classes"]}
    e = refusal(fresh(), msgpack.packb(v1, use_bin_type=True))
    assert e.code == "bad_request" and "re-export" in e.message and "edge-gfs-classes/1" in e.message
    other = msgpack.packb(v1 | {"model_checksum": "f" * 64}, use_bin_type=True)
    assert refusal(fresh(), other).code == "model_mismatch"  # re-exporting would not help: say why


# ------------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("key,value", [("sums_raw", np.nan), ("sums_raw", np.inf), ("sums_unit", -np.inf),
                                       ("sums_unit", np.nan)])
def test_non_finite_statistics_are_refused(key, value):
    e = refusal(fresh(), tampered(export_pack(source()), set_shot_array(0, key, value)))
    assert e.code == "bad_request" and "finite" in e.message and "re-export" in e.message


@pytest.mark.parametrize("key,value,words", [
    ("sums_raw", 1e300, "too large"),  # finite, but pooled sums overflow to inf and then NaN
    ("counts", -3, "count"),
    ("counts", 1 << 40, "count"),
])
def test_out_of_range_statistics_are_refused(key, value, words):
    e = refusal(fresh(), tampered(export_pack(source()), set_shot_array(0, key, value)))
    assert e.code == "bad_request" and words in e.message


def test_a_shot_without_a_pixel_of_its_class_is_refused():
    def change(c):
        s = c["classes"][0]["shots"][0]
        row = s["class_ids"].index(s["target"])
        counts = np.frombuffer(s["counts"], "<i8").copy()
        counts[row] = 0
        for key in ("sums_raw", "sums_unit"):
            a = np.frombuffer(s[key], "<f8").copy().reshape(len(counts), -1)
            a[row] = 0
            s[key] = a.tobytes()
        s["counts"] = counts.tobytes()
    assert "no pixel" in refusal(fresh(), tampered(export_pack(source()), change)).message


# ------------------------------------------------------------------------------------------------ fields
def set_class(cls: int, key: str, value):
    def change(c: dict) -> None:
        c["classes"][cls][key] = value
    return change


@pytest.mark.parametrize("name", ["", "   ", "A" * 10_000, "bad\x00name", "\x1b[31mred", 7])
def test_bad_names_are_refused(name):
    e = refusal(fresh(), tampered(export_pack(source()), set_class(1, "name", name)))
    assert e.code == "bad_request" and "name" in e.message
    assert "A" * 50 not in e.message
    assert "\x1b" not in e.message and "\x00" not in e.message


@pytest.mark.parametrize("color", [[999, -5, 7], [1, 2], ["a", 2, 3], [1.5, 2, 3], [True, 0, 0], "red"])
def test_bad_colours_are_refused(color):
    e = refusal(fresh(), tampered(export_pack(source()), set_class(0, "color", color)))
    assert e.code == "bad_request" and "colour" in e.message


def second_dog(c: dict) -> None:
    """Dog again as "DOG" under another id, its shots consistent with that id: only the name repeats."""
    dog = c["classes"][2]
    shots = [s | {"target": 40, "class_ids": [0, 3, 40], "shot_id": s["shot_id"] + "x"} for s in dog["shots"]]
    c["classes"].append(dog | {"id": 40, "name": "DOG", "shots": shots})


# the pack's classes, in id order: 0 Road (base context), 1 Car (id 8), 2 Dog (id 11)
@pytest.mark.parametrize("change,words", [
    (set_class(2, "id", 255), "id"),
    (set_class(2, "id", -1), "id"),
    (set_class(2, "kind", "alien"), "kind"),
    (set_class(0, "shots", []), "no shots"),
    (set_class(0, "kind", "novel"), "base class"),  # Road, a base class of the model, sent as taught
    (set_class(2, "kind", "base"), "base class"),  # Dog is no base class of this model
    (second_dog, "twice"),
    (lambda c: c["classes"].append(dict(c["classes"][2], name="Emu")), "twice"),  # a second id 11
    (lambda c: c["classes"][2]["shots"].append(c["classes"][2]["shots"][0]), "twice"),
    (lambda c: c.update(dim=DIM + 1), "dim"),
    (lambda c: c.update(classes="nope"), "classes"),
    (lambda c: c["classes"][2]["shots"][0].update(target=9), "target"),
    (lambda c: c["classes"][2]["shots"][0].update(class_ids=[3, 0, 11]), "class ids"),
    (lambda c: c["classes"][2]["shots"][0].update(class_ids=[0, 3, 11, 12]), "class ids"),
    (lambda c: c["classes"][2]["shots"][0].update(sums_raw=b"\x00" * 7), "sums_raw"),
    (lambda c: c["classes"][2]["shots"][0].update(mode="x" * 5000), "mode"),
    (lambda c: c["classes"][2]["shots"][0].update(shot_id="\x1b[2J" * 3000), "shot id"),
    (lambda c: c["classes"][2].update(extra=b"x" * 100_000), "fields"),
])
def test_malformed_fields_are_refused_by_what_is_wrong(change, words):
    e = refusal(fresh(), tampered(export_pack(source()), change))
    assert e.code == "bad_request" and words in e.message, e.message
    assert "re-export" in e.message


def test_packs_over_the_limits_are_refused_before_any_merge():
    small = P.Limits(max_shots_per_class=1, max_novel_classes=1)
    e = refusal(fresh(), export_pack(source()), small)  # Dog and Car hold 2 shots each
    assert e.code == "limit" and "the pack" in e.message and "shots" in e.message
    e = refusal(fresh(), export_pack(teach(teach(fresh(), "Dog"), "Car")), small)  # 2 taught classes
    assert e.code == "limit" and "the pack" in e.message and "taught classes" in e.message


def test_the_model_mismatch_message_echoes_little():
    pack = tampered(export_pack(source()), lambda c: c.update(model_name="\x1b[31m" + "M" * 10_000,
                                                                model_checksum="f" * 64))
    e = refusal(fresh(), pack)
    assert e.code in ("model_mismatch", "bad_request") and "M" * 50 not in e.message
    assert "\x1b" not in e.message


# ------------------------------------------------------------------------------------------------ all or nothing
def test_a_refused_pack_changes_nothing_even_when_its_first_classes_were_fine():
    dst = teach(teach(fresh(), "Cat"), "Emu")
    before, version = dst.to_dict(), dst.version
    bad_last = tampered(export_pack(source()), set_shot_array(2, "sums_raw", np.nan))
    assert "finite" in refusal(dst, bad_last).message
    # refused half-way through the merge (the node's class limit), not by validation
    full = P.Limits(max_novel_classes=3)
    e = refusal(dst, export_pack(source()), full)  # Road's context and Car fit (3 taught classes), Dog does not
    assert e.code == "limit"
    assert dst.to_dict() == before and dst.version == version


# ------------------------------------------------------------------------------------------------ the registry file
@pytest.mark.parametrize("change,words", [
    (set_shot_array(3, "sums_raw", np.nan, row=1, col=3), "finite"),
    (set_shot_array(9, "sums_unit", np.inf), "finite"),
    (lambda d: d["classes"][9].update(name="\x1b[31mred"), "name"),
    (lambda d: d["classes"][9].update(color=[999, -5, 7]), "colour"),
    (lambda d: d["classes"][3].update(name="Street"), "base class"),
    (lambda d: d["classes"].pop(0), "base class"),
    (lambda d: d.update(used_ids=[300]), "used_ids"),
])
def test_the_registry_file_is_validated_at_load(tmp_path, change, words):
    """A NaN class saved once turned every pixel into one class after every restart."""
    d = source().to_dict()
    names = [c["name"] for c in d["classes"]]  # the changes index classes: 3 Road (holds a shot), 8 Car, 9 Dog
    assert names[3] == "Road" and names[8:] == ["Car", "Dog"]
    atomic_write(tmp_path / STATE_FILE, msgpack.packb(d, use_bin_type=True))
    assert StateStore(tmp_path).load().to_dict() == d  # the file as saved loads ...
    change(d)
    atomic_write(tmp_path / STATE_FILE, msgpack.packb(d, use_bin_type=True))
    with pytest.raises(StateError, match="move it away") as e:  # ... and with one bad field it does not
        StateStore(tmp_path).load()
    assert words in str(e.value)


# ------------------------------------------------------------------------------------------------ forget
def test_unknown_class_message_lists_a_few_names_only():
    reg = fresh()
    for i in range(60):
        reg = teach(reg, f"class-number-{i:02d}-" + "x" * 40)
    e = pytest.raises(P.RequestError, reg.without, "Zebra" * 12).value
    assert e.code == "unknown_class" and len(e.message) <= 300 and "Zebra" * 12 not in e.message
    assert re.search(r"\.\.\. and \d+ more; `edge-gfs classes` lists them$", e.message), e.message
    small = teach(fresh(), "Car")
    assert "Car" in pytest.raises(P.RequestError, small.without, "Zebra").value.message
