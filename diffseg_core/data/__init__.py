"""Datasets: real loaders (MoNuSeg, chest X-ray lungs, MSD hippocampus, QaTa-COV19), procedural stand-ins,
and training batches.

Entry points:

* :func:`find_dataset_root` finds a dataset folder under a data root (or accepts the folder itself);
* :func:`load_dataset` returns an in-memory :class:`~diffseg_core.data.base.SegDataset` with images
  resized to ``cfg.working_size`` and the smoke-preset case caps applied;
* :func:`train_batches` yields endless random-crop batches (MONAI dictionary transforms).

The expected folder layouts, download steps and licences are in ``data/README.md``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import DATASETS, data_config
from .base import SPLITS, Case, DataError, DatasetInfo, SegDataset, assign_seeded_split
from .batches import train_batches
from .io import cap_cases, resize_pair

__all__ = ["Case", "DataError", "DatasetInfo", "SegDataset", "SPLITS", "assign_seeded_split", "find_dataset_root",
           "load_dataset", "train_batches", "resize_pair", "ALIASES", "dataset_kinds", "uncapped"]

# Folder names accepted for each dataset (compared case-insensitively).
ALIASES: dict[str, tuple[str, ...]] = {
    "monuseg": ("monuseg", "MoNuSeg", "MoNuSeg2018", "monuseg_2018"),
    "cxr": ("cxr", "cxr_lung", "lung", "Montgomery", "MontgomerySet", "Lung Segmentation", "chest_xray_masks"),
    "hippocampus": ("hippocampus", "Task04_Hippocampus"),
    "qata": ("qata", "QaTa-COV19", "QaTa-COV19-v1", "QaTa_COV19", "qata_cov19"),
}


def _dirs(path: Path) -> set[str]:
    try:
        return {p.name for p in path.iterdir() if p.is_dir()}
    except OSError:
        return set()


def _looks_like(name: str, path: Path) -> bool:
    """Whether ``path`` itself holds a known layout of dataset ``name`` (see data/README.md)."""
    d = _dirs(path)
    files = {p.name for p in path.iterdir() if p.is_file()} if path.is_dir() else set()
    lvit = "Train_Folder" in d and (path / "Train_Folder" / "labelcol").is_dir()
    qata_masks = lvit and any(p.name.startswith("mask_") for p in (path / "Train_Folder" / "labelcol").iterdir())
    if name == "monuseg":
        return ("Tissue Images" in d or any("Tissue Images" in _dirs(path / c) for c in d)
                or (lvit and not qata_masks)
                or ({"images", "masks"} <= d and ("text.csv" in files or "annotations" in d)))
    if name == "cxr":
        return bool({"CXR_png", "ManualMask", "leftMask"} & d) or ({"images", "masks"} <= d and "text.csv" not in files
                                                                   and "annotations" not in d)
    if name == "hippocampus":
        return "imagesTr" in d or ({"images", "labels"} <= d and any(
            p.name.endswith((".nii", ".nii.gz")) for p in (path / "images").iterdir()))
    if name == "qata":
        return qata_masks
    return False


def dataset_kinds(path: str | Path) -> list[str]:
    """The datasets whose layout folder ``path`` holds (e.g. ``["hippocampus"]``); ``[]`` when none or not a folder.

    Used to say *what* a folder is when it is not the dataset asked for (a MoNuSeg run pointed at volumes).
    A flat ``images/`` + ``masks/`` folder matches both ``monuseg`` and ``cxr`` unless text or XML says MoNuSeg.
    """
    path = Path(path)
    if not path.is_dir():
        return []
    return [name for name in ALIASES if _looks_like(name, path)]


def uncapped(cfg: Any) -> Any:
    """``cfg`` (a :class:`~diffseg_core.config.DataConfig`) without the case caps of training presets.

    Caps (``max_train_cases``, ``max_eval_cases``, ``hippocampus_max_volumes``) keep training and in-training
    validation small; scoring a folder uses every image of the requested split.
    """
    from dataclasses import replace

    return replace(cfg, max_train_cases=None, max_eval_cases=None, hippocampus_max_volumes=None)


def find_dataset_root(name: str, data_root: str | Path | None) -> Path | None:
    """The folder of dataset ``name`` under ``data_root``, or ``None`` when it is not there.

    ``data_root`` may be the dataset folder itself (its name is an alias, or it holds a known layout) or
    a folder containing it under one of :data:`ALIASES` (``monuseg``/``MoNuSeg``, ``cxr``/``cxr_lung``/
    ``lung``, ``hippocampus``/``Task04_Hippocampus``, ``qata``/``QaTa-COV19``). ``None`` or ``""`` gives
    ``None`` (the caller then falls back to synthetic data).
    """
    if name == "synthetic" or not data_root:
        return None
    if name not in ALIASES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        return None
    aliases = {a.lower() for a in ALIASES[name]}
    if root.name.lower() in aliases or _looks_like(name, root):
        return root
    children = sorted(p for p in root.iterdir() if p.is_dir())
    for child in children:
        if child.name.lower() in aliases:
            return child
    return None


def load_dataset(name: str, root: str | Path | None = None, cfg: Any = None, seed: int = 0,
                 family: str | None = None, **options: Any) -> SegDataset:
    """Load a dataset into memory.

    Args:
        name: ``monuseg``, ``cxr``, ``hippocampus``, ``qata`` or ``synthetic``.
        root: the dataset folder, or a data root holding it (see :func:`find_dataset_root`); ``None`` looks
            under ``$DIFFSEG_DATA``; ignored for ``synthetic``.
        cfg: a :class:`~diffseg_core.config.DataConfig` (default: the dataset's ``cpu`` preset). Images are
            resized to ``cfg.working_size`` (bilinear, labels nearest; ``None`` keeps native sizes) and
            cases capped by ``cfg.max_train_cases`` (train) / ``cfg.max_eval_cases`` (val and test each),
            deterministically given ``seed``. Synthetic data uses ``cfg.synthetic_cases``/``synthetic_size``.
        seed: seeds the split (where the dataset has none), the caps and the synthetic generator.
        family: synthetic family ``nuclei`` (default), ``lung`` or ``hippocampus``.
        **options: loader-specific, e.g. ``target="lesion"`` for ``cxr``.
    Returns:
        :class:`SegDataset` with cases ``image`` ``(C, H, W)`` float32 in [0, 1], ``label`` ``(H, W)`` int64.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    cfg = cfg if cfg is not None else data_config(name, "cpu")
    size = cfg.working_size
    if name == "synthetic":
        from .synthetic import synthetic_dataset

        ds = synthetic_dataset(family or "nuclei", n_cases=cfg.synthetic_cases, size=cfg.synthetic_size, seed=seed,
                               working_size=size)
    else:
        if root is None or str(root) == "":
            env = os.environ.get("DIFFSEG_DATA", "")
            found = find_dataset_root(name, env) if env else None
            if found is None:
                raise DataError(f"load_dataset({name!r}): no root given and none found under $DIFFSEG_DATA={env!r}; "
                                "pass the dataset folder (see data/README.md) or use 'synthetic'")
            root = found
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        if not any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise DataError(f"{root}: the folder is empty; copy the {name} dataset into it (layouts and downloads in "
                            "data/README.md), or point --data at the folder that holds it")
        root = find_dataset_root(name, root) or root  # a data root holding the dataset works too
        if name == "monuseg":
            from .monuseg import load_monuseg

            ds = load_monuseg(root, working_size=size, seed=seed, max_train=cfg.max_train_cases,
                            max_eval=cfg.max_eval_cases, **options)
        elif name == "cxr":
            from .cxr import load_cxr

            ds = load_cxr(root, working_size=size, seed=seed, max_train=cfg.max_train_cases,
                            max_eval=cfg.max_eval_cases, **options)
        elif name == "qata":
            from .qata import load_qata

            ds = load_qata(root, working_size=size, seed=seed, max_train=cfg.max_train_cases,
                            max_eval=cfg.max_eval_cases, **options)
        else:
            from .hippocampus import load_hippocampus

            ds = load_hippocampus(root, max_volumes=cfg.hippocampus_max_volumes, seed=seed, **options)
            if size is not None:
                for c in ds.cases:
                    c.image, c.label = resize_pair(c.image, c.label, size)
    ds.cases = cap_cases(ds.cases, cfg.max_train_cases, cfg.max_eval_cases, seed=seed)
    if not ds.cases:
        raise DataError(f"{ds.root or name}: no case left after loading")
    return ds
