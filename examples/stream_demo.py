"""Streaming demo, no camera needed: replay CamVid test frames through the node, teach Car with the CLI while
it runs, and watch cars appear. Writes OUT/demo.mp4 and OUT/before.png / OUT/after.png.

    python examples/stream_demo.py --out out/demo

What happens: `edge-gfs run --model camvid-fold0` (Car, Pedestrian and Bicyclist were held out of its
training) starts on free loopback ports; this script publishes test frames to it with
edge_gfs.wire.client.FramePublisher and reads the label maps back with LabelSubscriber; after a few frames it
writes 5 train frames' Car masks to PNG files and runs `edge-gfs teach Car --image ... --mask ...`.
Every label map says which classes version made it, so the video shows exactly when Car arrived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gfs.wire.client import FramePublisher, LabelSubscriber, TeachClient, free_endpoint  # noqa: E402
from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.data.evaluation import draw_supports  # noqa: E402
from edge_gfs.ui.overlay import class_colors, legend, overlay  # noqa: E402

CAR = 8


def write_shots(out: Path, k: int) -> list[str]:
    """K train frames with cars (GFS-CamVid's draw, seed 123) as image + mask files, as an operator would have."""
    data = camvid()
    out.mkdir(parents=True, exist_ok=True)
    args = []
    for name in draw_supports(data, [CAR], k, seed=123)[CAR]:
        image = out / f"{name}.jpg"
        shutil.copyfile(data.image_path("train", name), image)
        mask = out / f"{name}_car.png"
        cv2.imwrite(str(mask), (data.read("train", name)[1] == CAR).astype(np.uint8) * 255)
        args += ["--image", str(image), "--mask", str(mask)]
    return args


def panel(frame: np.ndarray, labels: np.ndarray, classes: list[dict], caption: str) -> np.ndarray:
    """Frame | overlay | legend, in the node's class colours (a taught class gets a colour no base class has)."""
    names, colors = {c["id"]: c["name"] for c in classes}, class_colors(classes)
    out = np.concatenate([frame, overlay(frame, labels, 0.5, colors), legend(names, frame.shape[0], colors)], axis=1)
    cv2.putText(out, caption, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--fps", type=float, default=4.0, help="replay rate")
    p.add_argument("--before", type=int, default=12, help="label maps to show before the teach")
    p.add_argument("--after", type=int, default=24, help="label maps to show after it")
    p.add_argument("--shots", type=int, default=5, help="K: train frames to teach Car from")
    p.add_argument("--threads", type=int, default=0, help="the node's torch threads (0 = all cores)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frames_ep, labels_ep, teach_ep = free_endpoint(), free_endpoint(), free_endpoint()
    data = camvid()
    test_names = data.names("test")
    state = args.out / "state"
    shutil.rmtree(state, ignore_errors=True)  # start with no taught classes
    node = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "run", "--model", "camvid-fold0", "--state",
                             str(state), "--frames", frames_ep, "--labels", labels_ep, "--teach", teach_ep,
                             "--threads", str(args.threads)], cwd=REPO)
    pub, sub = FramePublisher(frames_ep), LabelSubscriber(labels_ep)
    stop = threading.Event()
    sent: dict[int, np.ndarray] = {}

    def publish() -> None:  # the camera: test frames in order, at a fixed rate, seq = position in the replay
        k = 0
        while not stop.is_set():
            img = data.read("test", test_names[k % len(test_names)])[0]
            seq = pub.publish(image=img, encoding="jpeg")
            sent[seq] = img
            sent.pop(seq - 100, None)  # frames the node skipped (it always takes the newest)
            k += 1
            stop.wait(1.0 / args.fps)

    try:
        print("waiting for the node ...")
        TeachClient(teach_ep, timeout_s=120).wait_ready(180)
        shot_args = write_shots(args.out / "shots", args.shots)
        classes = sub.next("classes", 30)["classes"]  # also: our SUB is connected
        pub.wait_for_subscriber(60)
        threading.Thread(target=publish, daemon=True).start()
        video = None
        taught_version, shown, stills = None, 0, {}
        while shown < args.before + args.after:
            got = sub.recv(10.0)
            if got is None:
                raise SystemExit("no label maps from the node: see its log above")
            topic, msg = got
            if topic == "classes":
                classes = msg["classes"]
                continue
            if topic != "labels" or msg.seq not in sent:
                continue
            frame = sent.pop(msg.seq)
            after = taught_version is not None and msg.classes_version >= taught_version
            if taught_version is not None and not after:
                continue  # made before the teach took effect
            cars = int((msg.labels == CAR).sum())
            caption = (f"after teaching Car ({args.shots} shots): {cars} car px" if after
                       else f"before teaching: classes version {msg.classes_version}")
            img = panel(frame, msg.labels, classes, caption)
            if video is None:
                video = cv2.VideoWriter(str(args.out / "demo.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), args.fps,
                                        (img.shape[1], img.shape[0]))
            video.write(img)
            key = "after" if after else "before"
            if cars >= stills.get(key, (-1,))[0]:
                stills[key] = (cars, img)
            shown += 1
            print(f"seq {msg.seq:4d}  classes v{msg.classes_version}  car pixels {cars:6d}  "
                  f"node latency {msg.latency_ms:5.0f} ms")
            if shown == args.before:
                cmd = [sys.executable, "-m", "edge_gfs.cli", "teach", "Car", *shot_args, "--teach", teach_ep]
                print("$ edge-gfs teach Car " + " ".join(shot_args[:4]) + " ...")
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                print((r.stdout or r.stderr).strip(), f"({time.perf_counter() - t0:.1f} s with CLI start-up)")
                if r.returncode != 0:
                    return r.returncode
                taught_version = int(r.stdout.split("classes version ")[1])
        video.release()
        for key, (_, img) in stills.items():
            cv2.imwrite(str(args.out / f"{key}.png"), img)
        print(f"wrote {args.out / 'demo.mp4'}, {args.out / 'before.png'} and {args.out / 'after.png'}")
        return 0
    finally:
        stop.set()
        pub.close()
        sub.close()
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            node.kill()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
