"""Inference on whole images (sliding window) and scoring against ground truth.

Metrics are computed at the dataset's working resolution (e.g. MoNuSeg at 512 x 512, as SegDiff/cDAL
score it); hippocampus slices are stacked back into volumes (along the last axis, the axis they were cut
along, so a volume is its stored NIfTI grid) and scored per volume, as in cDAL's Table 3. A 3-D method
(``method.spatial_dims == 3``, the native 3-D cDAL of chapter 08) predicts whole volumes instead, tiled by
MONAI's sliding window with c^3 windows (:func:`predict_volume`), and is scored the same way.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from . import distributed
from .config import AUGMENT_POLICIES
from .data import Case
from .methods import SegMethod, get_method_class
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


def _compact(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """A class map in the smallest integer type that holds ``num_classes`` (less to send between processes)."""
    return pred.astype(np.uint8 if num_classes <= 256 else np.int32)


@torch.no_grad()
def predict_volume(method: SegMethod, image: np.ndarray) -> np.ndarray:
    """Class probabilities ``(K, X, Y, Z)`` of a 3-D method for one volume ``image`` ``(C, X, Y, Z)`` in [0, 1].

    MONAI's sliding window with cubic windows of side ``method.inference_roi()`` (volumes smaller than the
    window are padded with zeros, as in training), overlap ``cfg.data.overlap``, windows averaged.
    """
    method.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(method.device)
    roi = method.inference_roi()
    if roi is None:
        probs = method.predict(x)
    else:
        probs = sliding_window_inference(x, roi_size=(roi,) * 3, sw_batch_size=4, predictor=lambda v: method.predict(v),
                                         overlap=method.cfg.data.overlap, mode="constant")
    return probs[0].float().cpu().numpy()


def _predict_volumes(method: SegMethod, cases: Sequence[Case], progress: bool = False,
                     info: distributed.DistInfo = distributed.SINGLE):
    """A 3-D method's argmax predictions, targets and ids, one per volume the slice cases belong to.

    In a process group rank r predicts volumes r, r + N, ... and every rank gathers all predictions.
    """
    from tqdm.auto import tqdm

    from .data.volumes import cases_to_volumes

    vols = cases_to_volumes(cases)
    mine = distributed.shard(range(len(vols)), info) if info.world_size > 1 else list(range(len(vols)))
    local = [(i, _compact(predict_volume(method, vols[i].image).argmax(0), method.info.num_classes))
             for i in tqdm(mine, desc="evaluate", disable=not (progress and info.is_main), leave=False)]
    by_index: dict[int, np.ndarray] = {}
    for part in distributed.all_gather_objects(local, info):
        by_index.update(part)
    preds = [by_index[i].astype(np.int64) for i in range(len(vols))]
    return [v.label for v in vols], preds, [v.id for v in vols]


def _group_volumes(cases: Sequence[Case], preds: Sequence[np.ndarray]):
    """Stack 2-D slice predictions back into ``(X, Y, Z)`` volumes when cases carry ``meta['volume']``."""
    if not cases or "volume" not in cases[0].meta:
        return [c.label for c in cases], list(preds), [c.id for c in cases]
    groups: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
    for c, p in zip(cases, preds):
        groups[c.meta["volume"]].append((int(c.meta.get("slice", 0)), p, c.label))
    targets, outs, ids = [], [], []
    for vid, items in groups.items():
        items.sort(key=lambda it: it[0])
        outs.append(np.stack([it[1] for it in items], axis=-1))
        targets.append(np.stack([it[2] for it in items], axis=-1))
        ids.append(vid)
    return targets, outs, ids


def evaluate_cases(method: SegMethod, cases: Sequence[Case], protocol: str = "", progress: bool = False,
                   keep_predictions: bool = False) -> dict[str, Any]:
    """Predict every case and score it.

    Returns the keys of :func:`~diffseg_core.metrics.segmentation_scores` plus ``seconds_per_image`` (per
    case, i.e. per slice for volume datasets, also for 3-D methods), ``ids`` (per scored image/volume,
    aligned with ``per_image_dice``), ``protocol`` and, for a method that has ``inference_note()``,
    ``inference`` (e.g. cDAL's precision and batching; :func:`result_row` appends it to the protocol
    sentence); with ``keep_predictions`` also ``predictions`` (id -> predicted label map, ``(X, Y, Z)`` for
    volumes; not JSON-serialisable).

    Inside a process group (``torchrun``) the cases (volumes for a 3-D method) are split across ranks (rank r
    predicts cases r, r + N, ...), the predictions gathered on every rank and scored there, so every rank
    returns the same scores as one process would; ``seconds_per_image`` counts the seconds of all ranks.
    """
    if not cases:
        raise ValueError("no cases to evaluate (is the split empty? use --split all for a folder without splits)")
    from tqdm.auto import tqdm

    info = distributed.current()
    t0 = time.perf_counter()
    if getattr(method, "spatial_dims", 2) == 3:
        targets, preds, ids = _predict_volumes(method, cases, progress, info)
        seconds = sum(distributed.all_gather_objects(time.perf_counter() - t0, info))
    else:
        mine = distributed.shard(range(len(cases)), info) if info.world_size > 1 else list(range(len(cases)))
        local: list[tuple[int, np.ndarray]] = []
        for i in tqdm(mine, desc="evaluate", disable=not (progress and info.is_main), leave=False):
            local.append((i, _compact(predict_case(method, cases[i]).argmax(0), method.info.num_classes)))
        seconds = time.perf_counter() - t0
        # several processes: each predicts its share (cases r, r + N, ...), then all gather every prediction
        preds_by_index: dict[int, np.ndarray] = {}
        parts = distributed.all_gather_objects((local, seconds), info)
        for part, _ in parts:
            preds_by_index.update(part)
        preds = [preds_by_index[i].astype(np.int64) for i in range(len(cases))]
        seconds = sum(s for _, s in parts)  # device seconds (summed over ranks), as one process would spend them
        targets, preds, ids = _group_volumes(cases, preds)
    scores = segmentation_scores(preds, targets, method.info.num_classes, method.info.class_names)
    scores["ids"] = ids
    scores["seconds_per_image"] = seconds / len(cases)
    scores["protocol"] = protocol
    if hasattr(method, "inference_note"):        # how the hardware was used (precision, batching), for the row
        scores["inference"] = method.inference_note()
    if keep_predictions:
        scores["predictions"] = dict(zip(ids, preds))
    return scores


def limit_cases(cases: Sequence[Case], limit: int | None) -> list[Case]:
    """The cases to score: all of them, or the first ``limit`` images (volumes, for slices) in the split's order.

    Evaluation never caps silently: a subset is only taken when asked for (``evaluate --limit N``), and the
    JSON and the protocol sentence then say how many of how many were scored.
    """
    cases = list(cases)
    if limit is None:
        return cases
    if limit < 1:
        raise ValueError(f"--limit {limit}: must be at least 1; leave it out to score every image")
    if cases and "volume" in cases[0].meta:
        keep: list[str] = []
        for c in cases:
            if c.meta["volume"] not in keep:
                keep.append(c.meta["volume"])
        chosen = set(keep[:limit])
        return [c for c in cases if c.meta["volume"] in chosen]
    return cases[:limit]


def count_units(cases: Sequence[Case]) -> int:
    """Images, or volumes when the cases are slices (``meta['volume']``)."""
    if cases and "volume" in cases[0].meta:
        return len({c.meta["volume"] for c in cases})
    return len(cases)


def describe_protocol(cfg, split: str, n_images: int, checkpoint: str, volumes: bool = False,
                      n_available: int | None = None, note: str = "") -> str:
    """A one-sentence protocol label for a result row.

    ``n_available`` (when a subset was scored with ``--limit``) says of how many; ``note`` is appended
    (e.g. that GPU kernels are not bitwise reproducible).
    """
    size = ((f"{cfg.data.target} target, " if getattr(cfg.data, "target", None) else "")
            + (f"resized to {cfg.data.working_size}x{cfg.data.working_size}" if cfg.data.working_size else "native size"))
    unit = "volumes" if volumes else "images"
    augment = getattr(cfg.data, "augment", None)
    trained = (f"trained with augmentation '{augment}' ({AUGMENT_POLICIES.get(augment, augment)}); "
               if augment is not None else "")
    if dict(cfg.model).get("spatial_dims") == 3:  # 3-D patches (data.volumes.volume_batches) are not augmented
        trained = "trained on 3-D patches without augmentation (as the official pipeline); "
    if cfg.method == "textdiff" and dict(cfg.model).get("augment"):  # TextDiff augments its cached features itself
        trained = ("trained with random 90-degree rotations and flips (p 0.5) of the cached features and labels "
                   "(TextDiff's own augmentation); ")
    scored = (f"the first {n_images} of {n_available} {unit} (--limit {n_images})"
              if n_available is not None and n_available != n_images else f"{n_images} {unit}")
    if int(dict(cfg.model).get("spatial_dims", 2)) == 3:  # a 3-D model tiles whole volumes
        c = cfg.data.crop
        return (f"{cfg.method} 3-D on {cfg.dataset} (native size; whole volumes, sliding-window {c}x{c}x{c} "
                f"windows, overlap {cfg.data.overlap}); {trained}{split} split, {scored}; checkpoint: {checkpoint}; "
                f"Dice/IoU as per-{unit[:-1]} means (*_mean) and pooled over {unit} (*_global); preset {cfg.preset}, "
                f"seed {cfg.seed}." + (f" {note}" if note else ""))
    backbone = ""
    if cfg.method == "textdiff":  # which frozen diffusion model produced the features (the paper's ADM-256 or not)
        from .textdiff.backbone import backbone_label

        backbone = f"; {backbone_label(cfg.model.get('backbone'))}"
    window = get_method_class(cfg.method).inference_window(cfg)
    if window is None or (cfg.data.working_size and window >= cfg.data.working_size):
        how = "whole images in one pass"
    else:
        how = f"sliding-window tiles of {window} px, overlap {cfg.data.overlap}"
    return (f"{cfg.method} on {cfg.dataset} ({size}; {how}); {trained}{split} split, {scored}; checkpoint: {checkpoint}; Dice/IoU as "
            f"per-{unit[:-1]} means (*_mean) and pooled over {unit} (*_global); preset {cfg.preset}, seed {cfg.seed}"
            f"{backbone}." + (f" {note}" if note else ""))


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
