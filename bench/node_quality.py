"""GFS-CamVid through the wire: teach the held-out classes over the node's teach socket, read label maps back
off its labels socket, and score them exactly as `edge-gfs evaluate` does in-process.

    python bench/node_quality.py                       # camvid-fold0, K=5 mask-only shots, seed 123, all test frames
    python bench/node_quality.py --limit 40 --threads 1

Why: the node must give what the benchmark reports for the same model and mode (issue 5). The in-process
numbers are computed in the same run, so the two columns differ only by what the wire does (JPEG frames are
sent as the dataset's own bytes, shots as lossless PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gfs import zoo  # noqa: E402
from edge_gfs.client import FramePublisher, LabelSubscriber, TeachClient, free_endpoint, segment_via  # noqa: E402
from edge_gfs.datasets import camvid  # noqa: E402
from edge_gfs.evaluate import draw_supports, evaluate_split, teach_supports  # noqa: E402
from edge_gfs.metrics import scored_confusion, summarize  # noqa: E402
from edge_gfs.predict import Segmenter  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid-fold0")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--limit", type=int, default=None, help="only the first N test frames")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path, default=REPO / "bench/results/node_quality.json")
    args = p.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    data = camvid()
    model, _ = zoo.load(args.model)
    cfg = model.cfg
    novel = [c for c in range(len(cfg.class_names)) if c not in cfg.base_classes]
    supports = draw_supports(data, novel, args.shots, args.seed)
    names = data.names("test")[: args.limit]

    # in-process, as edge-gfs evaluate
    seg = Segmenter(model)
    base_only = evaluate_split(seg, data, "test", limit=args.limit, progress=False)
    seg.set_shots(teach_supports(seg, data, supports, "mask"))
    local = evaluate_split(seg, data, "test", limit=args.limit, progress=False)

    # through the node
    eps = {k: free_endpoint() for k in ("frames", "labels", "teach")}
    node = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "run", "--model", args.model, "--state",
                             str(Path("/tmp") / f"node_quality_{os.getpid()}"), *sum(([f"--{k}", v] for k, v in eps.items()), []),
                             "--threads", str(args.threads), "--log-level", "warning"], cwd=REPO)
    try:
        teach = TeachClient(eps["teach"], timeout_s=120)
        teach.wait_ready(300)
        pub, sub = FramePublisher(eps["frames"]), LabelSubscriber(eps["labels"], topics=("labels",))
        pub.wait_for_subscriber(60)
        teach_s = {}
        for c, frames in supports.items():
            shots = [(img, lab == c) for img, lab in (data.read("train", n) for n in frames)]
            t0 = time.perf_counter()
            reply = teach.teach(cfg.class_names[c], shots)
            teach_s[cfg.class_names[c]] = round(time.perf_counter() - t0, 3)
            assert reply["id"] == c, reply
        n = len(cfg.class_names)
        cm = np.zeros((n, n + 1), np.int64)
        scored = list(cfg.base_classes) + novel
        for name in names:
            lm = segment_via(pub, sub, data=data.image_path("test", name).read_bytes(), encoding="jpeg")
            gt = data.read("test", name)[1]
            cm += scored_confusion(lm.labels, gt, scored, n)
        wire = summarize(cm, cfg.class_names, cfg.base_classes, novel)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    keys = ("base_miou", "novel_miou", "total_miou")
    report = {"model": args.model, "shots": args.shots, "seed": args.seed, "mode": "mask", "frames": len(names),
              "base_only_base_miou": base_only["base_miou"], "in_process": {k: local[k] for k in keys},
              "through_node": {k: wire[k] for k in keys}, "per_class_node": wire["per_class"],
              "per_class_in_process": local["per_class"], "teach_request_s": teach_s}
    print(f"{'':<14}{'base':>7}{'novel':>7}{'total':>7}")
    for label, r in (("in-process", local), ("through node", wire)):
        print(f"{label:<14}" + "".join(f"{r[k]:7.1f}" for k in keys))
    print(f"base before teaching {base_only['base_miou']:.1f}; after, through the node: "
          f"{100 * wire['base_miou'] / base_only['base_miou']:.1f}% of it; teach requests {teach_s}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
