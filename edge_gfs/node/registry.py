"""The node's class registry: what was taught (per-shot statistics), under which name, id and colour.

Why a value type with pure updates: the teach thread builds the next registry beside the current one, saves it
and only then lets the stream see it, so a failed save, a refused request or a crash half-way never leaves a
half-applied change anywhere. Why per-shot statistics on disk: the classifier is a pure function of them
(registry.build_classifier), so a restart rebuilds the very same classifier bits without the images.

Ids are stable and never silently reused: a class named like one of the model's own classes that is not a
base class takes that class's id (Car -> 8 on camvid-fold0, so label maps line up with the benchmark); any
other new name takes the lowest id never used before while one remains. 255 is reserved (unknown/ignore).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_gfs.core.classifier import Shot
from edge_gfs.core.files import atomic_write, stale_temps
from edge_gfs.core.labels import IGNORE
from edge_gfs.node.field_checks import MAX_DIM, Invalid, checksum, fields, integer, items, shot_from, text, unpack
from edge_gfs.ui.overlay import color_for, taught_color
from edge_gfs.wire.protocol import (BAD_REQUEST, LIMIT, LIMITS, MODEL_MISMATCH, NAME_TAKEN, UNKNOWN_CLASS, Limits,
                                    RequestError, check_name, clip)
from edge_gfs.wire.protocol import pack as pack_msg

STATE_FILE = "registry.msgpack"
STATE_FORMAT = "edge-gfs-registry/1"
PACK_FORMAT = "edge-gfs-classes/2"  # {"format", "content": msgpack bytes, "sha256": hex of those bytes}
OLD_PACK_FORMATS = ("edge-gfs-classes/1",)  # no checksum: refused, with the advice to re-export
REEXPORT = "re-export it from the node that made it (`edge-gfs classes export FILE`)"
SHOWN_NAMES, SHOWN_CHARS = 10, 160  # at most this many class names, in this many characters, in a refusal


class StateError(Exception):
    """A state directory the node must not use (another model's, corrupt, locked): a one-line message."""


@dataclass(frozen=True)
class ClassEntry:
    id: int
    name: str
    kind: str  # "base" (the model's own) or "novel" (taught)
    color: tuple[int, int, int]
    shots: tuple[Shot, ...] = ()

    def info(self) -> dict:
        return {"id": self.id, "name": self.name, "kind": self.kind, "color": list(self.color), "shots": len(self.shots)}


def retarget(shot: Shot, new_id: int) -> Shot:
    """The same statistics taught under another id (a class pack from a node that numbered it differently)."""
    if shot.target == new_id:
        return shot
    ids = [new_id if c == shot.target else c for c in shot.class_ids]
    order = np.argsort(ids, kind="stable")
    return replace(shot, target=new_id, class_ids=tuple(int(ids[i]) for i in order),
                   sums_raw=shot.sums_raw[order], sums_unit=shot.sums_unit[order], counts=shot.counts[order])


@dataclass(frozen=True)
class Registry:
    model_checksum: str
    model_name: str
    class_names: tuple[str, ...]  # the model's class names, by id
    base_ids: tuple[int, ...]
    dim: int
    version: int
    entries: tuple[ClassEntry, ...]  # sorted by id; base classes always present
    used_ids: frozenset[int]  # every id ever given to a taught class

    @classmethod
    def fresh(cls, model_checksum: str, model_name: str, class_names: list[str], base_ids: list[int],
              dim: int) -> "Registry":
        base = tuple(ClassEntry(i, class_names[i], "base", color_for(i)) for i in sorted(base_ids))
        return cls(model_checksum, model_name, tuple(class_names), tuple(base_ids), dim, 0, base, frozenset())

    # -- queries ----------------------------------------------------------------------------------------------
    def find(self, name: str) -> ClassEntry | None:
        key = name.strip().casefold()
        return next((e for e in self.entries if e.name.casefold() == key), None)

    def by_id(self, class_id: int) -> ClassEntry | None:
        return next((e for e in self.entries if e.id == class_id), None)

    def shots(self) -> list[Shot]:
        return [s for e in self.entries for s in e.shots]

    def classes(self) -> list[dict]:
        return [e.info() for e in self.entries]

    def novel_count(self) -> int:
        return sum(e.kind == "novel" for e in self.entries)

    def _model_id(self, name: str) -> int | None:
        key = name.strip().casefold()
        return next((i for i, n in enumerate(self.class_names) if n.casefold() == key), None)

    def target_for(self, name: str, create: bool = False, limits: Limits = LIMITS) -> tuple[int, bool]:
        """(class id a teach of `name` goes to, whether that class is new). Raises limit / name_taken."""
        entry = self.find(name)
        if entry is not None:
            if create:
                raise RequestError(NAME_TAKEN, f"a class named {entry.name!r} exists (id {entry.id}); "
                                               f"leave out 'create' to add shots to it")
            return entry.id, False
        if self.novel_count() >= limits.max_novel_classes:
            raise RequestError(LIMIT, f"the node holds {limits.max_novel_classes} taught classes, its maximum: "
                                      f"forget one first")
        model_id = self._model_id(name)
        if model_id is not None:
            return model_id, True
        reserved = set(range(len(self.class_names)))  # model class ids stay for their own names
        in_use = {e.id for e in self.entries}
        free = [i for i in range(IGNORE) if i not in reserved and i not in in_use]
        fresh = [i for i in free if i not in self.used_ids]
        if not free:
            raise RequestError(LIMIT, "no class id left (ids are 8-bit, 255 is reserved)")
        return (fresh or free)[0], True

    # -- updates (each returns a new registry) ----------------------------------------------------------------
    def with_shots(self, name: str, class_id: int, shots: list[Shot], color: tuple[int, int, int] | None = None,
                   limits: Limits = LIMITS) -> "Registry":
        """Add shots to class `class_id` (created as `name` if new). Shots already held are skipped, so a
        repeated request changes nothing and does not bump the version."""
        entry = self.by_id(class_id)
        have = {s.shot_id for s in self.shots()}
        new: list[Shot] = []
        for s in shots:
            if s.target != class_id:
                raise ValueError(f"shot teaches {s.target}, not {class_id}")
            if s.shot_id not in have:
                have.add(s.shot_id)
                new.append(s)
        if not new:
            return self
        held = len(entry.shots) if entry else 0
        if held + len(new) > limits.max_shots_per_class:
            raise RequestError(LIMIT, f"a class holds at most {limits.max_shots_per_class} shots; "
                                      f"{held} held, {len(new)} more sent")
        if entry is None:
            model_id = self._model_id(name)
            shown = self.class_names[model_id] if model_id == class_id else name.strip()
            live = {e.color for e in self.entries if e.kind == "novel"}
            entry = ClassEntry(class_id, shown, "novel", color or taught_color(live))
        entry = replace(entry, shots=entry.shots + tuple(new))
        entries = tuple(sorted([e for e in self.entries if e.id != class_id] + [entry], key=lambda e: e.id))
        used = self.used_ids | ({class_id} if entry.kind == "novel" else set())
        return replace(self, version=self.version + 1, entries=entries, used_ids=frozenset(used))

    def without(self, name: str) -> "Registry":
        """Forget a taught class, or the context shots taught to a base class (the model's own rows stay)."""
        entry = self.find(name)
        if entry is None:  # a few names, not all: the whole message must fit protocol.MAX_MESSAGE_CHARS
            shown: list[str] = []
            for e in self.entries:
                if len(shown) == SHOWN_NAMES or sum(len(n) + 2 for n in shown) + len(e.name) > SHOWN_CHARS:
                    break
                shown.append(e.name)
            more = len(self.entries) - len(shown)
            listed = ", ".join(shown) + (f" ... and {more} more; `edge-gfs classes` lists them" if more else "")
            raise RequestError(UNKNOWN_CLASS, f"no class named {clip(name)}; classes: {listed}")
        if entry.kind == "base":
            if not entry.shots:
                raise RequestError(BAD_REQUEST, f"{entry.name} is a base class of the model and holds no taught "
                                                f"shots: there is nothing to forget")
            entries = tuple(replace(e, shots=()) if e.id == entry.id else e for e in self.entries)
        else:
            entries = tuple(e for e in self.entries if e.id != entry.id)
        return replace(self, version=self.version + 1, entries=entries)

    # -- persistence ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": STATE_FORMAT, "model_checksum": self.model_checksum, "model_name": self.model_name,
                "class_names": list(self.class_names), "base_ids": list(self.base_ids), "dim": self.dim,
                "version": self.version, "used_ids": sorted(self.used_ids),
                "classes": [_entry_dict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, d: object) -> "Registry":
        """The registry file with every field checked (Invalid says what is wrong). Why at every load: the file
        is read at each start, so one bad value saved once (a NaN class paints every pixel) would come back
        after every restart. Limits are not applied here: they were when the classes came in, and a node
        started with smaller limits keeps what it holds (it refuses new classes instead)."""
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise Invalid(f"not an edge-gfs registry (format {clip(d.get('format') if isinstance(d, dict) else d)})")
        d = fields(d, "the registry", ("format", "model_checksum", "model_name", "class_names", "base_ids", "dim",
                                        "version", "used_ids", "classes"))
        names = tuple(text(n, "a model class name", 256) for n in items(d["class_names"], "class_names", IGNORE))
        base_ids = tuple(integer(i, 0, len(names) - 1, "each of base_ids")
                         for i in items(d["base_ids"], "base_ids", IGNORE))
        if len(set(base_ids)) != len(base_ids):
            raise Invalid("base_ids holds an id twice")
        dim = integer(d["dim"], 1, MAX_DIM, "dim")
        classes = items(d["classes"], "classes", IGNORE)
        entries = tuple(sorted((_entry_from(c, i, dim, names, frozenset(base_ids), None)
                                for i, c in enumerate(classes)), key=lambda e: e.id))
        _check_unique(entries)
        missing = sorted(set(base_ids) - {e.id for e in entries})
        if missing:
            raise Invalid(f"base class {missing[0]} ({clip(names[missing[0]])}) is missing")
        used = frozenset(integer(i, 0, IGNORE - 1, "each of used_ids") for i in items(d["used_ids"], "used_ids", IGNORE))
        return cls(checksum(d["model_checksum"]), text(d["model_name"], "the model name", 256), names, base_ids,
                   dim, integer(d["version"], 0, 2**63 - 1, "version"), entries, used)


def _entry_dict(e: ClassEntry) -> dict:
    return {"id": e.id, "name": e.name, "kind": e.kind, "color": list(e.color), "shots": [s.to_dict() for s in e.shots]}


# -- validation (class packs and the registry file; field checks in field_checks.py) ---------------------------
def _entry_from(c: object, i: int, dim: int, class_names: tuple[str, ...], base_ids: frozenset[int],
                limits: Limits | None) -> ClassEntry:
    """Class #i of a pack (with the node's limits) or of the registry file (limits None).

    Base classes are the model's, under its ids and names; taught names follow teach's rules (check_name),
    or are the model's own spelling of a class it has but not as a base class (Car on camvid-fold0)."""
    c = fields(c, f"class #{i}", ("id", "name", "kind", "color", "shots"))
    cid = integer(c["id"], 0, IGNORE - 1, f"class #{i}'s id")
    kind, name = c["kind"], c["name"]
    if kind not in ("base", "novel"):
        raise Invalid(f"class #{i}'s kind must be 'base' or 'novel'")
    if kind == "base" and cid not in base_ids:
        raise Invalid(f"class #{i} is marked base, but id {cid} is no base class of the model")
    if kind == "base" and name != class_names[cid]:
        raise Invalid(f"base class {cid} must be named {clip(class_names[cid])}")
    if kind == "novel":
        if cid in base_ids:
            raise Invalid(f"class #{i} (id {cid}) is a base class of the model, not a taught one")
        if not (cid < len(class_names) and name == class_names[cid]):
            try:
                if check_name(name, limits or LIMITS) != name:
                    raise Invalid(f"class #{i}'s name has leading or trailing spaces")
            except RequestError as e:
                raise Invalid(f"class #{i}: {e.message}") from None
        if any(name.casefold() == class_names[b].casefold() for b in base_ids):
            raise Invalid(f"taught class {clip(name)} is named like a base class of the model")
    label = clip(name)
    color = c["color"]
    if not (isinstance(color, list) and len(color) == 3 and all(type(v) is int and 0 <= v <= 255 for v in color)):
        raise Invalid(f"class {label}: the colour must be 3 integers in 0..255 (RGB)")
    shots = items(c["shots"], f"class {label}'s shots", 1 << 16)
    if limits is not None and len(shots) > limits.max_shots_per_class:
        raise RequestError(LIMIT, f"the pack's class {label} holds {len(shots)} shots; this node holds at most "
                                  f"{limits.max_shots_per_class} per class")
    if not shots and (kind == "novel" or limits is not None):  # a pack carries only classes with shots
        raise Invalid(f"class {label} has no shots")
    return ClassEntry(cid, name, kind, tuple(color),
                      tuple(shot_from(s, f"shot {j} of class {label}", cid, dim, base_ids)
                            for j, s in enumerate(shots)))


def _check_unique(entries: tuple[ClassEntry, ...] | list[ClassEntry]) -> None:
    """No id, name (case-insensitive, as find matches) or shot twice: build_classifier needs unique shot ids."""
    ids: set[int] = set()
    names: set[str] = set()
    shots: set[str] = set()
    for e in entries:
        if e.id in ids:
            raise Invalid(f"class id {e.id} appears twice")
        if e.name.casefold() in names:
            raise Invalid(f"class {clip(e.name)} appears twice")
        ids.add(e.id)
        names.add(e.name.casefold())
        for s in e.shots:
            if s.shot_id in shots:
                raise Invalid(f"shot {clip(s.shot_id, 16)} appears twice")
            shots.add(s.shot_id)


# -- class packs -----------------------------------------------------------------------------------------------
def export_pack(reg: Registry) -> bytes:
    """Everything taught (novel classes and base-class context), tied to the base model by its checksum.

    Two layers so the checksum covers exact bytes: the content is packed once and its sha256 sits beside it;
    no re-encoding (whose bytes msgpack does not promise) stands between writer and reader."""
    content = pack_msg({"model_checksum": reg.model_checksum, "model_name": reg.model_name, "dim": reg.dim,
                        "classes": [_entry_dict(e) for e in reg.entries if e.shots]})
    return pack_msg({"format": PACK_FORMAT, "content": content, "sha256": hashlib.sha256(content).hexdigest()})


def _check_model(d: dict, reg: Registry) -> None:
    """model_mismatch before any other complaint about a readable pack: re-exporting it would not help."""
    made_for = checksum(d.get("model_checksum"))
    if made_for != reg.model_checksum:
        raise RequestError(MODEL_MISMATCH, f"the pack was made for model {clip(d.get('model_name'))} (checksum "
                                           f"{made_for[:12]}), this node runs {reg.model_name!r} "
                                           f"(checksum {reg.model_checksum[:12]})")


def _pack_entries(data: object, reg: Registry, limits: Limits) -> list[ClassEntry]:
    """The classes of a pack, every field checked against this registry's model and the node's limits."""
    env = unpack(data, "the pack")
    fmt = env.get("format")
    if fmt in OLD_PACK_FORMATS:
        _check_model(env, reg)
        raise Invalid(f"it is an {fmt} pack, which carries no checksum, and this node reads {PACK_FORMAT}")
    if fmt != PACK_FORMAT:
        raise Invalid(f"it is not an edge-gfs class pack (format {clip(fmt)}, expected {PACK_FORMAT!r})")
    env = fields(env, "the pack", ("format", "content", "sha256"))
    if not isinstance(env["content"], bytes) or env["sha256"] != hashlib.sha256(env["content"]).hexdigest():
        raise Invalid("its content does not match its sha256 (the file was damaged on the way)")
    content = fields(unpack(env["content"], "its content"), "its content",
                      ("model_checksum", "model_name", "dim", "classes"))
    _check_model(content, reg)
    text(content["model_name"], "the model name", 256)
    if type(content["dim"]) is not int or content["dim"] != reg.dim:
        raise Invalid(f"its feature dim is not this model's {reg.dim}")
    classes = items(content["classes"], "its classes", IGNORE)
    entries = [_entry_from(c, i, reg.dim, reg.class_names, frozenset(reg.base_ids), limits)
               for i, c in enumerate(classes)]
    _check_unique(entries)
    novel = sum(e.kind == "novel" for e in entries)
    if novel > limits.max_novel_classes:
        raise RequestError(LIMIT, f"the pack holds {novel} taught classes; this node holds at most "
                                  f"{limits.max_novel_classes}")
    return entries


def import_pack(reg: Registry, data: bytes, limits: Limits = LIMITS) -> Registry:
    """Merge a class pack: classes are matched by name (a new name takes a local id), shots by content.
    All or nothing: the whole pack is checked before the merge starts, and the merge builds a new registry,
    so any refusal leaves `reg` as it was. Bumps the version once if anything changed."""
    try:
        entries = _pack_entries(data, reg, limits)
    except RequestError:
        raise
    except Exception as e:  # Invalid says what is wrong; anything else is named by its type, never its text
        why = str(e) if isinstance(e, Invalid) else f"it is malformed ({type(e).__name__})"
        raise RequestError(BAD_REQUEST, f"class pack refused: {why}; {REEXPORT}") from None
    out = reg
    for entry in entries:
        cid, _new = out.target_for(entry.name, limits=limits)
        out = out.with_shots(entry.name, cid, [retarget(s, cid) for s in entry.shots],
                             color=entry.color if entry.kind == "novel" else None, limits=limits)
    return out if out is reg else replace(out, version=reg.version + 1)


# -- the state directory ---------------------------------------------------------------------------------------
class StateStore:
    """One node's --state DIR: the registry file plus a lock, so two nodes never write over each other."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / STATE_FILE
        self._lock_fd: int | None = None

    def lock(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError(f"cannot use state dir {self.dir}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(f"state dir {self.dir} is in use by another node: give this one its own --state") from None
        self._lock_fd = fd
        for tmp in stale_temps(self.dir, STATE_FILE) + list(self.dir.glob(f".{STATE_FILE}.tmp.*")):
            tmp.unlink(missing_ok=True)  # left by a writer killed mid-save; we hold the lock, so no writer runs

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> Registry | None:
        if not self.path.is_file():
            return None
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise StateError(f"cannot read {self.path}: {e.strerror}") from None
        try:
            return Registry.from_dict(unpack(data, "the file"))
        except Exception as e:
            why = str(e) if isinstance(e, Invalid) else f"malformed: {type(e).__name__}"
            raise StateError(f"{self.path} is unreadable ({why}); move it away to start with no taught "
                             f"classes") from None

    def save(self, reg: Registry) -> None:
        atomic_write(self.path, pack_msg(reg.to_dict()))

    def open(self, fresh: Registry) -> Registry:
        """The saved registry if it belongs to this model, else `fresh` (saved). Refuses another model's state."""
        saved = self.load()
        if saved is None:
            self.save(fresh)
            return fresh
        if saved.model_checksum != fresh.model_checksum:
            raise StateError(f"state dir {self.dir} was made for model {saved.model_name!r} (checksum "
                             f"{saved.model_checksum[:12]}), not {fresh.model_name!r} (checksum "
                             f"{fresh.model_checksum[:12]}): use another --state, or the matching --model")
        if saved.base_ids != fresh.base_ids or saved.dim != fresh.dim:
            raise StateError(f"state dir {self.dir} does not match the model's base classes")
        return saved
