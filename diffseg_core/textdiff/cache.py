"""Features of fixed images, computed once and kept (bounded in memory, streamed from disk beyond the bound),
keyed by case id or image content."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = ["image_key", "FeatureCache"]


def image_key(image: torch.Tensor) -> str:
    """A content hash of one image tensor (for caching features of images that have no id)."""
    a = image.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(str(tuple(a.shape)).encode() + a.numpy().tobytes()).hexdigest()


def _entry_bytes(entry: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry)


class FeatureCache:
    """Features of fixed images computed once and kept, keyed by case id (or :func:`image_key`).

    TextDiff's code re-extracts features of every augmented image in every epoch; on a CPU that is out of
    reach (book/decisions.md), so we extract each image once. ``max_items`` and ``max_bytes`` bound the
    features held **in memory** (least recently used entries leave first, the newest is always kept); ``None``
    means no bound. One 256-px image costs ~42 MB at the ``cpu`` preset and ~280 MB with the ADM-shaped
    ``paper`` backbone, so the features of a large training set do not fit: with ``spill=True`` an entry that
    leaves memory is written to ``spill_dir`` (default: a temporary folder removed with the cache) and read
    back when asked for (streamed, one entry at a time); without it, it is dropped and re-extracted when
    needed. Entries are lists of ``(C_b, h_b, w_b)`` tensors (read back from disk onto the CPU).
    """

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None, spill: bool = False,
                 spill_dir: str | Path | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self.spill = spill or spill_dir is not None
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._own_dir: tempfile.TemporaryDirectory | None = None
        self._on_disk: dict[str, Path] = {}
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0      # time spent extracting
        self.disk_reads = 0

    def __del__(self) -> None:
        if getattr(self, "_own_dir", None) is not None:
            shutil.rmtree(self._own_dir.name, ignore_errors=True)

    def __contains__(self, key: str) -> bool:
        return key in self._items or key in self._on_disk

    def __len__(self) -> int:
        return len(self._items) + len(self._on_disk)

    def keys(self) -> list[str]:
        """Keys held in memory, least recently used first (entries on disk: :meth:`disk_keys`)."""
        return list(self._items)

    def disk_keys(self) -> list[str]:
        return list(self._on_disk)

    def clear(self) -> None:
        """Drop every entry, in memory and on disk (the features were computed with a backbone that is no
        longer used)."""
        self._items.clear()
        self._bytes = 0
        for path in self._on_disk.values():
            path.unlink(missing_ok=True)
        self._on_disk.clear()

    def nbytes(self) -> int:
        """Bytes of the features held in memory."""
        return self._bytes

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._on_disk.values() if p.is_file())

    def stats(self) -> dict[str, float]:
        """Items and MiB in memory and on disk, hits, misses, disk reads, extraction seconds."""
        return {"items_in_memory": len(self._items), "mb_in_memory": self._bytes / 2**20,
                "items_on_disk": len(self._on_disk), "mb_on_disk": self.disk_bytes() / 2**20, "hits": self.hits,
                "misses": self.misses, "disk_reads": self.disk_reads, "extract_seconds": self.seconds}

    def _dir(self) -> Path:
        if self._spill_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="diffseg-features-")
            self._spill_dir = Path(self._own_dir.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

    def _evict(self) -> None:
        while len(self._items) > 1 and (
                (self.max_items is not None and len(self._items) > self.max_items)
                or (self.max_bytes is not None and self._bytes > self.max_bytes)):
            key, entry = self._items.popitem(last=False)
            self._bytes -= _entry_bytes(entry)
            if self.spill and key not in self._on_disk:
                path = self._dir() / (hashlib.sha1(key.encode()).hexdigest() + ".pt")
                tmp = path.with_suffix(".tmp")
                torch.save([t.contiguous() for t in entry], tmp)
                tmp.replace(path)
                self._on_disk[key] = path

    def put(self, key: str, feats: Sequence[torch.Tensor]) -> None:
        if key in self._items:
            self._bytes -= _entry_bytes(self._items[key])
        entry = [f.detach() for f in feats]
        self._items[key] = entry
        self._items.move_to_end(key)
        self._bytes += _entry_bytes(entry)
        self._evict()

    def get(self, key: str) -> list[torch.Tensor]:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if key in self._on_disk:                      # streamed back; the file stays for the next eviction
            entry = torch.load(self._on_disk[key], map_location="cpu", weights_only=True)
            self.disk_reads += 1
            self._items[key] = entry
            self._bytes += _entry_bytes(entry)
            self._evict()
            return entry
        raise KeyError(f"FeatureCache: no features for {key!r} (cached: {len(self)} items)")

    def batch(self, keys: Sequence[str]) -> list[torch.Tensor]:
        """Stack cached entries: one ``(B, C_b, h_b, w_b)`` tensor per block."""
        entries = [self.get(k) for k in keys]
        return [torch.stack([e[i] for e in entries]) for i in range(len(entries[0]))]

    def features(self, keys: Sequence[str], images: torch.Tensor,
                 extract: Callable[[torch.Tensor], list[torch.Tensor]], batch_images: int | None = None,
                 keep: bool = True) -> list[torch.Tensor]:
        """Features for ``images`` ``(B, C, H, W)`` named ``keys``; only the missing ones are extracted, in
        passes of ``batch_images`` images (None: all at once). ``keep=False`` extracts what is missing into
        the cache and returns nothing (filling a cache for a dataset larger than memory)."""
        if len(keys) != images.shape[0]:
            raise ValueError(f"FeatureCache.features: {len(keys)} keys for {images.shape[0]} images")
        missing = [i for i, k in enumerate(keys) if k not in self]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[str, list[torch.Tensor]] = {}
        step = batch_images or max(1, len(missing))
        for s in range(0, len(missing), step):
            idx = missing[s:s + step]
            t0 = time.perf_counter()
            feats = extract(images[idx])
            self.seconds += time.perf_counter() - t0
            for j, i in enumerate(idx):
                entry = [f[j].detach().clone() for f in feats]
                self.put(keys[i], entry)
                if keep:
                    fresh[keys[i]] = entry
        if not keep:
            return []
        entries = [fresh[k] if k in fresh else self.get(k) for k in keys]
        return [torch.stack([e[i] for e in entries]) for i in range(len(entries[0]))]
