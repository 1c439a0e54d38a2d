"""The trainer on tiny budgets: real CamVid frames, real SGD steps, real checkpoints, real torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from edge_gfs.datasets import camvid, train_lut
from edge_gfs.model import CaplModel, load_checkpoint
from trainer.augment import augment
from trainer.train import AugmentedFrames, TrainLoss

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
