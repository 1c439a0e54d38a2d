"""Teach requests -> replies: the one place the class registry changes.

Why a separate object, run on its own thread: a teach needs a forward pass per shot, which must not hold up
the stream. The teacher builds the next registry and its classifier beside the current ones, saves the
registry atomically, and only then hands the stream one new `Snapshot` reference; the stream picks it up
between two frames. A refused or failed request changes nothing: not the file, not the stream.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from edge_gfs.core.classifier import Classifier, Shot
from edge_gfs.core.segmenter import Segmenter, to_input
from edge_gfs.node.registry import Registry, StateStore, export_pack, import_pack
from edge_gfs.wire import protocol as P

log = logging.getLogger("edge_gfs.node.loop")


@dataclass(frozen=True)
class Snapshot:
    """Everything a frame is segmented with, swapped as one reference so a frame never sees half a teach."""

    version: int
    classifier: Classifier
    classes: list[dict]


def snapshot_of(seg: Segmenter, reg: Registry) -> Snapshot:
    return Snapshot(reg.version, seg.rebuild(reg.shots()), reg.classes())


class Teacher:
    def __init__(self, seg: Segmenter, registry: Registry, store: StateStore | None,
                 publish: Callable[[Snapshot], None], model_name: str, limits: P.Limits = P.LIMITS) -> None:
        self.seg = seg
        self.registry = registry
        self.store = store
        self.publish = publish
        self.model_name = model_name
        self.limits = limits
        self.failures = 0  # internal errors so far: the number in a reply finds its traceback in the log

    # -- entry point ------------------------------------------------------------------------------------------
    def handle(self, payload: bytes) -> dict:
        """Bytes in, reply map out; never raises, whatever the bytes."""
        t0 = time.perf_counter()
        op = "?"
        try:
            req = P.parse_request(payload, self.limits)
            op = req.op
            reply = getattr(self, f"_op_{req.op}")(req)
        except P.RequestError as e:
            log.info("teach %s refused: %s", op, e)
            return P.error_reply(e.code, e.message)
        except Exception:  # a bug must cost one request, not the node
            self.failures += 1
            log.exception("teach %s failed (internal error #%d); nothing changed", op, self.failures)
            return P.error_reply(P.INTERNAL, f"the node could not handle this {op} request and changed nothing; its "
                                             f"log has the details (internal error #{self.failures})")
        if op in ("teach", "forget", "import"):
            log.info("%s %s -> version %s in %.0f ms", op, getattr(req, "name", "") or "", reply.get("version"),
                     (time.perf_counter() - t0) * 1000)
        return reply

    # -- ops --------------------------------------------------------------------------------------------------
    def _op_ping(self, req: P.Request) -> dict:
        return {"ok": True, "model": self.model_name, "version": self.registry.version}

    def _op_list(self, req: P.Request) -> dict:
        return {"ok": True, "version": self.registry.version, "classes": self.registry.classes()}

    def _op_teach(self, req: P.Request) -> dict:
        reg = self.registry
        cid, _new = reg.target_for(req.name, create=req.create, limits=self.limits)
        nxt = reg.with_shots(req.name, cid, self.make_shots(req.shots, cid), color=req.color, limits=self.limits)
        self._commit(nxt)
        return {"ok": True, "id": cid, "version": self.registry.version, "shots": len(self.registry.by_id(cid).shots)}

    def _op_forget(self, req: P.Request) -> dict:
        self._commit(self.registry.without(req.name))
        return {"ok": True, "version": self.registry.version}

    def _op_preview(self, req: P.Request) -> dict:
        reg = self.registry
        size = P.image_size(req.image, "preview image", self.limits, self.limits.max_frame_pixels)  # a frame's size
        cid, _new = reg.target_for(req.name, limits=self.limits)
        shots = self.make_shots(req.shots, cid, also=(size,))
        image = P.decode_image(req.image, "preview image", self.limits, self.limits.max_frame_pixels)
        trial = reg.with_shots(req.name, cid, shots, limits=self.limits)
        clf = self._classifier(trial)
        feats = self.seg.features(to_input([image], self.seg.cfg.input_hw))
        labels = self.seg.label_maps(self.seg.logits(feats, clf), image.shape[:2], clf)[0]
        return {"ok": True, "id": cid, "version": reg.version, "width": int(labels.shape[1]),
                "height": int(labels.shape[0]), "encoding": "mono8", "data": labels.tobytes()}

    def _op_export(self, req: P.Request) -> dict:
        return {"ok": True, "version": self.registry.version, "pack": export_pack(self.registry)}

    def _op_import(self, req: P.Request) -> dict:
        self._commit(import_pack(self.registry, req.pack, self.limits))
        return {"ok": True, "version": self.registry.version, "classes": self.registry.classes()}

    # -- helpers ----------------------------------------------------------------------------------------------
    def make_shots(self, shots: tuple[P.ShotBytes, ...], class_id: int,
                   also: tuple[tuple[int, int], ...] = ()) -> list[Shot]:
        """Check every shot before any forward pass, cheapest checks first: the sizes of all images from their
        headers (with `also`, the request's other images) against the request's pixel budget, then masks and
        label maps (a bad mask refuses the request before an image is decoded), then the images."""
        sizes = [P.image_size(s.image, f"shot {k} image", self.limits) for k, s in enumerate(shots)]
        P.check_request_pixels(sizes + list(also), self.limits)
        masks = [(P.decode_mask(s.mask, (h, w), f"shot {k} mask", self.limits),
                  None if s.labels is None else P.decode_label_map(s.labels, (h, w), f"shot {k} labels", self.limits))
                 for k, (s, (w, h)) in enumerate(zip(shots, sizes))]
        decoded = [(P.decode_image(s.image, f"shot {k} image", self.limits, expect_wh=size), mask, labels)
                   for k, (s, size, (mask, labels)) in enumerate(zip(shots, sizes, masks))]
        try:  # decode_mask/decode_label_map above refused bad masks, naming the shot; one batched pass here
            return self.seg.make_shots(decoded, class_id)
        except ValueError as e:
            raise P.RequestError(P.BAD_MASK, str(e)) from None

    def _classifier(self, reg: Registry) -> Classifier:
        try:
            return self.seg.rebuild(reg.shots())
        except ValueError as e:
            raise P.RequestError(P.BAD_MASK, str(e)) from None

    def _commit(self, nxt: Registry) -> None:
        """Build, save, then publish: the stream only ever sees a registry that is on disk."""
        if nxt is self.registry:
            return
        snap = Snapshot(nxt.version, self._classifier(nxt), nxt.classes())
        if self.store is not None:
            try:
                self.store.save(nxt)
            except OSError as e:
                raise P.RequestError(P.INTERNAL, f"could not save the registry ({e.strerror}); nothing changed") from None
        self.registry = nxt
        self.publish(snap)

