"""The trainer on tiny budgets: real CamVid frames, real SGD steps, real checkpoints, real torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_gfs.core import capl
from edge_gfs.core.model import CaplModel, load_checkpoint
from edge_gfs.core.segmenter import Segmenter
from edge_gfs.data.datasets import camvid, train_lut
from edge_gfs.data.metrics import confusion, summarize
from trainer.augment import AugmentConfig, augment
from trainer.train import (AugmentedFrames, TrainLoss, build_optimizer, build_parser, evaluate, fill_optimizer_defaults,
                           parse_args, pixel_share, warmup_poly)

TINY = ["--input-size", "64x96", "--dim", "32", "--batch-size", "4", "--train-limit", "8", "--val-limit", "2",
        "--threads", "1"]


@pytest.fixture(scope="module")
def frames(camvid_root):
    _, imgs, labs = camvid(camvid_root).load("train", 8)
    return imgs, labs


def test_augment_keeps_label_values_and_size(frames):
    img, lab = frames[0][0], train_lut(list(range(8)))[frames[1][0]]
    rng = np.random.default_rng(0)
    for _ in range(5):
        a_img, a_lab = augment(img, lab, (64, 96), rng)
        assert a_img.shape == (64, 96, 3) and a_lab.shape == (64, 96)
        # nearest-neighbour label warps never invent values; novel classes stay hidden
        assert set(np.unique(a_lab)) <= set(np.unique(lab)) | {255}
    same = [augment(img, lab, (64, 96), np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(same[0][0], same[1][0]) and np.array_equal(same[0][1], same[1][1])


def test_novel_pixels_become_ignore_in_base_training(frames):
    ds = AugmentedFrames(frames[0], frames[1], train_lut(list(range(8))), (64, 96), seed=0)
    for i in range(len(ds)):
        _, lab = ds[i]
        assert int(lab[lab != 255].max()) <= 7


@pytest.mark.parametrize("method", ["capl", "baseline"])
def test_loss_falls_on_a_fixed_batch(frames, tiny_cfg, method):
    torch.manual_seed(0)
    model = CaplModel(tiny_cfg, pretrained=True)
    ds = AugmentedFrames(frames[0], frames[1], train_lut(tiny_cfg.base_classes), tiny_cfg.input_hw, seed=0)
    rgb, lab = (torch.stack(t) for t in zip(*[ds[i] for i in range(6)]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    step = TrainLoss(model, method)
    losses = []
    for _ in range(12):
        loss = step(rgb, lab, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_unknown_term_flattens_base_scores_on_unlabelled_pixels(frames, tiny_cfg):
    """Twelve steps on the same batch from the same weights, with and without --unknown-weight: with it, the
    held-out and void pixels end up further from every base class (a lower unknown loss), which is what lets a
    taught class win them later."""
    ds = AugmentedFrames(frames[0], frames[1], train_lut(tiny_cfg.base_classes), tiny_cfg.input_hw, seed=0)
    rgb, lab = (torch.stack(t) for t in zip(*[ds[i] for i in range(6)]))
    assert bool((lab == 255).any())
    after = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = CaplModel(tiny_cfg, pretrained=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        step = TrainLoss(model, "capl", None, weight)
        for _ in range(12):
            loss = step(rgb, lab, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            feats = model(rgb)
            logits = capl.cosine_logits(feats, capl.l2n(model.prototypes), tiny_cfg.alpha)
            after[weight] = capl.unknown_loss(logits, lab).item()
    assert after[1.0] < 0.7 * after[0.0], after


def test_unknown_weight_is_refused_outside_capl(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainer", "--method", "baseline", "--unknown-weight", "0.1",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--unknown-weight" in r.stderr and "capl" in r.stderr


def _train(out, *extra):
    cmd = [sys.executable, "-m", "trainer", "--method", "capl", "--fold", "0", "--out", str(out), *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_checkpoints_logs_plot_and_resume(camvid_root, tmp_path):
    out = tmp_path / "run"
    r = _train(out, "--epochs", "1", "--max-iters", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("last.pt", "best.pt", "history.json", "train.log", "curves.png"):
        assert (out / name).is_file(), name
    best, payload = load_checkpoint(out / "best.pt")
    assert best.cfg.base_classes == list(range(8)) and best.cfg.input_hw == (64, 96)
    assert payload["metrics"]["val"]["per_class"]["Car"] is None  # novel: not scored in base training

    r = _train(out, "--epochs", "2", "--resume")  # flags not repeated come from the interrupted run
    assert r.returncode == 0, r.stderr[-2000:]
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["iters"] == 4  # resumed at iteration 2, not from scratch
    assert "resumed from" in (out / "train.log").read_text()


def test_resume_with_other_config_is_refused(camvid_root, tmp_path):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1", "--max-iters", "1").returncode == 0
    r = _train(out, "--epochs", "2", "--resume", "--dim", "64")
    assert r.returncode != 0 and "another config" in r.stderr


def test_torchrun_ddp_two_processes(camvid_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer",
           "--method", "capl", "--fold", "0", "--out", str(out), "--epochs", "1", "--max-iters", "2", *TINY]
    cmd[cmd.index("--batch-size") + 1] = "2"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (entry,) = json.loads((out / "history.json").read_text())
    assert entry["world_size"] == 2
    assert entry["samples_seen"] == 8  # 2 ranks x 2 iterations x batch 2: the data was sharded, not duplicated
    assert entry["ddp_params_in_sync"] is True
    assert (out / "train.rank1.log").is_file()
    load_checkpoint(out / "best.pt")


def test_crop_smaller_than_the_input_keeps_the_input_scale(frames):
    """A 32x48 crop of a frame seen at 64x96 shows objects at run-time size, not squeezed into the crop."""
    img, lab = frames[0][0], train_lut(list(range(8)))[frames[1][0]]
    flat = AugmentConfig(scale=(1.0, 1.0), rotate_deg=0.0, blur_p=0.0, flip_p=0.0)
    c_img, c_lab = augment(img, lab, (64, 96), np.random.default_rng(3), flat, crop_hw=(32, 48))
    assert c_img.shape == (32, 48, 3) and c_lab.shape == (32, 48)
    whole = cv2.resize(img, (96, 64), interpolation=cv2.INTER_LINEAR)
    _, _, (x, y), _ = cv2.minMaxLoc(cv2.matchTemplate(whole, c_img, cv2.TM_SQDIFF))
    assert np.array_equal(whole[y:y + 32, x:x + 48], c_img)  # a window of the 64x96 frame, pixel for pixel


def test_warmup_then_poly_schedule():
    f = warmup_poly(total_iters=100, warmup_iters=10)
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 ** 0.9)
    assert f(100) == 0.0 and f(120) == 0.0
    assert all(f(i) >= f(i + 1) for i in range(10, 100))
    assert warmup_poly(10, 0)(0) == pytest.approx(1.0)  # no warmup: poly from the first step


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_groups(tiny_cfg, name):
    """Head x mult over the backbone; no weight decay on BatchNorm, biases or the prototypes; every
    parameter exactly once."""
    model = CaplModel(tiny_cfg, pretrained=False)
    args = build_parser().parse_args(["--out", "x", "--optimizer", name])
    fill_optimizer_defaults(args)
    opt = build_optimizer(model, args)
    assert isinstance(opt, torch.optim.AdamW if name == "adamw" else torch.optim.SGD)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert group_of[id(model.prototypes)]["weight_decay"] == 0.0
    assert group_of[id(model.prototypes)]["lr"] == pytest.approx(args.lr * args.head_lr_mult)
    stem = model.extractor.backbone.conv_stem.weight
    assert group_of[id(stem)]["lr"] == pytest.approx(args.lr)
    assert group_of[id(stem)]["weight_decay"] == args.weight_decay
    bn = model.extractor.backbone.bn1.weight
    assert group_of[id(bn)]["weight_decay"] == 0.0


def test_balanced_weights_come_from_the_train_labels(frames):
    lut = train_lut(list(range(8)))
    share = pixel_share(frames[1], lut, 8)
    assert share.sum() == sum(int((lut[lab] < 8).sum()) for lab in frames[1])
    w = capl.balanced_class_weights(share)
    assert w[2] > 1.5 * w[3]  # Pole, thin and rare, outweighs Road


def test_adamw_native_crop_run_and_resume(camvid_root, tmp_path):
    """The recipe flags end to end: AdamW, warmup, class weights, a crop smaller than the input; the LR
    schedule resumes where it stopped."""
    out = tmp_path / "run"
    flags = ["--optimizer", "adamw", "--warmup-epochs", "1", "--class-weights", "balanced", "--crop-size", "32x64"]
    r = _train(out, "--epochs", "1", "--max-iters", "2", *flags)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (out / "train.log").read_text()
    assert "optimizer=adamw" in log and "crop=(32, 64)" in log and "class_weights=[" in log
    r = _train(out, "--epochs", "2", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["schedule"]["last_epoch"] == 4
    assert ckpt["args"]["optimizer"] == "adamw" and ckpt["args"]["crop_size"] == "32x64"


def test_warm_start_needs_the_same_classes(camvid_root, tmp_path):
    src = tmp_path / "src"
    assert _train(src, "--epochs", "1", "--max-iters", "1").returncode == 0
    r = _train(tmp_path / "warm", "--epochs", "1", "--max-iters", "1", "--init", str(src / "best.pt"),
               "--input-size", "96x128")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warm start from" in (tmp_path / "warm" / "train.log").read_text()
    r = _train(tmp_path / "bad", "--epochs", "1", "--max-iters", "1", "--init", str(src / "best.pt"), "--dim", "64")
    assert r.returncode != 0 and "--init" in r.stderr and "dim" in r.stderr


def test_resume_keeps_saved_flags_unless_given_again(tmp_path):
    """--resume: a flag not on the command line comes from the interrupted run; one given again wins, even at its
    default value, and argparse decides what was given (so --flag=value and abbreviations count)."""
    old = build_parser().parse_args(["--out", "old", "--method", "baseline", "--dim", "64", "--epochs", "3",
                                     "--val-every", "2", "--optimizer", "sgd", "--no-pretrained"])
    fill_optimizer_defaults(old)
    torch.save({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(old).items() if k != "out"}},
               tmp_path / "last.pt")
    args = parse_args(["--out", str(tmp_path), "--resume", "--epochs", "5", "--method", "capl", "--val-every=1",
                       "--optim", "adamw"])
    assert args.dim == 64 and args.no_pretrained is True and args.lr == 0.01  # not given: the saved run's
    assert args.epochs == 5 and args.optimizer == "adamw"  # given again
    assert args.method == "capl" and args.val_every == 1  # given again at their default values: still given
    assert args.out == tmp_path and args.resume is True
    assert parse_args(["--out", str(tmp_path)]).dim == 128  # without --resume the saved flags are not read
    given = build_parser(defaults=False).parse_args(["--out", "x", "--seed", "0"])
    assert vars(given) == {"out": Path("x"), "seed": 0}


def test_evaluate_scores_only_base_pixels(tiny_cfg):
    """evaluate's scored_confusion over the base classes gives the numbers of masking the novel classes by hand,
    and a novel pixel predicted as a base class is not charged to that class (a real network, random weights)."""
    torch.manual_seed(0)
    model = CaplModel(tiny_cfg, pretrained=False).eval()
    n = len(tiny_cfg.class_names)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    values = np.array([*range(n + 2), 255])  # classes, out-of-range ids, void
    labels = [rng.choice(values, (48, 64)).astype(np.uint8) for _ in images]
    preds = Segmenter(model).segment(images)
    got = evaluate(model, images, labels, batch=2)
    hidden = [c for c in range(n) if c not in tiny_cfg.base_classes]
    cm = sum(confusion(p, np.where(np.isin(g, hidden), capl.IGNORE, g), n) for p, g in zip(preds, labels))
    assert got == summarize(cm, tiny_cfg.class_names, tiny_cfg.base_classes, [])
    assert got["base_miou"] is not None and got["novel_miou"] is None
    # labels equal to the predictions, except a block relabelled novel (Car): still a perfect base score
    perfect = [p.copy() for p in preds]
    for lab in perfect:
        lab[:16, :16] = 8
    got = evaluate(model, images, perfect)
    assert got["base_miou"] == 100.0 and got["per_class"][tiny_cfg.class_names[8]] is None
