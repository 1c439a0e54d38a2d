"""GFS-CamVid through the wire: teach the held-out classes over the node's teach socket, read label maps back
off its labels socket, and score them exactly as `edge-gfs evaluate` does in-process.

    python bench/node_quality.py                       # camvid-fold0, K=5 mask-only shots, 5 seeds, all test frames
    python bench/node_quality.py --seeds 123 --limit 40 --threads 1
    python bench/node_quality.py --input-size 352x480   # the accurate profile -> node_quality_352x480.json

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

from edge_gfs.core import zoo  # noqa: E402
from edge_gfs.core.config import parse_hw  # noqa: E402
from edge_gfs.core.model import at_size  # noqa: E402
from edge_gfs.wire.client import FramePublisher, LabelSubscriber, TeachClient, free_endpoint, segment_via  # noqa: E402
from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.data.evaluation import draw_supports, evaluate_split, teach_supports  # noqa: E402
from edge_gfs.data.metrics import scored_confusion, summarize  # noqa: E402
from edge_gfs.core.segmenter import Segmenter  # noqa: E402


KEYS = ("base_miou", "novel_miou", "total_miou")


def through_node(teach: TeachClient, pub: FramePublisher, sub: LabelSubscriber, data, cfg, supports: dict,
                 names: list[str]) -> tuple[dict, dict]:
    """Teach `supports` over the wire (forgetting a previous seed's classes first), stream the test frames,
    score the returned label maps."""
    novel = list(supports)
    listed = {c["name"] for c in teach.list()["classes"]}
    for c in novel:
        if cfg.class_names[c] in listed:
            teach.forget(cfg.class_names[c])
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
        cm += scored_confusion(lm.labels, data.read("test", name)[1], scored, n)
    return summarize(cm, cfg.class_names, cfg.base_classes, novel), teach_s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camvid-fold0")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seeds", default="123,321,456,654,999", help="support draws (GFS-CamVid's five by default)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test frames")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--input-size", type=parse_hw, default=None, help="run the node (and in-process) at HxW")
    p.add_argument("--json", type=Path, default=None,
                   help="default bench/results/node_quality.json, or node_quality_HxW.json with --input-size")
    args = p.parse_args()
    size_tag = "x".join(map(str, args.input_size)) if args.input_size else ""
    args.json = args.json or REPO / "bench/results" / (f"node_quality_{size_tag}.json" if size_tag else "node_quality.json")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    data = camvid()
    model, _ = zoo.load(args.model)
    if args.input_size:
        model = at_size(model, args.input_size)
    cfg = model.cfg
    novel = [c for c in range(len(cfg.class_names)) if c not in cfg.base_classes]
    seeds = [int(s) for s in args.seeds.split(",")]
    names = data.names("test")[: args.limit]
    seg = Segmenter(model)
    base_only = evaluate_split(seg, data, "test", limit=args.limit, progress=False)

    eps = {k: free_endpoint() for k in ("frames", "labels", "teach")}
    node = subprocess.Popen([sys.executable, "-m", "edge_gfs.cli", "run", "--model", args.model, "--state",
                             str(Path("/tmp") / f"node_quality_{os.getpid()}"), *sum(([f"--{k}", v] for k, v in eps.items()), []),
                             "--threads", str(args.threads), "--log-level", "warning",
                             *(["--input-size", size_tag] if size_tag else [])], cwd=REPO)
    runs = []
    try:
        teach = TeachClient(eps["teach"], timeout_s=120)
        teach.wait_ready(300)
        pub, sub = FramePublisher(eps["frames"]), LabelSubscriber(eps["labels"], topics=("labels",))
        pub.wait_for_subscriber(60)
        for seed in seeds:
            supports = draw_supports(data, novel, args.shots, seed)
            seg.set_shots(teach_supports(seg, data, supports, "mask"))  # in-process, as edge-gfs evaluate
            local = evaluate_split(seg, data, "test", limit=args.limit, progress=False)
            wire, teach_s = through_node(teach, pub, sub, data, cfg, supports, names)
            runs.append({"seed": seed, "in_process": local, "through_node": wire, "teach_request_s": teach_s})
            print(f"seed {seed}: in-process " + " ".join(f"{local[k]:.1f}" for k in KEYS)
                  + "; through the node " + " ".join(f"{wire[k]:.1f}" for k in KEYS), flush=True)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)

    def mean(where: str, key: str) -> float:
        return float(np.mean([r[where][key] for r in runs]))

    report = {"model": args.model, "input_hw": list(model.cfg.input_hw), "shots": args.shots, "seeds": seeds, "mode": "mask", "frames": len(names),
              "command": "python bench/node_quality.py " + " ".join(sys.argv[1:]),
              "base_only_base_miou": base_only["base_miou"],
              "in_process": {k: mean("in_process", k) for k in KEYS},
              "through_node": {k: mean("through_node", k) for k in KEYS},
              "std_total_through_node": float(np.std([r["through_node"]["total_miou"] for r in runs])),
              "per_class_node": {c: float(np.mean([r["through_node"]["per_class"][c] or 0 for r in runs]))
                                 for c in cfg.class_names},
              "runs": runs}
    print(f"{'mean':<14}{'base':>7}{'novel':>7}{'total':>7}")
    for label, key in (("in-process", "in_process"), ("through node", "through_node")):
        print(f"{label:<14}" + "".join(f"{report[key][k]:7.1f}" for k in KEYS))
    print(f"base before teaching {base_only['base_miou']:.1f}; after, through the node: "
          f"{100 * report['through_node']['base_miou'] / base_only['base_miou']:.1f}% of it")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
