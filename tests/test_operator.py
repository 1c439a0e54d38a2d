"""The operator window without a window: its session driven by the events OpenCV would deliver, on real CamVid
frames, then against a real node (teach, preview, list, forget over the teach socket), then the command itself
on the headless OpenCV the project installs.

Car is held out of camvid-fold0, so teaching it from a box drawn around a car is what an operator would do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from node_harness import cli, require_camvid, running_node

from edge_gfs.commands.common import open_window
from edge_gfs.commands.operator import WINDOW, handle
from edge_gfs.core.config import CAMVID_CLASSES
from edge_gfs.ui.operator_session import (BAR_H, HELP, NODE_SILENT_S, OperatorSession, ellipse_or_box, grabcut_box,
                                          propose_mask, wrap)
from edge_gfs.ui.overlay import class_colors, color_for, legend, overlay
from edge_gfs.wire.client import segment_via

CAR, PEDESTRIAN = 8, 9
assert CAMVID_CLASSES[CAR] == "Car" and CAMVID_CLASSES[PEDESTRIAN] == "Pedestrian"
BOX_FRAME = "0006R0_f02640"  # one car, well separated from its background: the GrabCut test frame
SECOND_FRAME = "0016E5_05190"  # another train frame with one large car: the second shot
# Measured 0.806 IoU (propose_mask: GrabCut, 3 iterations, seeded, centre seed) against the GT car pixels inside
# the box on BOX_FRAME, a bright frame where plain GrabCut gets 0.879; the box alone scores 0.601. The centre seed
# costs a little here and rescues the dark test frames (bench/results/mask_proposals.md). The floor leaves room
# for other OpenCV versions.
GRABCUT_IOU_FLOOR = 0.75
# Measured median IoU 0.654 on the first 24 test cars and pedestrians (plain GrabCut: 0.000).
PROPOSAL_OBJECTS = 24
PROPOSAL_MEDIAN_FLOOR = 0.55
SPACE, ENTER, ESC, BACKSPACE = 32, 13, 27, 8
MEASURED: dict = {}


@pytest.fixture(scope="module")
def data():
    return require_camvid()


def car_box(labels: np.ndarray, pad: int = 4) -> tuple[int, int, int, int]:
    """The box an operator would draw: around the largest ground-truth car, a few pixels loose."""
    n, _, stats, _ = cv2.connectedComponentsWithStats((labels == CAR).astype(np.uint8))
    assert n > 1, "no car in this frame"
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[i, :4])
    hh, ww = labels.shape
    return max(0, x - pad), max(0, y - pad), min(ww - 1, x + w + pad), min(hh - 1, y + h + pad)


def drag(s: OperatorSession, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    s.on_mouse(cv2.EVENT_LBUTTONDOWN, x0, y0, cv2.EVENT_FLAG_LBUTTON)
    s.on_mouse(cv2.EVENT_MOUSEMOVE, (x0 + x1) // 2, (y0 + y1) // 2, cv2.EVENT_FLAG_LBUTTON)
    s.on_mouse(cv2.EVENT_MOUSEMOVE, x1, y1, cv2.EVENT_FLAG_LBUTTON)
    s.on_mouse(cv2.EVENT_LBUTTONUP, x1, y1, 0)


def type_name(s: OperatorSession, name: str) -> None:
    s.on_key(ord("n"))
    for ch in name:
        s.on_key(ord(ch))
    s.on_key(ENTER)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def frozen_session(image: np.ndarray) -> OperatorSession:
    s = OperatorSession()
    s.on_frame(image, 0)
    assert s.on_key(SPACE) is None and s.frozen is not None
    return s


def test_box_around_a_car_makes_grabcut_propose_its_mask(data):
    img, lab = data.read("train", BOX_FRAME)
    box = car_box(lab)
    s = frozen_session(img)
    drag(s, box)
    x0, y0, x1, y1 = box
    inside = np.zeros(lab.shape, bool)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    gt = (lab == CAR) & inside
    got = iou(s.mask_bool(), gt)
    box_only = iou(inside, gt)
    MEASURED["grabcut_iou"] = got
    print(f"\nGrabCut IoU vs the GT car in the box: {got:.3f} (the box itself: {box_only:.3f})")
    assert got >= GRABCUT_IOU_FLOOR
    assert got > box_only + 0.15  # GrabCut did the work, not the box
    assert not (s.mask_bool() & ~inside).any()
    assert "GrabCut" in s.message
    drag(s, box)  # the same box again gives the same mask: the RNG is seeded
    assert iou(s.mask_bool(), gt) == got


def test_a_box_where_grabcut_finds_nothing_keeps_its_middle_and_says_so():
    """A flat wall gives GrabCut no colours to separate: the mask is the middle of the box (never empty, never
    the corners) and the message says GrabCut found no outline and how to fix the mask."""
    s = frozen_session(np.full((120, 160, 3), 90, np.uint8))
    drag(s, (40, 30, 120, 90))
    inscribed = ellipse_or_box((120, 160), (40, 30, 120, 90))
    assert s.mask[60, 80] and not s.mask[30, 40] and not (s.mask.astype(bool) & ~inscribed).any()
    assert 0.2 < s.mask.sum() / (81 * 61) < 0.8
    assert "could not tell" in s.message and "erase" in s.message
    s.mask[:] = 1
    type_name(s, "Wall")
    assert s.on_key(ENTER) is None and "whole image" in s.message and "erase" in s.message  # the node would refuse it


def test_grabcut_can_run_off_the_window_thread_and_a_stale_result_is_dropped(data):
    """The window hands GrabCut to a thread (box_proposer) and applies its result later; a result for a frame
    that is no longer frozen must not land on the new one."""
    img, lab = data.read("train", BOX_FRAME)
    s = frozen_session(img)
    asked = []
    s.box_proposer = lambda rect, frozen: asked.append((rect, frozen))
    drag(s, car_box(lab))
    assert len(asked) == 1 and not s.mask.any() and "working" in s.message
    rect, frozen = asked[0]
    fg, found = propose_mask(frozen, rect)  # what the thread computes
    s.apply_box(rect, fg, found, frozen)
    assert np.array_equal(s.mask.astype(bool), fg) and "GrabCut proposed" in s.message
    s.on_key(SPACE)
    s.on_key(SPACE)  # unfreeze and freeze again: a new frozen frame, an empty mask
    s.apply_box(rect, fg, found, frozen)
    assert not s.mask.any()


def test_box_proposals_on_dark_test_frames_beat_plain_grabcut(data):
    """bench/mask_proposals.py on a fixed handful: the first PROPOSAL_OBJECTS cars and pedestrians of the test
    split (dusk sequences, where plain GrabCut loses most objects). The floor is the proposal's median IoU."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from mask_proposals import iou as bench_iou
    from mask_proposals import objects

    found = []
    for name in data.names("test"):
        img, lab = data.read("test", name)
        found += [(img, rect, truth) for c in (CAR, PEDESTRIAN) for rect, truth in objects(lab, c)]
        if len(found) >= PROPOSAL_OBJECTS:
            break
    shipped = [bench_iou(propose_mask(img, rect)[0], truth) for img, rect, truth in found[:PROPOSAL_OBJECTS]]
    plain = [bench_iou(grabcut_box(img, rect), truth) for img, rect, truth in found[:PROPOSAL_OBJECTS]]
    print(f"\nproposal median IoU {np.median(shipped):.3f} (plain GrabCut {np.median(plain):.3f}) "
          f"on {len(shipped)} objects")
    assert np.median(shipped) >= PROPOSAL_MEDIAN_FLOOR
    assert np.median(shipped) > np.median(plain) + 0.2


def test_quitting_with_an_unsent_mask_asks_first():
    s = frozen_session(np.full((120, 160, 3), 90, np.uint8))
    s.on_key(ord("q"))
    assert s.quit  # nothing painted yet: nothing to lose
    s = frozen_session(np.full((120, 160, 3), 90, np.uint8))
    drag(s, (40, 30, 120, 90))
    s.on_key(ESC)
    assert not s.quit and "again to quit" in s.message
    s.on_key(ord("b"))  # any other key stays, and only cancels
    assert not s.quit and "cancelled" in s.message and s.mask.any() and s.tool == "box"
    s.on_key(ord("q"))
    s.on_key(ord("q"))
    assert s.quit


def test_the_legend_wraps_into_columns_instead_of_dropping_classes():
    names = {i: f"class {i}" for i in range(40)}
    strip = legend(names, 200)  # 9 rows a column at this height: 40 classes need 5 columns
    assert strip.shape == (200, 170 * 5, 3)
    last_column = strip[:, 170 * 4:]
    assert (last_column < 250).any()  # the 37th-40th classes are drawn, not dropped
    assert legend({0: "Sky"}, 200).shape == (200, 170, 3)


def test_brush_adds_erase_removes_clear_empties(data):
    img, _ = data.read("train", BOX_FRAME)
    s = OperatorSession()
    s.on_frame(img, 0)
    s.on_key(ord("p"))
    s.on_mouse(cv2.EVENT_LBUTTONDOWN, 100, 100, cv2.EVENT_FLAG_LBUTTON)  # pressing on the live frame freezes it
    assert s.frozen is not None
    dot = int(s.mask.sum())
    assert abs(dot - np.pi * s.radius ** 2) < 0.3 * np.pi * s.radius ** 2 and s.mask[100, 100]
    s.on_mouse(cv2.EVENT_MOUSEMOVE, 200, 100, cv2.EVENT_FLAG_LBUTTON)
    s.on_mouse(cv2.EVENT_LBUTTONUP, 200, 100, 0)
    stroke = int(s.mask.sum())
    assert stroke > dot + 90 * 2 * s.radius * 0.9 and s.mask[100, 150] and s.mask[100, 200]
    s.on_mouse(cv2.EVENT_MOUSEMOVE, 300, 300, 0)  # moving without a button paints nothing
    assert int(s.mask.sum()) == stroke
    s.on_key(ord("]"))
    assert s.radius == 10
    s.on_key(ord("e"))
    s.on_mouse(cv2.EVENT_LBUTTONDOWN, 150, 100, cv2.EVENT_FLAG_LBUTTON)
    s.on_mouse(cv2.EVENT_LBUTTONUP, 150, 100, 0)
    assert not s.mask[100, 150] and s.mask[100, 100] and int(s.mask.sum()) < stroke
    s.on_key(ord("c"))
    assert int(s.mask.sum()) == 0 and s.frozen is not None
    s.on_key(SPACE)
    assert s.frozen is None and s.mask is None


def test_sending_needs_a_frozen_frame_a_mask_and_a_name(data):
    img, lab = data.read("train", BOX_FRAME)
    s = OperatorSession()
    assert s.on_key(SPACE) is None and "no frame" in s.message  # nothing published yet
    s.on_frame(img, 0)
    assert s.on_key(ENTER) is None and "freeze" in s.message
    s.on_key(SPACE)
    assert s.on_key(ENTER) is None and "mask is empty" in s.message
    assert s.on_key(ord("v")) is None and "mask is empty" in s.message
    drag(s, car_box(lab))
    assert s.on_key(ENTER) is None and "press n" in s.message  # no name yet
    s.on_key(ord("n"))
    for ch in "Cat":
        s.on_key(ord(ch))
    s.on_key(BACKSPACE)
    s.on_key(ord("r"))
    assert s.on_key(ord("q")) is None and not s.quit  # while typing, letters are the name
    s.on_key(BACKSPACE)
    s.on_key(ENTER)
    assert s.name == "Car"
    s.on_key(ord("n"))
    s.on_key(ord("x"))
    s.on_key(ESC)  # cancel: the old name stays
    assert s.name == "Car" and not s.quit
    req = s.on_key(ENTER)
    assert req is not None and req.op == "teach" and req.name == "Car"
    assert req.image.shape == img.shape and req.mask.dtype == bool and req.mask.sum() == s.mask.sum()
    assert s.on_key(ord("f")) is None and s.on_key(ord("x")) is None and "cancelled" in s.message
    s.on_key(ord("q"))  # the teach is not answered yet, so the mask still counts as unsent: asked once more
    assert not s.quit
    s.on_key(ord("q"))
    assert s.quit


def test_render_shows_the_overlay_the_mask_and_the_legend(data):
    img, lab = data.read("train", BOX_FRAME)
    h, w = lab.shape
    s = OperatorSession()
    s.on_frame(img, 7)
    s.on_labels(7, lab)  # a real label map of this frame (the ground truth stands in for the node's)
    classes = [{"id": i, "name": n, "kind": "base", "color": list(color_for(i)), "shots": 0}
               for i, n in enumerate(CAMVID_CLASSES[:8])]
    classes[3]["color"] = [255, 230, 0]  # the node's table decides the colours, not the default palette
    s.on_classes({"version": 0, "classes": classes})
    out = s.render()
    names = dict(enumerate(CAMVID_CLASSES[:8]))
    colors = class_colors(classes)
    strip = legend(names, h, colors)
    assert out.shape == (h + BAR_H, w + strip.shape[1], 3) and out.dtype == np.uint8
    assert np.array_equal(out[:h, w:], strip) and not np.array_equal(strip, legend(names, h))
    assert np.array_equal(out[30:h, :w], overlay(img, lab, 0.5, colors)[30:])  # below the LIVE tag
    s.on_frame(img, 8 + 40)  # a much newer frame without its label map: shown plain, not under stale labels
    assert np.array_equal(s.render()[30:h, :w], img[30:])
    s.on_key(SPACE)
    drag(s, car_box(lab))
    frozen = s.render()
    assert frozen.shape == out.shape
    m = s.mask_bool()
    assert np.abs(frozen[:h, :w][m].astype(int) - img[m]).mean() > 20  # the working mask is tinted
    assert np.array_equal(frozen[h - 1, :w][~m[h - 1]], img[h - 1][~m[h - 1]])


def test_render_scales_for_the_screen_with_text_wrapped_never_clipped(data):
    """At scale 2 (a 1080p screen) the picture doubles and the text is drawn at that size; the status and key
    lines wrap at word boundaries instead of running off the window."""
    img, lab = data.read("train", BOX_FRAME)
    h, w = lab.shape
    s = OperatorSession()
    s.on_frame(img, 1)
    s.on_labels(1, lab)
    s.message = "a long message " * 12
    one, two = s.render(), s.render(scale=2.0)
    assert s.size_at_scale_1() == one.shape[:2]
    assert abs(two.shape[0] - 2 * one.shape[0]) <= 2 and abs(two.shape[1] - 2 * one.shape[1]) <= 2
    lines = wrap(HELP, 300, 0.45)  # a narrow window: the key help takes several lines
    assert len(lines) >= 3 and all(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] <= 300 for t in lines)
    assert sum((t.split() for t in lines), []) == HELP.split()  # every word kept whole, in order
    assert any("  " in t for t in lines)  # the two-space groups of the key help survive
    bar = two[2 * h + 4:]
    ink_rows = np.flatnonzero((bar.max(axis=(1, 2)) > 150))
    assert ink_rows.size > 0 and np.diff(ink_rows).max() > 8  # separate text lines, each taller than at scale 1
    assert all(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.9, 2)[0][0] <= two.shape[1] - 24
               for t in wrap(s.message, two.shape[1] - 24, 0.9))


def test_a_silent_node_gets_a_banner_and_its_return_asks_for_the_classes(data):
    """No label map for NODE_SILENT_S: a red banner says so (the window keeps running, ZeroMQ reconnects);
    the first label map after it clears the banner and asks the shell to list the classes again."""
    img, lab = data.read("train", BOX_FRAME)
    now = [100.0]
    s = OperatorSession(labels_hint="tcp://127.0.0.1:5556", clock=lambda: now[0])
    s.on_frame(img, 1)
    assert s.node_banner() is None  # just started
    now[0] += NODE_SILENT_S + 1
    assert "yet" in s.node_banner() and "tcp://127.0.0.1:5556" in s.node_banner()
    s.on_labels(1, lab)
    assert s.node_banner() is None and not s.want_list  # the first map is not a return
    plain = s.render()
    now[0] += 10
    banner = s.node_banner()
    assert banner is not None and "silent 10 s" in banner and "reconnecting" in banner
    shown = s.render()
    assert shown.shape == plain.shape
    top = shown[:20, :lab.shape[1]].reshape(-1, 3).astype(int)
    assert np.median(top[:, 2]) > 150 and np.median(top[:, 0]) < 60  # a red band over the picture
    s.on_labels(1, lab)
    assert s.node_banner() is None and s.want_list


def test_teach_preview_list_and_forget_through_a_real_node(tmp_path, data):
    with running_node(tmp_path) as w:
        s = OperatorSession()
        s.on_classes(w.sub.next("classes", 10))
        assert "Car" not in s.names.values()
        for k, name in enumerate([BOX_FRAME, SECOND_FRAME]):
            img, lab = data.read("train", name)
            lm = segment_via(w.pub, w.sub, image=img)  # the node labels the live frame the window shows
            s.on_frame(img, lm.seq)
            s.on_labels(lm.seq, lm.labels)
            s.on_key(SPACE)
            assert s.frozen_labels is not None and s.frozen_labels.shape == lab.shape
            drag(s, car_box(lab))
            if k == 0:
                type_name(s, "Car")
                assert handle(s, w.teach, s.on_key(ord("v"))), s.message
                assert s.preview.shape == lab.shape and (s.preview == CAR).any()
                assert s.legend_names()[CAR] == "Car?" and "%" in s.message
                assert s.render().shape[:2] == (lab.shape[0] + BAR_H, lab.shape[1] + 170)
                assert "Car" not in [c["name"] for c in w.teach.list()["classes"]]  # a preview commits nothing
            req = s.on_key(ENTER)
            assert req is not None and req.op == "teach" and req.name == "Car"
            assert handle(s, w.teach, req), s.message  # the same TeachClient as `edge-gfs teach`
            assert s.frozen is None and "taught Car" in s.message  # live again, ready for the next shot
            listed = {c["name"]: c for c in w.teach.list()["classes"]}
            assert listed["Car"]["id"] == CAR and listed["Car"]["kind"] == "novel"
            assert listed["Car"]["shots"] == k + 1  # the second send adds a shot to the class
        assert handle(s, w.teach, s.on_key(ord("l")))
        assert s.names[CAR] == "Car" and "Car(2)" in s.message
        assert s.on_key(ord("f")) is None and "again" in s.message
        req = s.on_key(ord("f"))
        assert req is not None and req.op == "forget"
        assert handle(s, w.teach, req) and "forgot Car" in s.message
        assert "Car" not in [c["name"] for c in w.teach.list()["classes"]]
        s.on_key(ord("f"))
        assert not handle(s, w.teach, s.on_key(ord("f")))  # forgetting twice: the node refuses, we say why
        assert "unknown_class" in s.message


def test_command_without_a_display_says_what_to_do_and_never_touches_highgui(monkeypatch):
    """With no display the GUI build of OpenCV would abort the process (exit 134) on its first window call, so
    the check comes first: one line, exit 2, whatever OpenCV is installed (and this test run cannot abort)."""
    r = cli("operator", drop_env=("DISPLAY", "WAYLAND_DISPLAY"))
    assert r.returncode == 2, r.stderr
    assert "no display" in r.stderr and "xvfb-run" in r.stderr and "edge-gfs teach" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert "no display" in open_window(WINDOW)


def test_command_help_has_examples_and_keys():
    r = cli("operator", "--help")
    assert r.returncode == 0
    assert "edge-gfs operator" in r.stdout and "example" in r.stdout and "space freeze" in r.stdout
