"""Endless random-crop training batches from in-memory cases, with MONAI dictionary transforms.

Per sample (``cfg.crop`` = c):

1. ``SpatialPadd`` to at least c x c (zeros, so images smaller than the crop still work);
2. a c x c crop: ``RandSpatialCropd`` (uniform position), or, for **sparse labels**,
   ``RandCropByPosNegLabeld`` centred on a foreground pixel half of the time (cDAL's 50/50 positive /
   negative sampling for the hippocampus, book/decisions.md). Sparse mode is on when the mean foreground
   fraction of the cases is below 10 % and the crop is smaller than the images (``fg_bias=None``), or
   forced with ``fg_bias=True/False``. Cases without any foreground always get a uniform crop;
3. when ``cfg.augment``: ``RandFlipd`` on each axis (p 0.5), ``RandRotate90d`` (p 0.5), and for RGB a mild
   intensity jitter (``RandScaleIntensityd`` +-10 %, ``RandShiftIntensityd`` +-0.05, then clipped to [0, 1]).

Cases are drawn uniformly with replacement by a seeded generator and every random transform is seeded
from the same seed, so the stream of batches is reproducible. Nothing is read from disk: the cases are
already in memory (``cfg.num_workers`` is not needed and is ignored). While a batch is being built, MONAI's
meta-data tracking is switched off (and restored right after): the transforms then return plain tensors
and run about 4x faster, which matters for the hippocampus's many small crops. Foreground / background
pixel indices for the biased crops are computed once per case, not per draw.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (Compose, RandCropByPosNegLabeld, RandFlipd, RandRotate90d, RandScaleIntensityd,
                              RandShiftIntensityd, RandSpatialCropd, SpatialPadd)
from monai.transforms.utils import map_binary_to_indices

from .base import Case, DataError

SPARSE_FOREGROUND = 0.10  # mean foreground fraction below which crops are biased towards foreground


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """Switch MONAI meta-data tracking off for the duration of the block, then restore the previous setting."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def _augment(channels: int) -> list:
    keys = ["image", "label"]
    ts: list = [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
                RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1))]
    if channels == 3:
        ts += [RandScaleIntensityd("image", factors=0.1, prob=0.5, channel_wise=True),
               RandShiftIntensityd("image", offsets=0.05, prob=0.5)]
    return ts


def build_transforms(crop: int, channels: int, augment: bool, fg_bias: bool) -> tuple[Compose, Compose]:
    """The two per-sample pipelines: uniform crop, and foreground-biased crop (used for sparse labels).

    Both take ``{'image': (C, H, W), 'label': (1, H, W)}`` numpy arrays and return ``(C, crop, crop)``
    and ``(1, crop, crop)`` tensors.
    """
    keys = ["image", "label"]
    pad = SpatialPadd(keys, spatial_size=(crop, crop), mode="constant")
    uniform = Compose([pad, RandSpatialCropd(keys, roi_size=(crop, crop), random_size=False)]
                      + (_augment(channels) if augment else []))
    biased = Compose([pad, RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(crop, crop), pos=1, neg=1,
                                                  num_samples=1, allow_smaller=True, fg_indices_key="fg_idx",
                                                  bg_indices_key="bg_idx")]
                     + (_augment(channels) if augment else []))
    return uniform, biased


def train_batches(cases: Sequence[Case], cfg: Any, seed: int = 0, fg_bias: bool | None = None
                  ) -> Iterator[dict[str, Any]]:
    """Endless batches of random crops.

    Args:
        cases: in-memory cases (``image`` ``(C, H, W)`` in [0, 1], ``label`` ``(H, W)`` int64).
        cfg: a :class:`~diffseg_core.config.DataConfig` (uses ``crop``, ``batch_size``, ``augment``).
        seed: seeds case sampling and every random transform.
        fg_bias: foreground-biased crops (``None``: automatic for sparse labels, see the module docstring).
    Yields:
        ``{'image': float32 (B, C, crop, crop) in [0, 1], 'label': int64 (B, crop, crop),
        'text': list[str] (B), 'id': list[str] (B)}`` with ``B = cfg.batch_size``.
    """
    cases = list(cases)
    if not cases:
        raise DataError("train_batches: no training cases (is the train split empty? check max_train_cases "
                        "and the dataset's split column)")
    crop, bs = int(cfg.crop), int(cfg.batch_size)
    if crop < 1 or bs < 1:
        raise DataError(f"train_batches: crop ({crop}) and batch_size ({bs}) must be positive")
    channels = {c.image.shape[0] for c in cases}
    if len(channels) != 1:
        raise DataError(f"train_batches: cases have different channel counts {sorted(channels)}")
    c_in = channels.pop()
    has_fg = np.array([bool(np.any(c.label > 0)) for c in cases])
    if fg_bias is None:
        fg_frac = float(np.mean([np.mean(c.label > 0) for c in cases]))
        smallest = min(min(c.label.shape) for c in cases)
        fg_bias = fg_frac < SPARSE_FOREGROUND and crop < smallest
    uniform, biased = build_transforms(crop, c_in, bool(cfg.augment), bool(fg_bias))
    uniform.set_random_state(seed=seed % (2**32))
    biased.set_random_state(seed=(seed + 1) % (2**32))
    rng = np.random.default_rng(seed)
    # a pre-computed (C, H, W) / (1, H, W) dict per case avoids copying on every draw
    items = []
    for c, fg in zip(cases, has_fg):
        item = {"image": c.image.astype(np.float32, copy=False), "label": c.label[None]}
        if fg_bias and fg:  # indices in the padded frame, computed once (see build_transforms)
            padded = SpatialPadd("label", spatial_size=(crop, crop), mode="constant")({"label": c.label[None]})["label"]
            item["fg_idx"], item["bg_idx"] = map_binary_to_indices(np.asarray(padded) > 0)
        items.append(item)
    while True:
        idx = rng.integers(0, len(cases), size=bs)
        images, labels = [], []
        with _plain_tensors():
            for i in idx:
                out = (biased if fg_bias and has_fg[i] else uniform)(dict(items[i]))
                if isinstance(out, list):  # RandCropByPosNegLabeld returns num_samples dicts
                    out = out[0]
                images.append(torch.as_tensor(out["image"]))
                labels.append(torch.as_tensor(out["label"]))
        image = torch.stack(images).float().clamp_(0, 1)
        label = torch.stack(labels)[:, 0].round().long()
        yield {"image": image.as_subclass(torch.Tensor), "label": label.as_subclass(torch.Tensor),
               "text": [cases[i].text for i in idx], "id": [cases[i].id for i in idx]}
