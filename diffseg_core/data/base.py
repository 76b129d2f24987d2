"""Data types shared by every loader.

Every loader returns a :class:`SegDataset`: a list of in-memory :class:`Case` objects (the datasets used
here are small) with the same conventions whatever the source:

* ``image``: ``(C, H, W)`` float32 in [0, 1] (C = 3 for H&E, 1 for X-ray and MRI);
* ``label``: ``(H, W)`` int64 class indices ``0..K-1`` (binary tasks: 0 background, 1 foreground);
* ``text``: the case's sentence (``""`` when the dataset has none);
* ``split``: ``"train"``, ``"val"``, ``"test"`` or ``None`` (no split column: a seeded split is made).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a method needs to know about the data to build its networks."""

    name: str
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    has_text: bool = False


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent. The message names the file."""


@dataclass
class Case:
    """One 2-D image with its label (a hippocampus slice carries its volume id and index in ``meta``)."""

    id: str
    image: np.ndarray
    label: np.ndarray
    text: str = ""
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise DataError(f"case {self.id}: image must be (C, H, W), got shape {self.image.shape}")
        if self.label.shape != self.image.shape[1:]:
            raise DataError(
                f"case {self.id}: image {self.image.shape[1:]} and label {self.label.shape} differ in size"
            )


@dataclass
class SegDataset:
    """A named collection of cases with its class names and provenance."""

    name: str
    cases: list[Case]
    class_names: tuple[str, ...]
    in_channels: int
    source: str  # "real" or "synthetic"
    root: Path | None = None
    description: str = ""
    has_text: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    def __len__(self) -> int:
        return len(self.cases)

    def split(self, name: str) -> list[Case]:
        """Cases of split ``name`` (``"all"`` returns every case)."""
        if name == "all":
            return list(self.cases)
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose train, val, test or all")
        return [c for c in self.cases if c.split == name]

    def ids(self, split: str = "all") -> list[str]:
        return [c.id for c in self.split(split)]

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, self.in_channels, self.num_classes, self.class_names, self.has_text)


def assign_seeded_split(ids: Iterable[str], seed: int = 0, fractions=(0.6, 0.2, 0.2),
                        groups: dict[str, str] | None = None) -> dict[str, str]:
    """Deterministic train/val/test assignment of ``ids`` (kept together by ``groups`` when given).

    Every split gets at least one group when there are three or more groups.
    """
    ids = list(ids)
    keys = sorted({(groups or {}).get(i, i) for i in ids})
    rng = np.random.default_rng(seed)
    order = [keys[k] for k in rng.permutation(len(keys))]
    n = len(order)
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
    n_train = n - n_val - n_test
    which = {g: ("train" if r < n_train else "val" if r < n_train + n_val else "test") for r, g in enumerate(order)}
    return {i: which[(groups or {}).get(i, i)] for i in ids}
