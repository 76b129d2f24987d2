"""Segmentation metrics: Dice, IoU, precision, recall; binary and per class; per-image mean AND pooled.

Two aggregations are reported side by side and always labelled:

* **per-image mean** (``*_mean``): the metric of each image (or volume), averaged over images. This is
  what cDAL/SegDiff report for MoNuSeg and CXR ("Dice" and "mIoU" in their tables) and what TextDiff's
  evaluation computes.
* **global / pooled** (``*_global``): true/false positives summed over all images first, then one
  metric. Large images and images with many foreground pixels weigh more.

An image where both prediction and ground truth are empty for a class scores Dice = IoU = 1 for that
class (MONAI ``ignore_empty=False``); empty ground truth with a non-empty prediction scores 0.
The per-image values come from MONAI (``compute_dice``, ``compute_iou``, ``get_confusion_matrix``);
``tests/test_metrics.py`` checks them against hand-computed numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou, get_confusion_matrix


def one_hot(labels: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N, *spatial)`` integer labels -> ``(N, K, *spatial)`` float one-hot."""
    t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {int(t.min())}..{int(t.max())}")
    return torch.nn.functional.one_hot(t, num_classes).movedim(-1, 1).float()


def image_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class scores of one image or volume.

    Args:
        pred, target: integer label maps of identical shape ``(H, W)`` or ``(D, H, W)``.
    Returns:
        dict of arrays of shape ``(K,)``: ``dice``, ``iou``, ``precision``, ``recall`` and the raw
        counts ``tp``, ``fp``, ``fn`` (for pooling).
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    p = one_hot(pred[None], num_classes)
    g = one_hot(target[None], num_classes)
    dice = compute_dice(p, g, include_background=True, ignore_empty=False)[0].numpy()
    iou = compute_iou(p, g, include_background=True, ignore_empty=False)[0].numpy()
    cm = get_confusion_matrix(p, g, include_background=True)[0].numpy()  # (K, 4): tp, fp, tn, fn
    tp, fp, fn = cm[:, 0], cm[:, 1], cm[:, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.where(tp + fn > 0, 0.0, 1.0))
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.where(tp + fp > 0, 0.0, 1.0))
    return {"dice": dice, "iou": iou, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}


def segmentation_scores(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray], num_classes: int,
                        class_names: Sequence[str] | None = None) -> dict:
    """Aggregate scores over a set of images (or volumes).

    Args:
        preds, targets: sequences of integer label maps (each pair of identical shape; sizes may differ
            between images).
        num_classes: K, including background (2 for binary tasks).
    Returns:
        ``n_images``, ``dice_mean``, ``iou_mean``, ``precision_mean``, ``recall_mean`` (per-image means),
        ``dice_global``, ``iou_global``, ``precision_global``, ``recall_global`` (pooled), each averaged
        over the foreground classes 1..K-1; ``per_class`` (name -> the same keys for that class) and
        ``per_image_dice`` (list, foreground mean per image).
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
    if not preds:
        raise ValueError("no images to score")
    names = list(class_names or [f"class{k}" for k in range(num_classes)])
    per = [image_scores(p, t, num_classes) for p, t in zip(preds, targets)]
    stack = {k: np.stack([s[k] for s in per]) for k in per[0]}  # (N, K)
    tp, fp, fn = (stack[k].sum(0) for k in ("tp", "fp", "fn"))
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = {
            "dice": np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0),
            "iou": np.where(tp + fp + fn > 0, tp / np.maximum(tp + fp + fn, 1), 1.0),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0),
            "recall": np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0),
        }
    fg = list(range(1, num_classes)) if num_classes > 1 else [0]
    out: dict = {"n_images": len(preds)}
    for m in ("dice", "iou", "precision", "recall"):
        out[f"{m}_mean"] = float(stack[m][:, fg].mean())
        out[f"{m}_global"] = float(pooled[m][fg].mean())
    out["per_class"] = {
        names[k]: {**{f"{m}_mean": float(stack[m][:, k].mean()) for m in ("dice", "iou", "precision", "recall")},
                   **{f"{m}_global": float(pooled[m][k]) for m in ("dice", "iou", "precision", "recall")}}
        for k in fg
    }
    out["per_image_dice"] = [float(x) for x in stack["dice"][:, fg].mean(1)]
    return out
