"""Inference on whole images (sliding window) and scoring against ground truth.

Metrics are computed at the dataset's working resolution (e.g. MoNuSeg at 512 x 512, as SegDiff/cDAL
score it); hippocampus slices are stacked back into volumes and scored per volume, as in cDAL's Table 3.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .data import Case
from .methods import SegMethod
from .metrics import segmentation_scores


@torch.no_grad()
def predict_case(method: SegMethod, case: Case) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` for one case.

    Images larger than ``method.inference_roi()`` are tiled with MONAI's sliding window (overlap from
    ``cfg.data.overlap``, windows averaged); smaller ones are padded to the window. ``None`` means the
    method takes whole images. A method may say how many windows one ``predict`` call takes
    (``inference_batch()``, default 16; cDAL takes a whole image's tiles and batches them itself).
    """
    method.eval()
    image = torch.from_numpy(np.ascontiguousarray(case.image))[None].to(method.device)
    roi = method.inference_roi()
    text = [case.text]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return method.predict(x, text * x.shape[0])

    if roi is None:
        probs = predictor(image)
    else:
        batch = method.inference_batch() if hasattr(method, "inference_batch") else 16
        probs = sliding_window_inference(image, roi_size=(roi, roi), sw_batch_size=batch, predictor=predictor,
                                         overlap=method.cfg.data.overlap, mode="constant")
    return probs[0].float().cpu().numpy()


def _group_volumes(cases: Sequence[Case], preds: Sequence[np.ndarray]):
    """Stack 2-D slice predictions back into volumes when cases carry ``meta['volume']``."""
    if not cases or "volume" not in cases[0].meta:
        return [c.label for c in cases], list(preds), [c.id for c in cases]
    groups: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
    for c, p in zip(cases, preds):
        groups[c.meta["volume"]].append((int(c.meta.get("slice", 0)), p, c.label))
    targets, outs, ids = [], [], []
    for vid, items in groups.items():
        items.sort(key=lambda it: it[0])
        outs.append(np.stack([it[1] for it in items]))
        targets.append(np.stack([it[2] for it in items]))
        ids.append(vid)
    return targets, outs, ids


def evaluate_cases(method: SegMethod, cases: Sequence[Case], protocol: str = "", progress: bool = False) -> dict[str, Any]:
    """Predict every case and score it.

    Returns the keys of :func:`~diffseg_core.metrics.segmentation_scores` plus ``seconds_per_image``,
    ``ids`` (per scored image/volume, aligned with ``per_image_dice``), ``protocol`` and, for a method that
    has ``inference_note()``, ``inference`` (e.g. cDAL's precision and batching; :func:`result_row` appends it
    to the protocol sentence).
    """
    if not cases:
        raise ValueError("no cases to evaluate (is the split empty? use --split all for a folder without splits)")
    from tqdm.auto import tqdm

    preds = []
    t0 = time.perf_counter()
    for case in tqdm(cases, desc="evaluate", disable=not progress, leave=False):
        preds.append(predict_case(method, case).argmax(0).astype(np.int64))
    seconds = time.perf_counter() - t0
    targets, preds, ids = _group_volumes(cases, preds)
    scores = segmentation_scores(preds, targets, method.info.num_classes, method.info.class_names)
    scores["ids"] = ids
    scores["seconds_per_image"] = seconds / len(cases)
    scores["protocol"] = protocol
    if hasattr(method, "inference_note"):        # how the hardware was used (precision, batching), for the row
        scores["inference"] = method.inference_note()
    return scores


def describe_protocol(cfg, split: str, n_images: int, checkpoint: str, volumes: bool = False) -> str:
    """A one-sentence protocol label for a result row."""
    size = f"resized to {cfg.data.working_size}x{cfg.data.working_size}" if cfg.data.working_size else "native size"
    unit = "volumes" if volumes else "images"
    return (f"{cfg.method} on {cfg.dataset} ({size}; sliding-window tiles of {cfg.data.crop} px, overlap "
            f"{cfg.data.overlap}); {split} split, {n_images} {unit}; checkpoint: {checkpoint}; Dice/IoU as "
            f"per-{unit[:-1]} means (*_mean) and pooled over {unit} (*_global); preset {cfg.preset}, seed {cfg.seed}.")


def result_row(model: str, scores: dict[str, Any], data: str, history: Any = None, protocol: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """One row of a results table, the same for the CLI's JSON and every chapter.

    ``scores`` is what :func:`evaluate_cases` returned; ``data`` says where the images came from ("real",
    "synthetic"); ``history`` (optional) is the loop's :class:`~diffseg_core.train.History`. The row holds the
    per-image means and the pooled values of Dice and IoU, seconds per image, the training time and steps
    when known, and the protocol sentence (``protocol``, else ``scores["protocol"]``, followed by
    ``scores["inference"]`` when present), which every row must carry. ``extra`` columns are appended.
    """
    row: dict[str, Any] = {"model": model, "data": data}
    for key in ("dice_mean", "iou_mean", "dice_global", "iou_global", "n_images"):
        row[key] = scores[key]
    if "seconds_per_image" in scores:
        row["s / image"] = round(float(scores["seconds_per_image"]), 3)
    if history is not None:
        row["train time (s)"] = round(float(history.seconds), 1)
        row["steps"] = int(history.last_step)
    row.update(extra)
    row["protocol"] = protocol if protocol is not None else scores.get("protocol", "")
    note = scores.get("inference")
    if row["protocol"] and note and note not in row["protocol"]:
        row["protocol"] = f"{row['protocol']} {note}"
    if not row["protocol"]:
        raise ValueError(f"result_row({model!r}): every result needs its protocol sentence")
    return row


def paper_row(model: str, dice: float, iou: float | None, protocol: str, source: str = "paper") -> dict[str, Any]:
    """A published number beside ours: per-image mean Dice/IoU as the paper reports them, quoted, not computed."""
    return {"model": model, "data": source, "dice_mean": dice, "iou_mean": iou, "protocol": protocol}
