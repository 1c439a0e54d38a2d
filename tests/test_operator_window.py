"""The operator's real window, driven like a person would: Xvfb for the display, xdotool for the keyboard and
mouse, ImageMagick's `import` for screenshots, against a real node on loopback (.ci/run installs the three).

Freeze a live frame, drag a box around a car (GrabCut proposes the mask), type the name with a capital, send;
then the node lists the class and the window shows it in the taught colour where the car is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from node_harness import REPO, NodeProc, require_camvid

from edge_gfs.data.datasets import camvid
from edge_gfs.ui.operator_session import BAR_H
from edge_gfs.ui.overlay import LEGEND_COLUMN_W
from edge_gfs.wire.client import FramePublisher

TOOLS = ("Xvfb", "xdotool", "import")
FRAME = "0006R0_f02640"  # the GrabCut test frame: one row of parked cars
CAR = 8
# Measured: 0.2% of the car's pixels look taught-yellow before, 73.2% after (the rest are dark pixels whose blend
# fails this strict colour test, or car pixels the 1-shot class misses); the floor leaves room for other runs.
AFTER_FLOOR = 0.50


def yellow_share(shot: np.ndarray, where: np.ndarray, scale: float) -> float:
    """Share of the `where` pixels (the window sits at the screen's origin: Xvfb runs no window manager; the
    frame fills its top-left, `scale` times the frame's size) whose colour is the taught yellow blended over
    the frame (overlay alpha 0.5)."""
    h, w = where.shape
    frame = cv2.resize(shot[:round(h * scale), :round(w * scale)], (w, h), interpolation=cv2.INTER_AREA)
    rgb = frame[..., ::-1].astype(int)[where]
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return float(((r > 120) & (g > 110) & (b < 0.6 * g)).mean())


@pytest.fixture
def display():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt install xvfb xdotool imagemagick; .ci/run does)")
    number = 90 + os.getpid() % 9
    xvfb = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = os.environ | {"DISPLAY": f":{number}"}
    deadline = time.monotonic() + 10
    while subprocess.run(["xdotool", "getmouselocation"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            xvfb.kill()
            pytest.fail("Xvfb did not start")
        time.sleep(0.1)
    yield env
    xvfb.kill()
    xvfb.wait(5)


def screenshot(env: dict, path: Path) -> np.ndarray:
    subprocess.run(["import", "-window", "root", str(path)], env=env, check=True, timeout=20)
    return cv2.imread(str(path))


def test_a_person_teaches_car_from_the_live_view(display, tmp_path):
    require_camvid()
    data = camvid()
    img, lab = data.read("train", FRAME)
    node = NodeProc(tmp_path).start()
    pub = FramePublisher(node.frames)
    stop = threading.Event()
    operator = None
    try:
        node.wait_ready()

        def publish():  # a 5 Hz camera showing one frame
            while not stop.is_set():
                pub.publish(image=img, encoding="jpeg")
                stop.wait(0.2)

        threading.Thread(target=publish, daemon=True).start()
        operator = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "operator", "--frames", node.frames,
                                     "--labels", node.labels, "--teach", node.teach], env=display, cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = subprocess.run(["xdotool", "search", "--sync", "--name", "edge-gfs operator"], env=display,
                               capture_output=True, text=True, timeout=60)
        window = found.stdout.split()[0]

        def xdo(*args: str) -> None:
            subprocess.run(["xdotool", *args], env=display, check=True, timeout=20)

        time.sleep(3)  # live frames with the node's labels, the legend with its classes
        geometry = subprocess.run(["xdotool", "getwindowgeometry", "--shell", window], env=display,
                                  capture_output=True, text=True, check=True).stdout
        size = dict(line.split("=") for line in geometry.split())
        # the window starts larger than the frame so its text is readable (tk_window.MAX_START_SCALE); the
        # picture fills it at one scale: frame + one legend column over the status bar
        scale = min(int(size["WIDTH"]) / (lab.shape[1] + LEGEND_COLUMN_W), int(size["HEIGHT"]) / (lab.shape[0] + BAR_H))
        assert scale > 1.2, f"the window opened at {size['WIDTH']}x{size['HEIGHT']}, no larger than the frame"

        n, _, stats, _ = cv2.connectedComponentsWithStats((lab == CAR).astype(np.uint8))
        i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h = (int(v) for v in stats[i, :4])
        box = (max(0, x - 4), max(0, y - 4), min(lab.shape[1] - 1, x + w + 4), min(lab.shape[0] - 1, y + h + 4))
        car = lab == CAR
        before = yellow_share(screenshot(display, tmp_path / "live.png"), car, scale)
        xdo("windowfocus", "--sync", window)
        xdo("key", "space")  # freeze
        time.sleep(0.3)
        xdo("mousemove", "--window", window, str(round(box[0] * scale)), str(round(box[1] * scale)))
        xdo("mousedown", "1")
        for t in np.linspace(0, 1, 8)[1:]:
            xdo("mousemove", "--window", window, str(round((box[0] + t * (box[2] - box[0])) * scale)),
                str(round((box[1] + t * (box[3] - box[1])) * scale)))
        xdo("mouseup", "1")  # GrabCut proposes the mask
        time.sleep(2)
        xdo("key", "n")
        xdo("type", "--delay", "40", "Car")  # Shift must reach the window: the class is "Car", not "car"
        xdo("key", "Return")
        xdo("key", "Return")  # send
        listed, deadline = {}, time.monotonic() + 60
        with node.client() as client:
            while "Car" not in listed and time.monotonic() < deadline:
                listed = {c["name"]: c for c in client.list()["classes"]}
                time.sleep(0.3)
        assert "Car" in listed, f"the node never listed Car: {sorted(listed)}"
        assert listed["Car"]["kind"] == "novel" and listed["Car"]["id"] == CAR and listed["Car"]["shots"] == 1
        deadline, after = time.monotonic() + 20, 0.0
        while after < AFTER_FLOOR and time.monotonic() < deadline:  # the next label maps carry the class
            time.sleep(1)
            after = yellow_share(screenshot(display, tmp_path / "after.png"), car, scale)
        if os.environ.get("EDGE_GFS_SCREENSHOT_DIR"):  # the README's picture of the window comes from here
            shot = cv2.imread(str(tmp_path / "after.png"))[:int(size["HEIGHT"]), :int(size["WIDTH"])]
            out = Path(os.environ["EDGE_GFS_SCREENSHOT_DIR"]) / "operator-window.png"
            cv2.imwrite(str(out), shot)
        print(f"\ntaught colour on the car pixels: {100 * before:.1f}% before, {100 * after:.1f}% after")
        assert before < 0.05 and after >= AFTER_FLOOR
    finally:
        stop.set()
        if operator is not None:
            operator.terminate()
            try:
                out, _ = operator.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                operator.kill()
                out, _ = operator.communicate()
            assert "Traceback" not in (out or ""), out[-3000:]
        pub.close()
        node.stop()
