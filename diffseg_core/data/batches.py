"""Endless random-crop training batches from in-memory cases, with MONAI dictionary transforms.

Per sample (``cfg.crop`` = c):

1. ``SpatialPadd`` to at least c x c (zeros, so images smaller than the crop still work);
2. a c x c crop: ``RandSpatialCropd`` (uniform position), or, for **sparse labels**,
   ``RandCropByPosNegLabeld`` centred on a foreground pixel half of the time (cDAL's 50/50 positive /
   negative sampling for the hippocampus, book/decisions.md). Sparse mode is on when the mean foreground
   fraction of the cases is below 10 % and the crop is smaller than the images (``fg_bias=None``), or
   forced with ``fg_bias=True/False``. Cases without any foreground always get a uniform crop;
3. the augmentation policy ``cfg.augment`` (names and one-line descriptions in
   :data:`diffseg_core.config.AUGMENT_POLICIES`; ``"official"`` is resolved per dataset by
   :func:`diffseg_core.config.resolve_augment`), applied to the crop as the official pipelines do (they crop,
   then augment):

   * ``"none"``: nothing (the official Hippocampus pipeline: crops only);
   * ``"basic"``: ``RandFlipd`` on each axis (p 0.5), ``RandRotate90d`` (p 0.5), and for RGB a mild intensity
     jitter (``RandScaleIntensityd`` +-10 %, ``RandShiftIntensityd`` +-0.05). The generic default before
     per-dataset policies; the synthetic stand-ins keep it;
   * ``"affine"``: cDAL's CXR pipeline (``transforms.RandomAffine(degrees=22, scale=(0.75, 1.25))``, flips
     commented out in the official code: the heart makes the two lungs different): every sample is rotated by
     an angle uniform in +-22 degrees and zoomed by one factor uniform in 0.75-1.25 about its centre, image
     bilinear, label nearest, zeros outside (:class:`RandIsoAffined`);
   * ``"flip-affine-jitter"``: the SegDiff/cDAL MoNuSeg pipeline: horizontal and vertical flips (p 0.5 each),
     the same affine, then torchvision's ``ColorJitter(0.4, 0.4, 0.4, 0.1)``: brightness (``RandScaleIntensityd``,
     x U(0.6, 1.4)), contrast (``RandScaleIntensityFixedMeand``, deviations from the image mean x U(0.6, 1.4)),
     saturation (:class:`RandSaturationd`) and hue (:class:`RandHueRotated`), in random order (MONAI
     ``RandomOrder``); saturation and hue act on RGB only.

   Image and label always go through the same spatial transform (one random draw per sample); labels are
   resampled with nearest neighbour, so they stay class indices.

Cases are drawn uniformly with replacement by a seeded generator and every random transform is seeded
from the same seed, so the stream of batches is reproducible. Nothing is read from disk: the cases are
already in memory (``cfg.num_workers`` is not needed and is ignored). While a batch is being built, MONAI's
meta-data tracking is switched off (and restored right after): the transforms then return plain tensors
and run about 4x faster, which matters for the hippocampus's many small crops. Foreground / background
pixel indices for the biased crops are computed once per case, not per draw.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (Affine, Compose, MapTransform, RandCropByPosNegLabeld, RandFlipd, RandomizableTransform,
                              RandomOrder, RandRotate90d, RandScaleIntensityd, RandScaleIntensityFixedMeand,
                              RandShiftIntensityd, RandSpatialCropd, SpatialPadd)
from monai.transforms.utils import map_binary_to_indices

from ..config import AUGMENT_POLICIES, resolve_augment
from .base import Case, DataError

SPARSE_FOREGROUND = 0.10  # mean foreground fraction below which crops are biased towards foreground


@contextmanager
def plain_tensors() -> Iterator[None]:
    """Switch MONAI meta-data tracking off for the duration of the block, then restore the previous setting."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def crop_batch(items: Sequence[dict[str, Any]], idx: Sequence[int],
               transform_for: Callable[[int], Callable[[dict[str, Any]], Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of random crops: ``transform_for(i)`` applied to a copy of ``items[i]`` for each ``i`` in ``idx``
    (in order, so the random stream is the caller's). Returns ``image`` (B, C, *crop) float in [0, 1] and
    ``label`` (B, *crop) int64, both plain tensors. Shared by 2-D crops and 3-D volume patches."""
    images, labels = [], []
    with plain_tensors():
        for i in idx:
            out = transform_for(i)(dict(items[i]))
            if isinstance(out, list):  # RandCropByPosNegLabeld returns num_samples dicts
                out = out[0]
            images.append(torch.as_tensor(out["image"]))
            labels.append(torch.as_tensor(out["label"]))
    image = torch.stack(images).float().clamp_(0, 1)
    label = torch.stack(labels)[:, 0].round().long()
    return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)


class RandIsoAffined(RandomizableTransform, MapTransform):
    """torchvision's ``RandomAffine(degrees, scale=(lo, hi))`` on an image/label pair, with MONAI's ``Affine``.

    One angle ~ U(-degrees, degrees) and **one** zoom factor ~ U(lo, hi) per sample, about the centre, zeros
    outside (``fill=0``), the same draw for every key. ``monai.transforms.RandAffined`` would draw the scale
    of each axis independently (anisotropic), and its scale multiplies the sampling grid (scale s = zoom
    1/s), so the grid is given 1/zoom here. ``modes``: interpolation per key (image bilinear, label nearest).
    Input ``(C, H, W)`` per key; output the same shape.
    """

    def __init__(self, keys: Sequence[str], degrees: float = 22.0, zoom: tuple[float, float] = (0.75, 1.25),
                 modes: Sequence[str] = ("bilinear", "nearest"), prob: float = 1.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.degrees, self.zoom, self.modes = float(degrees), (float(zoom[0]), float(zoom[1])), tuple(modes)
        self.angle, self.factor = 0.0, 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.angle = math.radians(self.R.uniform(-self.degrees, self.degrees))
        self.factor = self.R.uniform(*self.zoom)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key, mode in zip(self.key_iterator(d), self.modes):
            affine = Affine(rotate_params=(self.angle,), scale_params=(1 / self.factor,) * 2, mode=mode,
                            padding_mode="zeros", image_only=True)
            d[key] = affine(torch.as_tensor(d[key], dtype=torch.float32))
        return d


class RandSaturationd(RandomizableTransform, MapTransform):
    """torchvision's ``adjust_saturation`` with a factor f ~ U(1 - s, 1 + s): ``f * rgb + (1 - f) * grey``, clipped
    to [0, 1], grey = 0.299 R + 0.587 G + 0.114 B. RGB ``(3, H, W)`` in [0, 1]; other channel counts pass through."""

    def __init__(self, keys: Sequence[str], strength: float = 0.4, prob: float = 1.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.strength, self.f = float(strength), 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.f = self.R.uniform(1 - self.strength, 1 + self.strength)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key], dtype=torch.float32)
            if self._do_transform and x.shape[0] == 3:
                grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
                x = (self.f * x + (1 - self.f) * grey).clamp(0, 1)
            d[key] = x
        return d


class RandHueRotated(RandomizableTransform, MapTransform):
    """A hue shift by h ~ U(-hue, hue) of the colour circle (torchvision ``ColorJitter(hue=0.1)``: +-36 degrees).

    Implemented as a rotation of the RGB vector by 2*pi*h about the grey axis (1, 1, 1) / sqrt(3) (Rodrigues'
    formula), which keeps grey pixels grey and approximates torchvision's shift of the HSV hue. RGB
    ``(3, H, W)`` in [0, 1], clipped; other channel counts pass through.
    """

    def __init__(self, keys: Sequence[str], hue: float = 0.1, prob: float = 1.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.hue, self.h = float(hue), 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.h = self.R.uniform(-self.hue, self.hue)

    @staticmethod
    def rotation(h: float) -> torch.Tensor:
        """The 3 x 3 matrix rotating RGB by ``2*pi*h`` about the grey axis."""
        theta = 2 * math.pi * h
        k = torch.full((3,), 1 / math.sqrt(3))
        cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
        return math.cos(theta) * torch.eye(3) + math.sin(theta) * cross + (1 - math.cos(theta)) * torch.outer(k, k)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key], dtype=torch.float32)
            if self._do_transform and x.shape[0] == 3:
                x = torch.einsum("ij,jhw->ihw", self.rotation(self.h), x).clamp(0, 1)
            d[key] = x
        return d


def augmentation(policy: str, channels: int) -> list:
    """The MONAI transforms of augmentation ``policy`` (a key of :data:`~diffseg_core.config.AUGMENT_POLICIES`)
    for ``{'image': (C, h, w), 'label': (1, h, w)}`` samples (see the module docstring)."""
    keys = ["image", "label"]
    flips = [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1)]
    affine = [RandIsoAffined(keys, degrees=22.0, zoom=(0.75, 1.25))]
    if policy == "none":
        return []
    if policy == "basic":
        ts: list = flips + [RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1))]
        if channels == 3:
            ts += [RandScaleIntensityd("image", factors=0.1, prob=0.5, channel_wise=True),
                   RandShiftIntensityd("image", offsets=0.05, prob=0.5)]
        return ts
    if policy == "affine":
        return affine
    if policy == "flip-affine-jitter":
        jitter = RandomOrder([RandScaleIntensityd("image", factors=0.4, prob=1.0),              # brightness
                              RandScaleIntensityFixedMeand("image", factors=0.4, prob=1.0),     # contrast
                              RandSaturationd("image", strength=0.4), RandHueRotated("image", hue=0.1)])
        return flips + affine + [jitter]
    raise DataError(f"unknown augmentation policy {policy!r}; choose one of {', '.join(AUGMENT_POLICIES)} "
                    "(or 'official', resolved per dataset by diffseg_core.config.resolve_augment)")


def build_transforms(crop: int, channels: int, augment: str | bool, fg_bias: bool) -> tuple[Compose, Compose]:
    """The two per-sample pipelines: uniform crop, and foreground-biased crop (used for sparse labels).

    Both take ``{'image': (C, H, W), 'label': (1, H, W)}`` numpy arrays and return ``(C, crop, crop)``
    and ``(1, crop, crop)`` tensors. ``augment`` is a concrete policy name (``True``/``False``: "basic"/"none").
    """
    keys = ["image", "label"]
    policy = ("basic" if augment else "none") if isinstance(augment, bool) else augment
    pad = SpatialPadd(keys, spatial_size=(crop, crop), mode="constant")
    uniform = Compose([pad, RandSpatialCropd(keys, roi_size=(crop, crop), random_size=False)]
                      + augmentation(policy, channels))
    biased = Compose([pad, RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(crop, crop), pos=1, neg=1,
                                                  num_samples=1, allow_smaller=True, fg_indices_key="fg_idx",
                                                  bg_indices_key="bg_idx")]
                     + augmentation(policy, channels))
    return uniform, biased


def train_batches(cases: Sequence[Case], cfg: Any, seed: int = 0, fg_bias: bool | None = None,
                  dataset: str | None = None) -> Iterator[dict[str, Any]]:
    """Endless batches of random crops.

    Args:
        cases: in-memory cases (``image`` ``(C, H, W)`` in [0, 1], ``label`` ``(H, W)`` int64).
        cfg: a :class:`~diffseg_core.config.DataConfig` (uses ``crop``, ``batch_size``, ``augment``).
        seed: seeds case sampling and every random transform.
        fg_bias: foreground-biased crops (``None``: automatic for sparse labels, see the module docstring).
        dataset: resolves ``cfg.augment == "official"`` (a run config's data settings are already resolved).
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
    policy = cfg.augment
    if policy == "official":
        if dataset is None:
            raise DataError("train_batches: augment='official' depends on the dataset; pass dataset=... or build the "
                            "data settings with diffseg_core.config.data_config(dataset, preset), which resolves it")
        policy = resolve_augment(policy, dataset)
    has_fg = np.array([bool(np.any(c.label > 0)) for c in cases])
    if fg_bias is None:
        fg_frac = float(np.mean([np.mean(c.label > 0) for c in cases]))
        smallest = min(min(c.label.shape) for c in cases)
        fg_bias = fg_frac < SPARSE_FOREGROUND and crop < smallest
    uniform, biased = build_transforms(crop, c_in, policy, bool(fg_bias))
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
        image, label = crop_batch(items, idx, lambda i: biased if fg_bias and has_fg[i] else uniform)
        yield {"image": image, "label": label, "text": [cases[i].text for i in idx], "id": [cases[i].id for i in idx]}
