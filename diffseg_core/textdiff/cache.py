"""Features of fixed images, computed once and kept (bounded), keyed by case id or image content."""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Callable, Sequence

import torch

__all__ = ["image_key", "FeatureCache"]


def image_key(image: torch.Tensor) -> str:
    """A content hash of one image tensor (for caching features of images that have no id)."""
    a = image.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(str(tuple(a.shape)).encode() + a.numpy().tobytes()).hexdigest()


class FeatureCache:
    """Features of fixed images computed once and kept, keyed by case id (or :func:`image_key`).

    TextDiff's code re-extracts features of every augmented image in every epoch; on a CPU that is out of
    reach (book/decisions.md), so we extract each image once. ``max_items`` and ``max_bytes`` bound the cache
    (least recently used entries are dropped, the newest is always kept); ``None`` means no bound. One
    256-px image costs ~42 MB at the ``cpu`` preset and ~280 MB with the ADM-shaped ``paper`` backbone.
    Entries are lists of ``(C_b, h_b, w_b)`` tensors.
    """

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0  # time spent extracting

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        return list(self._items)

    def clear(self) -> None:
        """Drop every entry (the features were computed with a backbone that is no longer used)."""
        self._items.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for v in self._items.values() for t in v)

    def put(self, key: str, feats: Sequence[torch.Tensor]) -> None:
        self._items[key] = [f.detach() for f in feats]
        self._items.move_to_end(key)
        while len(self._items) > 1 and (
                (self.max_items is not None and len(self._items) > self.max_items)
                or (self.max_bytes is not None and self.nbytes() > self.max_bytes)):
            self._items.popitem(last=False)

    def get(self, key: str) -> list[torch.Tensor]:
        if key not in self._items:
            raise KeyError(f"FeatureCache: no features for {key!r} (cached: {len(self._items)} items)")
        self._items.move_to_end(key)
        return self._items[key]

    def batch(self, keys: Sequence[str]) -> list[torch.Tensor]:
        """Stack cached entries: one ``(B, C_b, h_b, w_b)`` tensor per block."""
        entries = [self.get(k) for k in keys]
        return [torch.stack([e[i] for e in entries]) for i in range(len(entries[0]))]

    def features(self, keys: Sequence[str], images: torch.Tensor,
                 extract: Callable[[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
        """Features for ``images`` ``(B, C, H, W)`` named ``keys``; only the missing ones are extracted."""
        if len(keys) != images.shape[0]:
            raise ValueError(f"FeatureCache.features: {len(keys)} keys for {images.shape[0]} images")
        missing = [i for i, k in enumerate(keys) if k not in self._items]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            t0 = time.perf_counter()
            feats = extract(images[missing])
            self.seconds += time.perf_counter() - t0
            for j, i in enumerate(missing):
                self.put(keys[i], [f[j].clone() for f in feats])
        return self.batch(keys)
