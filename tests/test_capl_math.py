"""Hand-computed checks of every function in edge_gfs/core/capl.py (see ../shared/spec/capl.md).

Every expected number below is derived by hand in the comment next to it (2-d features on tiny maps), so a
test fails when an equation changes, not only when the code disagrees with itself.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edge_gfs.core import capl
from edge_gfs.core.model import GSup

SQ2 = 1.0 / math.sqrt(2.0)  # cos(45 deg)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0.0)


def const_gate(value: float):
    """G_sup replaced by a constant gamma (one per row)."""
    return lambda p, q: torch.full((p.shape[0], 1), value, dtype=p.dtype)


def feats_2x2() -> torch.Tensor:
    """(1,2,2,2) features; pixel (i,j) holds the 2-d vector below.

        (0,0): [3, 4]   (0,1): [1, 0]
        (1,0): [0, 2]   (1,1): [5, 5]
    """
    ch0 = [[3.0, 1.0], [0.0, 5.0]]
    ch1 = [[4.0, 0.0], [2.0, 5.0]]
    return torch.tensor([ch0, ch1])[None]


# ---------------------------------------------------------------------------------------------------- l2n
def test_l2n_unit_rows():
    # [3,4] / 5 = [0.6, 0.8]; [0,-2] / 2 = [0, -1]
    close(capl.l2n(torch.tensor([[3.0, 4.0], [0.0, -2.0]])), [[0.6, 0.8], [0.0, -1.0]])


def test_l2n_dim0():
    # columns [3,4] and [0,2] normalised along dim 0
    close(capl.l2n(torch.tensor([[3.0, 0.0], [4.0, 2.0]]), dim=0), [[0.6, 0.0], [0.8, 1.0]])


def test_l2n_zero_vector_is_zero_not_nan():
    out = capl.l2n(torch.zeros(2, 3))
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros(2, 3))
    # and the gradient through a zero vector is finite too
    x = torch.zeros(1, 2, requires_grad=True)
    capl.l2n(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------------- labels
def test_downsample_labels_nearest_even():
    # 4x4 -> 2x2, scale 2: nearest picks source rows/cols floor(i*2) = 0, 2
    lab = torch.arange(16).reshape(1, 4, 4)
    lab[0, 2, 2] = 255
    out = capl.downsample_labels(lab, (2, 2))
    assert out.dtype == torch.long
    assert out.tolist() == [[[0, 2], [8, 255]]]


def test_downsample_labels_nearest_uneven_and_batch():
    # 3x3 -> 2x2, scale 1.5: source index floor(0*1.5)=0, floor(1*1.5)=1 -> top-left 2x2 block
    lab = torch.tensor([[[1, 2, 3], [4, 5, 6], [7, 8, 9]], [[9, 9, 9], [9, 0, 9], [9, 9, 9]]])
    assert capl.downsample_labels(lab, (2, 2)).tolist() == [[[1, 2], [4, 5]], [[9, 9], [9, 0]]]


# ---------------------------------------------------------------------------------------------------- class sums
def test_class_sums_raw():
    # labels: (0,0)->0, (0,1)->0, (1,0)->1, (1,1)->255
    # class 0: [3,4]+[1,0] = [4,4], 2 px; class 1: [0,2], 1 px; class 2 absent: [0,0], 0 px
    lab = torch.tensor([[[0, 0], [1, 255]]])
    sums, counts = capl.class_sums(feats_2x2(), lab, [0, 1, 2])
    close(sums, [[4.0, 4.0], [0.0, 2.0], [0.0, 0.0]])
    close(counts, [2.0, 1.0, 0.0])


def test_class_sums_normalised():
    # unit features: [0.6,0.8], [1,0], [0,1]; class 0: [1.6, 0.8]; class 1: [0, 1]; class 2: 0
    lab = torch.tensor([[[0, 0], [1, 255]]])
    sums, counts = capl.class_sums(feats_2x2(), lab, [0, 1, 2], normalise=True)
    close(sums, [[1.6, 0.8], [0.0, 1.0], [0.0, 0.0]])
    close(counts, [2.0, 1.0, 0.0])


def test_class_sums_order_and_batch():
    # two 1x1 images [1,2] and [3,4], both class 5; class_ids order [7, 5] -> row 0 empty, row 1 [4,6]
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[:, :, None, None]
    sums, counts = capl.class_sums(feats, torch.tensor([[[5]], [[5]]]), [7, 5])
    close(sums, [[0.0, 0.0], [4.0, 6.0]])
    close(counts, [0.0, 2.0])


def test_masked_average():
    mask = torch.tensor([[[True, True], [False, False]]])
    # mean of [3,4] and [1,0] = [2, 2]
    close(capl.masked_average(feats_2x2(), mask), [2.0, 2.0])
    # mean of [0.6,0.8] and [1,0] = [0.8, 0.4]
    close(capl.masked_average(feats_2x2(), mask, normalise=True), [0.8, 0.4])


def test_masked_average_empty_mask_is_zero():
    out = capl.masked_average(feats_2x2(), torch.zeros(1, 2, 2, dtype=torch.bool))
    assert out.shape == (2,)
    assert torch.equal(out, torch.zeros(2))


# ---------------------------------------------------------------------------------------------------- cosine
def test_cosine_logits_shared_weights():
    # W = [[1,0],[0,2]] -> unit rows e0, e1. Unit pixels: [.6,.8], [1,0], [0,1], [1/sqrt2, 1/sqrt2]
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = capl.cosine_logits(feats_2x2(), w, alpha=10.0)
    assert out.shape == (1, 2, 2, 2)
    close(out[0, 0], [[6.0, 10.0], [0.0, 10 * SQ2]])
    close(out[0, 1], [[8.0, 0.0], [10.0, 10 * SQ2]])
    # alpha scales linearly: alpha = 2 gives a fifth
    close(capl.cosine_logits(feats_2x2(), w, alpha=2.0)[0, 0], [[1.2, 2.0], [0.0, 2 * SQ2]])


def test_cosine_logits_per_image_weights():
    # image 0 uses [e0, e1], image 1 the swapped [e1, e0] (scaled by 3: scale must not matter)
    feats = feats_2x2().repeat(2, 1, 1, 1)
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [3.0, 0.0]]])
    out = capl.cosine_logits(feats, w, alpha=10.0)
    assert out.shape == (2, 2, 2, 2)
    close(out[0, 0], [[6.0, 10.0], [0.0, 10 * SQ2]])
    close(out[1, 0], [[8.0, 0.0], [10.0, 10 * SQ2]])
    close(out[1, 1], [[6.0, 10.0], [0.0, 10 * SQ2]])


def test_cosine_logits_zero_feature_is_finite():
    feats = torch.zeros(1, 2, 1, 1)
    out = capl.cosine_logits(feats, torch.tensor([[1.0, 0.0]]), alpha=10.0)
    assert torch.equal(out, torch.zeros(1, 1, 1, 1))


# ---------------------------------------------------------------------------------------------------- gate
def test_gate_blend_constant_gate():
    # 0.25*[4,0] + 0.75*[0,8] = [1, 6]; 0.25*[1,1] + 0.75*[-1,3] = [-0.5, 2.5]
    p = torch.tensor([[4.0, 0.0], [1.0, 1.0]])
    q = torch.tensor([[0.0, 8.0], [-1.0, 3.0]])
    close(capl.gate_blend(p, q, const_gate(0.25)), [[1.0, 6.0], [-0.5, 2.5]])


def test_gate_blend_argument_order():
    # gamma = 1 when p_cls[0] > p_sup[0]: the gate must get (p_cls, p_sup) in that order and gamma weighs p_cls
    gate = lambda p, q: (p[:, :1] > q[:, :1]).float()  # noqa: E731
    p = torch.tensor([[4.0, 0.0]])
    q = torch.tensor([[0.0, 8.0]])
    close(capl.gate_blend(p, q, gate), [[4.0, 0.0]])
    close(capl.gate_blend(q, p, gate), [[4.0, 0.0]])  # gamma = 0 -> all p_sup, which is again [4,0]


# ---------------------------------------------------------------------------------------------------- DQCE
def uniform_feats(batch: int = 1) -> torch.Tensor:
    """Every pixel is [2, 0]: the softmax over pixels is uniform whatever the logits, p_qry = [2, 0]."""
    f = torch.zeros(batch, 2, 1, 3)
    f[:, 0] = 2.0
    return f


P_CLS_UNIFORM = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
# row 0: cos([2,0],[1,1]) = 1/sqrt2 = g.
#   impl:  g*[2,0] + (1-g)*[1,1] = [1+g, 1-g] = [1.70711, 0.29289]
#   paper: g*[1,1] + (1-g)*[2,0] = [2-g, g]   = [1.29289, 0.70711]
# row 1: cos([2,0],[-1,0]) = -1 -> gamma_q clamped to 0.
#   impl:  p_cls = [-1, 0]      (unclamped gamma=-1 would give [-4, 0])
#   paper: p_qry = [2, 0]       (unclamped would give [5, 0])
DQCE_IMPL = [[1.0 + SQ2, 1.0 - SQ2], [-1.0, 0.0]]
DQCE_PAPER = [[2.0 - SQ2, SQ2], [2.0, 0.0]]


def test_dqce_uniform_attention_impl_and_clamp():
    out = capl.dqce(uniform_feats(batch=2), P_CLS_UNIFORM, alpha=10.0, weighting="impl")
    assert out.shape == (2, 2, 2)
    close(out[0], DQCE_IMPL)
    close(out[1], DQCE_IMPL)


def test_dqce_uniform_attention_paper_and_clamp():
    out = capl.dqce(uniform_feats(), P_CLS_UNIFORM, alpha=10.0, weighting="paper")
    close(out[0], DQCE_PAPER)


def test_dqce_default_is_impl():
    assert torch.equal(capl.dqce(uniform_feats(), P_CLS_UNIFORM, 10.0), capl.dqce(uniform_feats(), P_CLS_UNIFORM, 10.0, "impl"))


def test_dqce_analytic_softmax_raw_scales():
    # pixels [2,0] and [0,2]; p_cls = [2,0]; alpha = ln 3.
    # cos = [1, 0] -> logits [ln3, 0] -> softmax [3/4, 1/4] -> p_qry = [1.5, 0.5] (raw features, not unit).
    # gamma = cos([1.5,0.5],[1,0]) = 1.5/sqrt(2.5) = 3/sqrt10 = 0.948683
    # impl:  g*[1.5,0.5] + (1-g)*[2,0] = [2 - g/2, g/2]          = [1.525658, 0.474342]  (raw scale of p_cls kept)
    # paper: g*[2,0] + (1-g)*[1.5,0.5] = [1.5 + g/2, (1-g)/2]    = [1.974342, 0.025658]
    feats = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])[None]  # (1,2,1,2)
    p_cls = torch.tensor([[2.0, 0.0]])
    g = 3.0 / math.sqrt(10.0)
    close(capl.dqce(feats, p_cls, math.log(3.0), "impl")[0], [[2.0 - g / 2, g / 2]])
    close(capl.dqce(feats, p_cls, math.log(3.0), "paper")[0], [[1.5 + g / 2, (1.0 - g) / 2]])


def test_dqce_unknown_weighting_raises():
    with pytest.raises(ValueError, match="weighting"):
        capl.dqce(uniform_feats(), P_CLS_UNIFORM, 10.0, weighting="both")


# ---------------------------------------------------------------------------------------------------- SCE
def test_sce_base_rows_visible_and_invisible():
    # p_cls = [[2,0],[0,3],[1,1]] -> p_hat = [[1,0],[0,1],[g,g]], g = 1/sqrt2
    # counts [2,0,1]: rows 0 and 2 visible, row 1 keeps p_hat = [0,1].
    # row 0: p_sup = l2n([0,4]/2) = [0,1]; 0.25*[1,0] + 0.75*[0,1] = [.25,.75] -> / sqrt(.625) = [0.316228, 0.948683]
    # row 2: p_sup = l2n([3,0]) = [1,0]; 0.25*[g,g] + 0.75*[1,0] = [0.926777, 0.176777] -> l2n = [0.982290, 0.187366]
    p_cls = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    sums = torch.tensor([[0.0, 4.0], [0.0, 0.0], [3.0, 0.0]])
    counts = torch.tensor([2.0, 0.0, 1.0])
    out = capl.sce_base_rows(p_cls, const_gate(0.25), sums, counts)
    close(out, [[0.31622777, 0.94868330], [0.0, 1.0], [0.98229026, 0.18736555]])
    assert torch.equal(out[1], capl.l2n(p_cls)[1])  # invisible row is exactly p_hat


def test_novel_prototypes():
    # means [6,8]/2 = [3,4] -> [0.6,0.8]; [0,-5]/5 = [0,-1]
    out = capl.novel_prototypes(torch.tensor([[6.0, 8.0], [0.0, -5.0]]), torch.tensor([2.0, 5.0]))
    close(out, [[0.6, 0.8], [0.0, -1.0]])


def test_novel_prototypes_zero_count_raises():
    with pytest.raises(ValueError, match="no pixels"):
        capl.novel_prototypes(torch.tensor([[6.0, 8.0], [1.0, 1.0]]), torch.tensor([2.0, 0.0]))


# ---------------------------------------------------------------------------------------------------- assemble / classify
def test_assemble_shapes_and_values():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p_dyn = torch.tensor([[[1.0, 1.0], [2.0, 2.0]], [[0.0, 0.0], [-1.0, 0.0]]])
    novel = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    out = capl.assemble(base, p_dyn, novel)
    assert out.shape == (2, 3, 2)
    assert out.dtype == torch.float32
    close(out[0], [[2.0, 1.0], [2.0, 3.0], [0.6, 0.8]])
    close(out[1], [[1.0, 0.0], [-1.0, 1.0], [0.6, 0.8]])


def test_assemble_no_novel_rows():
    out = capl.assemble(torch.eye(2), torch.zeros(3, 2, 2), torch.zeros(0, 2))
    assert out.shape == (3, 2, 2)
    assert torch.equal(out[2], torch.eye(2))


def test_classify_without_dqce_is_plain_cosine():
    # base row e0, novel row e1: logits are those of test_cosine_logits_shared_weights
    feats = feats_2x2()
    base = torch.tensor([[3.0, 0.0]])
    novel = torch.tensor([[0.0, 1.0]])
    p_cls = torch.tensor([[-5.0, 1.0]])  # must not matter with DQCE off
    out = capl.classify(feats, p_cls, base, novel, alpha=10.0, dqce_on=False)
    assert out.shape == (1, 2, 2, 2)
    close(out[0, 0], [[6.0, 10.0], [0.0, 10 * SQ2]])
    close(out[0, 1], [[8.0, 0.0], [10.0, 10 * SQ2]])
    assert torch.equal(out, capl.cosine_logits(feats, torch.cat([base, novel]), 10.0))


def test_classify_with_dqce_hand_value():
    # uniform pixels [2,0], p_cls = [[1,1]] -> p_dyn = [1+g, 1-g] (g = 1/sqrt2, see DQCE_IMPL)
    # base row [0,1] + p_dyn = [1+g, 2-g] = [1.707107, 1.292893]; cos with [1,0] = 1.707107/2.141435 = 0.797175
    # novel row [1,0]: cos 1 -> logit 10
    feats = uniform_feats()
    out = capl.classify(feats, torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]),
                        alpha=10.0)
    close(out[0, 0], [[7.971752, 7.971752, 7.971752]], atol=1e-5)
    close(out[0, 1], [[10.0, 10.0, 10.0]])


def test_classify_novel_bias_lowers_only_novel_rows():
    # same setup as above: base logit 7.971752, novel logit 10; a 0.25 cosine margin takes 2.5 off the novel row
    feats = uniform_feats()
    args = (feats, torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    out = capl.classify(*args, alpha=10.0, novel_bias=0.25)
    close(out[0, 0], [[7.971752, 7.971752, 7.971752]], atol=1e-5)
    close(out[0, 1], [[7.5, 7.5, 7.5]])
    assert out.argmax(1).eq(0).all()  # the margin flips these pixels from novel to base


def test_max_per_class_keeps_each_class_best_row():
    # 2 base rows, then novel rows owned by classes [0, 1, 0]: class 0 takes the max of rows 2 and 4
    logits = torch.tensor([1.0, 2.0, 3.0, 9.0, 5.0]).view(1, 5, 1, 1).expand(2, 5, 2, 3).clone()
    out = capl.max_per_class(logits, 2, torch.tensor([0, 1, 0]))
    assert out.shape == (2, 4, 2, 3)
    assert out[0, :, 0, 0].tolist() == [1.0, 2.0, 5.0, 9.0]
    one_each = torch.randn(1, 4, 2, 2)
    assert capl.max_per_class(one_each, 2, torch.tensor([0, 1])) is one_each


def test_classify_per_shot_rows_then_margin():
    # uniform [2,0] pixels; novel rows [1,0] (cos 1) and [0,1] (cos 0) of one class: it scores 10, minus the margin
    feats = uniform_feats()
    out = capl.classify(feats, torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]),
                        torch.tensor([[0.0, 1.0], [1.0, 0.0]]), alpha=10.0, novel_bias=0.25,
                        novel_owner=torch.tensor([0, 0]))
    assert out.shape == (1, 2, 1, 3)
    close(out[0, 1], [[7.5, 7.5, 7.5]])


def test_calibrate_novel_without_novel_rows_is_identity():
    logits = torch.randn(1, 3, 2, 2)
    assert torch.equal(capl.calibrate_novel(logits.clone(), 3, 10.0, 0.5), logits)


# ---------------------------------------------------------------------------------------------------- pseudo labels
def pseudo_inputs():
    # 1x3 map, two base rows with class ids [5, 7]:
    #   px0 logits [ln3, 0]  -> probs [.75, .25] -> row 0 (class 5), conf .75
    #   px1 logits [0, ln4]  -> probs [.2, .8]   -> row 1 (class 7), conf .8
    #   px2 logits [ln3, 0]  under the mask      -> target 9 whatever the confidence
    l3, l4 = math.log(3.0), math.log(4.0)
    logits = torch.tensor([[[l3, 0.0, l3]], [[0.0, l4, 0.0]]])[None]  # (1,2,1,3)
    mask = torch.tensor([[[False, False, True]]])
    return logits, mask, torch.tensor([5, 7])


@pytest.mark.parametrize("threshold, expected", [
    (0.0, [5, 7, 9]),     # everything confident enough
    (0.7, [5, 7, 9]),     # .75 and .8 pass
    (0.78, [255, 7, 9]),  # .75 fails, .8 passes
    (0.9, [255, 255, 9]),  # both fail; the mask still wins
    (1.01, [255, 255, 9]),
])
def test_pseudo_context_labels_threshold(threshold, expected):
    logits, mask, ids = pseudo_inputs()
    out = capl.pseudo_context_labels(logits, mask, target=9, base_ids=ids, threshold=threshold)
    assert out.tolist() == [[expected]]


def test_pseudo_context_labels_mask_overrides_confident_base():
    logits, _, ids = pseudo_inputs()
    out = capl.pseudo_context_labels(logits, torch.ones(1, 1, 3, dtype=torch.bool), 9, ids, 0.0)
    assert out.tolist() == [[[9, 9, 9]]]


# ---------------------------------------------------------------------------------------------------- fake novel
def fake_inputs():
    """Support features (1,2,2,2) and labels of base rows 0,1,2 (row 3 absent), p_cls (4,2).

    pixel features / unit features / label:
      (0,0) [3,4]  [.6,.8] 0     (0,1) [0,2]  [0,1]  0
      (1,0) [5,0]  [1,0]   1     (1,1) [0,-7] [0,-1] 2
    p_sup (mean of UNIT features, not renormalised): row0 [.3,.9], row1 [1,0], row2 [0,-1]
    l2n(p_cls) = [[1,0],[0,1],[.6,.8],[0,-1]]
    FC with gamma .25: .25*l2n(p_cls) + .75*p_sup:
      row0 [.475,.675], row1 [.75,.25], row2 [.15,-.55]
    """
    feats = torch.tensor([[[3.0, 0.0], [5.0, 0.0]], [[4.0, 2.0], [0.0, -7.0]]])[None]
    labels = torch.tensor([[[0, 0], [1, 2]]])
    p_cls = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, -5.0]])
    return feats, labels, p_cls


FN_ROWS = {0: [0.3, 0.9], 1: [1.0, 0.0], 2: [0.0, -1.0]}
FC_ROWS = {0: [0.475, 0.675], 1: [0.75, 0.25], 2: [0.15, -0.55]}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_fake_novel_prototypes_hand_values(seed):
    feats, labels, p_cls = fake_inputs()
    gen = torch.Generator().manual_seed(seed)
    p_fake, fn, fc = capl.fake_novel_prototypes(feats, labels, p_cls, const_gate(0.25), gen)
    assert p_fake.shape == (4, 2)
    assert len(fn) == 1 and len(fc) == 2  # floor(3/2) FN of the 3 present classes
    assert fn == sorted(fn) and fc == sorted(fc)
    assert set(fn) | set(fc) == {0, 1, 2} and not set(fn) & set(fc)
    for c in fn:
        close(p_fake[c], FN_ROWS[c])
    for c in fc:
        close(p_fake[c], FC_ROWS[c])
    close(p_fake[3], [0.0, -1.0])  # absent class: untouched l2n(p_cls)


def test_fake_novel_prototypes_seeded_and_random():
    feats, labels, p_cls = fake_inputs()
    run = lambda s: capl.fake_novel_prototypes(feats, labels, p_cls, const_gate(0.25),  # noqa: E731
                                               torch.Generator().manual_seed(s))
    a, b = run(123), run(123)
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert len({tuple(run(s)[1]) for s in range(20)}) > 1  # the FN choice depends on the generator


@pytest.mark.parametrize("present, n_fn", [([1], 0), ([0, 2], 1), ([0, 1, 2, 3], 2)])
def test_fake_novel_prototypes_floor_half(present, n_fn):
    # 1x4 map holding the classes in `present` (rest ignore); features e0 everywhere
    lab = torch.full((1, 1, 4), 255)
    lab[0, 0, : len(present)] = torch.tensor(present)
    feats = torch.zeros(1, 2, 1, 4)
    feats[:, 0] = 1.0
    p_cls = torch.tensor([[0.0, 1.0]] * 4)
    _, fn, fc = capl.fake_novel_prototypes(feats, lab, p_cls, const_gate(0.5), torch.Generator().manual_seed(0))
    assert len(fn) == n_fn
    assert sorted(fn + fc) == present


def test_fake_novel_prototypes_ignores_void_and_out_of_range():
    # label 255 (ignore) and 9 (>= N rows) are not classes of the fake split
    feats, _, p_cls = fake_inputs()
    lab = torch.tensor([[[0, 255], [9, 1]]])
    _, fn, fc = capl.fake_novel_prototypes(feats, lab, p_cls, const_gate(0.5), torch.Generator().manual_seed(0))
    assert sorted(fn + fc) == [0, 1]


def test_fake_novel_prototypes_gradients():
    torch.manual_seed(0)
    feats, labels, p_cls = fake_inputs()
    p_cls = p_cls.clone().requires_grad_(True)
    gate = GSup(2)
    p_fake, fn, fc = capl.fake_novel_prototypes(feats, labels, p_cls, gate, torch.Generator().manual_seed(0))
    weights = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.5, 1.0], [2.0, 0.7]])
    (p_fake * weights).sum().backward()
    assert p_cls.grad is not None and torch.isfinite(p_cls.grad).all()
    for c in fc + [3]:  # FC rows and the untouched row depend on p_cls
        assert p_cls.grad[c].abs().sum() > 0
    for c in fn:  # an FN row is replaced by p_sup: no gradient to p_cls there
        assert torch.equal(p_cls.grad[c], torch.zeros(2))
    grads = [p.grad for p in gate.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert gate.net[2].bias.grad.abs().sum() > 0
    assert sum(float(g.abs().sum()) for g in grads) > 0


# ---------------------------------------------------------------------------------------------------- CE and loss
def test_upsampled_ce_constant_logits():
    # 1x1 logits [0, ln3] -> probs [.25, .75] everywhere; labels 0, 1, 1, ignore
    # CE = (ln4 + 2 ln(4/3)) / 3 = 0.653886
    logits = torch.tensor([0.0, math.log(3.0)])[None, :, None, None]
    labels = torch.tensor([[[0, 1], [1, 255]]])
    close(capl.upsampled_ce(logits, labels), 0.6538862, atol=1e-6)


def test_upsampled_ce_is_bilinear():
    # class-1 logits [0, 4] over 2 columns, upsampled to 4 (align_corners=False): source x = -.25,.25,.75,1.25
    # -> [0, 1, 3, 4]; class-0 logits 0. Every label is 1: CE = mean softplus(-x) = 0.268287
    # (nearest would give [0,0,4,4] -> 0.355649)
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, 4.0]]])[None]  # (1,2,1,2)
    labels = torch.ones(1, 1, 4, dtype=torch.long)
    close(capl.upsampled_ce(logits, labels), 0.2682865, atol=1e-6)


def loss_inputs():
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(2, 4, 2, 3, generator=g)
    labels = torch.randint(0, 3, (2, 4, 6), generator=g)
    labels[0, 0, 0] = 255
    labels[1, 3, 5] = 255
    p_cls = torch.randn(3, 4, generator=g)
    return feats, labels, p_cls


def test_capl_loss_equals_hand_recomputation():
    feats, labels, p_cls = loss_inputs()
    torch.manual_seed(0)
    gate = GSup(4)
    for weighting in ("impl", "paper"):
        loss = capl.capl_loss(feats, labels, p_cls, gate, 10.0, weighting, torch.Generator().manual_seed(3))
        # by hand: image 0 is the fake query, image 1 the fake support
        sup_lab = capl.downsample_labels(labels[1:], (2, 3))
        assert sup_lab.tolist() == labels[1:, ::2, ::2].tolist()  # nearest at scale 2
        p_fake, _, _ = capl.fake_novel_prototypes(feats[1:], sup_lab, p_cls, gate, torch.Generator().manual_seed(3))
        p_dyn = capl.dqce(feats, p_cls, 10.0, weighting)
        up = lambda x: F.interpolate(x, size=(4, 6), mode="bilinear", align_corners=False)  # noqa: E731
        ce_capl = F.cross_entropy(up(capl.cosine_logits(feats, p_fake[None] + p_dyn, 10.0)), labels, ignore_index=255)
        ce_fake = F.cross_entropy(up(capl.cosine_logits(feats, p_fake, 10.0)), labels, ignore_index=255)
        assert loss.dim() == 0 and torch.isfinite(loss)
        torch.testing.assert_close(loss, 0.5 * ce_capl + 0.5 * ce_fake, rtol=1e-6, atol=1e-7)


def test_capl_loss_backward_and_whole_batch():
    feats, labels, p_cls = loss_inputs()
    feats = feats.clone().requires_grad_(True)
    p_cls = p_cls.clone().requires_grad_(True)
    torch.manual_seed(0)
    gate = GSup(4)
    loss = capl.capl_loss(feats, labels, p_cls, gate, 10.0, generator=torch.Generator().manual_seed(3))
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad[0].abs().sum() > 0  # the query image is in the loss
    assert torch.isfinite(p_cls.grad).all() and p_cls.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gate.parameters())
    # changing only the fake query's labels changes the loss (the loss covers the whole batch)
    lab2 = labels.clone()
    lab2[0] = (lab2[0] + 1) % 3
    with torch.no_grad():
        a = capl.capl_loss(feats, labels, p_cls, gate, 10.0, generator=torch.Generator().manual_seed(3))
        b = capl.capl_loss(feats, lab2, p_cls, gate, 10.0, generator=torch.Generator().manual_seed(3))
    assert not torch.isclose(a, b)


def test_capl_loss_single_image_batch():
    feats, labels, p_cls = loss_inputs()
    loss = capl.capl_loss(feats[:1], labels[:1], p_cls, const_gate(0.5), 10.0,
                          generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_unknown_loss_by_hand():
    """Uniform base scores on the unlabelled pixels cost 0; a pixel sure of one class costs
    logsumexp - mean - log N; labelled pixels are not looked at."""
    labels = torch.tensor([[[0, 255], [1, 255]]])  # feature size = label size here: no resampling
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, :, 0, 0] = torch.tensor([9.0, -9.0])  # a labelled pixel, however sure: ignored
    assert capl.unknown_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-7)
    logits[0, :, 0, 1] = torch.tensor([2.0, 0.0])  # an unlabelled pixel leaning to class 0
    # pixel (0,1): log(e^2 + 1) - 1 - log 2 = 0.43378; pixel (1,1): 0; mean 0.21689
    assert capl.unknown_loss(logits, labels).item() == pytest.approx(0.5 * (math.log(math.e ** 2 + 1) - 1 - math.log(2)), abs=1e-6)
    none = torch.zeros(1, 2, 2, 2, requires_grad=True)
    loss = capl.unknown_loss(none, torch.zeros(1, 2, 2, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(none.grad, torch.zeros_like(none))


def test_unknown_loss_pure_cells_skip_cells_with_any_base_pixel():
    """4x4 labels over 2x2 cells. Cell (0,0) is all ignore; cell (0,1) is ignore but for one base pixel, so
    "pure" leaves it out while "any" (nearest sample = its top-left, ignore) takes it."""
    labels = torch.full((1, 4, 4), 255)
    labels[0, 1, 3] = 0  # one base pixel in cell (0,1), not its top-left sample
    labels[0, 2:, :] = 1  # cells (1,0), (1,1): base
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, :, 0, 1] = torch.tensor([2.0, 0.0])  # sure of class 0: costs log(e^2 + 1) - 1 - log 2
    cost = math.log(math.e ** 2 + 1) - 1 - math.log(2)
    assert capl.unknown_loss(logits, labels, "pure").item() == pytest.approx(0.0, abs=1e-7)  # cell (0,0) only
    assert capl.unknown_loss(logits, labels, "any").item() == pytest.approx(cost / 2, abs=1e-6)
    with pytest.raises(ValueError, match="pure"):
        capl.unknown_loss(logits, labels, "some")


def test_capl_loss_unknown_term_moves_only_the_features():
    """The unknown term adds its value and sends gradient into the features, never into P_cls or G_sup (whose
    cheapest uniform answer would be to merge prototypes)."""
    feats, labels, p_cls = loss_inputs()
    labels = labels.clone()
    labels[0, 0:2, 0:2] = 255  # one whole feature cell without a base label (labels are at 2x the feature size)
    grads = []
    for w in (0.0, 0.5):
        f, p = feats.clone().requires_grad_(True), p_cls.clone().requires_grad_(True)
        torch.manual_seed(0)
        gate = GSup(4)
        loss = capl.capl_loss(f, labels, p, gate, 10.0, generator=torch.Generator().manual_seed(3), unknown_weight=w)
        loss.backward()
        grads.append((loss.detach(), f.grad, p.grad, [q.grad.clone() for q in gate.parameters()]))
    (l0, f0, p0, g0), (l1, f1, p1, g1) = grads
    assert l1 > l0  # random features are not uniform over the rows at the unlabelled cell
    torch.testing.assert_close(p1, p0)
    assert all(torch.allclose(a, b) for a, b in zip(g0, g1))
    assert not torch.allclose(f1, f0)


def test_upsampled_ce_of_an_all_ignore_batch_is_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = capl.upsampled_ce(logits, torch.full((1, 4, 4), 255, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_balanced_class_weights_by_hand():
    share = torch.tensor([0.5, 0.3, 0.19, 0.01])
    raw = 1.0 / torch.log(1.02 + share.double())
    expect = raw / raw.median()
    close(capl.balanced_class_weights(share * 1000), expect.float(), atol=1e-6)  # counts or shares alike
    w = capl.balanced_class_weights(torch.tensor([0.6, 0.2, 0.1999, 0.0001]), cap=4.0)
    assert w.max().item() == 4.0  # capped


def test_weighted_upsampled_ce_is_the_weighted_mean():
    logits = torch.randn(1, 2, 2, 2)
    labels = torch.tensor([[[0, 1], [1, 255]]])
    weight = torch.tensor([3.0, 1.0])
    logp = torch.log_softmax(logits, dim=1)
    picked = [(logp[0, 0, 0, 0], 3.0), (logp[0, 1, 0, 1], 1.0), (logp[0, 1, 1, 0], 1.0)]
    expect = -sum(v * w for v, w in picked) / sum(w for _, w in picked)
    close(capl.upsampled_ce(logits, labels, weight), expect, atol=1e-6)
