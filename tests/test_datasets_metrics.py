"""Dataset readers (CamVid and a folder dataset written with real PNG/JPEG codecs) and IoU accounting."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_gfs.data.datasets import camvid, folder, open_dataset, train_lut
from edge_gfs.data.metrics import confusion, iou_per_class, summarize


def test_camvid_splits_and_void_is_ignore(camvid_root):
    data = camvid(camvid_root)
    assert [len(data.names(s)) for s in ("train", "val", "test")] == [367, 101, 233]
    img, lab = data.read("train", data.names("train")[0])
    assert img.shape == (360, 480, 3) and lab.shape == (360, 480)
    assert 11 not in np.unique(lab) and set(np.unique(lab)) <= set(range(11)) | {255}


def test_folder_dataset_round_trip(tmp_path):
    root = tmp_path / "mydata"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "classes.yaml").write_text("classes: [floor, box, person]\nignore_index: 9\n")
    img = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    lab = np.zeros((40, 60), np.uint8)
    lab[10:20, 10:30] = 1
    lab[0:5] = 9
    cv2.imwrite(str(root / "train" / "images" / "a.png"), img)
    cv2.imwrite(str(root / "train" / "labels" / "a.png"), lab)
    data = open_dataset(str(root))
    assert data.class_names == ["floor", "box", "person"]
    assert data.names("train") == ["a"]
    r_img, r_lab = data.read("train", "a")
    assert np.array_equal(r_img, img)
    assert (r_lab[0:5] == 255).all() and (r_lab[10:20, 10:30] == 1).all()
    with pytest.raises(FileNotFoundError, match="no split 'val'"):
        data.names("val")


def test_folder_dataset_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="classes.yaml"):
        folder(tmp_path)
    (tmp_path / "classes.yaml").write_text("classes: []\n")
    with pytest.raises(ValueError, match="list of 1..254"):
        folder(tmp_path)


def test_train_lut_hides_novel_classes():
    lut = train_lut([0, 1, 2, 3, 4, 5, 6, 7])
    assert list(lut[[0, 7, 8, 9, 10, 255]]) == [0, 7, 255, 255, 255, 255]
    lut = train_lut([0, 1, 3, 4, 5, 8, 9, 10])  # fold 1: Pole, SignSymbol, Fence hidden
    assert list(lut[[2, 3, 6, 7, 8, 10]]) == [255, 2, 255, 255, 5, 7]


def test_iou_by_hand():
    # 2 classes, 6 pixels; gt = [0 0 0 1 1 255], pred = [0 0 1 1 255 0]
    gt = np.array([0, 0, 0, 1, 1, 255], np.uint8)
    pred = np.array([0, 0, 1, 1, 255, 0], np.uint8)
    cm = confusion(pred, gt, 2)
    # class 0: tp 2, gt 3, pred 2 -> IoU 2/3. class 1: tp 1, gt 2, pred 2 (one of them 'unknown' 255 is a miss)
    # -> pred count for class 1 is 1 (pixel 2) + 1 (pixel 3) = 2, union = 2 + 2 - 1 = 3 -> 1/3
    iou = iou_per_class(cm)
    assert iou == pytest.approx([2 / 3, 1 / 3])
    s = summarize(cm, ["a", "b"], [0], [1])
    assert s["base_miou"] == pytest.approx(200 / 3) and s["novel_miou"] == pytest.approx(100 / 3)
    assert s["total_miou"] == pytest.approx(50.0)
    assert s["hiou"] == pytest.approx(2 * (200 / 3) * (100 / 3) / 100)


def test_absent_class_is_not_scored():
    cm = confusion(np.zeros(4, np.uint8), np.zeros(4, np.uint8), 3)
    s = summarize(cm, ["a", "b", "c"], [0, 1], [2])
    assert s["per_class"] == {"a": 100.0, "b": None, "c": None}
    assert s["base_miou"] == 100.0 and s["novel_miou"] is None and s["hiou"] is None
