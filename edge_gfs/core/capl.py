"""The CAPL math as pure tensor functions (Tian et al., CVPR 2022; see ../shared/spec/capl.md).

Nothing here holds state or touches files: the trainer, the node and the benchmark are shells around these
functions, so each equation is tested once, here, against hand-computed examples.

Shapes: B images, d feature channels, h x w feature map, N classifier rows.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from edge_gfs.core.labels import IGNORE

EPS = 1e-6  # keeps cosines finite for zero-norm vectors (a pitfall of the reference)

Gate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # G_sup: (p_cls, p_sup) -> gamma in (0, 1)


def l2n(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(EPS)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest downsampling of (B,H,W) integer labels to the feature size, as the reference does."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def class_sums(features: torch.Tensor, labels: torch.Tensor, class_ids: list[int],
               normalise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums and pixel counts: the sufficient statistics of masked average pooling.

    features (B,d,h,w), labels (B,h,w) at feature resolution. Returns sums (K,d) and counts (K,) for the
    K classes in class_ids; a class absent from the labels has a zero sum and zero count. With
    `normalise`, each pixel's feature is L2-normalised first (Eq. 9 of the paper).
    """
    f = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    if normalise:
        f = l2n(f)
    lab = labels.reshape(-1)
    ids = torch.as_tensor(class_ids, dtype=lab.dtype, device=lab.device)
    onehot = (lab[None, :] == ids[:, None]).to(f.dtype)  # (K, BHW)
    return onehot @ f, onehot.sum(dim=1)


def masked_average(features: torch.Tensor, mask: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """Mean feature under a boolean mask (B,h,w) -> (d,); zero vector for an empty mask."""
    sums, counts = class_sums(features, mask.long(), [1], normalise=normalise)
    return (sums / counts.clamp_min(1.0)[:, None])[0]


def cosine_logits(features: torch.Tensor, weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * cos(F, W). weights (N,d) shared by the batch or (B,N,d) per image -> logits (B,N,h,w)."""
    f = l2n(features, dim=1)
    w = l2n(weights)
    if w.dim() == 2:
        return alpha * torch.einsum("bdhw,nd->bnhw", f, w)
    return alpha * torch.einsum("bdhw,bnd->bnhw", f, w)


def gate_blend(p_cls: torch.Tensor, p_sup: torch.Tensor, g_sup: Gate) -> torch.Tensor:
    """gamma * p_cls + (1 - gamma) * p_sup, gamma = G_sup([p_cls; p_sup]) (Eq. 4 and Eq. 8)."""
    gamma = g_sup(p_cls, p_sup)
    return gamma * p_cls + (1.0 - gamma) * p_sup


def dqce(features: torch.Tensor, p_cls: torch.Tensor, alpha: float, weighting: str = "impl") -> torch.Tensor:
    """Dynamic Query Contextual Enrichment (Eq. 5-6): per-image base prototypes p_dyn (B,N,d).

    A = softmax over pixels of alpha*cos(F, p_cls); p_qry = A F_raw; gamma_q = max(0, cos(p_qry, p_cls)).
    `impl` (reference code): p_dyn = gamma_q p_qry + (1-gamma_q) p_cls. `paper` (printed Eq. 6) swaps them.
    p_cls is the ORIGINAL, un-normalised classifier; p_dyn keeps its scale on purpose (Eq. 7).
    """
    return _dqce_flat(*_flat_unit(features), p_cls, alpha, weighting)


def _flat_unit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,d,h,w) -> raw and per-pixel L2-normalised features as (B,d,hw), shared by DQCE and the classifier."""
    flat = features.reshape(features.shape[0], features.shape[1], -1)
    return flat, flat / flat.norm(dim=1, keepdim=True).clamp_min(EPS)


def _dqce_flat(flat: torch.Tensor, unit: torch.Tensor, p_cls: torch.Tensor, alpha: float, weighting: str) -> torch.Tensor:
    if weighting not in ("impl", "paper"):
        raise ValueError(f"dqce weighting must be 'impl' or 'paper', got {weighting!r}")
    p_unit = l2n(p_cls)
    attn = torch.softmax(alpha * torch.matmul(p_unit, unit), dim=-1)  # (B,N,HW)
    p_qry = torch.matmul(attn, flat.transpose(1, 2))  # (B,N,d)
    gamma = F.relu((l2n(p_qry) * p_unit).sum(-1, keepdim=True))  # (B,N,1)
    if weighting == "impl":
        return gamma * p_qry + (1.0 - gamma) * p_cls
    return gamma * p_cls + (1.0 - gamma) * p_qry


def sce_base_rows(p_cls: torch.Tensor, g_sup: Gate, sup_sums: torch.Tensor, sup_counts: torch.Tensor) -> torch.Tensor:
    """Support Contextual Enrichment of the base rows (Eq. 3-4), then normalised.

    sup_sums (N_b,d) and sup_counts (N_b,) pool every stored shot; classes with no pixels keep p_cls.
    """
    p_hat = l2n(p_cls)
    visible = sup_counts > 0
    p_sup = l2n(sup_sums / sup_counts.clamp_min(1.0)[:, None])
    blended = l2n(gate_blend(p_hat, p_sup, g_sup))
    return torch.where(visible[:, None], blended, p_hat)


def novel_prototypes(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Eq. 1: the masked mean of the K shots pooled together, normalised. sums (N_n,d), counts (N_n,)."""
    if bool((counts <= 0).any()):
        raise ValueError("a novel class has no pixels at feature resolution: its mask is too small")
    return l2n(sums / counts[:, None])


def assemble(base_rows: torch.Tensor, p_dyn: torch.Tensor, novel_rows: torch.Tensor) -> torch.Tensor:
    """Eq. 7: per-image classifier [base_rows + p_dyn ; novel_rows] -> (B, N_b + N_n, d)."""
    base = base_rows[None] + p_dyn
    novel = novel_rows[None].expand(p_dyn.shape[0], -1, -1)
    return torch.cat([base, novel.to(base.dtype)], dim=1)


def classify(features: torch.Tensor, p_cls: torch.Tensor, base_rows: torch.Tensor, novel_rows: torch.Tensor,
             alpha: float, weighting: str = "impl", dqce_on: bool = True, novel_bias: float = 0.0,
             novel_owner: torch.Tensor | None = None) -> torch.Tensor:
    """Inference logits (B, N_b+N_n, h, w): DQCE with the original P_cls, cached SCE rows, novel rows.

    `novel_owner` (R,) gives the novel class (0..N_n-1) of each of R novel rows when a class has several
    (one per shot, classifier.build_classifier); a class then scores its best row (max_per_class). `novel_bias`
    is subtracted from every novel class's cosine (calibrated stacking): see calibrate_novel.
    """
    b, _, h, w = features.shape
    n_base = p_cls.shape[0]
    flat, unit = _flat_unit(features)  # normalised once for DQCE and the classifier (the per-frame hot path)
    if dqce_on:
        p_dyn = _dqce_flat(flat, unit, p_cls, alpha, weighting)
    else:
        p_dyn = torch.zeros(b, *p_cls.shape, dtype=features.dtype, device=features.device)
    rows = l2n(assemble(base_rows, p_dyn, novel_rows))
    logits = (alpha * torch.matmul(rows, unit)).reshape(b, -1, h, w)
    if novel_owner is not None:
        logits = max_per_class(logits, n_base, novel_owner)
    return calibrate_novel(logits, n_base, alpha, novel_bias)


def max_per_class(logits: torch.Tensor, n_base: int, owner: torch.Tensor) -> torch.Tensor:
    """(B, N_b+R, h, w) -> (B, N_b+N_n, h, w): each novel class keeps the best of its R rows, at feature size.

    Why the max at feature resolution and not after upsampling: the node upsamples and argmaxes every logit
    plane at frame size (about 0.15 ms a plane at 360x480), so five rows per taught class would cost more
    than the classifier itself; the max first keeps one plane per class.
    """
    n_novel = int(owner.max()) + 1 if owner.numel() else 0
    if logits.shape[1] - n_base == n_novel:
        return logits  # one row per class: nothing to reduce
    novel = logits[:, n_base:]
    best = [novel[:, owner == i].amax(dim=1) for i in range(n_novel)]
    return torch.cat([logits[:, :n_base], torch.stack(best, dim=1)], dim=1)


def calibrate_novel(logits: torch.Tensor, n_base: int, alpha: float, novel_bias: float) -> torch.Tensor:
    """Lower the novel rows' logits by alpha * novel_bias (a margin in cosine units), in place.

    Why: a prototype from 5 shots sits closer to the features of the base classes around it than a learned
    row does (CamVid's novel objects stand in front of Building), so uncalibrated it steals their pixels:
    Building lost 20-40 IoU on val. One constant margin, tuned on val (bench/results/val/tuning.md), is
    "calibrated stacking" (Chao et al., ECCV 2016) from generalized zero-shot learning. It costs nothing per
    frame and keeps the classifier a pure function of the stored shots.
    """
    if novel_bias and logits.shape[1] > n_base:
        logits[:, n_base:] -= alpha * novel_bias
    return logits


def pseudo_context_labels(base_logits: torch.Tensor, mask: torch.Tensor, target: int, base_ids: torch.Tensor,
                          threshold: float) -> torch.Tensor:
    """Labels for a mask-only shot: the taught class under the mask, the model's own confident base
    prediction elsewhere, ignore where it is unsure (edge-gfs's adaptation of SCE to operator masks).

    base_logits (B,N_b,h,w), mask (B,h,w) bool, base_ids (N_b,) the class id of each base row.
    """
    prob, arg = torch.softmax(base_logits, dim=1).max(dim=1)
    pseudo = torch.where(prob >= threshold, base_ids.to(arg.device)[arg], torch.full_like(arg, IGNORE))
    return torch.where(mask, torch.full_like(arg, target), pseudo)


def fake_novel_prototypes(sup_features: torch.Tensor, sup_labels: torch.Tensor, p_cls: torch.Tensor, g_sup: Gate,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
    """Training-time Eq. 8-9: P_fake from the fake-support half of a batch.

    sup_labels (B_s,h,w) hold base-row indices (ignore = 255). Of the n classes present, a random
    floor(n/2) become Fake-Novel (row replaced by p_sup) and the rest Fake-Context (row blended by G_sup).
    Returns P_fake (N_b,d) and the FN and FC row indices.
    """
    n_rows = p_cls.shape[0]
    present = [int(c) for c in torch.unique(sup_labels).tolist() if c != IGNORE and c < n_rows]
    perm = torch.randperm(len(present), generator=generator).tolist()
    fn = sorted(present[i] for i in perm[: len(present) // 2])
    fc = sorted(present[i] for i in perm[len(present) // 2:])
    sums, counts = class_sums(sup_features, sup_labels, list(range(n_rows)), normalise=True)
    p_sup = sums / counts.clamp_min(1.0)[:, None]
    p_fake = l2n(p_cls)
    if fc:
        idx = torch.tensor(fc, device=p_cls.device)
        p_fake = p_fake.index_copy(0, idx, gate_blend(p_fake[idx], p_sup[idx], g_sup))
    if fn:
        idx = torch.tensor(fn, device=p_cls.device)
        p_fake = p_fake.index_copy(0, idx, p_sup[idx])
    return p_fake, fn, fc


def upsampled_ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy after bilinear upsampling of the logits to the label size (ignore = 255).

    `weight` (N,) rescales each class's pixels (class-balanced CE for thin, rare classes); the mean is over
    the weights, as torch's weighted CE does, so the loss scale does not drift with the batch's class mix.
    """
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if not bool((labels != IGNORE).any()):
        return up.sum() * 0.0  # an all-ignore batch teaches nothing (plain CE would give NaN)
    return F.cross_entropy(up, labels, weight=weight, ignore_index=IGNORE)


def balanced_class_weights(pixel_share: torch.Tensor, c: float = 1.02, cap: float = 10.0) -> torch.Tensor:
    """ENet's class weights 1 / ln(c + share), divided by their median and capped.

    Why: Pole, SignSymbol, Pedestrian and Bicyclist are each about 1% of CamVid's pixels, so plain CE lets
    the network trade them for a sliver of Road. ENet's raw weights span 50x on CamVid; the median
    normalisation keeps frequent classes near 1 and the cap keeps one rare pixel from outweighing ten.
    """
    share = pixel_share.double() / pixel_share.double().sum().clamp_min(EPS)
    w = 1.0 / torch.log(c + share)
    return (w / w.median()).clamp(max=cap).float()


def unknown_loss(logits: torch.Tensor, labels: torch.Tensor, cells: str = "pure") -> torch.Tensor:
    """Outlier exposure (Hendrycks et al., ICLR 2019) on the cells without a base label: cross-entropy of the
    base softmax against the uniform distribution, minus its floor log(N), at feature resolution.

    Why: with the held-out classes relabelled to ignore, nothing stops the network from folding a car into
    Road or a pedestrian into Building, and it does: on val, keeping taught classes off the pixels the base rows
    were >= 0.9 sure of cut novel mIoU from 19.1 to 8.2 (bench/results/val/recipe2/query_and_guard), so a
    5-shot prototype had to fight confident base rows. Asking "looks like no base class" of unlabelled pixels is
    what PASCAL's GFS protocol does with its background label, without collapsing them onto one prototype.

    `cells`: "pure" takes only feature cells with no base-labelled pixel at all; "any" takes every cell whose
    nearest label is ignore. Why pure: with thin held-out classes (fold 1: Pole, SignSymbol, Fence) most
    ignored cells are mostly Building, and "any" fought the CE term there until Building fell to 0.8 val IoU.
    labels (B,H,W), 255 = none.
    """
    if cells == "pure":
        known = (labels != IGNORE).float()[:, None]
        unknown = F.adaptive_max_pool2d(known, logits.shape[-2:])[:, 0] == 0
    elif cells == "any":
        unknown = downsample_labels(labels, logits.shape[-2:]) == IGNORE
    else:
        raise ValueError(f"cells must be 'pure' or 'any', got {cells!r}")
    z = logits.permute(0, 2, 3, 1)[unknown]  # (n, N)
    if z.shape[0] == 0:
        return logits.sum() * 0.0
    return (torch.logsumexp(z, 1) - z.mean(1)).mean() - math.log(z.shape[1])


def capl_loss(features: torch.Tensor, labels: torch.Tensor, p_cls: torch.Tensor, g_sup: Gate, alpha: float,
              weighting: str = "impl", generator: torch.Generator | None = None,
              class_weight: torch.Tensor | None = None, unknown_weight: float = 0.0,
              unknown_cells: str = "pure") -> torch.Tensor:
    """The CAPL training loss for one batch: 0.5 CE with P_capl (Eq. 7) + 0.5 CE with P_fake, plus
    `unknown_weight` x unknown_loss on P_capl's rows, detached (0: the paper's loss).

    labels (B,H,W) base-row indices at input resolution (novel and void = 255). floor(B/2) images are fake
    queries, the rest fake support; the loss covers the whole batch. A batch of one has no fake query:
    it then uses itself as support, which keeps single-image batches (DDP tails) trainable.
    """
    b = features.shape[0]
    n_q = b // 2
    sup_feats = features[n_q:]
    sup_labels = downsample_labels(labels[n_q:], features.shape[-2:])
    p_fake, _, _ = fake_novel_prototypes(sup_feats, sup_labels, p_cls, g_sup, generator)
    p_dyn = dqce(features, p_cls, alpha, weighting)
    loss_capl = upsampled_ce(cosine_logits(features, p_fake[None] + p_dyn, alpha), labels, class_weight)
    loss_fake = upsampled_ce(cosine_logits(features, p_fake, alpha), labels, class_weight)
    loss = 0.5 * loss_capl + 0.5 * loss_fake
    if unknown_weight:
        # rows detached: with gradients into P_cls the cheapest uniform softmax is to merge prototypes (a
        # fine-tune at weight 0.5 merged Road away, val Road IoU 0), so only the features may move
        rows = (p_fake[None] + p_dyn).detach()
        loss = loss + unknown_weight * unknown_loss(cosine_logits(features, rows, alpha), labels, unknown_cells)
    return loss
