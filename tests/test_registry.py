"""Per-shot statistics (edge_gfs/core/classifier.py) and Segmenter.make_shot.

The classifier must be a pure function of (P_cls, G_sup, stored shots): same bits whatever the teach order,
and forgetting a class gives back exactly the classifier from before it was taught.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gfs.core import capl
from edge_gfs.core.classifier import (MAX_ROWS_PER_CLASS, Shot, build_classifier, pooled, shot_from_features,
                                      shot_groups, shot_id_of)
from edge_gfs.core.config import ModelConfig, data_root
from edge_gfs.core.labels import SUPPORT_MODES, support_mode
from edge_gfs.core.model import CaplModel, GSup
from edge_gfs.core.segmenter import Segmenter, to_input
from edge_gfs.wire import protocol as P

DIM = 8
BASE_IDS = [0, 1, 2, 3]
PROPS = settings(max_examples=25, deadline=None, database=None)


def make_gate() -> GSup:
    torch.manual_seed(1234)
    return GSup(DIM).eval()


GATE = make_gate()
P_CLS = torch.randn(len(BASE_IDS), DIM, generator=torch.Generator().manual_seed(99))


def random_shot(rng: np.random.Generator, shot_id: str, target: int, base_ids: list[int]) -> Shot:
    """A shot teaching `target` with a random subset of base classes as context; float64 sums of mixed scales."""
    ctx = [c for c in base_ids if c != target and rng.random() < 0.5]
    ids = tuple(sorted(set(ctx) | {target}))
    k = len(ids)
    scale = 10.0 ** rng.uniform(-3, 3, size=(k, 1))
    return Shot(shot_id=shot_id, target=target, class_ids=ids,
                sums_raw=rng.standard_normal((k, DIM)) * scale,
                sums_unit=rng.standard_normal((k, DIM)) * scale,
                counts=rng.integers(1, 500, size=k).astype(np.int64),
                mode=str(rng.choice(["mask", "full"])))


@st.composite
def shot_sets(draw, targets=(0, 1, 2, 3, 8, 9, 10), min_size=1, max_size=6, prefix=""):
    n = draw(st.integers(min_size, max_size))
    ids = draw(st.lists(st.text("0123456789abcdef", min_size=6, max_size=6), min_size=n, max_size=n, unique=True))
    ids = [prefix + i for i in ids]
    tgts = draw(st.lists(st.sampled_from(targets), min_size=n, max_size=n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [random_shot(rng, i, t, BASE_IDS) for i, t in zip(ids, tgts)]


def classifier_bits(shots, pooling="raw", p_cls=P_CLS, novel_rows="per_shot"):
    return build_classifier(p_cls, GATE, BASE_IDS, shots, pooling, novel_rows)


p_cls_st = st.integers(0, 2**31 - 1).map(
    lambda seed: torch.randn(len(BASE_IDS), DIM, generator=torch.Generator().manual_seed(seed)))


def assert_same_bits(a, b):
    assert a.row_ids == b.row_ids
    assert a.novel_ids == b.novel_ids
    assert a.base_rows.dtype == b.base_rows.dtype and a.novel_rows.dtype == b.novel_rows.dtype
    assert torch.equal(a.base_rows, b.base_rows)
    assert torch.equal(a.novel_rows, b.novel_rows)
    assert (a.novel_owner is None) == (b.novel_owner is None)
    if a.novel_owner is not None:
        assert torch.equal(a.novel_owner, b.novel_owner)


# ---------------------------------------------------------------------------------------------------- Shot
def test_shot_dict_round_trip_is_exact():
    rng = np.random.default_rng(0)
    shot = random_shot(rng, shot_id_of(b"img", b"mask"), 9, BASE_IDS)
    shot = Shot(shot.shot_id, shot.target, shot.class_ids, shot.sums_raw, shot.sums_unit, shot.counts, "full")
    d = shot.to_dict()
    assert isinstance(d["sums_raw"], bytes) and d["dim"] == DIM
    back = Shot.from_dict(d)
    assert back.shot_id == shot.shot_id and back.target == 9 and back.mode == "full"
    assert back.class_ids == shot.class_ids and isinstance(back.class_ids, tuple)
    for name in ("sums_raw", "sums_unit", "counts"):
        a, b = getattr(shot, name), getattr(back, name)
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.array_equal(a, b)
        assert a.tobytes() == b.tobytes()
        assert b.flags.writeable  # a copy, not a read-only view of the bytes
    assert back.to_dict() == d


def test_shot_from_dict_reads_the_old_labels_mode_as_full():
    d = random_shot(np.random.default_rng(2), "ab", 8, BASE_IDS).to_dict() | {"mode": "labels"}
    assert Shot.from_dict(d).mode == "full"


def test_support_mode_has_one_vocabulary():
    assert SUPPORT_MODES == ("mask", "full")
    assert support_mode(None) == "mask" and support_mode(np.zeros((2, 2), np.uint8)) == "full"
    assert P.ShotBytes(b"i", b"m").mode == "mask" and P.ShotBytes(b"i", b"m", b"l").mode == "full"


def test_shot_from_dict_defaults_to_mask_mode():
    shot = random_shot(np.random.default_rng(1), "ab", 8, BASE_IDS)
    d = shot.to_dict()
    del d["mode"]
    assert Shot.from_dict(d).mode == "mask"


def test_shot_id_of_is_length_prefixed():
    assert shot_id_of(b"ab", b"c") != shot_id_of(b"a", b"bc")
    assert shot_id_of(b"ab", b"c") == shot_id_of(b"ab", b"c")
    assert len(shot_id_of(b"x")) == 64


def test_shot_from_features_hand_values():
    # 1x2 map: pixel 0 [3,4] class 9, pixel 1 [0,2] class 2 (+ nothing ignored)
    feats = torch.tensor([[[3.0, 0.0]], [[4.0, 2.0]]])[None]
    shot = shot_from_features(feats, torch.tensor([[[9, 2]]]), 9, "id")
    assert shot.class_ids == (2, 9)
    assert shot.sums_raw.dtype == np.float64 and shot.counts.dtype == np.int64
    np.testing.assert_array_equal(shot.sums_raw, [[0.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(shot.sums_unit, [[0.0, 1.0], [0.6, 0.8]], atol=1e-12)
    np.testing.assert_array_equal(shot.counts, [1, 1])
    with pytest.raises(ValueError, match="mask covers no pixel"):
        shot_from_features(feats, torch.tensor([[[255, 2]]]), 9, "id")


def test_pooled_and_classifier_hand_values():
    # two shots of novel class 9: sums [2,0,..] (1 px) and [0,4,..] (3 px) -> mean [0.5, 1, 0..] -> l2n
    def shot(sid, vec, n):
        v = np.zeros((1, DIM))
        v[0, :2] = vec
        return Shot(sid, 9, (9,), v, v, np.array([n], dtype=np.int64))
    shots = [shot("b", [0.0, 4.0], 3), shot("a", [2.0, 0.0], 1)]
    sums, counts = pooled(shots, [9, 1])
    np.testing.assert_array_equal(sums[0, :2], [2.0, 4.0])
    np.testing.assert_array_equal(counts, [4.0, 0.0])
    clf = classifier_bits(shots, novel_rows="mean")
    assert clf.row_ids == BASE_IDS + [9]
    expected = torch.zeros(DIM)
    expected[:2] = torch.tensor([0.5, 1.0]) / np.sqrt(1.25)
    torch.testing.assert_close(clf.novel_rows[0], expected)
    assert clf.novel_owner is None
    # no base class is visible in these shots: base rows are exactly l2n(P_cls)
    assert torch.equal(clf.base_rows, capl.l2n(P_CLS))
    # per shot: one unit row per shot in shot_id order ("a" = [1,0], "b" = [0,1]), both owned by class 9
    per_shot = classifier_bits(shots)
    assert per_shot.row_ids == BASE_IDS + [9] and per_shot.novel_ids == [9]
    torch.testing.assert_close(per_shot.novel_rows[:, :2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert per_shot.novel_owner.tolist() == [0, 0]
    assert torch.equal(per_shot.base_rows, clf.base_rows)


def test_per_shot_rows_are_capped_round_robin():
    # 10 shots of class 9 with one-hot sums e_k: 8 rows; rows 0 and 1 pool shots (0, 8) and (1, 9)
    shots = []
    for k in range(10):
        v = np.zeros((1, DIM))
        v[0, k % DIM] = 1.0
        shots.append(Shot(f"s{k:02d}", 9, (9,), v, v, np.array([1], dtype=np.int64)))
    clf = classifier_bits(shots[::-1])
    assert clf.novel_rows.shape == (MAX_ROWS_PER_CLASS, DIM) and clf.novel_owner.tolist() == [0] * MAX_ROWS_PER_CLASS
    row0 = torch.zeros(DIM)
    row0[0] = row0[8 % DIM] = 1.0
    torch.testing.assert_close(clf.novel_rows[0], capl.l2n(row0))
    assert [len(g) for g in shot_groups(shots, 9)] == [2, 2, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="novel_rows"):
        classifier_bits(shots, novel_rows="median")


def test_empty_registry():
    clf = classifier_bits([])
    assert clf.row_ids == BASE_IDS and clf.novel_ids == []
    assert clf.novel_rows.shape == (0, DIM)
    assert torch.equal(clf.base_rows, capl.l2n(P_CLS))


# ---------------------------------------------------------------------------------------------------- properties
@PROPS
@given(shots=shot_sets(), p_cls=p_cls_st, data=st.data(), pooling=st.sampled_from(["raw", "normalised"]))
def test_teach_order_does_not_change_classifier(shots, p_cls, data, pooling):
    perm = data.draw(st.permutations(shots))
    assert_same_bits(classifier_bits(shots, pooling, p_cls), classifier_bits(list(perm), pooling, p_cls))
    # the pooled float64 statistics themselves are order-independent to the bit
    ids = BASE_IDS + [8, 9, 10]
    for a, b in zip(pooled(shots, ids, pooling), pooled(list(perm), ids, pooling)):
        assert a.tobytes() == b.tobytes()


@PROPS
@given(before=shot_sets(targets=(0, 1, 2, 8, 9), min_size=0, max_size=5), x=st.sampled_from([3, 10]),
       p_cls=p_cls_st, data=st.data())
def test_forgetting_a_class_restores_exact_bits(before, x, p_cls, data):
    # X is either a novel class (10) or a base class taught for context (3); no earlier shot targets it
    taught = data.draw(shot_sets(targets=(x,), min_size=1, max_size=3, prefix="x"))
    ref = classifier_bits(before, p_cls=p_cls)
    mixed = list(data.draw(st.permutations(before + taught)))
    with_x = classifier_bits(mixed, p_cls=p_cls)
    if x not in BASE_IDS:
        assert x in with_x.row_ids and x not in ref.row_ids
    after = classifier_bits([s for s in mixed if s.target != x], p_cls=p_cls)
    assert_same_bits(ref, after)


@PROPS
@given(shots=shot_sets(), p_cls=p_cls_st)
def test_row_ids_are_base_then_sorted_novel(shots, p_cls):
    clf = classifier_bits(shots, p_cls=p_cls)
    novel = sorted({s.target for s in shots} - set(BASE_IDS))
    assert clf.row_ids == BASE_IDS + novel
    assert clf.novel_ids == novel
    assert clf.base_rows.shape == (len(BASE_IDS), DIM)
    # one row per shot that shows a novel class (at most MAX_ROWS_PER_CLASS), owners in class order
    n_rows = [min(MAX_ROWS_PER_CLASS, sum(c in s.class_ids for s in shots)) for c in novel]
    assert clf.novel_rows.shape == (sum(n_rows), DIM)
    if novel:
        assert clf.novel_owner.tolist() == [i for i, n in enumerate(n_rows) for _ in range(n)]
    assert torch.isfinite(clf.base_rows).all() and torch.isfinite(clf.novel_rows).all()
    # every row is unit length (SCE normalises, novel prototypes are normalised)
    torch.testing.assert_close(clf.base_rows.norm(dim=1), torch.ones(len(BASE_IDS)))
    if novel:
        torch.testing.assert_close(clf.novel_rows.norm(dim=1), torch.ones(sum(n_rows)))
    # base classes that no shot shows keep exactly l2n(P_cls)
    seen = {c for s in shots for c in s.class_ids}
    for r, c in enumerate(BASE_IDS):
        if c not in seen:
            assert torch.equal(clf.base_rows[r], capl.l2n(p_cls)[r])


# ---------------------------------------------------------------------------------------------------- make_shot
def _camvid():
    root = data_root() / "camvid"
    listing = root / "train.txt"
    if not listing.is_file():
        pytest.skip(f"CamVid not found at {root} (set EDGE_GFS_DATA to the datasets folder)")
    name = listing.read_text().split()[0]
    img = cv2.imread(str(root / "train" / "images" / f"{name}.jpg"))
    lab = cv2.imread(str(root / "train" / "labels" / f"{name}.png"), 0)
    if img is None or lab is None:
        pytest.skip(f"CamVid frame {name} missing under {root}/train")
    return img, lab


@pytest.fixture(scope="module")
def frame():
    return _camvid()


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    # a small input size keeps the forward cheap on a busy CPU; 360x480 frames -> 12x16 features (scale 30)
    model = CaplModel(ModelConfig(base_classes=list(range(8)), input_hw=(96, 128)), pretrained=False)
    return Segmenter(model)


def _features(seg: Segmenter, img: np.ndarray) -> torch.Tensor:
    return seg.features(to_input([img], seg.cfg.input_hw))


def _nearest_small(arr: np.ndarray, size) -> np.ndarray:
    """Nearest downsampling by hand: source index floor(i * H / h)."""
    h, w = size
    rows = (np.arange(h) * arr.shape[0]) // h
    cols = (np.arange(w) * arr.shape[1]) // w
    return arr[rows][:, cols]


def _stats_of(class_map: np.ndarray, feats: torch.Tensor):
    f = feats[0].double().permute(1, 2, 0).numpy()  # (h,w,d)
    ids = sorted(int(c) for c in np.unique(class_map) if c != 255)
    counts = [int((class_map == c).sum()) for c in ids]
    sums = np.stack([f[class_map == c].sum(axis=0) for c in ids])
    return ids, counts, sums


RECT = (slice(100, 250), slice(150, 330))  # a painted rectangle: covers several labelled classes


def test_make_shot_labels_mode_uses_labels(seg, frame):
    img, lab = frame
    target = 9  # Pedestrian: not a base class of this model (bases 0..7)
    mask = np.zeros(lab.shape, np.uint8)
    mask[RECT] = 1
    shot = seg.make_shot(img, mask, target, labels=lab)
    assert shot.mode == "full" and shot.target == target
    feats = _features(seg, img)
    size = tuple(feats.shape[-2:])
    forced = np.where(mask != 0, target, lab).astype(np.int64)
    small = capl.downsample_labels(torch.from_numpy(forced)[None], size)[0].numpy()
    assert np.array_equal(small, _nearest_small(forced, size))  # nearest, as computed by hand
    small = np.where(np.isin(small, list(range(8)) + [target]), small, 255)  # 8 (Car), 11 (void) ignored
    ids, counts, sums = _stats_of(small, feats)
    assert shot.class_ids == tuple(ids)
    assert 8 not in shot.class_ids and 11 not in shot.class_ids and target in shot.class_ids
    assert shot.counts.tolist() == counts
    np.testing.assert_allclose(shot.sums_raw, sums, rtol=1e-9, atol=1e-9)
    # the forcing matters: the plain label map gives other counts for this rectangle
    plain = _nearest_small(lab.astype(np.int64), size)
    assert int((plain == target).sum()) != counts[ids.index(target)]


def test_make_shot_mask_mode_all_base_context(seg, frame):
    img, lab = frame
    target = 9
    mask = (lab == target).astype(np.uint8)
    seg.model.cfg.pseudo_threshold = 0.0
    try:
        shot = seg.make_shot(img, mask, target)
    finally:
        seg.model.cfg.pseudo_threshold = 0.7
    assert shot.mode == "mask"
    feats = _features(seg, img)
    size = tuple(feats.shape[-2:])
    # threshold 0: every pixel outside the mask carries the argmax base class of the base-only classifier
    base_only = build_classifier(seg.model.prototypes.detach(), seg.model.g_sup, list(range(8)), [])
    logits = seg.logits(feats, base_only)
    expected = logits.argmax(dim=1)[0].numpy()  # row index == class id for bases 0..7
    m_small = _nearest_small(mask, size) != 0
    expected = np.where(m_small, target, expected)
    ids, counts, sums = _stats_of(expected, feats)
    assert shot.class_ids == tuple(ids)
    assert shot.counts.tolist() == counts
    assert int(shot.counts.sum()) == size[0] * size[1]  # no ignored pixel
    assert shot.counts[shot.class_ids.index(target)] == int(m_small.sum())
    np.testing.assert_allclose(shot.sums_raw, sums, rtol=1e-9, atol=1e-9)


def test_make_shot_mask_mode_default_threshold_matches_pseudo_labels(seg, frame):
    img, lab = frame
    target = 9
    mask = (lab == target).astype(np.uint8)
    assert seg.cfg.pseudo_threshold == 0.7
    shot = seg.make_shot(img, mask, target)
    feats = _features(seg, img)
    base_only = build_classifier(seg.model.prototypes.detach(), seg.model.g_sup, list(range(8)), [])
    m_small = torch.from_numpy(_nearest_small(mask, tuple(feats.shape[-2:])) != 0)[None]
    pseudo = capl.pseudo_context_labels(seg.logits(feats, base_only), m_small, target, torch.arange(8), 0.7)
    ids, counts, _ = _stats_of(pseudo[0].numpy(), feats)
    assert shot.mode == "mask"
    assert shot.class_ids == tuple(ids) and shot.counts.tolist() == counts


def test_make_shot_mask_mode_no_confident_context(seg, frame):
    img, lab = frame
    target = 9
    mask = (lab == target).astype(np.uint8)
    seg.model.cfg.pseudo_threshold = 1.01  # softmax never reaches it: no base context at all
    try:
        shot = seg.make_shot(img, mask, target)
    finally:
        seg.model.cfg.pseudo_threshold = 0.7
    feats = _features(seg, img)
    m_small = _nearest_small(mask, tuple(feats.shape[-2:])) != 0
    assert shot.mode == "mask"
    assert shot.class_ids == (target,)
    assert shot.counts.tolist() == [int(m_small.sum())]
    f = feats[0].double().permute(1, 2, 0).numpy()
    np.testing.assert_allclose(shot.sums_raw[0], f[m_small].sum(axis=0), rtol=1e-9, atol=1e-9)


def test_make_shot_ids_and_teach(seg, frame):
    img, lab = frame
    mask = (lab == 9).astype(np.uint8)
    a, b = seg.make_shot(img, mask, 9), seg.make_shot(img, mask, 9)
    assert a.shot_id == b.shot_id  # content hash
    assert seg.make_shot(img, mask, 9, labels=lab).shot_id != a.shot_id
    assert seg.make_shot(img, mask, 9, shot_id="mine").shot_id == "mine"
    clf = seg.rebuild([a])
    assert clf.row_ids == list(range(8)) + [9]
    expected = capl.l2n(torch.from_numpy(a.sums_raw[a.class_ids.index(9)] / a.counts[a.class_ids.index(9)]))
    torch.testing.assert_close(clf.novel_rows[0], expected.float())


def test_make_shot_size_mismatch_raises(seg, frame):
    img, lab = frame
    mask = np.ones((lab.shape[0] // 2, lab.shape[1]), np.uint8)
    with pytest.raises(ValueError, match="must match"):
        seg.make_shot(img, mask, 9)


def test_make_shot_empty_mask_raises(seg, frame):
    img, lab = frame
    empty = np.zeros(lab.shape, np.uint8)
    with pytest.raises(ValueError, match="mask is empty"):
        seg.make_shot(img, empty, 9)
    with pytest.raises(ValueError, match="mask is empty"):  # labels never stand in for the painted mask
        seg.make_shot(img, empty, 8, labels=lab)
    with pytest.raises(ValueError, match="whole image"):
        seg.make_shot(img, np.ones(lab.shape, np.uint8), 9)


def test_make_shot_labels_size_mismatch_raises(seg, frame):
    img, lab = frame
    with pytest.raises(ValueError, match="labels is .* must match"):
        seg.make_shot(img, lab == 8, 8, labels=lab[:-8])


def test_make_shot_keeps_a_thin_mask_that_nearest_sampling_misses(seg, frame):
    # a 2-px-wide vertical strip (a pole) off the nearest-sampling grid vanishes under nearest downsampling;
    # the shot then takes every feature cell the mask touches instead of refusing a valid object
    img, lab = frame
    mask = np.zeros(lab.shape, np.uint8)
    mask[:, 1:3] = 1
    feats = seg.features(to_input([img], seg.cfg.input_hw))
    assert not capl.downsample_labels(torch.from_numpy(mask).long()[None], feats.shape[-2:]).any()
    shot = seg.make_shot(img, mask, 9)
    assert shot.counts[shot.class_ids.index(9)] == feats.shape[-2]  # one column of cells, full height


def test_duplicate_shot_ids_are_refused():
    d = 8
    shot = Shot(shot_id="same", target=9, class_ids=(9,), sums_raw=np.ones((1, d)), sums_unit=np.ones((1, d)),
                counts=np.array([3]))
    with pytest.raises(ValueError, match="share a shot_id"):
        build_classifier(torch.randn(4, d), GSup(d), [0, 1, 2, 3], [shot, shot])
