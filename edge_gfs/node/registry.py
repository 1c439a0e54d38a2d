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
import os
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack
import numpy as np

from edge_gfs.core.classifier import Shot
from edge_gfs.core.files import atomic_write, stale_temps
from edge_gfs.core.labels import IGNORE
from edge_gfs.ui.overlay import color_for, taught_color
from edge_gfs.wire.protocol import (BAD_REQUEST, LIMIT, LIMITS, MODEL_MISMATCH, NAME_TAKEN, UNKNOWN_CLASS, Limits,
                                    RequestError)
from edge_gfs.wire.protocol import pack as pack_msg

STATE_FILE = "registry.msgpack"
STATE_FORMAT = "edge-gfs-registry/1"
PACK_FORMAT = "edge-gfs-classes/1"


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
        if entry is None:
            raise RequestError(UNKNOWN_CLASS, f"no class named {name!r}; classes: {', '.join(e.name for e in self.entries)}")
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
    def from_dict(cls, d: dict) -> "Registry":
        if d.get("format") != STATE_FORMAT:
            raise ValueError(f"not an edge-gfs registry (format {d.get('format')!r})")
        dim = int(d["dim"])
        entries = tuple(sorted((_entry_from(c, dim) for c in d["classes"]), key=lambda e: e.id))
        return cls(str(d["model_checksum"]), str(d["model_name"]), tuple(d["class_names"]),
                   tuple(int(i) for i in d["base_ids"]), dim, int(d["version"]), entries,
                   frozenset(int(i) for i in d["used_ids"]))


def _entry_dict(e: ClassEntry) -> dict:
    return {"id": e.id, "name": e.name, "kind": e.kind, "color": list(e.color), "shots": [s.to_dict() for s in e.shots]}


def _entry_from(c: dict, dim: int) -> ClassEntry:
    shots = tuple(Shot.from_dict(s) for s in c["shots"])
    cid = int(c["id"])
    for s in shots:
        if s.sums_raw.shape[1] != dim or s.target != cid:
            raise ValueError(f"shot {s.shot_id[:12]} of class {cid} does not fit (dim {s.sums_raw.shape[1]}, "
                             f"target {s.target})")
    if not 0 <= cid < IGNORE or c["kind"] not in ("base", "novel"):
        raise ValueError(f"bad class entry id={cid} kind={c['kind']!r}")
    return ClassEntry(cid, str(c["name"]), str(c["kind"]), tuple(int(v) for v in c["color"]), shots)


# -- class packs -----------------------------------------------------------------------------------------------
def export_pack(reg: Registry) -> bytes:
    """Everything taught (novel classes and base-class context), tied to the base model by its checksum."""
    taught = [_entry_dict(e) for e in reg.entries if e.shots]
    return pack_msg({"format": PACK_FORMAT, "model_checksum": reg.model_checksum, "model_name": reg.model_name,
                     "dim": reg.dim, "classes": taught})


def import_pack(reg: Registry, data: bytes, limits: Limits = LIMITS) -> Registry:
    """Merge a class pack: classes are matched by name (a new name takes a local id), shots by content.
    All or nothing: one refused class refuses the whole pack. Bumps the version once if anything changed."""
    try:
        pack = msgpack.unpackb(data, raw=False)
        if not isinstance(pack, dict) or pack.get("format") != PACK_FORMAT:
            raise ValueError("not a class pack")
        checksum = str(pack["model_checksum"])
        entries = [_entry_from(c, int(pack["dim"])) for c in pack["classes"]]
    except Exception as e:
        raise RequestError(BAD_REQUEST, f"not an edge-gfs class pack ({e})") from None
    if checksum != reg.model_checksum:
        raise RequestError(MODEL_MISMATCH, f"the pack was made for model {pack.get('model_name')!r} "
                                           f"(checksum {checksum[:12]}), this node runs {reg.model_name!r} "
                                           f"(checksum {reg.model_checksum[:12]})")
    out = reg
    for entry in entries:
        if entry.kind == "base" and out.find(entry.name) is None:
            raise RequestError(BAD_REQUEST, f"the pack adds context to base class {entry.name!r}, unknown here")
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
            return Registry.from_dict(msgpack.unpackb(self.path.read_bytes(), raw=False))
        except Exception as e:
            raise StateError(f"{self.path} is unreadable ({e}); move it away to start with no taught classes") from None

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
