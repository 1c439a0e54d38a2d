"""Val-only tuning of CAPL's registration for GFS-CamVid: how each variant trades base retention for novel IoU.

    python bench/val_tuning.py                 # all variants, folds 0 and 1, K=5, mask supports, 5 seeds
    python bench/val_tuning.py --shots 1 --variants calibrated,uncalibrated

Runs on the 101 val frames with the benchmark's cached CAPL models (bench/models/), so it never looks at
test. It is where `novel_bias` (edge_gfs/core/config.py) was chosen: the largest val total mIoU among the settings
that keep base mIoU >= 95% of base-only in both folds. Writes bench/results/val/tuning.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gfs_camvid import SEEDS, SHIPPED, evaluate, pick, recipe, recipe_key  # noqa: E402

from edge_gfs.core import capl  # noqa: E402
from edge_gfs.core.config import CAMVID_CLASSES, FOLDS  # noqa: E402
from edge_gfs.data.datasets import camvid  # noqa: E402
from edge_gfs.data.evaluation import class_pixel_counts, draw_supports  # noqa: E402
from edge_gfs.data.metrics import summarize  # noqa: E402
from edge_gfs.core.config import parse_hw  # noqa: E402
from edge_gfs.core.model import at_size, load_checkpoint  # noqa: E402
from edge_gfs.core.segmenter import InferenceOptions, Segmenter, to_input  # noqa: E402

# name -> (what it changes, options). Variants use the paper's one mean row per class unless "rows" says
# "per_shot" (the shipped default); "per_shot": True builds per-shot rows here, where a variant changes them
# (k-means, multilevel, adaptive margins). "fit" fits the novel rows (and a bias each) on the support pixels by
# 50 Adam steps with the base rows frozen (DIaM/BCM-style registration-time calibration).
VARIANTS: dict[str, tuple[str, dict]] = {
    "boost_0.10": ("novel rows favoured by 0.10 (a negative margin)", {"novel_bias": -0.10}),
    "boost_0.05": ("novel rows favoured by 0.05 (a negative margin)", {"novel_bias": -0.05}),
    "uncalibrated": ("CAPL as in the paper (novel_bias 0)", {"novel_bias": 0.0}),
    "bias_0.05": ("constant novel margin 0.05", {"novel_bias": 0.05}),
    "bias_0.10": ("constant novel margin 0.10", {"novel_bias": 0.10}),
    "calibrated": ("constant novel margin 0.15 (recipe 1's choice)", {"novel_bias": 0.15}),
    "bias_0.20": ("constant novel margin 0.20", {"novel_bias": 0.20}),
    "adaptive_0.2": ("margin 0.2 x max cosine of the novel row to a base row", {"novel_bias": 0.0, "adaptive": 0.2}),
    "pseudo_0.5": ("uncalibrated, pseudo-label threshold 0.5", {"novel_bias": 0.0, "pseudo_threshold": 0.5}),
    "pseudo_0.9": ("uncalibrated, pseudo-label threshold 0.9", {"novel_bias": 0.0, "pseudo_threshold": 0.9}),
    "normalised_pool": ("uncalibrated, prototypes pool L2-normalised features", {"novel_bias": 0.0, "pool": "normalised"}),
    "fit": ("uncalibrated, novel rows + bias fitted on support pixels (50 Adam steps)", {"novel_bias": 0.0, "fit": True}),
    "multilevel_0.5": ("uncalibrated, novel rows on [decoder; 0.5 x encoder stage 4 + 5] features", {"novel_bias": 0.0, "multilevel": 0.5}),
    "multilevel_0.5_bias_0.05": ("as above, margin 0.05", {"novel_bias": 0.05, "multilevel": 0.5}),
    "multilevel_0.25_bias_0.1": ("[decoder; 0.25 x encoder], margin 0.1", {"novel_bias": 0.1, "multilevel": 0.25}),
    "per_shot": ("uncalibrated, one novel row per shot, a class scores its best (novel_rows per_shot)",
                 {"novel_bias": 0.0, "rows": "per_shot"}),
    "per_shot_mean": ("uncalibrated, a row per shot plus the K-shot mean (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "with_mean": True}),
    "per_shot_bias_0.05": ("one novel row per shot, margin 0.05", {"novel_bias": 0.05, "rows": "per_shot"}),
    "per_shot_boost_0.05": ("one novel row per shot, favoured by 0.05", {"novel_bias": -0.05, "rows": "per_shot"}),
    "kmeans_2": ("a row per 2-means cluster of each shot's masked features (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "kmeans": 2}),
    "kmeans_3": ("a row per 3-means cluster of each shot's masked features (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "kmeans": 3}),
    "kmeans_4": ("a row per 4-means cluster of each shot's masked features (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "kmeans": 4}),
    "per_shot_adaptive_0.1": ("a row per shot, margin 0.1 x its max cosine to a base row (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "adaptive": 0.1}),
    "per_shot_cover_0.5": ("a row per shot from cells >= 50% covered by the mask (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "cover": 0.5}),
    "per_shot_cover_0.9": ("a row per shot from cells >= 90% covered by the mask (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "cover": 0.9}),
    "per_shot_touch": ("a row per shot from every cell the mask touches (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "touch": True}),
    "bgcos_q99_0.5": ("a row per shot, margin 0.5 x its 99th-percentile cosine to its own frame's background",
                      {"novel_bias": 0.0, "per_shot": True, "raw_pool": True, "bg": (0.99, 0.5)}),
    "bgcos_max_0.3": ("a row per shot, margin 0.3 x its max cosine to its own frame's background",
                      {"novel_bias": 0.0, "per_shot": True, "raw_pool": True, "bg": (1.0, 0.3)}),
    "bgcos_q95_1.0": ("a row per shot, margin 1.0 x relu(95th-pct background cosine - 0.5)",
                      {"novel_bias": 0.0, "per_shot": True, "raw_pool": True, "bg": (0.95, 1.0, 0.5)}),
    "self_0.7": ("per-shot rows plus a self-support row per taught class from its confident (p>0.7) pixels in the frame",
                 {"novel_bias": 0.0, "rows": "per_shot", "self": (0.7, 0.0, "row")}),
    "self_0.5": ("as self_0.7 with p>0.5", {"novel_bias": 0.0, "rows": "per_shot", "self": (0.5, 0.0, "row")}),
    "self_0.9": ("as self_0.7 with p>0.9", {"novel_bias": 0.0, "rows": "per_shot", "self": (0.9, 0.0, "row")}),
    "self_0.7_m0.05": ("as self_0.7, self row margin 0.05", {"novel_bias": 0.0, "rows": "per_shot", "self": (0.7, 0.05, "row")}),
    "self_0.7_base": ("self rows for base classes too", {"novel_bias": 0.0, "rows": "per_shot", "self": (0.7, 0.0, "all")}),
    "loo_bias": ("per-shot rows, a margin per taught class chosen on its own shots: each shot segmented by the other "
                 "shots' rows, the margin that maximises IoU with the masks", {"novel_bias": 0.0, "rows": "per_shot", "loo": "iou"}),
    "loo_bias_half": ("as loo_bias, half the chosen margin", {"novel_bias": 0.0, "rows": "per_shot", "loo": "iou", "loo_shrink": 0.5}),
    "guard_0.9": ("per-shot rows; a taught class cannot win where the base rows alone are >= 0.9 sure",
                  {"novel_bias": 0.0, "rows": "per_shot", "guard": (0.9, "hard")}),
    "guard_0.8": ("as guard_0.9 at 0.8", {"novel_bias": 0.0, "rows": "per_shot", "guard": (0.8, "hard")}),
    "guard_0.95": ("as guard_0.9 at 0.95", {"novel_bias": 0.0, "rows": "per_shot", "guard": (0.95, "hard")}),
    "guard_0.7": ("as guard_0.9 at 0.7", {"novel_bias": 0.0, "rows": "per_shot", "guard": (0.7, "hard")}),
    "guard_soft_0.2": ("per-shot rows; taught classes lose 0.2 x the base rows' max probability (cosine units)",
                       {"novel_bias": 0.0, "rows": "per_shot", "guard": (0.2, "soft")}),
    "guard_soft_0.1": ("as guard_soft_0.2 with 0.1", {"novel_bias": 0.0, "rows": "per_shot", "guard": (0.1, "soft")}),
    "per_shot_multilevel_0.5": ("one row per shot on [decoder; 0.5 x encoder] (unit-feature pooling)", {"novel_bias": 0.0, "per_shot": True, "multilevel": 0.5}),
}


@torch.no_grad()
def multilevel_features(model, images: list[np.ndarray], batch: int = 16) -> torch.Tensor:
    """(B, d + c4 + c5, h, w): the decoder features, then the per-pixel-normalised encoder stage-4 and stage-5
    features upsampled to stride 8. Why: the encoder keeps what ImageNet knew about objects that base training
    never labelled (the benchmark spec's probe); this measures what that gives novel prototypes without retraining."""
    out = []
    for s in range(0, len(images), batch):
        x = to_input(images[s:s + batch], model.cfg.input_hw) * (1.0 / 127.5) - 1.0
        taps = model.extractor.backbone(x)
        dec = model.extractor.head(taps)
        enc = [capl.l2n(F.interpolate(t, size=dec.shape[-2:], mode="bilinear", align_corners=False), dim=1)
               for t in taps[1:]]
        out.append(torch.cat([dec, *enc], 1))
    return torch.cat(out)


def kmeans_rows(x: torch.Tensor, k: int, iters: int = 10, min_size: int = 4) -> list[torch.Tensor]:
    """Spherical k-means of (n,d) features with a deterministic farthest-point start; the unit means of the
    clusters with >= min_size members."""
    u = capl.l2n(x)
    centres = [capl.l2n(u.mean(0))]
    for _ in range(k - 1):
        sim = (u @ torch.stack(centres).T).amax(1)
        centres.append(u[int(sim.argmin())])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = (u @ c.T).argmax(1)
        c = torch.stack([capl.l2n(x[assign == j].sum(0)) if bool((assign == j).any()) else c[j] for j in range(k)])
    assign = (u @ c.T).argmax(1)
    return [capl.l2n(x[assign == j].mean(0)) for j in range(k) if int((assign == j).sum()) >= min_size]


def multilevel_prototypes(seg: "Variant", supports: list[tuple[torch.Tensor, torch.Tensor]], lam: float,
                          per_shot: bool = False, with_mean: bool = False, kmeans: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Novel prototypes on [unit decoder feature; lam x encoder features]: one per class pooled over its shots,
    or (`per_shot`) one per shot of it, plus the pooled one with `with_mean`. Returns rows (R,d') and the
    novel-row index of each (R,)."""
    rows, owner = [], []
    for i, c in enumerate(seg.classifier.novel_ids):
        stats = [capl.class_sums(seg.joint(feats, lam), class_map, [c]) for feats, class_map in supports]
        stats = [(s[0], n[0]) for s, n in stats if n[0] > 0]
        groups = [[st] for st in stats] if per_shot else []
        if with_mean or not per_shot:
            groups.append(stats)
        for g in groups:
            rows.append(capl.l2n(sum(s for s, _ in g) / sum(n for _, n in g)))
            owner.append(i)
        if kmeans:
            for feats, class_map in supports:
                x = seg.joint(feats, lam)[0].flatten(1).T[class_map.flatten() == c]
                if len(x):
                    found = kmeans_rows(x, kmeans)
                    rows += found
                    owner += [i] * len(found)
    return torch.stack(rows), torch.tensor(owner)


LOO_GRID = np.round(np.arange(-0.10, 0.41, 0.02), 2)


@torch.no_grad()
def loo_margins(seg: Segmenter, supports: list[tuple[torch.Tensor, torch.Tensor]], shrink: float = 1.0) -> torch.Tensor:
    """A cosine margin per taught class from its own shots alone: each shot is segmented by the base rows and
    the class's other shots' rows, and the margin that maximises IoU with the shot's mask (pooled over the
    shots) is taken. K=1 gets 0. Why: a class whose shots' rows also fire on the background of other shots
    (a pedestrian row on Building) needs a larger margin than one that does not (Car)."""
    clf, alpha, d = seg.classifier, seg.cfg.alpha, seg.cfg.dim
    margins = []
    for c in clf.novel_ids:
        own = [(x[:, :d], m) for x, m in supports if bool((m == c).any())]
        rows = [capl.l2n(capl.class_sums(x, m, [c])[0][0]) for x, m in own]
        if len(own) < 2:
            margins.append(0.0)
            continue
        inter, union = np.zeros(len(LOO_GRID)), np.zeros(len(LOO_GRID))
        for k, (x, m) in enumerate(own):
            base = seg.logits(x, seg.base_classifier).amax(1)[0]
            others = torch.stack([r for j, r in enumerate(rows) if j != k])
            nov = capl.cosine_logits(x, others, alpha).amax(1)[0]
            truth = m[0] == c
            for g, b in enumerate(LOO_GRID):
                pred = (nov - alpha * b) > base
                inter[g] += float((pred & truth).sum())
                union[g] += float((pred | truth).sum())
        best = LOO_GRID[int(np.argmax(inter / np.maximum(union, 1)))]
        margins.append(shrink * float(best))
    return torch.tensor(margins)


def fit_novel_rows(seg: Segmenter, supports: list[tuple[torch.Tensor, torch.Tensor]], steps: int = 50,
                   lr: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Novel rows and biases that minimise CE on the support pixels, base rows (SCE + DQCE) frozen."""
    clf, alpha = seg.classifier, seg.cfg.alpha
    feats = torch.cat([s[0] for s in supports])
    lut = torch.full((256,), capl.IGNORE, dtype=torch.long)
    for row, c in enumerate(clf.row_ids):
        lut[c] = row
    target = lut[torch.cat([s[1] for s in supports])]
    with torch.no_grad():
        p_dyn = capl.dqce(feats, seg.model.prototypes, alpha, seg.weighting)
        base_logits = capl.cosine_logits(feats, clf.base_rows[None] + p_dyn, alpha)
    unit = capl.l2n(feats, dim=1)
    w = clf.novel_rows.clone().requires_grad_(True)
    b = torch.zeros(len(clf.novel_ids), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        novel_logits = alpha * torch.einsum("bdhw,nd->bnhw", unit, capl.l2n(w)) + b[None, :, None, None]
        loss = F.cross_entropy(torch.cat([base_logits, novel_logits], 1), target, ignore_index=capl.IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return capl.l2n(w.detach()), b.detach()


class Variant(Segmenter):
    """A Segmenter with one tuning variant's extra logit offsets (adaptive margin, fitted biases)."""

    offset: torch.Tensor | None = None
    protos: torch.Tensor | None = None  # multilevel novel prototypes
    owner: torch.Tensor | None = None  # novel-row index of each of protos (several rows per class: max)
    lam: float = 0.0
    row_offset: torch.Tensor | None = None  # per-prototype logit offsets (adaptive margin of per-shot rows)

    raw_pool: bool = False  # per-shot rows pool raw decoder features (as the registry does), not unit ones
    self_support: tuple | None = None  # (threshold, margin, mode): query self-support rows
    guard: tuple | None = None  # (value, "hard"|"soft"): keep taught classes off pixels the base rows are sure of

    def self_rows(self, out: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Second pass: each class (taught, or all with mode 'all') gets a row from the mean unit feature of its
        confident pixels in this frame, and scores max(first-pass logit, that row's cosine - margin)."""
        tau, margin, mode = self.self_support
        n_base = len(self.cfg.base_classes)
        unit = capl.l2n(feats[:, :self.cfg.dim], dim=1)
        prob = torch.softmax(out, 1)
        conf, pred = prob.max(1)
        new = out.clone()
        first = 0 if mode == "all" else n_base
        for b in range(out.shape[0]):
            for k in range(first, out.shape[1]):
                sel = (pred[b] == k) & (conf[b] > tau)
                if int(sel.sum()) < 2:
                    continue
                q = capl.l2n(unit[b][:, sel].mean(1))
                cos = self.cfg.alpha * (torch.einsum("dhw,d->hw", unit[b], q) - margin)
                new[b, k] = torch.maximum(out[b, k], cos)
        return new

    def joint(self, feats: torch.Tensor, lam: float) -> torch.Tensor:
        d = self.cfg.dim
        dec = feats[:, :d] if self.raw_pool else capl.l2n(feats[:, :d], dim=1)
        return torch.cat([dec, lam * feats[:, d:]], 1)

    @torch.no_grad()
    def logits(self, feats, classifier=None):
        """feats may carry multilevel_features' extra channels; the base path sees the decoder part only."""
        out = super().logits(feats[:, :self.cfg.dim], classifier)
        n_base = len(self.cfg.base_classes)
        if classifier is None and self.protos is not None and out.shape[1] > n_base:
            per_row = capl.cosine_logits(self.joint(feats, self.lam), self.protos, self.cfg.alpha)
            if self.row_offset is not None:
                per_row += self.row_offset[None, :, None, None]
            for i in range(out.shape[1] - n_base):
                out[:, n_base + i] = per_row[:, self.owner == i].amax(1)
            capl.calibrate_novel(out, n_base, self.cfg.alpha, self.novel_bias)
        if self.offset is not None and out.shape[1] > n_base:
            out[:, n_base:] += self.offset[None, :, None, None]
        if classifier is None and self.guard is not None and out.shape[1] > n_base:
            sure = torch.softmax(out[:, :n_base], 1).amax(1, keepdim=True)
            v, kind = self.guard
            if kind == "hard":
                out[:, n_base:] = torch.where(sure >= v, torch.full_like(out[:, n_base:], -1e4), out[:, n_base:])
            else:
                out[:, n_base:] -= self.cfg.alpha * v * sure
        if classifier is None and self.self_support is not None and out.shape[1] > n_base:
            out = self.self_rows(out, feats)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)}")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--folds", default="0,1")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "val")
    p.add_argument("--input-size", type=parse_hw, default=None, help="run the models at HxW (default: their own)")
    p.add_argument("--model", type=Path, default=None,
                   help="a checkpoint to tune instead of the benchmark's cached model (one fold)")
    args = p.parse_args(argv)
    names = pick(p, args.variants, VARIANTS, "variant")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t_start = time.time()
    data = camvid()
    counts = class_pixel_counts(data)
    val = [data.read("val", n) for n in data.names("val")]
    gts, n_cls = [v[1] for v in val], len(CAMVID_CLASSES)
    rows = []
    for f in args.folds.split(","):
        novel = list(FOLDS[f])
        base = [c for c in range(n_cls) if c not in novel]
        cached = REPO / "bench" / "models" / f"{SHIPPED}-f{f}-{recipe_key(recipe(SHIPPED, f, False))}.pt"
        model, _ = load_checkpoint(args.model or cached)
        if args.input_size:
            model = at_size(model, args.input_size)
        feats = multilevel_features(model, [v[0] for v in val])
        train_feats: dict[str, torch.Tensor] = {}
        for name in tqdm(names, desc=f"fold {f}"):
            opts = VARIANTS[name][1]
            model.cfg.pseudo_threshold = opts.get("pseudo_threshold", 0.7)
            model.cfg.sce_pooling = opts.get("pool", "raw")
            seg = Variant(model, InferenceOptions(novel_bias=opts["novel_bias"], novel_rows=opts.get("rows", "mean")))
            seg.self_support = opts.get("self")
            seg.guard = opts.get("guard")
            base_only = summarize(evaluate(seg, feats, gts, base, n_cls), list(CAMVID_CLASSES), base, [])["base_miou"]
            runs, fit_s, margins = [], [], []
            for seed in SEEDS:
                shots, supports = [], []
                for c, frames in draw_supports(data, novel, args.shots, seed, counts).items():
                    for nm in frames:
                        img, lab = data.read("train", nm)
                        if nm not in train_feats:
                            train_feats[nm] = multilevel_features(model, [img])
                        dec = train_feats[nm][:, :model.cfg.dim]
                        shots.append(seg.shot_from_features(dec, lab == c, c, f"{nm}:{c}"))
                        class_map = seg.shot_class_map(dec, lab == c, c)
                        if opts.get("touch"):
                            touched = F.adaptive_max_pool2d(torch.from_numpy(lab == c)[None, None].float(),
                                                            dec.shape[-2:])[:, 0].bool()
                            class_map = torch.where(touched, c, class_map)
                        if opts.get("cover"):
                            cover = F.interpolate(torch.from_numpy(lab == c)[None, None].float(), size=dec.shape[-2:],
                                                  mode="area")[:, 0]
                            inner = (class_map == c) & (cover >= opts["cover"])
                            if bool(inner.any()):
                                class_map = torch.where((class_map == c) & ~inner, capl.IGNORE, class_map)
                        supports.append((train_feats[nm], class_map))
                seg.offset, seg.protos = None, None
                seg.set_shots(shots)
                clf = seg.classifier
                if opts.get("adaptive") and not opts.get("per_shot"):
                    nearest = (capl.l2n(clf.novel_rows) @ clf.base_rows.T).amax(1)
                    seg.offset = -model.cfg.alpha * opts["adaptive"] * nearest
                if opts.get("multilevel") or opts.get("per_shot"):
                    seg.lam = opts.get("multilevel", 0.0)
                    seg.raw_pool = opts.get("raw_pool", False)
                    seg.protos, seg.owner = multilevel_prototypes(seg, supports, seg.lam, opts.get("per_shot", False),
                                                                  opts.get("with_mean", False), opts.get("kmeans", 0))
                    seg.row_offset = None
                    if opts.get("bg"):
                        q, w, *tau = opts["bg"]
                        offs = [0.0] * len(seg.protos)
                        # per-shot rows are built class by class in support order: pair each with its own frame
                        pairs = [(x, m) for c in clf.novel_ids for x, m in supports if bool((m == c).any())]
                        for r, (x, m) in enumerate(pairs):
                            c = clf.novel_ids[int(seg.owner[r])]
                            u = capl.l2n(x[:, :model.cfg.dim], dim=1)[0].flatten(1).T[(m.flatten() != c)]
                            cos = u @ capl.l2n(seg.protos[r, :model.cfg.dim])
                            b = float(torch.quantile(cos, q)) if q < 1 else float(cos.max())
                            offs[r] = -model.cfg.alpha * w * max(0.0, b - (tau[0] if tau else 0.0))
                        seg.row_offset = torch.tensor(offs)
                    if opts.get("adaptive"):
                        d = model.cfg.dim
                        nearest = (seg.protos[:, :d] @ clf.base_rows.T).amax(1) / seg.protos[:, :d].norm(dim=1)
                        seg.row_offset = -model.cfg.alpha * opts["adaptive"] * nearest
                if opts.get("loo"):
                    m = loo_margins(seg, supports, opts.get("loo_shrink", 1.0))
                    margins.append(m.tolist())
                    seg.offset = -model.cfg.alpha * m
                if opts.get("fit"):
                    t0 = time.perf_counter()
                    clf.novel_rows, seg.offset = fit_novel_rows(seg, [(x[:, :model.cfg.dim], m) for x, m in supports])
                    fit_s.append(time.perf_counter() - t0)
                runs.append(summarize(evaluate(seg, feats, gts, base + novel, n_cls), list(CAMVID_CLASSES), base, novel))
            mean = {k: float(np.mean([r[k] for r in runs])) for k in ("base_miou", "novel_miou", "total_miou")}
            rows.append({"variant": name, "what": VARIANTS[name][0], "fold": f, "shots": args.shots,
                         "base_only_miou": base_only, **mean, "base_kept_pct": 100 * mean["base_miou"] / base_only,
                         "std_total": float(np.std([r["total_miou"] for r in runs])),
                         "fit_seconds": float(np.mean(fit_s)) if fit_s else None, "margins": margins or None,
                         "per_class": {CAMVID_CLASSES[c]: float(np.mean([r["per_class"][CAMVID_CLASSES[c]] or 0
                                                                         for r in runs])) for c in base + novel}})
    model.cfg.pseudo_threshold, model.cfg.sce_pooling = 0.7, "raw"
    report = {"split": "val", "frames": len(val), "shots": args.shots, "mode": "mask", "seeds": SEEDS,
              "input_hw": list(model.cfg.input_hw),
              "command": "python bench/val_tuning.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "wall_seconds": time.time() - t_start, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "tuning" if args.shots == 5 else f"tuning_k{args.shots}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(report))
    print((args.out / f"{stem}.md").read_text())
    return 0


def markdown(report: dict) -> str:
    lines = ["# Val tuning of the registration (GFS-CamVid val, never test)", "",
             f"Command: `{report['command']}`; {report['frames']} val frames, K={report['shots']}, mask supports, "
             f"mean over seeds {report['seeds']}; wall time {report['wall_seconds'] / 60:.1f} min.", "",
             "Rule: ship the largest total mIoU among the variants that keep base >= 95% of base-only in both folds; "
             "a difference smaller than the seed std is a tie, and a tie goes to the simpler variant.", "",
             "| variant | what | fold | base-only | base | kept | novel | total |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['variant']} | {r['what']} | {r['fold']} | {r['base_only_miou']:.1f} | {r['base_miou']:.1f} | "
                     f"{r['base_kept_pct']:.1f}% | {r['novel_miou']:.1f} | {r['total_miou']:.1f} ± {r['std_total']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
