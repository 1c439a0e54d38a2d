"""The operator window's state and drawing, with no window and no sockets (the shell is edge_gfs/commands/operator.py).

Why a separate, GUI-free class: OpenCV windows cannot be opened on the robots and CI machines that install
opencv-python-headless, so everything an operator can do (freeze, box + GrabCut, brush, name, send) is plain
events in, an image and requests out, and the tests drive it exactly as the window does. The session never
talks to the node: it returns a `Request`, the shell performs it with TeachClient and hands the reply back
through `on_reply` / `on_failure`, so a slow or missing node is a message line, not a frozen state.

Keys (see docs/operator.md): space freeze/unfreeze, b box, p brush, e erase, [ ] brush size, c clear,
n type a name (Enter ends, Esc cancels), Enter or s send, v preview, l list, f f forget, h help, q/Esc quit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from edge_gfs.core.labels import mask_problem
from edge_gfs.ui.overlay import class_colors, legend, overlay
from edge_gfs.wire import protocol as P

TOOLS = ("box", "brush", "erase")
BAR_H = 46  # status bar under the frame: state + message line, key help line
STALE_FRAMES = 30  # a label map this many frames older than the live frame is not drawn over it
MASK_BGR = np.array([255, 0, 255], np.uint8)  # working mask tint: magenta is in no CamVid colour
OUTLINE_BGR = (0, 255, 255)
BOX_BGR = (0, 255, 0)
MIN_GRABCUT_SHARE = 0.01  # GrabCut keeping less of the box than this lost the object: use the box instead
GRABCUT_MAX_SIDE = 640  # GrabCut on big camera frames takes seconds; a downscaled copy is enough for a box
KEY_ENTER, KEY_ENTER_NUMPAD, KEY_ESC, KEY_BACKSPACE, KEY_DELETE = 13, 10, 27, 8, 127
HELP = ("space freeze  b box  p brush  e erase  [ ] size  c clear  n name  Enter send  v preview  "
        "l list  f forget  q quit")


@dataclass(frozen=True)
class Request:
    """What the shell must ask the node: op is teach, preview, forget or list (the teach socket's ops)."""

    op: str
    name: str = ""
    image: np.ndarray | None = None  # the frozen BGR frame (teach, preview)
    mask: np.ndarray | None = None  # bool, the frame's size (teach, preview)

    def shots(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.image, self.mask)]


def grabcut_box(image: np.ndarray, rect: tuple[int, int, int, int], iterations: int = 3,
                max_side: int = GRABCUT_MAX_SIDE) -> np.ndarray:
    """Bool mask of the object GrabCut finds inside rect = (x0, y0, x1, y1), inclusive corners.

    Runs on the whole frame (the background model needs the surroundings: cropping tight made GrabCut lose
    cars at the image border), downscaled past max_side for speed, with OpenCV's RNG seeded so the same box
    gives the same mask. Returns an empty mask when GrabCut cannot run (a degenerate or all-covering box)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = rect
    x0, x1 = sorted((int(np.clip(x0, 0, w - 1)), int(np.clip(x1, 0, w - 1))))
    y0, y1 = sorted((int(np.clip(y0, 0, h - 1)), int(np.clip(y1, 0, h - 1))))
    out = np.zeros((h, w), bool)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return out
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) \
        if s < 1 else image
    sx0, sy0 = int(x0 * s), int(y0 * s)
    r = (sx0, sy0, max(2, int(x1 * s) - sx0 + 1), max(2, int(y1 * s) - sy0 + 1))
    gc = np.zeros(small.shape[:2], np.uint8)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(small, gc, r, np.zeros((1, 65)), np.zeros((1, 65)), iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return out
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    if s < 1:
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST)
    out[y0:y1 + 1, x0:x1 + 1] = fg[y0:y1 + 1, x0:x1 + 1] > 0
    return out


class OperatorSession:
    """Live/frozen frame, label overlay, working mask and typed name of one operator window."""

    def __init__(self, alpha: float = 0.5, max_recent: int = 64, frames_hint: str = "--frames") -> None:
        self.alpha = alpha
        self.max_recent = max_recent
        self.frames_hint = frames_hint
        self.recent: OrderedDict[int, np.ndarray] = OrderedDict()  # seq -> frame, to match label maps
        self.live: np.ndarray | None = None
        self.live_seq = -1
        self.pair: tuple[int, np.ndarray, np.ndarray] | None = None  # newest (seq, frame, labels) matched
        self.names: dict[int, str] = {}
        self.colors: dict[int, tuple[int, int, int]] = {}
        self.classes: list[dict] = []
        self.classes_version = -1
        self.frozen: np.ndarray | None = None
        self.frozen_labels: np.ndarray | None = None
        self.mask: np.ndarray | None = None  # uint8 0/1, so cv2 drawing works on it in place
        self.preview: np.ndarray | None = None
        self.preview_name = ""
        self.tool = "box"
        self.radius = 8
        self.name = ""
        self.typing = False
        self._name_before = ""
        self.pending_forget = False
        self.pending_quit = False
        # the window's asynchronous GrabCut: called with (rect, frozen frame); None runs GrabCut inline
        self.box_proposer: Callable[[tuple[int, int, int, int], np.ndarray], None] | None = None
        self.drag_start: tuple[int, int] | None = None
        self.drag_now: tuple[int, int] | None = None
        self.last_paint: tuple[int, int] | None = None
        self.cursor: tuple[int, int] | None = None
        self.quit = False
        self.message = "live: space freezes a frame, then draw a box around an object (h: help)"

    # -- input from the sockets ---------------------------------------------------------------------------
    def on_frame(self, image: np.ndarray, seq: int) -> None:
        self.recent[seq] = image
        while len(self.recent) > self.max_recent:
            self.recent.popitem(last=False)
        self.live, self.live_seq = image, seq

    def on_labels(self, seq: int, labels: np.ndarray) -> None:
        """A label map is drawn only over its own frame (matched by seq), never over a newer one."""
        frame = self.recent.get(seq)
        if frame is not None and frame.shape[:2] == labels.shape:
            self.pair = (seq, frame, labels)

    def on_classes(self, msg: dict) -> None:
        """A `classes` message or a `list` reply: the legend follows the node's registry."""
        self.classes = list(msg.get("classes", []))
        self.names = {int(c["id"]): str(c["name"]) for c in self.classes}
        self.colors = class_colors(self.classes)
        self.classes_version = int(msg.get("version", -1))

    # -- what is on screen ----------------------------------------------------------------------------------
    def shown(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(frame, labels or None) the window shows now."""
        if self.frozen is not None:
            return self.frozen, self.preview if self.preview is not None else self.frozen_labels
        if self.pair is not None and self.pair[0] >= self.live_seq - STALE_FRAMES:
            return self.pair[1], self.pair[2]
        return self.live, None

    def mask_bool(self) -> np.ndarray | None:
        return None if self.mask is None else self.mask.astype(bool)

    def freeze(self) -> bool:
        frame, labels = self.shown()
        if frame is None:
            self.message = f"no frame yet: is a publisher (edge-gfs camera) running on {self.frames_hint}?"
            return False
        self.frozen, self.frozen_labels = frame.copy(), None if labels is None else labels.copy()
        self.mask = np.zeros(frame.shape[:2], np.uint8)
        self.preview = None
        self.message = f"frozen: {self._tool_hint()}"
        return True

    def unfreeze(self) -> None:
        self.frozen = self.frozen_labels = self.mask = self.preview = None
        self.drag_start = self.drag_now = self.last_paint = None

    def _tool_hint(self) -> str:
        return {"box": "drag a box around the object (GrabCut proposes its mask)",
                "brush": f"paint the object (radius {self.radius}; right button erases)",
                "erase": f"erase wrong pixels (radius {self.radius})"}[self.tool]

    # -- mouse ----------------------------------------------------------------------------------------------
    def on_mouse(self, event: int, x: int, y: int, flags: int) -> None:
        """OpenCV mouse events in window coordinates; pressing on the live frame freezes it first."""
        frame, _ = self.shown()
        if frame is None:
            return
        h, w = frame.shape[:2]
        inside = 0 <= x < w and 0 <= y < h
        x, y = int(np.clip(x, 0, w - 1)), int(np.clip(y, 0, h - 1))
        self.cursor = (x, y) if inside else None
        down = event in (cv2.EVENT_LBUTTONDOWN, cv2.EVENT_RBUTTONDOWN)
        if self.frozen is None:
            if not (down and inside and self.freeze()):
                return
        if self.tool == "box":
            self._box(event, x, y, flags, inside)
        else:
            self._paint(event, x, y, flags, inside)

    def _box(self, event: int, x: int, y: int, flags: int, inside: bool) -> None:
        if event == cv2.EVENT_LBUTTONDOWN and inside:
            self.drag_start = self.drag_now = (x, y)
        elif event == cv2.EVENT_MOUSEMOVE and self.drag_start is not None and flags & cv2.EVENT_FLAG_LBUTTON:
            self.drag_now = (x, y)
        elif event == cv2.EVENT_LBUTTONUP and self.drag_start is not None:
            (x0, y0), self.drag_start, self.drag_now = self.drag_start, None, None
            self.box(x0, y0, x, y)

    def box(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """GrabCut inside the box; its mask is added to the working mask (several boxes, several objects).
        With a `box_proposer` (the window's worker thread) GrabCut runs there and the result comes back through
        apply_box, so the window keeps drawing while it works (0.3-2.4 s on a CPU)."""
        if abs(x1 - x0) < 3 or abs(y1 - y0) < 3:
            self.message = "box too small: drag from one corner of the object to the other"
            return
        if self.box_proposer is not None:
            self.message = "GrabCut is working on the box ..."
            self.box_proposer((x0, y0, x1, y1), self.frozen)
        else:
            self.apply_box((x0, y0, x1, y1), grabcut_box(self.frozen, (x0, y0, x1, y1)))

    def apply_box(self, rect: tuple[int, int, int, int], fg: np.ndarray, frozen: np.ndarray | None = None) -> None:
        """Add GrabCut's proposal for `rect` to the working mask, unless the frame it ran on is no longer frozen."""
        if self.frozen is None or (frozen is not None and frozen is not self.frozen):
            return
        x0, y0, x1, y1 = rect
        fg = fg.copy()
        if fg.sum() < MIN_GRABCUT_SHARE * (abs(x1 - x0) + 1) * (abs(y1 - y0) + 1):
            fg[:] = False
            fg[min(y0, y1):max(y0, y1) + 1, min(x0, x1):max(x0, x1) + 1] = True
            self.message = "GrabCut found no object in the box: the box itself is the mask; erase (e) what is not"
        else:
            self.message = f"GrabCut proposed {int(fg.sum())} px: fix with brush (p) or erase (e), then n, Enter"
        self.mask[fg] = 1
        self.preview = None

    def _paint(self, event: int, x: int, y: int, flags: int, inside: bool) -> None:
        value = 1 if self.tool == "brush" else 0
        if event in (cv2.EVENT_LBUTTONDOWN, cv2.EVENT_RBUTTONDOWN) and inside:
            value = value if event == cv2.EVENT_LBUTTONDOWN else 1 - value
            self.last_paint = (x, y)
            self.paint(x, y, x, y, value)
        elif event == cv2.EVENT_MOUSEMOVE and self.last_paint is not None and \
                flags & (cv2.EVENT_FLAG_LBUTTON | cv2.EVENT_FLAG_RBUTTON):
            value = value if flags & cv2.EVENT_FLAG_LBUTTON else 1 - value
            self.paint(*self.last_paint, x, y, value)
            self.last_paint = (x, y)
        elif event in (cv2.EVENT_LBUTTONUP, cv2.EVENT_RBUTTONUP):
            self.last_paint = None

    def paint(self, x0: int, y0: int, x1: int, y1: int, value: int) -> None:
        """A stroke of the brush radius: a line, so a fast drag leaves no gaps between mouse events."""
        cv2.line(self.mask, (x0, y0), (x1, y1), int(value), thickness=2 * self.radius + 1)
        cv2.circle(self.mask, (x1, y1), self.radius, int(value), -1)
        self.preview = None

    # -- keys -----------------------------------------------------------------------------------------------
    def on_key(self, key: int) -> Request | None:
        """One cv2.waitKey code (-1 = none). Returns the request the shell must send, if any."""
        if key < 0:
            return None
        if self.typing:
            self._type(key)
            return None
        ch = chr(key) if 32 <= key < 127 else ""
        if self.pending_forget:
            self.pending_forget = False
            if ch == "f":
                self.message = f"forgetting {self.name} ..."
                return Request("forget", self.name)
            self.message = "forget cancelled"
            return None  # the key only cancelled: pressing it again does what it says
        if self.pending_quit:
            self.pending_quit = False
            self.quit = ch == "q" or key == KEY_ESC
            self.message = "quit cancelled: the mask is kept" if not self.quit else self.message
            return None
        if ch == " ":
            if self.frozen is None:
                self.freeze()
            else:
                self.unfreeze()
                self.message = "live: space freezes a frame"
        elif ch in ("b", "p", "e"):
            self.tool = {"b": "box", "p": "brush", "e": "erase"}[ch]
            self.message = f"{self.tool}: {self._tool_hint()}"
        elif ch in ("[", "]"):
            self.radius = int(np.clip(self.radius + (-2 if ch == "[" else 2), 1, 99))
            self.message = f"brush radius {self.radius}"
        elif ch == "c":
            if self.mask is not None:
                self.mask[:] = 0
                self.preview = None
            self.message = "mask cleared"
        elif ch == "n":
            self.typing, self._name_before, self.name = True, self.name, ""
            self.message = "type the class name, Enter to end, Esc to cancel"
        elif key in (KEY_ENTER, KEY_ENTER_NUMPAD) or ch == "s":
            return self._shot_request("teach")
        elif ch == "v":
            return self._shot_request("preview")
        elif ch == "l":
            self.message = "listing classes ..."
            return Request("list")
        elif ch == "f":
            if not self.name.strip():
                self.message = "no class name: press n and type the name of the class to forget"
            else:
                self.pending_forget = True
                self.message = f"press f again to forget {self.name.strip()} on the node; any other key cancels"
        elif ch == "h" or ch == "?":
            self.message = HELP
        elif ch == "q" or key == KEY_ESC:
            if self.unsent():
                self.pending_quit = True
                self.message = "the mask is not sent: press q (or Esc) again to quit without it; any other key stays"
            else:
                self.quit = True
        else:
            self.message = f"key {ch or key} does nothing; h shows the keys"
        return None

    def unsent(self) -> bool:
        """A frozen frame with a painted mask that was not sent: quitting would lose the operator's work."""
        return self.frozen is not None and self.mask is not None and bool(self.mask.any())

    def _type(self, key: int) -> None:
        if key in (KEY_ENTER, KEY_ENTER_NUMPAD):
            self.typing = False
            self.name = self.name.strip()
            self.message = f"class name {self.name!r}: Enter sends the mask, v previews" if self.name \
                else "no class name: press n to type one"
        elif key == KEY_ESC:
            self.typing, self.name = False, self._name_before
            self.message = "name unchanged"
        elif key in (KEY_BACKSPACE, KEY_DELETE):
            self.name = self.name[:-1]
        elif 32 <= key < 127 and len(self.name) < P.LIMITS.max_name_chars:
            self.name += chr(key)

    def problem(self) -> str | None:
        """Why the current shot cannot be sent yet, as the next step to take; None when it can."""
        if self.frozen is None or self.mask is None:
            return "nothing to send: freeze a frame (space) and draw a box around the object first"
        problem = mask_problem(self.mask)
        if problem:
            return f"{problem} (box: b, paint: p, erase: e)"
        try:
            P.check_name(self.name)
        except P.RequestError as e:
            return f"{e.message}: press n, type the class name, Enter"
        return None

    def _shot_request(self, op: str) -> Request | None:
        why = self.problem()
        if why is not None:
            self.message = why
            return None
        name = self.name.strip()
        self.message = f"{'sending' if op == 'teach' else 'previewing'} {name} ..."
        return Request(op, name, self.frozen.copy(), self.mask.astype(bool))

    # -- replies --------------------------------------------------------------------------------------------
    def on_reply(self, req: Request, result: object) -> None:
        """result: the reply map (teach, forget, list) or the label map ndarray (preview)."""
        if req.op == "teach":
            r = result
            self.unfreeze()
            self.message = (f"taught {req.name}: id {r['id']}, {r['shots']} shot(s), classes version {r['version']}; "
                            f"live again: freeze another frame to add a shot")
        elif req.op == "preview":
            self.preview, self.preview_name = np.asarray(result), req.name
            cid = self._preview_id()
            share = 0.0 if cid is None else 100.0 * float((self.preview == cid).mean())
            self.message = (f"preview: {req.name} would cover {share:.1f}% of this frame; Enter sends, "
                            f"c clears")
        elif req.op == "forget":
            self.message = f"forgot {req.name}: classes version {result['version']}"
        elif req.op == "list":
            self.on_classes(result)
            listed = ", ".join(f"{c['name']}({c['shots']})" if c.get("kind") == "novel" else c["name"]
                               for c in result.get("classes", []))
            self.message = f"version {result.get('version')}: {listed}"

    def on_failure(self, req: Request, text: str) -> None:
        self.message = f"{req.op} {req.name} failed: {text}".replace("  ", " ")

    def _preview_id(self) -> int | None:
        """The previewed class's id: its own if the node has the name, else the one id the node has not named."""
        want = self.preview_name.casefold()
        for cid, n in self.names.items():
            if n.casefold() == want:
                return cid
        new = [int(i) for i in np.unique(self.preview) if int(i) != 255 and int(i) not in self.names]
        return new[0] if len(new) == 1 else None

    # -- drawing --------------------------------------------------------------------------------------------
    def legend_names(self) -> dict[int, str]:
        names = dict(self.names)
        if self.preview is not None and (cid := self._preview_id()) is not None and cid not in names:
            names[cid] = f"{self.preview_name}?"
        return names

    def render(self, blank_hw: tuple[int, int] = (360, 480)) -> np.ndarray:
        """The window's BGR image: frame + label overlay + working mask | legend, over a status bar."""
        frame, labels = self.shown()
        if frame is None:
            img = np.full((*blank_hw, 3), 32, np.uint8)
            cv2.putText(img, f"waiting for frames on {self.frames_hint}", (10, blank_hw[0] // 2),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        elif labels is not None and labels.shape == frame.shape[:2]:
            alpha = self.alpha if self.frozen is None or self.preview is not None else 0.3 * self.alpha
            img = overlay(frame, labels, alpha, self.colors)
        else:
            img = frame.copy()
        if self.frozen is not None:
            self._draw_work(img)
        h, w = img.shape[:2]
        tag = "FROZEN" if self.frozen is not None else "LIVE"
        cv2.putText(img, tag, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, tag, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        panel = np.concatenate([img, legend(self.legend_names(), h, self.colors)], axis=1)
        return np.concatenate([panel, self._status_bar(panel.shape[1])], axis=0)

    def _draw_work(self, img: np.ndarray) -> None:
        m = self.mask.astype(bool)
        if m.any():
            img[m] = (img[m] * 0.5 + MASK_BGR * 0.5).astype(np.uint8)
            contours, _ = cv2.findContours(self.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(img, contours, -1, OUTLINE_BGR, 1)
        if self.drag_start is not None and self.drag_now is not None:
            cv2.rectangle(img, self.drag_start, self.drag_now, BOX_BGR, 2)
        if self.tool != "box" and self.cursor is not None:
            cv2.circle(img, self.cursor, self.radius, OUTLINE_BGR if self.tool == "brush" else (0, 0, 255), 1)

    def _status_bar(self, width: int) -> np.ndarray:
        bar = np.full((BAR_H, width, 3), 40, np.uint8)
        name = (self.name + "_") if self.typing else (self.name or "-")
        state = f"[{self.tool} r{self.radius}] name: {name} | {self.message}"
        cv2.putText(bar, state, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(bar, HELP, (6, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (170, 200, 170), 1, cv2.LINE_AA)
        return bar
