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

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from edge_gfs.core.labels import mask_problem
from edge_gfs.ui.overlay import LEGEND_COLUMN_W, class_colors, legend, legend_columns, overlay
from edge_gfs.wire import protocol as P

TOOLS = ("box", "brush", "erase")
BAR_LINE_H = 20  # one text line of the status bar at scale 1
BAR_LINES = 4  # state + message (two lines at most), key help (two lines): a fixed height, so the window never jumps
BAR_H = BAR_LINES * BAR_LINE_H + 8
NODE_SILENT_S = 3.0  # no label map for this long: the node is down or unreachable, say so on screen
STALE_FRAMES = 30  # a label map this many frames older than the live frame is not drawn over it
MASK_BGR = np.array([255, 0, 255], np.uint8)  # working mask tint: magenta is in no CamVid colour
OUTLINE_BGR = (0, 255, 255)
BOX_BGR = (0, 255, 0)
MIN_OBJECT_SHARE = 0.15  # propose_mask: a boxed object fills more of its box than this, or GrabCut lost it
CORE_SHARE = 0.6  # propose_mask: the centre ellipse at this share of the box's width and height is surely the object
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


def clip_rect(rect: tuple[int, int, int, int], hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) sorted and clipped to a frame of size hw, inclusive corners."""
    h, w = hw
    x0, x1 = sorted((int(np.clip(rect[0], 0, w - 1)), int(np.clip(rect[2], 0, w - 1))))
    y0, y1 = sorted((int(np.clip(rect[1], 0, h - 1)), int(np.clip(rect[3], 0, h - 1))))
    return x0, y0, x1, y1


def ellipse_or_box(hw: tuple[int, int], rect: tuple[int, int, int, int], ellipse: bool = True) -> np.ndarray:
    """The ellipse inscribed in the box (or the box): what an object fills when nothing better is known."""
    x0, y0, x1, y1 = clip_rect(rect, hw)
    out = np.zeros(hw, np.uint8)
    if ellipse:
        cv2.ellipse(out, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0 + 1, y1 - y0 + 1), 0.0), 1, -1)
    else:
        out[y0:y1 + 1, x0:x1 + 1] = 1
    return out > 0


def equalised(image: np.ndarray) -> np.ndarray:
    """CLAHE on the lightness only: a dark or hazy frame gets the contrast GrabCut's colour models need."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def grabcut_box(image: np.ndarray, rect: tuple[int, int, int, int], iterations: int = 3,
                max_side: int = GRABCUT_MAX_SIDE, background: np.ndarray | None = None,
                core: np.ndarray | None = None) -> np.ndarray:
    """Bool mask of the object GrabCut finds inside rect = (x0, y0, x1, y1), inclusive corners.

    Runs on the whole frame (the background model needs the surroundings: cropping tight made GrabCut lose
    cars at the image border), downscaled past max_side for speed, with OpenCV's RNG seeded so the same box
    gives the same mask. `background` (bool, frame size): pixels inside the box that start as probable
    background instead of probable object; `core` (bool, frame size): pixels that are surely the object.
    Returns an empty mask when GrabCut cannot run (a degenerate or all-covering box)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = clip_rect(rect, (h, w))
    out = np.zeros((h, w), bool)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return out
    s = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if s < 1 else image
    gc = np.full(small.shape[:2], cv2.GC_BGD, np.uint8)
    sx0, sy0, sx1, sy1 = int(x0 * s), int(y0 * s), max(int(x0 * s) + 1, int(x1 * s)), max(int(y0 * s) + 1, int(y1 * s))
    gc[sy0:sy1 + 1, sx0:sx1 + 1] = cv2.GC_PR_FGD
    if background is not None:
        bg = cv2.resize(background.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 if s < 1 else background
        gc[(gc == cv2.GC_PR_FGD) & bg] = cv2.GC_PR_BGD
    if core is not None:
        sure = cv2.resize(core.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 if s < 1 else core
        gc[(gc != cv2.GC_BGD) & sure] = cv2.GC_FGD
    if not (gc == cv2.GC_PR_FGD).any() or (gc != cv2.GC_BGD).all():
        return out
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(small, gc, None, np.zeros((1, 65)), np.zeros((1, 65)), iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return out
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    if s < 1:
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST)
    out[y0:y1 + 1, x0:x1 + 1] = fg[y0:y1 + 1, x0:x1 + 1] > 0
    return out


def centre_ellipse(hw: tuple[int, int], rect: tuple[int, int, int, int], share: float) -> np.ndarray:
    """The ellipse inscribed in the box shrunk to `share` of its width and height, about the box's centre."""
    x0, y0, x1, y1 = clip_rect(rect, hw)
    dx, dy = (1 - share) * (x1 - x0) / 2, (1 - share) * (y1 - y0) / 2
    return ellipse_or_box(hw, (round(x0 + dx), round(y0 + dy), round(x1 - dx), round(y1 - dy)))


def propose_mask(image: np.ndarray, rect: tuple[int, int, int, int], background: np.ndarray | None = None,
                 core_share: float = CORE_SHARE, equalise: bool = True) -> tuple[np.ndarray, bool]:
    """The operator's box -> mask: GrabCut on an equalised copy with the centre of the box fixed as object, then
    the piece of its result that holds the centre, and the inscribed ellipse when GrabCut kept too little of the
    box to be the object. Returns the mask and whether GrabCut found the object's outline (False: the mask is
    the inscribed ellipse, or little more than the fixed centre).

    Why each step (bench/results/mask_proposals.md; chosen on val, bench/results/val/mask_proposals.md): on
    CamVid's dusk frames GrabCut from the box alone lost most objects (median IoU 0.01 on val); a person boxes
    an object around its middle, so the centre ellipse at CORE_SHARE of the box is a safe seed (median 0.75 on
    val, 6% of objects under 0.5); equalising the lightness helps the colour models on dark frames; one piece
    drops the stray blobs GrabCut leaves in a corner. Seeding the model's confident base pixels as background
    did nothing: this model calls the held-out objects a base class with confidence."""
    x0, y0, x1, y1 = clip_rect(rect, image.shape[:2])
    core = centre_ellipse(image.shape[:2], rect, core_share) if core_share else None
    fg = grabcut_box(equalised(image) if equalise else image, rect, background=background, core=core)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n > 1:
        centre = centre_ellipse(image.shape[:2], rect, 0.5)
        hits = np.bincount(comp[centre], minlength=n)
        hits[0] = 0
        keep = int(hits.argmax()) if hits.max() > 0 else int(stats[1:, cv2.CC_STAT_AREA].argmax()) + 1
        fg = comp == keep
    box_area = (x1 - x0 + 1) * (y1 - y0 + 1)
    if fg.sum() < MIN_OBJECT_SHARE * box_area:
        return ellipse_or_box(image.shape[:2], rect), False
    # GrabCut that kept the fixed centre and little else found no edge to follow: say so (the mask stays)
    return fg, core is None or fg.sum() > 1.25 * core.sum()


class OperatorSession:
    """Live/frozen frame, label overlay, working mask and typed name of one operator window."""

    def __init__(self, alpha: float = 0.5, max_recent: int = 64, frames_hint: str = "--frames",
                 labels_hint: str = "--labels", clock: Callable[[], float] = time.monotonic) -> None:
        self.alpha = alpha
        self.max_recent = max_recent
        self.frames_hint, self.labels_hint = frames_hint, labels_hint
        self.clock = clock
        self.started = clock()
        self.last_heard: float | None = None  # when the node's labels socket last said anything
        self.want_list = False  # the node came back: the shell should ask for its classes again
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

    def heard(self) -> None:
        """The node published something. After a silence its classes may have changed: ask again."""
        now = self.clock()
        if self.last_heard is not None and now - self.last_heard >= NODE_SILENT_S:
            self.want_list = True
        self.last_heard = now

    def node_banner(self) -> str | None:
        """What the window says while the node is silent; None while label maps arrive. ZeroMQ reconnects the
        subscriptions by itself, so the banner goes away when the node is back, with nothing to click."""
        silent = self.clock() - (self.last_heard if self.last_heard is not None else self.started)
        if silent < NODE_SILENT_S:
            return None
        if self.last_heard is None:
            return (f"no labels from the node on {self.labels_hint} yet ({silent:.0f} s): is `edge-gfs run` up? "
                    f"This window connects when it is")
        return f"the node went silent {silent:.0f} s ago ({self.labels_hint}): reconnecting by itself"

    def on_labels(self, seq: int, labels: np.ndarray) -> None:
        """A label map is drawn only over its own frame (matched by seq), never over a newer one."""
        self.heard()
        frame = self.recent.get(seq)
        if frame is not None and frame.shape[:2] == labels.shape:
            self.pair = (seq, frame, labels)

    def on_classes(self, msg: dict) -> None:
        """A `classes` message or a `list` reply: the legend follows the node's registry."""
        self.heard()
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
            self.apply_box((x0, y0, x1, y1), *propose_mask(self.frozen, (x0, y0, x1, y1)))

    def apply_box(self, rect: tuple[int, int, int, int], fg: np.ndarray, found: bool = True,
                  frozen: np.ndarray | None = None) -> None:
        """Add the proposal for `rect` (propose_mask's mask and whether GrabCut found the object) to the working
        mask, unless the frame it ran on is no longer frozen."""
        if self.frozen is None or (frozen is not None and frozen is not self.frozen):
            return
        if found:
            self.message = f"GrabCut proposed {int(fg.sum())} px: fix with brush (p) or erase (e), then n, Enter"
        else:
            self.message = ("GrabCut could not tell the object from its surroundings: the mask is the middle of the "
                            "box; fix it with brush (p) or erase (e)")
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

    def size_at_scale_1(self, blank_hw: tuple[int, int] = (360, 480)) -> tuple[int, int]:
        """(h, w) of render() at scale 1, without drawing: the window fits its scale to this."""
        frame, _ = self.shown()
        fh, fw = frame.shape[:2] if frame is not None else blank_hw
        return fh + BAR_H, fw + LEGEND_COLUMN_W * legend_columns(len(self.legend_names()), fh)

    def render(self, blank_hw: tuple[int, int] = (360, 480), scale: float = 1.0) -> np.ndarray:
        """The window's BGR image: frame + label overlay + working mask | legend, over a status bar.

        `scale` is the window's size over the frame's: the picture is resized first and the text drawn after,
        at screen size, so it stays sharp and readable on a 1080p screen (about 18 px at scale 2)."""
        frame, labels = self.shown()
        if frame is None:
            img = np.full((*blank_hw, 3), 32, np.uint8)
        elif labels is not None and labels.shape == frame.shape[:2]:
            alpha = self.alpha if self.frozen is None or self.preview is not None else 0.3 * self.alpha
            img = overlay(frame, labels, alpha, self.colors)
        else:
            img = frame.copy()
        if self.frozen is not None:
            self._draw_work(img)
        if abs(scale - 1.0) > 1e-3:
            img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        h, w = img.shape[:2]
        if frame is None:
            text(img, f"waiting for frames on {self.frames_hint}", (10, h // 2), 0.5 * scale, (255, 255, 255))
        banner = self.node_banner()
        top = 0
        if banner:
            lines = wrap(banner, w - round(16 * scale), 0.5 * scale)
            top = round((BAR_LINE_H * len(lines) + 8) * scale)
            img[:top] = (0, 0, 170)
            for k, line in enumerate(lines):
                text(img, line, (round(8 * scale), round((BAR_LINE_H * (k + 1)) * scale)), 0.5 * scale, (255, 255, 255))
        tag = "FROZEN" if self.frozen is not None else "LIVE"
        text(img, tag, (round(8 * scale), top + round(22 * scale)), 0.6 * scale, (255, 255, 255), outline=True)
        panel = np.concatenate([img, legend(self.legend_names(), h, self.colors, scale)], axis=1)
        return np.concatenate([panel, self._status_bar(panel.shape[1], scale)], axis=0)

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

    def _status_bar(self, width: int, scale: float = 1.0) -> np.ndarray:
        """Two lines of state and message, two of key help, wrapped to the width (never clipped mid-word)."""
        bar = np.full((round(BAR_H * scale), width, 3), 40, np.uint8)
        name = (self.name + "_") if self.typing else (self.name or "-")
        inner = width - round(12 * scale)
        state = wrap(f"[{self.tool} r{self.radius}] name: {name} | {self.message}", inner, 0.45 * scale)[:2]
        keys = wrap(HELP, inner, 0.45 * scale)[:2]
        rows = [(k, t, (255, 255, 255)) for k, t in enumerate(state)] + \
               [(2 + k, t, (170, 200, 170)) for k, t in enumerate(keys)]
        for row, line, colour in rows:
            text(bar, line, (round(6 * scale), round((BAR_LINE_H * (row + 1) - 4) * scale)), 0.45 * scale, colour)
        return bar


FONT = cv2.FONT_HERSHEY_SIMPLEX


def stroke(size: float) -> int:
    """Line thickness for font `size`: thicker strokes as the text grows, so it reads the same at any scale."""
    return max(1, round(size * 2))


def text(img: np.ndarray, line: str, org: tuple[int, int], size: float, colour: tuple[int, int, int],
         outline: bool = False) -> None:
    """Anti-aliased text, with a dark outline where it sits on the picture."""
    thick = stroke(size)
    if outline:
        cv2.putText(img, line, org, FONT, size, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, line, org, FONT, size, colour, thick, cv2.LINE_AA)


def wrap(line: str, width: int, size: float) -> list[str]:
    """Words into lines that fit `width` px at font `size`, keeping the spacing between them (the key help
    groups with two spaces); a word longer than a line is cut."""
    thick = stroke(size)
    fits = lambda t: cv2.getTextSize(t, FONT, size, thick)[0][0] <= width  # noqa: E731
    lines: list[str] = []
    for m in re.finditer(r"\s*\S+", line):
        piece = m.group()
        if lines and fits(lines[-1] + piece):
            lines[-1] += piece
            continue
        word = piece.lstrip()
        while not fits(word) and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and not fits(word[:cut]):
                cut = cut * 3 // 4
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]
