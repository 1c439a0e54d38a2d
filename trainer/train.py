"""Train a CAPL, baseline or oracle model. Reads top to bottom like torchvision's references/segmentation.

    edge-gfs train --method capl --fold 0 --out runs/camvid-fold0
    torchrun --nproc_per_node 2 -m trainer --method capl --fold 0 --out runs/ddp   # DDP, gloo on CPU

The default recipe (AdamW, warmup + poly, 288x384 crops of frames scaled 0.4-2.0 of native, 30 epochs) was
chosen on val by bench/recipe_study.py. Every epoch: a checkpoint (last.pt, resumable with --resume),
history.json, train.log and curves.png; every --val-every epochs: val mIoU over the base classes at full label
resolution, and best.pt when it improves (selection on val only).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from edge_gfs.core import capl
from edge_gfs.core.config import FOLDS, ModelConfig, parse_hw
from edge_gfs.core.files import atomic_write_text, install, temp_beside
from edge_gfs.core.model import CaplModel, load_checkpoint, model_checksum, save_checkpoint
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import Dataset, open_dataset, train_lut
from edge_gfs.data.metrics import scored_confusion, summarize
from trainer.augment import AugmentConfig, augment

log = logging.getLogger("edge_gfs.train")

EXAMPLE = """examples:
  edge-gfs train --method capl --fold 0 --val-every 2 --out runs/camvid-fold0     # the bundled camvid-fold0
  edge-gfs train --method capl --fold all --class-weights balanced --val-every 2 --out runs/camvid
  edge-gfs train --method baseline --fold 0 --epochs 30 --out runs/baseline-fold0
  edge-gfs train --method oracle --epochs 30 --out runs/oracle
  edge-gfs train --out runs/camvid-fold0 --resume          # continue after an interruption
  torchrun --nproc_per_node 2 -m trainer --method capl --fold 0 --out runs/ddp
"""


# -- flags ----------------------------------------------------------------------------------------------------

def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The train flags. defaults=False: a parser whose namespace holds only the flags on the command line (at
    any value, their default included), which is how --resume tells a flag given again from one to take from
    the interrupted run."""
    def d(value):  # a flag's default, or none at all (not even None) for the defaults=False parser
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(prog="edge-gfs train", description="Train an edge-gfs segmentation model.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=None if defaults else argparse.SUPPRESS)
    p.add_argument("--method", choices=["capl", "baseline", "oracle"], default=d("capl"),
                   help="capl: fake-novel/fake-context training; baseline: plain CE; oracle: plain CE on all classes")
    p.add_argument("--fold", default=d("all"), help="GFS fold whose novel classes are hidden: 0, 1 or all (no novel)")
    p.add_argument("--novel", help="comma-separated novel class ids instead of --fold (folder datasets)")
    p.add_argument("--data", default=d("camvid"), help="'camvid' (from $EDGE_GFS_DATA) or a folder dataset path")
    p.add_argument("--out", required=True, type=Path, help="run directory: checkpoints, log, history, plot")
    p.add_argument("--epochs", type=int, default=d(30))
    p.add_argument("--batch-size", type=int, default=d(8), help="per process")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=d("adamw"),
                   help="adamw (default; bench/results/val/recipe_study.md), or sgd: the reference recipe")
    p.add_argument("--lr", type=float, help="backbone lr (default: sgd 0.01, adamw 1e-3)")
    p.add_argument("--head-lr-mult", type=float,
                   help="lr multiplier of head, prototypes and G_sup (default: sgd 10, adamw 2)")
    p.add_argument("--weight-decay", type=float, help="default: sgd 1e-4, adamw 1e-2")
    p.add_argument("--warmup-epochs", type=float, default=d(1.0), help="linear lr warmup before the poly decay")
    p.add_argument("--class-weights", choices=["none", "balanced"], default=d("none"),
                   help="balanced: ENet-style 1/ln(1.02 + pixel share) CE weights for rare classes")
    p.add_argument("--unknown-weight", type=float, default=d(0.0),
                   help="capl: weight of outlier exposure on cells without a base label (capl.unknown_loss; 0 = off)")
    p.add_argument("--unknown-cells", choices=["pure", "any"], default=d("pure"),
                   help="which cells the unknown term takes: pure = no base-labelled pixel in the cell (default), "
                        "any = the cell's nearest label is ignore")
    p.add_argument("--dim", type=int, default=d(128), help="feature dimension d")
    p.add_argument("--input-size", default=d("288x384"),
                   help="HxW the network sees (multiples of 32): the model's default run-time profile")
    p.add_argument("--crop-size",
                   help="HxW training crop of frames scaled around the input size (default: the input size)")
    p.add_argument("--scale", default=d("0.5-2.5"),
                   help="random scale range around the input size, LO-HI (0.5-2.5 of 288x384 = 0.4-2.0 of 360x480)")
    p.add_argument("--init", type=Path,
                   help="start from this checkpoint's weights (same classes and d; the input size may differ)")
    p.add_argument("--val-every", type=int, default=d(1), help="validate every N epochs (and always at the end)")
    p.add_argument("--backbone", default=d("efficientnet_lite0"),
                   choices=["efficientnet_lite0", "tf_efficientnet_lite0"])
    p.add_argument("--dqce-weighting", default=d("impl"), choices=["impl", "paper"])
    p.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--max-iters", type=int, default=d(0),
                   help="stop each epoch after this many iterations (smoke tests)")
    p.add_argument("--train-limit", type=int, help="use only the first N train frames")
    p.add_argument("--val-limit", type=int, help="use only the first N val frames")
    p.add_argument("--threads", type=int, default=d(0), help="torch threads per process (0: cores / processes)")
    p.add_argument("--seed", type=int, default=d(0))
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse flags; with --resume, flags not given again are taken from the interrupted run."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("input_size", "crop_size"):
        try:
            if getattr(args, flag):
                parse_hw(getattr(args, flag))
        except argparse.ArgumentTypeError as e:
            parser.error(f"--{flag.replace('_', '-')}: {e}")
    if args.unknown_weight and args.method != "capl":
        parser.error("--unknown-weight is a term of the CAPL loss: use it with --method capl")
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        saved = torch.load(last, map_location="cpu", weights_only=False).get("args", {})
        given = vars(build_parser(defaults=False).parse_args(argv))
        for key, value in saved.items():
            if key not in given and key not in ("out", "resume"):
                setattr(args, key, value)
    return args


# -- setup ----------------------------------------------------------------------------------------------------

def setup_distributed() -> tuple[int, int]:
    """(rank, world size): torchrun sets WORLD_SIZE; gloo, so DDP runs on CPU-only machines too."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank() if world > 1 else 0), world


def setup_logging(out: Path, rank: int) -> None:
    """train.log for rank 0 (also on stderr), train.rankN.log for the others, so no two processes share a file."""
    out.mkdir(parents=True, exist_ok=True)
    name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    handlers: list[logging.Handler] = [logging.FileHandler(out / name)]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)


def setup(args: argparse.Namespace) -> tuple[int, int]:
    """Process group (under torchrun), torch threads shared among the processes, and the run's log files."""
    rank, world = setup_distributed()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    setup_logging(args.out, rank)
    return rank, world


# -- data -----------------------------------------------------------------------------------------------------

class AugmentedFrames(torch.utils.data.Dataset):
    """In-memory frames -> augmented (RGB float tensor, base-row label tensor) at the input size.

    The random view depends only on (seed, epoch, index), so a resumed run sees the same data it would have.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], lut: np.ndarray,
                 input_hw: tuple[int, int], seed: int, crop_hw: tuple[int, int] | None = None,
                 aug: AugmentConfig = AugmentConfig()) -> None:
        self.images, self.labels, self.lut, self.input_hw, self.seed = images, labels, lut, input_hw, seed
        self.crop_hw, self.aug = crop_hw or input_hw, aug
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, lab = augment(self.images[i], self.lut[self.labels[i]], self.input_hw, rng, self.aug, self.crop_hw)
        rgb = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).float()
        return rgb, torch.from_numpy(lab.astype(np.int64))


def pixel_share(labels: list[np.ndarray], lut: np.ndarray, n_rows: int) -> torch.Tensor:
    """Train pixels per base row (novel and void excluded): what the balanced class weights come from."""
    counts = np.zeros(256, dtype=np.int64)
    for lab in labels:
        counts += np.bincount(lut[lab].ravel(), minlength=256)
    return torch.from_numpy(counts[:n_rows].astype(np.float64))


def build_config(args: argparse.Namespace, data: Dataset) -> ModelConfig:
    """The model's classes: the dataset's, with novel ones from --novel, --fold (CamVid only) or none (oracle)."""
    n_classes = len(data.class_names)
    if args.method == "oracle":
        novel: tuple[int, ...] = ()
    elif args.novel:
        novel = tuple(int(c) for c in args.novel.split(","))
    elif args.fold in FOLDS:
        novel = FOLDS[args.fold] if data.name == "camvid" else ()
    else:
        raise SystemExit(f"--fold must be one of {sorted(FOLDS)}, got {args.fold!r}")
    base = [c for c in range(n_classes) if c not in novel]
    return ModelConfig(class_names=data.class_names, base_classes=base, method=args.method,
                       backbone=args.backbone, dim=args.dim, input_hw=parse_hw(args.input_size),
                       dqce_weighting=args.dqce_weighting)


def build_data(args: argparse.Namespace, cfg: ModelConfig, data: Dataset, rank: int, world: int
               ) -> tuple[AugmentedFrames, DistributedSampler | None, tuple[list[np.ndarray], list[np.ndarray]],
                          torch.Tensor | None]:
    """Train frames as augmented crops with novel pixels hidden (sharded over the ranks under DDP), val frames
    as they are (scored at full resolution), and the balanced CE weights from the train labels if asked for."""
    _, tr_imgs, tr_labs = data.load("train", args.train_limit)
    _, va_imgs, va_labs = data.load("val", args.val_limit)
    lut = train_lut(cfg.base_classes)
    lo, hi = (float(v) for v in args.scale.split("-"))
    train_set = AugmentedFrames(tr_imgs, tr_labs, lut, cfg.input_hw, args.seed,
                                parse_hw(args.crop_size) if args.crop_size else None, AugmentConfig(scale=(lo, hi)))
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed) if world > 1 else None
    class_weight = None
    if args.class_weights == "balanced":
        class_weight = capl.balanced_class_weights(pixel_share(tr_labs, lut, len(cfg.base_classes)))
    return train_set, sampler, (va_imgs, va_labs), class_weight


# -- model ----------------------------------------------------------------------------------------------------

class TrainLoss(torch.nn.Module):
    """The whole loss inside one forward, so DDP sees P_cls and G_sup used where it expects them."""

    def __init__(self, model: CaplModel, method: str, class_weight: torch.Tensor | None = None,
                 unknown_weight: float = 0.0, unknown_cells: str = "pure") -> None:
        super().__init__()
        self.model, self.method, self.class_weight = model, method, class_weight
        self.unknown_weight, self.unknown_cells = unknown_weight, unknown_cells

    def forward(self, rgb: torch.Tensor, lab: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        m, cfg = self.model, self.model.cfg
        feats = m(rgb.contiguous(memory_format=torch.channels_last))
        if self.method == "capl":
            return capl.capl_loss(feats, lab, m.prototypes, m.g_sup, cfg.alpha, cfg.dqce_weighting, gen,
                                  self.class_weight, self.unknown_weight, self.unknown_cells)
        return capl.upsampled_ce(capl.cosine_logits(feats, m.prototypes, cfg.alpha), lab, self.class_weight)


def build_model(args: argparse.Namespace, cfg: ModelConfig) -> CaplModel:
    """Seeded initialisation from the pretrained backbone, or --init's weights; laid out channels-last."""
    torch.manual_seed(args.seed)
    warm = args.init is not None and not args.resume  # a resumed run's weights come from last.pt
    model = CaplModel(cfg, pretrained=not args.no_pretrained and not warm)
    if warm:
        warm_start(model, args.init)
    # channels-last: depthwise convolutions on the CPU step 20-30% faster (measured at 288x384, batch 8)
    model.to(memory_format=torch.channels_last)
    return model


def warm_start(model: CaplModel, path: Path) -> None:
    """--init: progressive resizing starts from a model trained at another input size."""
    init, _ = load_checkpoint(path)
    a, b = init.cfg.to_dict(), model.cfg.to_dict()
    diff = [k for k in ("class_names", "base_classes", "backbone", "dim") if a[k] != b[k]]
    if diff:
        raise SystemExit(f"--init {path}: its {', '.join(diff)} differ from this run's; pass a checkpoint of the "
                         f"same classes and d")
    model.load_state_dict(init.state_dict())
    log.info("warm start from %s (trained at %dx%d)", path, *init.cfg.input_hw)


def build_net(model: CaplModel, method: str, class_weight: torch.Tensor | None, world: int,
              unknown_weight: float = 0.0, unknown_cells: str = "pure") -> torch.nn.Module:
    """The loss module the optimiser steps through, wrapped in DDP when there are several processes."""
    net: torch.nn.Module = TrainLoss(model, method, class_weight, unknown_weight, unknown_cells)
    if world > 1:
        # G_sup is unused by the baseline, and by CAPL in a batch with no fake-context class
        net = DistributedDataParallel(net, find_unused_parameters=True)
    return net


# -- optimiser and schedule -----------------------------------------------------------------------------------

OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.01, "head_lr_mult": 10.0, "weight_decay": 1e-4},
                      "adamw": {"lr": 1e-3, "head_lr_mult": 2.0, "weight_decay": 1e-2}}


def fill_optimizer_defaults(args: argparse.Namespace) -> None:
    """lr, head multiplier and weight decay left unset take the chosen optimizer's own defaults."""
    for key, value in OPTIMIZER_DEFAULTS[args.optimizer].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def build_optimizer(model: CaplModel, args: argparse.Namespace) -> torch.optim.Optimizer:
    """Backbone at lr, everything trained from scratch (head, prototypes, G_sup) at lr x head_lr_mult.

    Weight decay skips BatchNorm and biases (1-D tensors) and the prototypes: decaying P_cls would shrink the
    raw-scale p_cls term of Eq. 7 against the normalised P_fake, a change to the method, not a regulariser.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        head = not name.startswith("extractor.backbone.")
        decay = p.ndim > 1 and name != "prototypes"
        groups.setdefault((head, decay), []).append(p)
    param_groups = [{"params": ps, "lr": args.lr * (args.head_lr_mult if head else 1.0),
                     "weight_decay": args.weight_decay if decay else 0.0}
                    for (head, decay), ps in sorted(groups.items())]
    if args.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=args.lr)
    return torch.optim.SGD(param_groups, lr=args.lr, momentum=0.9)


def warmup_poly(total_iters: int, warmup_iters: int, power: float = 0.9):
    """lr factor per iteration: linear warmup from 1% to 1, then poly decay to 0 (LambdaLR's lr_lambda)."""
    def factor(it: int) -> float:
        if it < warmup_iters:
            return 0.01 + 0.99 * it / warmup_iters
        return max(0.0, 1 - (it - warmup_iters) / max(1, total_iters - warmup_iters)) ** power
    return factor


def epoch_iters(n_frames: int, world: int, args: argparse.Namespace) -> int:
    """Optimiser steps per epoch on each rank (capped by --max-iters): the unit of the LR schedule."""
    iters = math.ceil(n_frames / world / args.batch_size)
    return min(iters, args.max_iters) if args.max_iters else iters


def log_recipe(args: argparse.Namespace, cfg: ModelConfig, train_set: AugmentedFrames, world: int,
               iters_per_epoch: int, class_weight: torch.Tensor | None) -> None:
    """One train.log line with everything that sets the run's numbers (the recipe tests read it)."""
    log.info("method=%s fold=%s base=%s input=%s crop=%s d=%d world=%d iters/epoch=%d optimizer=%s lr=%g "
             "head x%g wd=%g warmup=%g class_weights=%s", args.method, args.fold, cfg.base_names, cfg.input_hw,
             train_set.crop_hw, cfg.dim, world, iters_per_epoch, args.optimizer, args.lr, args.head_lr_mult,
             args.weight_decay, args.warmup_epochs,
             None if class_weight is None else [round(w, 2) for w in class_weight.tolist()])


# -- resume ---------------------------------------------------------------------------------------------------

def resume_from(last_path: Path, model: CaplModel, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LambdaLR, gen: torch.Generator,
                cfg: ModelConfig) -> tuple[int, list[dict], float]:
    """Restore weights, optimiser, LR schedule and CAPL's sampling generator from last.pt, so the run goes on as
    if never stopped. Returns the next epoch, the history so far and the best val mIoU."""
    if not last_path.is_file():
        raise SystemExit(f"--resume: no {last_path}; start without --resume")
    ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
    if ckpt["config"] != cfg.to_dict():
        raise SystemExit(f"--resume: {last_path} was trained with another config; "
                         f"use the same flags or a new --out")
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best_val_miou"]
    gen.set_state(ckpt["generator"])
    log.info("resumed from %s at epoch %d", last_path, start_epoch)
    return start_epoch, history, best


# -- one epoch ------------------------------------------------------------------------------------------------

def train_one_epoch(net: torch.nn.Module, train_set: AugmentedFrames, sampler: DistributedSampler | None,
                    optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR,
                    gen: torch.Generator, args: argparse.Namespace, epoch: int, iters: int,
                    rank: int) -> tuple[list[float], int]:
    """One pass over the (possibly capped) train set; returns the losses and the number of samples seen."""
    train_set.epoch = epoch
    if sampler is not None:
        sampler.set_epoch(epoch)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None,
                        drop_last=False, num_workers=0,
                        generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
    losses, seen = [], 0
    bar = tqdm(loader, total=iters, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False,
               file=sys.stderr)
    for step, (rgb, lab) in enumerate(bar):
        if step >= iters:
            break
        loss = net(rgb, lab, gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at epoch {epoch + 1} step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        seen += rgb.shape[0]
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    return losses, seen


# -- evaluation -----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: CaplModel, images: list[np.ndarray], labels: list[np.ndarray], batch: int = 8) -> dict:
    """Base-only mIoU at the labels' full resolution, with the inference path. Only base pixels are scored: a
    model that was never taught the novel classes is not charged for them (nor for calling them base)."""
    was_training = model.training
    seg = Segmenter(model)
    cfg = model.cfg
    n = len(cfg.class_names)
    cm = np.zeros((n, n + 1), dtype=np.int64)
    for s in range(0, len(images), batch):
        pred = seg.segment(images[s:s + batch])
        for p, gt in zip(pred, labels[s:s + batch]):
            cm += scored_confusion(p, gt, cfg.base_classes, n)
    model.train(was_training)
    return summarize(cm, cfg.class_names, cfg.base_classes, [])


# -- end of epoch ---------------------------------------------------------------------------------------------

@dataclass
class EpochStats:
    """One epoch's training as all ranks agree on it: the history entry's part that is not validation."""
    losses: list[float]
    started: float  # time.time() at the epoch's start: the history's "seconds" also count validation and saving
    train_seconds: float
    samples_seen: int  # over all ranks
    world_size: int
    params_in_sync: bool


def gather_epoch(model: CaplModel, losses: list[float], seen: int, started: float, world: int) -> EpochStats:
    """Every rank must call this (collectives): samples seen by all ranks, and whether their weights agree."""
    train_s = time.time() - started
    seen_t = torch.tensor([seen])
    if world > 1:
        dist.all_reduce(seen_t)
    return EpochStats(losses, started, train_s, int(seen_t.item()), world, params_in_sync(model, world))


def params_in_sync(model: torch.nn.Module, world: int) -> bool:
    """DDP sanity check: every rank holds the same weights (max and min of a checksum agree)."""
    if world == 1:
        return True
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    hi, lo = s.clone(), s.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool((hi - lo).abs().item() <= 1e-9 * max(1.0, abs(s.item())))


def plain_args(args: argparse.Namespace) -> dict:
    """The flags as a checkpoint keeps them: paths as strings, so any later torch.load can read them back."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def end_of_epoch(args: argparse.Namespace, epoch: int, stats: EpochStats, model: CaplModel,
                 optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR,
                 gen: torch.Generator, val_data: tuple[list[np.ndarray], list[np.ndarray]], history: list[dict],
                 best: float) -> float:
    """Rank 0 only: validate (every --val-every epochs and at the last), append to and log the history, save
    best.pt on a new best val mIoU (selection on val only) and last.pt always, then history.json and curves.png.
    Returns the best val mIoU so far; `history` is extended in place."""
    validate = (epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs
    metrics = evaluate(model, *val_data) if validate else None
    val = (metrics["base_miou"] or 0.0) if metrics else None
    entry = {"epoch": epoch + 1, "iters": schedule.last_epoch, "loss": float(np.mean(stats.losses)),
             "val_miou": val, "val_per_class": metrics["per_class"] if metrics else None,
             "seconds": time.time() - stats.started, "train_seconds": stats.train_seconds,
             "samples_seen": stats.samples_seen, "world_size": stats.world_size,
             "ddp_params_in_sync": stats.params_in_sync}
    history.append(entry)
    log.info("epoch %d loss %.4f val base mIoU %s (%.0fs, %.2f s/iter, %d samples)", epoch + 1,
             entry["loss"], "-" if val is None else f"{val:.2f}", entry["seconds"],
             stats.train_seconds / max(1, len(stats.losses)), entry["samples_seen"])
    best_path, last_path = args.out / "best.pt", args.out / "last.pt"
    if val is not None and val > best:
        best = val
        save_checkpoint(best_path, model, {"metrics": {"val": metrics, "epoch": epoch + 1},
                                           "train_args": plain_args(args)})
        log.info("new best val mIoU %.2f -> %s", val, best_path)
    save_checkpoint(last_path, model, {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                       "epoch": epoch, "history": history, "best_val_miou": best,
                                       "generator": gen.get_state(),
                                       "args": {k: v for k, v in plain_args(args).items() if k != "out"}})
    write_json(args.out / "history.json", history)
    plot_history(history, args.out / "curves.png")
    return best


def write_json(path: Path, obj) -> None:
    """Atomic, so a reader polling history.json during training never sees half a file."""
    atomic_write_text(path, json.dumps(obj, indent=1))


def plot_history(history: list[dict], path: Path) -> None:
    """curves.png: train loss and val base mIoU per epoch (matplotlib imported only here, headless)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h["loss"] for h in history], marker="o")
    ax[0].set(xlabel="epoch", ylabel="train loss", title="loss")
    vals = [(h["epoch"], h["val_miou"]) for h in history if h["val_miou"] is not None]
    ax[1].plot([e for e, _ in vals], [v for _, v in vals], marker="o", color="tab:green")
    ax[1].set(xlabel="epoch", ylabel="val mIoU (%)", title="val base mIoU")
    fig.tight_layout()
    tmp = temp_beside(path)
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    install(tmp, path)


# -- main -----------------------------------------------------------------------------------------------------

def finish(best: float, best_path: Path, rank: int, world: int) -> None:
    """Log the best val mIoU and the checksum of the model in best.pt; leave the process group."""
    if rank == 0:
        final, _ = load_checkpoint(best_path)
        log.info("done: best val base mIoU %.2f, %s sha256 %s", best, best_path, model_checksum(final)[:16])
    if world > 1:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """parse -> setup -> data -> model, optimiser, schedule -> resume -> epochs (train, then rank 0 validates and
    saves) -> finish."""
    args = parse_args(argv)
    fill_optimizer_defaults(args)
    rank, world = setup(args)

    data: Dataset = open_dataset(args.data)
    cfg = build_config(args, data)
    train_set, sampler, val_data, class_weight = build_data(args, cfg, data, rank, world)
    gen = torch.Generator().manual_seed(args.seed)  # CAPL's fake-novel / fake-context draws; saved in last.pt

    model = build_model(args, cfg)
    optimizer = build_optimizer(model, args)
    iters_per_epoch = epoch_iters(len(train_set), world, args)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_poly(iters_per_epoch * args.epochs, int(args.warmup_epochs * iters_per_epoch)))

    start_epoch, history, best = 0, [], -1.0
    if args.resume:
        start_epoch, history, best = resume_from(args.out / "last.pt", model, optimizer, schedule, gen, cfg)

    net = build_net(model, args.method, class_weight, world, args.unknown_weight, args.unknown_cells)
    if rank == 0:
        log_recipe(args, cfg, train_set, world, iters_per_epoch, class_weight)

    for epoch in range(start_epoch, args.epochs):
        model.train()
        started = time.time()
        losses, seen = train_one_epoch(net, train_set, sampler, optimizer, schedule, gen, args, epoch,
                                       iters_per_epoch, rank)
        stats = gather_epoch(model, losses, seen, started, world)
        if rank == 0:
            best = end_of_epoch(args, epoch, stats, model, optimizer, schedule, gen, val_data, history, best)
        if world > 1:
            dist.barrier()

    finish(best, args.out / "best.pt", rank, world)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
