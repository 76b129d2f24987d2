"""Chest X-ray lung segmentation (binary lung fields; optionally the lesion masks of the shared subset).

Layouts recognised under ``root``:

1. **plain / shared**: ``images/*.png`` + ``masks/*.png`` (same names), optional ``lesion_masks/`` and
   ``cases.csv``. A ``split`` column is used when present; otherwise a seeded 60/20/20 split is made,
   **grouped by** ``patient_id`` when that column exists (no patient in two splits);
2. **Montgomery County** (NLM): ``CXR_png/`` + ``ManualMask/leftMask/`` + ``ManualMask/rightMask/`` (or
   ``leftMask/`` + ``rightMask/`` directly under ``root``); the two lung masks are united;
3. **Kaggle "Chest X-ray masks and labels"** (what cDAL uses): ``CXR_png/`` + ``masks/``, where Shenzhen
   masks are named ``<image>_mask.png`` and Montgomery masks share the image name. The Kaggle release has
   images without masks; those are skipped and counted in the description.

Images are read as grayscale (RGB files averaged over channels, as cDAL does) and resized to
``working_size`` squared (aspect ratio not kept, as in cDAL). Classes: background, lung (or lesion).
``split_protocol="cdal_fold0"`` reproduces cDAL's fold 0 on the Kaggle layout: Montgomery = test,
Shenzhen split 80/20 into train/val.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DataError, SegDataset, assign_seeded_split
from .io import (CaseRef, check_case_ids, check_same_size, list_images, materialise, pair_files, pair_loader,
                 read_cases_csv, read_image, read_mask, resize_pair, same_stem, seeded_train_val)


def detect_layout(root: Path) -> str:
    """``"plain"``, ``"montgomery"`` or ``"kaggle"``; :class:`DataError` when none matches."""
    root = Path(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        if (root / "CXR_png").is_dir():
            raise DataError(f"{root}: holds two chest X-ray layouts at once (images/ + masks/ and CXR_png/); keep one "
                            "of them in this folder (move the other elsewhere), so it is clear which images to use")
        return "plain"
    if (root / "CXR_png").is_dir():
        if (root / "ManualMask").is_dir() or (root / "leftMask").is_dir():
            return "montgomery"
        if (root / "masks").is_dir():
            return "kaggle"
    raise DataError(f"{root}: unknown chest X-ray layout; expected images/ + masks/, Montgomery CXR_png/ + "
                    "ManualMask/{leftMask,rightMask}/, or Kaggle CXR_png/ + masks/: point --data at the dataset "
                    "folder itself (see data/README.md)")


def _refs_plain(root: Path, working_size: int | None, target: str) -> tuple[list[CaseRef], str]:
    mask_dir = root / ("lesion_masks" if target == "lesion" else "masks")
    if target == "lesion" and not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: target='lesion' needs a lesion_masks/ folder next to images/")
    rows = read_cases_csv(root / "cases.csv")
    pairs = pair_files(list_images(root / "images"), mask_dir, same_stem((".png",)))
    check_case_ids(rows, [p.stem for p, _ in pairs], root / "cases.csv", root / "images")
    refs = []
    for img_path, mask_path in pairs:
        row = rows.get(img_path.stem, {})
        split = row.get("split") or None
        if split is not None and split not in ("train", "val", "test"):
            raise DataError(f"{root / 'cases.csv'}: case {img_path.stem} has split {split!r}; use train, val or test")
        meta = {"image_path": str(img_path), "mask_path": str(mask_path)}
        if row.get("patient_id"):
            meta["patient_id"] = row["patient_id"]
        refs.append(CaseRef(img_path.stem, pair_loader(img_path, mask_path, 1, working_size), split, "", meta))
    return refs, "images/ + masks/ layout"


def _montgomery_loader(img_path: Path, left: Path, right: Path, working_size: int | None):
    def load():
        image = read_image(img_path, 1)
        lm, rm = read_mask(left), read_mask(right)
        check_same_size(image, lm, img_path, left)
        check_same_size(image, rm, img_path, right)
        orig = (int(image.shape[1]), int(image.shape[2]))
        label = np.maximum(lm, rm)
        if working_size is not None:
            image, label = resize_pair(image, label, working_size)
        return image, label, {"orig_size": orig}
    return load


def _refs_montgomery(root: Path, working_size: int | None) -> tuple[list[CaseRef], str]:
    base = root / "ManualMask" if (root / "ManualMask").is_dir() else root
    images = list_images(root / "CXR_png", "CXR_png")
    left = dict(pair_files(images, base / "leftMask", lambda p: [p.name], what="left-lung mask"))
    right = dict(pair_files(images, base / "rightMask", lambda p: [p.name], what="right-lung mask"))
    refs = [CaseRef(p.stem, _montgomery_loader(p, left[p], right[p], working_size), None, "",
                    {"image_path": str(p), "source_set": "montgomery"}) for p in images]
    return refs, "Montgomery County (left + right masks united)"


def _refs_kaggle(root: Path, working_size: int | None) -> tuple[list[CaseRef], str]:
    masks = {p.name for p in (root / "masks").iterdir() if p.is_file()}
    refs, skipped = [], 0
    for img_path in list_images(root / "CXR_png", "CXR_png"):
        name = next((n for n in (f"{img_path.stem}_mask.png", img_path.name, f"{img_path.stem}.png") if n in masks), None)
        if name is None:
            skipped += 1
            continue
        source = "montgomery" if img_path.name.upper().startswith("MCU") else "shenzhen"
        refs.append(CaseRef(img_path.stem, pair_loader(img_path, root / "masks" / name, 1, working_size), None, "",
                            {"image_path": str(img_path), "mask_path": str(root / "masks" / name),
                             "source_set": source}))
    if not refs:
        raise DataError(f"{root}: no CXR_png/ image has a mask in masks/ (<name>_mask.png or <name>.png)")
    return refs, f"Kaggle chest X-ray masks and labels ({skipped} images without mask skipped)"


def load_cxr(root: Path, working_size: int | None = 256, seed: int = 0, target: str = "lung",
             split_protocol: str = "seeded", max_train: int | None = None, max_eval: int | None = None) -> SegDataset:
    """Load a chest X-ray lung dataset from any recognised layout (see the module docstring).

    Args:
        root: the dataset folder.
        working_size: resize to ``working_size`` squared (``None`` keeps native sizes).
        seed: seeds the split when the data carry none, and the caps.
        target: ``"lung"`` (default) or ``"lesion"`` (``lesion_masks/``, shared layout only).
        split_protocol: ``"seeded"`` (default) or ``"cdal_fold0"`` (Kaggle layout: Montgomery = test).
        max_train, max_eval: keep at most this many train / val and test cases (decided before reading).
    Returns:
        :class:`SegDataset` with ``image`` ``(1, s, s)`` float32 in [0, 1] and ``label`` ``(s, s)`` in {0, 1}.
    """
    root = Path(root)
    if target not in ("lung", "lesion"):
        raise DataError(f"load_cxr: target must be 'lung' or 'lesion', got {target!r}")
    if split_protocol not in ("seeded", "cdal_fold0"):
        raise DataError(f"load_cxr: split_protocol must be 'seeded' or 'cdal_fold0', got {split_protocol!r}")
    layout = detect_layout(root)
    if target == "lesion" and layout != "plain":
        raise DataError(f"{root}: target='lesion' is only available for the images/ + masks/ + lesion_masks/ layout")
    if layout == "plain":
        refs, what = _refs_plain(root, working_size, target)
    elif layout == "montgomery":
        refs, what = _refs_montgomery(root, working_size)
    else:
        refs, what = _refs_kaggle(root, working_size)

    pending = [r for r in refs if r.split is None]
    if pending:
        if split_protocol == "cdal_fold0":
            if layout != "kaggle":
                raise DataError(f"{root}: split_protocol='cdal_fold0' needs the Kaggle CXR_png/ + masks/ layout")
            for r in pending:
                if r.meta["source_set"] == "montgomery":
                    r.split = "test"
            split = seeded_train_val([r.id for r in pending if r.split is None], seed, 0.2)
            what += ", cDAL fold 0 (Montgomery = test)"
        else:
            groups = {r.id: str(r.meta["patient_id"]) for r in pending if "patient_id" in r.meta}
            split = assign_seeded_split([r.id for r in pending], seed, groups=groups or None)
            if groups:
                what += ", seeded split grouped by patient_id"
        for r in pending:
            r.split = r.split or split[r.id]
    cases = materialise(refs, max_train, max_eval, seed)
    names = ("background", "lesion") if target == "lesion" else ("background", "lung")
    return SegDataset(name="cxr", cases=cases, class_names=names, in_channels=1, source="real", root=root,
                      has_text=False, description=f"chest X-ray {target} masks, {what}")
