"""Val-only study of the training recipe, one lever per row, on short equal budgets (issue #10).

    python bench/recipe_study.py                      # every row, GFS-CamVid fold 0 (Car/Ped/Bicyclist held out)
    python bench/recipe_study.py --rows sgd_192,adamw_192 --epochs 3

Each row trains a fold-0 CAPL model with `python -m trainer` (resumable: re-running continues unfinished rows
and skips finished ones), then scores it on the 101 val frames: base-only mIoU at two input sizes, and novel
IoU after teaching Car/Pedestrian/Bicyclist from K=5 train frames (mask mode, seed 123). Test is never read.
Runs live in bench/models/runs/study/ (not committed); the table goes to bench/results/val/recipe_study.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.data.evaluation import draw_supports, evaluate_split, teach_supports  # noqa: E402
from edge_gfs.core.model import at_size, load_checkpoint  # noqa: E402
from edge_gfs.core.segmenter import InferenceOptions, Segmenter  # noqa: E402

NATIVE = ["--input-size", "352x480", "--crop-size", "288x384", "--scale", "0.5-2.0"]
LOW = ["--input-size", "192x256", "--crop-size", "192x256", "--scale", "0.75-1.75"]
ADAMW = ["--optimizer", "adamw", "--lr", "1e-3", "--warmup-epochs", "1"]
# name -> (the lever, trainer flags). Each row changes one thing against the row it names.
ROWS: dict[str, tuple[str, list[str]]] = {
    "sgd_192": ("previous recipe: SGD lr 0.01 (head x10), 192x256 whole frames, scale 0.75-1.75",
                ["--optimizer", "sgd", "--lr", "0.01", "--warmup-epochs", "0", "--class-weights", "none", *LOW]),
    "adamw_192": ("sgd_192 with AdamW lr 1e-3 (head x2), wd 1e-2, 1 warmup epoch",
                  [*ADAMW, "--class-weights", "none", *LOW]),
    "adamw_native": ("adamw_192 at native scale: 352x480 input, 288x384 crops, scale 0.5-2.0",
                     [*ADAMW, "--class-weights", "none", *NATIVE]),
    "adamw_native_balanced": ("adamw_native + class-balanced CE (ENet weights / median)",
                              [*ADAMW, "--class-weights", "balanced", *NATIVE]),
    "warm_native": ("adamw_native warm-started from the bundled 192x256 camvid-fold0 (progressive resizing)",
                    [*ADAMW, "--class-weights", "none", "--init", str(REPO / "bench/models/capl-f0-c467054a2ca1.pt"),
                     *NATIVE]),
}
SIZES = ((352, 480), (288, 384))
# Registration margin for the novel columns: the default when the rows ran, so a re-run gives the same numbers.
# The margin itself is tuned per recipe afterwards (bench/val_tuning.py), on the chosen model only.
MARGIN = 0.15


def train(name: str, flags: list[str], epochs: int, out: Path, threads: int) -> float:
    """Run (or finish) one row's training; returns the wall seconds this call spent."""
    if (out / "history.json").is_file() and len(json.loads((out / "history.json").read_text())) >= epochs:
        return 0.0
    cmd = [sys.executable, "-m", "trainer", "--method", "capl", "--fold", "0", "--epochs", str(epochs),
           "--threads", str(threads), "--val-every", str(epochs), "--out", str(out), *flags]
    if (out / "last.pt").is_file():
        cmd.append("--resume")
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.time() - t0


def score(run: Path, shots: int, seed: int) -> dict:
    model, _ = load_checkpoint(run / "best.pt")
    data = camvid()
    out: dict = {}
    for hw in dict.fromkeys([*SIZES, tuple(model.cfg.input_hw)]):  # and the size it was trained for
        m = at_size(model, hw)
        seg = Segmenter(m, InferenceOptions(novel_bias=MARGIN))
        key = f"{hw[0]}x{hw[1]}"
        out[f"base_{key}"] = evaluate_split(seg, data, "val", progress=False)
        novel = [c for c in range(len(m.cfg.class_names)) if c not in m.cfg.base_classes]
        seg.set_shots(teach_supports(seg, data, draw_supports(data, novel, shots, seed), "mask"))
        out[f"gfs_{key}"] = evaluate_split(seg, data, "val", progress=False)
    return out


def own_size(flags: list[str]) -> str:
    return flags[flags.index("--input-size") + 1]


def table(results: dict) -> str:
    head = ("| row | lever | s/iter | train min | " + " | ".join(
        f"val base {h}x{w} | novel K=5 | total" for h, w in SIZES) + " | val base at its own size "
            "| Pole | SignSymbol | Fence |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        cells = [name, ROWS[name][0], f"{r['s_per_iter']:.2f}", f"{r['train_minutes']:.0f}"]
        for h, w in SIZES:
            b, g = r[f"base_{h}x{w}"], r[f"gfs_{h}x{w}"]
            cells += [f"{b['base_miou']:.1f}", f"{g['novel_miou']:.1f}", f"{g['total_miou']:.1f}"]
        own = own_size(r["flags"])
        cells.append(f"{r[f'base_{own}']['base_miou']:.1f} ({own})" if f"base_{own}" in r else "-")
        pc = r[f"base_{SIZES[0][0]}x{SIZES[0][1]}"]["per_class"]
        cells += [f"{pc[c]:.1f}" for c in ("Pole", "SignSymbol", "Fence")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    p.add_argument("--epochs", type=int, default=5, help="the budget every row gets")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--runs", type=Path, default=REPO / "bench/models/runs/study")
    p.add_argument("--results", type=Path, default=REPO / "bench/results/val/recipe_study")
    args = p.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    store = args.results.with_suffix(".json")
    results = json.loads(store.read_text()) if store.is_file() else {}
    for name in rows:
        run = args.runs / f"{name}-e{args.epochs}"
        spent = train(name, ROWS[name][1], args.epochs, run, args.threads)
        if spent == 0.0 and f"base_{own_size(ROWS[name][1])}" in results.get(name, {}):
            continue  # trained and scored already
        history = json.loads((run / "history.json").read_text())
        iters = history[-1]["iters"]
        train_s = sum(h.get("train_seconds", h["seconds"]) for h in history)
        results[name] = {"epochs": args.epochs, "flags": ROWS[name][1], "iters": iters,
                         "s_per_iter": train_s / iters, "train_minutes": sum(h["seconds"] for h in history) / 60,
                         **score(run, 5, 123)}
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(store)
        md = (f"# Recipe study (val, fold 0, {args.epochs} epochs per row, batch 8, 2 CPU threads)\n\n"
              f"`python bench/recipe_study.py --epochs {args.epochs}`. Base-only val mIoU at two input sizes; "
              f"novel/total after teaching Car, Pedestrian, Bicyclist (K=5, mask, seed 123, registration margin "
              f"{MARGIN}). Per-class: at "
              f"{SIZES[0][0]}x{SIZES[0][1]}.\n\n" + table(results) + "\n")
        args.results.with_suffix(".md").write_text(md)
        print(table({name: results[name]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
