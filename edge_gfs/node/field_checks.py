"""Checks for maps that come from outside the node: class packs (any client) and the registry file (a disk that
may have been edited, truncated or written by a buggy version).

Why every field, every time: a pack is client input like a teach request, and the registry file is read at
each start, so one bad value taken once (a NaN statistic paints every pixel one class) would come back after
every restart. Each check raises Invalid with our own words, never the input's.
"""

from __future__ import annotations

import msgpack
import numpy as np

from edge_gfs.core.classifier import LEGACY_MODES, Shot
from edge_gfs.core.labels import MASK, SUPPORT_MODES

# Bounds on one shot's statistics. Real features average |x| < 4 per element (camvid-fold0 registries), so a
# mean of 1e6 is no feature a model makes; with counts below 2^24 (more feature cells than the largest image
# has pixels) the pooled sums of every shot the node can hold stay far from float32 overflow (-> inf -> NaN).
MAX_MEAN = 1e6
MAX_COUNT = 1 << 24
MAX_DIM = 1 << 16


class Invalid(ValueError):
    """A field of a class pack or the registry file that breaks an invariant. The message is ours: it says
    what is wrong and names a class by a clipped name at most, so a refusal never echoes a client's bytes."""


def fields(d: object, what: str, need: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """A map with these keys and no others (an unknown key is a damaged or foreign file, never ignored data)."""
    if not isinstance(d, dict):
        raise Invalid(f"{what} is not a map")
    missing = [k for k in need if k not in d]
    if missing:
        raise Invalid(f"{what} lacks {', '.join(missing)}")
    if set(d) - set(need) - set(optional):
        raise Invalid(f"{what} has fields this node does not know")
    return d


def integer(v: object, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:  # not bool, not float: msgpack keeps the type it was given
        raise Invalid(f"{what} must be an integer in {lo}..{hi}")
    return v


def items(v: object, what: str, most: int) -> list:
    if not isinstance(v, list) or len(v) > most:
        raise Invalid(f"{what} must be a list of at most {most}")
    return v


def text(v: object, what: str, most: int) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= most or not v.isprintable():
        raise Invalid(f"{what} must be 1..{most} printable characters")
    return v


def checksum(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 128 or v.strip("0123456789abcdef"):
        raise Invalid("the model checksum must be lowercase hex")
    return v


def unpack(data: object, what: str) -> dict:
    if not isinstance(data, (bytes, bytearray)):
        raise Invalid(f"{what} is not bytes")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises a zoo of types for garbage; their text may quote the input
        raise Invalid(f"{what} is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise Invalid(f"{what} is not a msgpack map")
    return obj


def shot_from(d: object, what: str, cid: int, dim: int, base_ids: frozenset[int]) -> Shot:
    """A shot that keeps Shot's invariants (shot_from_features): it teaches its class, which has a pixel in it;
    its other rows are base classes, ids increasing; finite sums no larger than their counts allow."""
    d = fields(d, what, ("shot_id", "target", "class_ids", "sums_raw", "sums_unit", "counts", "dim"), ("mode",))
    sid, ids, mode = d["shot_id"], d["class_ids"], d.get("mode", MASK)
    if not (isinstance(sid, str) and 0 < len(sid) <= 128 and sid.isprintable()):
        raise Invalid(f"{what}: the shot id must be 1..128 printable characters")
    if type(d["target"]) is not int or d["target"] != cid:
        raise Invalid(f"{what}: its target must be its class's id {cid}")
    if not (isinstance(ids, list) and all(type(v) is int for v in ids) and ids == sorted(set(ids))
            and cid in ids and set(ids) <= base_ids | {cid}):
        raise Invalid(f"{what}: its class ids must be increasing, hold {cid} and otherwise base classes only")
    if type(d["dim"]) is not int or d["dim"] != dim:
        raise Invalid(f"{what}: its dim is not the registry's {dim}")
    k = len(ids)
    for key, size in (("sums_raw", k * dim * 8), ("sums_unit", k * dim * 8), ("counts", k * 8)):
        if not isinstance(d[key], bytes) or len(d[key]) != size:
            raise Invalid(f"{what}: {key} must be {size} bytes ({k} classes, dim {dim})")
    if not (isinstance(mode, str) and LEGACY_MODES.get(mode, mode) in SUPPORT_MODES):
        raise Invalid(f"{what}: its mode must be one of {', '.join(SUPPORT_MODES)}")
    shot = Shot.from_dict(d)
    if not (np.isfinite(shot.sums_raw).all() and np.isfinite(shot.sums_unit).all()):
        raise Invalid(f"{what} holds a statistic that is not finite (NaN or inf)")
    if ((shot.counts < 0) | (shot.counts > MAX_COUNT)).any():
        raise Invalid(f"{what} has a pixel count outside 0..{MAX_COUNT}")
    if shot.counts[ids.index(cid)] < 1:
        raise Invalid(f"{what} has no pixel of its class")
    bound = MAX_MEAN * shot.counts[:, None]
    if (np.abs(shot.sums_raw) > bound).any() or (np.abs(shot.sums_unit) > bound).any():
        raise Invalid(f"{what} holds feature sums too large for its pixel counts")
    return shot
