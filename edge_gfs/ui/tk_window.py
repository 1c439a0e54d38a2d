"""The operator's window in Tk (Python's standard GUI), around the GUI-free OperatorSession.

Why Tk and not OpenCV's HighGUI: the project installs opencv-python-headless (robots and CI need no windows),
and swapping in the GUI build fights pip. HighGUI's Qt backend also aborted the process without a display,
dropped keys pressed within ~30 ms, never delivered Shift (no capital letters in class names) and opened a
context menu on the right button. Tk queues every key with its character, gives plain right-button events,
resizes, and raises a catchable TclError when there is no display. OpenCV stays headless for the image work.

Threads: the UI thread polls the frame and label sockets and draws; a worker thread owns the TeachClient and
performs one request at a time, so a slow or dead node never freezes the window.
"""

from __future__ import annotations

import queue
import threading
import tkinter as tk
from typing import Callable

import cv2
import numpy as np

from edge_gfs.ui.operator_session import (KEY_BACKSPACE, KEY_DELETE, KEY_ENTER, KEY_ESC, OperatorSession, Request,
                                          propose_mask)

TICK_MS = 15
SCREEN_SHARE = 0.8  # the first window takes at most this much of the screen, at most MAX_START_SCALE x the frame
MAX_START_SCALE = 2.0
SPECIAL_KEYS = {"Return": KEY_ENTER, "KP_Enter": KEY_ENTER, "Escape": KEY_ESC, "BackSpace": KEY_BACKSPACE,
                "Delete": KEY_DELETE, "space": 32}
MOUSE = {  # Tk button event -> the OpenCV mouse event OperatorSession takes
    "ButtonPress-1": cv2.EVENT_LBUTTONDOWN, "ButtonRelease-1": cv2.EVENT_LBUTTONUP,
    "ButtonPress-3": cv2.EVENT_RBUTTONDOWN, "ButtonRelease-3": cv2.EVENT_RBUTTONUP,
}


def key_code(keysym: str, char: str) -> int:
    """A Tk key event as the code OperatorSession takes (cv2.waitKey's); -1 for keys that type nothing (Shift)."""
    if keysym in SPECIAL_KEYS:
        return SPECIAL_KEYS[keysym]
    if len(char) == 1 and 32 <= ord(char) < 127:
        return ord(char)
    return -1


def ppm(bgr: np.ndarray) -> bytes:
    """BGR image -> binary PPM, which Tk's PhotoImage reads without Pillow."""
    h, w = bgr.shape[:2]
    return f"P6 {w} {h} 255\n".encode() + np.ascontiguousarray(bgr[..., ::-1]).tobytes()


class RequestWorker(threading.Thread):
    """Performs session requests off the UI thread; outcomes come back through `done` as (request, ok, result)."""

    def __init__(self, perform: Callable[[Request], object]) -> None:
        super().__init__(name="requests", daemon=True)
        self.perform = perform
        self.todo: queue.Queue[Request | None] = queue.Queue()
        self.done: queue.Queue[tuple[Request, bool, object]] = queue.Queue()

    def run(self) -> None:
        while (req := self.todo.get()) is not None:
            try:
                self.done.put((req, True, self.perform(req)))
            except Exception as e:  # a refusal, a timeout, a dead node: the session shows it
                self.done.put((req, False, e))


class OperatorWindow:
    """Tk root + canvas showing session.render(), scaled to the window; events in, redraw every tick."""

    def __init__(self, session: OperatorSession, title: str, poll: Callable[[], None],
                 worker: RequestWorker, on_outcome: Callable[[Request, bool, object], None]) -> None:
        self.session, self.poll, self.worker, self.on_outcome = session, poll, worker, on_outcome
        self.root = tk.Tk()  # TclError without a display: the caller checks for one first
        self.root.title(title)
        first = session.render()
        # a 480x360 frame at 1:1 leaves 9-px text on a 1080p screen: start larger, as far as the screen allows
        start = max(1.0, min(MAX_START_SCALE, SCREEN_SHARE * self.root.winfo_screenheight() / first.shape[0],
                             SCREEN_SHARE * self.root.winfo_screenwidth() / first.shape[1]))
        self.canvas = tk.Canvas(self.root, width=round(first.shape[1] * start), height=round(first.shape[0] * start),
                                highlightthickness=0, background="#202020")
        self.canvas.pack(fill="both", expand=True)
        self.scale = 1.0
        self.photo: tk.PhotoImage | None = None
        # proposals from their threads: (rect, mask, GrabCut found it, the frozen frame it ran on)
        self.boxes: queue.Queue[tuple[tuple[int, int, int, int], np.ndarray, bool, np.ndarray]] = queue.Queue()
        session.box_proposer = self._propose
        for tk_event, cv_event in MOUSE.items():
            self.canvas.bind(f"<{tk_event}>", lambda e, cv_event=cv_event: self._mouse(e, cv_event))
        self.canvas.bind("<Motion>", self._motion)
        self.root.bind("<Key>", self._key)
        self.root.protocol("WM_DELETE_WINDOW", self.close)
        self.canvas.focus_set()

    # -- events -------------------------------------------------------------------------------------------
    def _to_image(self, event: tk.Event) -> tuple[int, int]:
        return int(event.x / self.scale), int(event.y / self.scale)

    def _mouse(self, event: tk.Event, cv_event: int) -> None:
        self.session.on_mouse(cv_event, *self._to_image(event), 0)
        self.draw()

    def _propose(self, rect: tuple[int, int, int, int], frozen: np.ndarray) -> None:
        """GrabCut off the UI thread (it reads the frozen frame, which nothing writes); the tick applies it."""
        threading.Thread(target=lambda: self.boxes.put((rect, *propose_mask(frozen, rect), frozen)), name="grabcut",
                         daemon=True).start()

    def _motion(self, event: tk.Event) -> None:
        flags = (cv2.EVENT_FLAG_LBUTTON if event.state & 0x100 else 0) | \
            (cv2.EVENT_FLAG_RBUTTON if event.state & 0x400 else 0)
        self.session.on_mouse(cv2.EVENT_MOUSEMOVE, *self._to_image(event), flags)

    def _key(self, event: tk.Event) -> None:
        req = self.session.on_key(key_code(event.keysym, event.char))
        if req is not None:
            self.worker.todo.put(req)
        if self.session.quit:
            self.close()
        else:
            self.draw()

    # -- loop -----------------------------------------------------------------------------------------------
    def draw(self) -> None:
        """Render at the canvas's scale (the session draws its text after resizing, so it stays sharp)."""
        h, w = self.session.size_at_scale_1()
        cw, ch = self.canvas.winfo_width(), self.canvas.winfo_height()
        self.scale = min(cw / w, ch / h) if cw > 1 and ch > 1 else 1.0
        img = self.session.render(scale=self.scale)
        self.photo = tk.PhotoImage(data=ppm(img), format="PPM")
        self.canvas.delete("all")
        self.canvas.create_image(0, 0, image=self.photo, anchor="nw")

    def _tick(self) -> None:
        self.poll()
        while not self.worker.done.empty():
            self.on_outcome(*self.worker.done.get())
        while not self.boxes.empty():
            self.session.apply_box(*self.boxes.get())
        if self.session.want_list:  # the node is back after a silence: its classes may have changed
            self.session.want_list = False
            self.worker.todo.put(Request("list"))
        self.draw()
        self.root.after(TICK_MS, self._tick)

    def run(self) -> None:
        self.root.after(0, self._tick)
        self.root.mainloop()

    def close(self) -> None:
        self.worker.todo.put(None)
        self.root.destroy()
