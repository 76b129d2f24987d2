"""Metrics against numbers worked out by hand (not against the code's own output)."""
from __future__ import annotations

import numpy as np
import pytest

from diffseg_core.metrics import image_scores, segmentation_scores


def test_binary_image_hand_computed():
    # prediction has 3 foreground pixels, ground truth 2; they overlap in 2.
    pred = np.array([[0, 1], [1, 1]])
    gt = np.array([[0, 1], [0, 1]])
    s = image_scores(pred, gt, 2)
    # TP=2, FP=1, FN=0 -> Dice = 4/5, IoU = 2/3, precision = 2/3, recall = 1
    assert s["dice"][1] == pytest.approx(0.8)
    assert s["iou"][1] == pytest.approx(2 / 3)
    assert s["precision"][1] == pytest.approx(2 / 3)
    assert s["recall"][1] == pytest.approx(1.0)
    # background: TP=1 (pixel 0,0), FP=0, FN=1 -> Dice 2/3
    assert s["dice"][0] == pytest.approx(2 / 3)


def test_per_image_mean_differs_from_pooled():
    # image A: perfect on 1 pixel; image B: 8 fg pixels, 4 predicted correctly, none wrong.
    a_pred = np.zeros((4, 4), int); a_pred[0, 0] = 1
    a_gt = a_pred.copy()
    b_gt = np.zeros((4, 4), int); b_gt[:2, :] = 1
    b_pred = np.zeros((4, 4), int); b_pred[0, :] = 1
    r = segmentation_scores([a_pred, b_pred], [a_gt, b_gt], 2)
    dice_b = 2 * 4 / (4 + 8)  # 2/3
    assert r["dice_mean"] == pytest.approx((1.0 + dice_b) / 2)
    # pooled: TP = 1 + 4 = 5, FP = 0, FN = 4 -> 10 / 14
    assert r["dice_global"] == pytest.approx(10 / 14)
    assert r["iou_global"] == pytest.approx(5 / 9)
    assert r["recall_global"] == pytest.approx(5 / 9)
    assert r["precision_global"] == pytest.approx(1.0)
    assert r["n_images"] == 2
    assert r["per_image_dice"] == pytest.approx([1.0, dice_b])


def test_empty_masks_conventions():
    empty = np.zeros((3, 3), int)
    some = empty.copy(); some[1, 1] = 1
    assert segmentation_scores([empty], [empty], 2)["dice_mean"] == pytest.approx(1.0)  # nothing to find, nothing found
    assert segmentation_scores([some], [empty], 2)["dice_mean"] == pytest.approx(0.0)   # false alarm
    assert segmentation_scores([empty], [some], 2)["dice_mean"] == pytest.approx(0.0)   # miss


def test_multiclass_per_class_and_volumes():
    gt = np.zeros((2, 3, 3), int); gt[0, 0, :] = 1; gt[1, 2, :] = 2
    pred = gt.copy(); pred[1, 2, 0] = 0  # one posterior voxel missed
    r = segmentation_scores([pred], [gt], 3, ["background", "anterior", "posterior"])
    assert r["per_class"]["anterior"]["dice_mean"] == pytest.approx(1.0)
    assert r["per_class"]["posterior"]["dice_mean"] == pytest.approx(2 * 2 / (2 + 3))
    assert r["dice_mean"] == pytest.approx((1.0 + 0.8) / 2)
    assert "background" not in r["per_class"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in shape"):
        image_scores(np.zeros((2, 2), int), np.zeros((3, 3), int), 2)
    with pytest.raises(ValueError, match="labels must lie"):
        image_scores(np.full((2, 2), 5), np.zeros((2, 2), int), 2)
    with pytest.raises(ValueError, match="no images"):
        segmentation_scores([], [], 2)
