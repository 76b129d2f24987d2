"""Volumes rebuilt from their slices, and endless batches of 3-D patches (the native 3-D cDAL of chapter 08).

The hippocampus loader serves every volume as 2-D axial slices (cases with ``meta['volume']`` and
``meta['slice']``, :mod:`diffseg_core.data.hippocampus`), which is what the paper's slice-wise model and every
2-D method train on. A 3-D model needs the volumes back: :func:`cases_to_volumes` stacks the slices along the
last axis (the axis they were cut along), so a volume is exactly the stored NIfTI grid.

:func:`volume_batches` then yields random c x c x c patches (c = ``cfg.crop``, 32 for Hippocampus) with MONAI
dictionary transforms, as the official Hippocampus pipeline draws its 32^3 crops:

1. ``SpatialPadd`` to at least c^3 with zeros (several volumes have fewer than 32 slices; the sliding-window
   inference pads the same way);
2. ``RandCropByPosNegLabeld`` centred on a foreground voxel with probability ``pos_fraction`` (0.5: the
   official 50/50 positive/negative sampling), else on a background voxel;
3. no other augmentation (the official Hippocampus pipeline has none; the data settings' ``augment`` applies to
   the 2-D slices of the slice-wise models only, and the protocol sentence of a 3-D run says so).

Volumes are drawn uniformly with replacement by a seeded generator (one patch each; the official loader takes
4 patches of one volume per batch), and the transforms are seeded from the same seed, so the stream is
reproducible. Foreground/background voxel indices are computed once per volume.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from .base import Case, DataError
from .batches import crop_batch, plain_tensors

__all__ = ["Volume", "cases_to_volumes", "volume_batches"]


@dataclass
class Volume:
    """One 3-D image with its label map, rebuilt from slice cases.

    ``image`` ``(C, X, Y, Z)`` float32 in [0, 1]; ``label`` ``(X, Y, Z)`` int64 class indices; ``meta`` is the
    first slice's ``meta`` without the per-slice entries.
    """

    id: str
    image: np.ndarray
    label: np.ndarray
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 4 or self.image.shape[1:] != self.label.shape:
            raise DataError(f"volume {self.id}: image {self.image.shape} must be (C, X, Y, Z) and match label "
                            f"{self.label.shape}")


def cases_to_volumes(cases: Sequence[Case]) -> list[Volume]:
    """Group slice cases by ``meta['volume']`` and stack each group along the last axis.

    Args:
        cases: slices of one or more volumes (any order), each with ``meta['volume']`` and ``meta['slice']``.
    Returns:
        One :class:`Volume` per volume id, in order of first appearance; ``image`` ``(C, X, Y, Z)``,
        ``label`` ``(X, Y, Z)``.
    Raises:
        DataError: a case is not a slice of a volume, or a volume's slices are not a complete 0..Z-1 run.
    """
    groups: "OrderedDict[str, list[Case]]" = OrderedDict()
    for c in cases:
        vid = c.meta.get("volume")
        if vid is None:
            raise DataError(f"case {c.id} is not a slice of a volume (no meta['volume']): 3-D models need a "
                            "volume dataset such as hippocampus")
        groups.setdefault(str(vid), []).append(c)
    volumes = []
    for vid, items in groups.items():
        items = sorted(items, key=lambda c: int(c.meta["slice"]))
        idx = [int(c.meta["slice"]) for c in items]
        if idx != list(range(len(items))):
            raise DataError(f"volume {vid}: slices {idx[:5]}... are not a complete 0..Z-1 run (was it capped?)")
        meta = {k: v for k, v in items[0].meta.items() if k not in ("slice",)}
        volumes.append(Volume(id=vid, image=np.stack([c.image for c in items], axis=-1).astype(np.float32),
                              label=np.stack([c.label for c in items], axis=-1).astype(np.int64),
                              split=items[0].split, meta=meta))
    return volumes


def volume_batches(volumes: Sequence[Volume], cfg: Any, seed: int = 0, pos_fraction: float = 0.5
                   ) -> Iterator[dict[str, Any]]:
    """Endless batches of random 3-D patches.

    Args:
        volumes: :class:`Volume` objects (:func:`cases_to_volumes`).
        cfg: a :class:`~diffseg_core.config.DataConfig` (uses ``crop`` = patch side and ``batch_size`` = patches
            per batch).
        seed: seeds the choice of volumes and every random transform.
        pos_fraction: probability that a patch is centred on a foreground voxel (0.5 official).
    Yields:
        ``{'image': float32 (B, C, c, c, c) in [0, 1], 'label': int64 (B, c, c, c), 'text': [""] * B,
        'id': list[str] (B)}``.
    """
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandSpatialCropd, SpatialPadd
    from monai.transforms.utils import map_binary_to_indices

    volumes = list(volumes)
    if not volumes:
        raise DataError("volume_batches: no training volumes (is the train split empty?)")
    crop, bs = int(cfg.crop), int(cfg.batch_size)
    if crop < 1 or bs < 1:
        raise DataError(f"volume_batches: crop ({crop}) and batch_size ({bs}) must be positive")
    if not 0.0 <= pos_fraction <= 1.0:
        raise DataError(f"volume_batches: pos_fraction must be in [0, 1], got {pos_fraction}")
    keys = ["image", "label"]
    size = (crop, crop, crop)
    pad = SpatialPadd(keys, spatial_size=size, mode="constant")
    biased = Compose([RandCropByPosNegLabeld(keys, label_key="label", spatial_size=size, pos=pos_fraction,
                                             neg=1.0 - pos_fraction, num_samples=1, allow_smaller=True,
                                             fg_indices_key="fg_idx", bg_indices_key="bg_idx")])
    uniform = Compose([RandSpatialCropd(keys, roi_size=size, random_size=False)])
    biased.set_random_state(seed=seed % (2**32))
    uniform.set_random_state(seed=(seed + 1) % (2**32))
    rng = np.random.default_rng(seed)
    items, has_fg = [], []
    with plain_tensors():
        for v in volumes:
            item = pad({"image": v.image.astype(np.float32, copy=False), "label": v.label[None]})
            fg = bool(np.any(np.asarray(item["label"]) > 0))
            if fg:
                item["fg_idx"], item["bg_idx"] = map_binary_to_indices(np.asarray(item["label"]) > 0)
            items.append(item)
            has_fg.append(fg)
    while True:
        idx = rng.integers(0, len(volumes), size=bs)
        image, label = crop_batch(items, idx, lambda i: biased if has_fg[i] else uniform)
        yield {"image": image, "label": label, "text": [""] * bs, "id": [volumes[i].id for i in idx]}
