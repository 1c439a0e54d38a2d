"""Train a CAPL, baseline or oracle model. Reads top to bottom like torchvision's references/segmentation.

    edge-gfs train --method capl --fold 0 --epochs 30 --out runs/camvid-fold0
    torchrun --nproc_per_node 2 -m trainer --method capl --fold 0 --out runs/ddp   # DDP, gloo on CPU

Every epoch: a checkpoint (last.pt, resumable with --resume), val mIoU over the base classes at full label
resolution, best.pt when val improves (selection on val only), history.json, train.log and curves.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from edge_gfs import capl
from edge_gfs.config import FOLDS, ModelConfig
from edge_gfs.datasets import Dataset, open_dataset, train_lut
from edge_gfs.metrics import confusion, summarize
from edge_gfs.model import CaplModel, load_checkpoint, model_checksum, save_checkpoint
from edge_gfs.predict import Segmenter
from trainer.augment import AugmentConfig, augment

log = logging.getLogger("edge_gfs.train")

EXAMPLE = """examples:
  edge-gfs train --method capl --fold 0 --epochs 30 --out runs/camvid-fold0
  edge-gfs train --method baseline --fold 0 --epochs 30 --out runs/baseline-fold0
  edge-gfs train --method oracle --epochs 30 --out runs/oracle
  edge-gfs train --out runs/camvid-fold0 --resume          # continue after an interruption
  torchrun --nproc_per_node 2 -m trainer --method capl --fold 0 --out runs/ddp
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs train", description="Train an edge-gfs segmentation model.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["capl", "baseline", "oracle"], default="capl",
                   help="capl: fake-novel/fake-context training; baseline: plain CE; oracle: plain CE on all classes")
    p.add_argument("--fold", default="all", help="GFS fold whose novel classes are hidden: 0, 1 or all (no novel)")
    p.add_argument("--novel", default=None, help="comma-separated novel class ids instead of --fold (folder datasets)")
    p.add_argument("--data", default="camvid", help="'camvid' (from $EDGE_GFS_DATA) or a folder dataset path")
    p.add_argument("--out", required=True, type=Path, help="run directory: checkpoints, log, history, plot")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=0.01, help="backbone lr; head, prototypes and G_sup get 10x")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--dim", type=int, default=128, help="feature dimension d")
    p.add_argument("--input-size", default="192x256", help="HxW the network sees (multiples of 32)")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "tf_efficientnet_lite0"])
    p.add_argument("--dqce-weighting", default="impl", choices=["impl", "paper"])
    p.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--max-iters", type=int, default=0, help="stop each epoch after this many iterations (smoke tests)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N train frames")
    p.add_argument("--val-limit", type=int, default=None, help="use only the first N val frames")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    p.add_argument("--seed", type=int, default=0)
    return p


# -- data -----------------------------------------------------------------------------------------------------

class AugmentedFrames(torch.utils.data.Dataset):
    """In-memory frames -> augmented (RGB float tensor, base-row label tensor) at the input size.

    The random view depends only on (seed, epoch, index), so a resumed run sees the same data it would have.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], lut: np.ndarray,
                 input_hw: tuple[int, int], seed: int) -> None:
        self.images, self.labels, self.lut, self.input_hw, self.seed = images, labels, lut, input_hw, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, lab = augment(self.images[i], self.lut[self.labels[i]], self.input_hw, rng, AugmentConfig())
        rgb = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).float()
        return rgb, torch.from_numpy(lab.astype(np.int64))


class TrainLoss(torch.nn.Module):
    """The whole loss inside one forward, so DDP sees P_cls and G_sup used where it expects them."""

    def __init__(self, model: CaplModel, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, rgb: torch.Tensor, lab: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        m, cfg = self.model, self.model.cfg
        feats = m(rgb)
        if self.method == "capl":
            return capl.capl_loss(feats, lab, m.prototypes, m.g_sup, cfg.alpha, cfg.dqce_weighting, gen)
        return capl.upsampled_ce(capl.cosine_logits(feats, m.prototypes, cfg.alpha), lab)


# -- evaluation -----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: CaplModel, images: list[np.ndarray], labels: list[np.ndarray], batch: int = 8) -> dict:
    """Base-only mIoU (novel classes are ignored) at the labels' full resolution, with the inference path."""
    was_training = model.training
    seg = Segmenter(model)
    cfg = model.cfg
    n = len(cfg.class_names)
    hidden = [c for c in range(n) if c not in cfg.base_classes]
    cm = np.zeros((n, n + 1), dtype=np.int64)
    for s in range(0, len(images), batch):
        pred = seg.segment(images[s:s + batch])
        for p, gt in zip(pred, labels[s:s + batch]):
            gt = gt.copy()
            gt[np.isin(gt, hidden)] = capl.IGNORE
            cm += confusion(p, gt, n)
    model.train(was_training)
    return summarize(cm, cfg.class_names, cfg.base_classes, [])


# -- plumbing -------------------------------------------------------------------------------------------------

def setup_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank() if world > 1 else 0), world


def setup_logging(out: Path, rank: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(out / ("train.log" if rank == 0 else f"train.rank{rank}.log"))]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h["loss"] for h in history], marker="o")
    ax[0].set(xlabel="epoch", ylabel="train loss", title="loss")
    ax[1].plot(ep, [h["val_miou"] for h in history], marker="o", color="tab:green")
    ax[1].set(xlabel="epoch", ylabel="val mIoU (%)", title="val base mIoU")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def params_in_sync(model: torch.nn.Module, world: int) -> bool:
    """DDP sanity check: every rank holds the same weights (max and min of a checksum agree)."""
    if world == 1:
        return True
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    hi, lo = s.clone(), s.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool((hi - lo).abs().item() <= 1e-9 * max(1.0, abs(s.item())))


def parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--input-size must look like 192x256, got {text!r}")
    return h, w


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse flags; with --resume, flags not given again are taken from the interrupted run."""
    parser = build_parser()
    args = parser.parse_args(argv)
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        saved = torch.load(last, map_location="cpu", weights_only=False).get("args", {})
        explicit = build_parser()
        for action in explicit._actions:
            action.default = argparse.SUPPRESS
        given = vars(explicit.parse_args(argv))
        for key, value in saved.items():
            if key not in given and key not in ("out", "resume"):
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world = setup_distributed()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    setup_logging(args.out, rank)

    # data and classes ------------------------------------------------------------------------------------------
    data: Dataset = open_dataset(args.data)
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
    cfg = ModelConfig(class_names=data.class_names, base_classes=base, method=args.method,
                      backbone=args.backbone, dim=args.dim, input_hw=parse_hw(args.input_size),
                      dqce_weighting=args.dqce_weighting)

    _, tr_imgs, tr_labs = data.load("train", args.train_limit)
    _, va_imgs, va_labs = data.load("val", args.val_limit)
    train_set = AugmentedFrames(tr_imgs, tr_labs, train_lut(base), cfg.input_hw, args.seed)
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed) if world > 1 else None
    gen = torch.Generator().manual_seed(args.seed)

    # model and optimiser ---------------------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    model = CaplModel(cfg, pretrained=not args.no_pretrained)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("extractor.backbone.")]
    optimizer = torch.optim.SGD([
        {"params": model.extractor.backbone.parameters(), "lr": args.lr},
        {"params": head_params, "lr": args.lr * 10},
    ], lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]

    iters_per_epoch = math.ceil(len(train_set) / world / args.batch_size)
    if args.max_iters:
        iters_per_epoch = min(iters_per_epoch, args.max_iters)
    total_iters = iters_per_epoch * args.epochs

    start_epoch, history, best = 0, [], -1.0
    last_path, best_path = args.out / "last.pt", args.out / "best.pt"
    if args.resume:
        if not last_path.is_file():
            raise SystemExit(f"--resume: no {last_path}; start without --resume")
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise SystemExit(f"--resume: {last_path} was trained with another config; use the same flags or a new --out")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best_val_miou"]
        gen.set_state(ckpt["generator"])
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    net: torch.nn.Module = TrainLoss(model, args.method)
    if world > 1:
        # G_sup is unused by the baseline, and by CAPL in a batch with no fake-context class
        net = DistributedDataParallel(net, find_unused_parameters=True)
    if rank == 0:
        log.info("method=%s fold=%s base=%s input=%s d=%d world=%d iters/epoch=%d",
                 args.method, args.fold, [cfg.class_names[c] for c in base], cfg.input_hw, cfg.dim, world,
                 iters_per_epoch)

    # train -----------------------------------------------------------------------------------------------------
    it = start_epoch * iters_per_epoch
    for epoch in range(start_epoch, args.epochs):
        model.train()
        train_set.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None,
                            drop_last=False, num_workers=0,
                            generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        t0, losses, seen = time.time(), [], 0
        bar = tqdm(loader, total=iters_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0,
                   leave=False, file=sys.stderr)
        for step, (rgb, lab) in enumerate(bar):
            if step >= iters_per_epoch:
                break
            lr_scale = (1 - it / total_iters) ** 0.9
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * lr_scale
            loss = net(rgb, lab, gen)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at iteration {it}: lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seen += rgb.shape[0]
            it += 1
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()

        seen_t = torch.tensor([seen])
        if world > 1:
            dist.all_reduce(seen_t)
        in_sync = params_in_sync(model, world)
        if rank == 0:
            metrics = evaluate(model, va_imgs, va_labs)
            val = metrics["base_miou"] or 0.0
            entry = {"epoch": epoch + 1, "iters": it, "loss": float(np.mean(losses)), "val_miou": val,
                     "val_per_class": metrics["per_class"], "seconds": time.time() - t0,
                     "samples_seen": int(seen_t.item()), "world_size": world, "ddp_params_in_sync": in_sync}
            history.append(entry)
            log.info("epoch %d loss %.4f val base mIoU %.2f (%.0fs, %d samples)", epoch + 1, entry["loss"], val,
                     entry["seconds"], entry["samples_seen"])
            if val > best:
                best = val
                save_checkpoint(best_path, model, {"metrics": {"val": metrics, "epoch": epoch + 1},
                                                   "train_args": {k: (str(v) if isinstance(v, Path) else v)
                                                                  for k, v in vars(args).items()}})
                log.info("new best val mIoU %.2f -> %s", val, best_path)
            save_checkpoint(last_path, model, {"optimizer": optimizer.state_dict(), "epoch": epoch,
                                               "history": history, "best_val_miou": best,
                                               "generator": gen.get_state(),
                                               "args": {k: v for k, v in vars(args).items() if k != "out"}})
            write_json(args.out / "history.json", history)
            plot_history(history, args.out / "curves.png")
        if world > 1:
            dist.barrier()

    if rank == 0:
        final, _ = load_checkpoint(best_path)
        log.info("done: best val base mIoU %.2f, %s sha256 %s", best, best_path, model_checksum(final)[:16])
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
