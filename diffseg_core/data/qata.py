"""QaTa-COV19 (COVID-19 infection masks on chest X-rays) in the LViT layout, with its text annotations.

Expected under ``root`` (LViT's release, what TextDiff reads; no data ship with this project, see
``data/README.md`` for the manual download)::

    Train_Folder/img/<name>.png          chest X-ray
    Train_Folder/labelcol/mask_<name>.png  infection mask ({0, 255})
    Val_Folder/...                       optional (LViT carves it from the training set)
    Test_Folder/img, Test_Folder/labelcol
    Train_text.xlsx, Val_text.xlsx, Test_text.xlsx   in root or in each folder; columns Image, Description;
                                         key = the **mask** file name (``mask_<name>.png``)

Without ``Val_Folder`` a seeded 20 % of the training images becomes the validation split. Images are read
as grayscale (1 channel) and resized to ``working_size`` squared. Classes: background, infection.
"""
from __future__ import annotations

from pathlib import Path

from .base import DataError, SegDataset
from .io import (CaseRef, check_texts, list_images, materialise, pair_files, pair_loader, read_text_table,
                 seeded_train_val)

CLASS_NAMES: tuple[str, ...] = ("background", "infection")
FOLDERS: dict[str, str] = {"train": "Train", "val": "Val", "test": "Test"}


def mask_name(image: Path) -> list[str]:
    """QaTa's mask naming: ``mask_`` + the image file name (PNG)."""
    return [f"mask_{image.name}", f"mask_{image.stem}.png"]


def load_qata(root: Path, working_size: int | None = 256, seed: int = 0, max_train: int | None = None,
              max_eval: int | None = None) -> SegDataset:
    """Load QaTa-COV19 from the LViT layout (``max_train``/``max_eval`` cap the cases before reading).

    Returns:
        :class:`SegDataset` with ``image`` ``(1, s, s)`` float32 in [0, 1], ``label`` ``(s, s)`` in {0, 1} and
        the LViT sentence as ``text`` (``""`` for images without a row).
    """
    root = Path(root)
    if not (root / "Train_Folder").is_dir() and not (root / "Test_Folder").is_dir():
        raise DataError(f"{root}: unknown QaTa-COV19 layout; expected Train_Folder/ and Test_Folder/ with img/ + "
                        "labelcol/ and the LViT *_text.xlsx files (see data/README.md)")
    refs: list[CaseRef] = []
    has_text = False
    for split, prefix in FOLDERS.items():
        folder = root / f"{prefix}_Folder"
        if not folder.is_dir():
            continue
        table = next((p for p in (folder / f"{prefix}_text.xlsx", root / f"{prefix}_text.xlsx") if p.is_file()), None)
        pairs = pair_files(list_images(folder / "img"), folder / "labelcol", mask_name)
        texts = read_text_table(table) if table else {}
        if table:
            check_texts(texts, [m.name for _, m in pairs], table)
        has_text |= bool(texts)
        for img_path, mask_path in pairs:
            refs.append(CaseRef(img_path.stem, pair_loader(img_path, mask_path, 1, working_size), split,
                                texts.get(mask_path.name, ""), {"image_path": str(img_path), "mask_path": str(mask_path)}))
    if not refs:
        raise DataError(f"{root}: no QaTa-COV19 image found in Train_Folder/img or Test_Folder/img")
    if not (root / "Val_Folder").is_dir():
        carve = seeded_train_val([r.id for r in refs if r.split == "train"], seed, 0.2)
        for r in refs:
            if r.id in carve:
                r.split = carve[r.id]
    cases = materialise(refs, max_train, max_eval, seed)
    return SegDataset(name="qata", cases=cases, class_names=CLASS_NAMES, in_channels=1, source="real", root=root,
                      has_text=has_text, description="QaTa-COV19 infection masks, LViT layout"
                      + (" with LViT text annotations" if has_text else ""))
