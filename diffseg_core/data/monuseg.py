"""MoNuSeg (H&E nuclei, 1000 x 1000 tiles) in its three common layouts, with the LViT text annotations.

Layouts recognised under ``root`` (the first that matches wins):

1. **shared** (this project's subset): ``images/<id>.png``, ``masks/<id>.png`` ({0, 255}), optional
   ``annotations/<id>.xml``, ``text.csv`` (``id,text``) and ``cases.csv`` (``id,split``);
2. **LViT** (what TextDiff reads): ``{Train,Val,Test}_Folder/img/*``, ``{...}_Folder/labelcol/<stem>.png``,
   ``{Train,Val,Test}_text.xlsx`` (in the folder or in ``root``) with columns ``Image`` (the mask file name)
   and ``Description``; the split is the folder;
3. **official release**: ``Tissue Images/*.tif`` + ``Annotations/*.xml`` (Aperio XML polygons), either in
   ``root`` or in release sub-folders of ``root`` (one whose name contains "test" becomes the test split,
   the others are split train/val 80/20 seeded). Masks are rasterised from the XML by :func:`rasterise_xml`.

Where no split is given, a seeded 60/20/20 split is made. Classes: background, nucleus; 3 channels (RGB).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .base import DataError, SegDataset, assign_seeded_split
from .io import (CaseRef, check_case_ids, check_texts, list_images, materialise, pair_files, pair_loader,
                 read_cases_csv, read_image, read_text_table, resize_pair, same_stem, seeded_train_val)

CLASS_NAMES: tuple[str, ...] = ("background", "nucleus")
LVIT_FOLDERS: dict[str, str] = {"train": "Train", "val": "Val", "test": "Test"}


# ---------------------------------------------------------------------------------------------------
# XML polygons
# ---------------------------------------------------------------------------------------------------
_REGION = re.compile(r"<Region\b(.*?)</Region>", re.S)
_VERTEX = re.compile(r"<Vertex\b([^>]*)>")
_ATTR = re.compile(r"\b([XY])\s*=\s*[\"']([^\"']*)[\"']")


def read_xml_polygons(path: Path) -> list[np.ndarray]:
    """The nucleus polygons of an Aperio/MoNuSeg XML file.

    Each ``Region`` holds ``Vertices/Vertex`` elements with ``X``, ``Y`` in pixels of the full-resolution
    tile. Regions with fewer than three vertices are skipped. The files are large (up to ~4 MB of
    vertices), so they are scanned with two regular expressions (about 20x faster than building an
    ElementTree); a file in which they find nothing is parsed with ElementTree for a precise error.

    Returns:
        list of ``(n_vertices, 2)`` float arrays of ``(x, y)``.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the XML annotation ({exc})") from exc
    polys = []
    for region in _REGION.finditer(text):
        pts = []
        for tag in _VERTEX.findall(region.group(1)):
            attrs = dict(_ATTR.findall(tag))
            pts.append((attrs.get("X", "nan"), attrs.get("Y", "nan")))
        try:
            arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        except ValueError as exc:
            raise DataError(f"{path}: a Vertex has a non-numeric coordinate ({exc})") from exc
        if len(arr) >= 3 and np.all(np.isfinite(arr)):
            polys.append(arr)
    if not polys:
        try:
            ET.fromstring(text)
        except ET.ParseError as exc:
            raise DataError(f"{path}: cannot parse the XML annotation ({exc}); re-download it") from exc
        raise DataError(f"{path}: no Region/Vertices/Vertex polygon found; is this a MoNuSeg (Aperio) XML file?")
    return polys


def rasterise_xml(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise MoNuSeg XML polygons with PIL polygon fill.

    Args:
        path: the ``.xml`` file.
        size: ``(H, W)`` of the tile the vertices refer to (1000 x 1000 for MoNuSeg).
    Returns:
        ``binary`` ``(H, W)`` int64 in {0, 1} and ``instances`` ``(H, W)`` int32 with nucleus ``i`` drawn as
        ``i`` (1-based, in file order; a later polygon overwrites an earlier one where they overlap).
    """
    from PIL import Image, ImageDraw

    h, w = int(size[0]), int(size[1])
    canvas = Image.new("I", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for i, poly in enumerate(read_xml_polygons(path), start=1):
        draw.polygon(poly.ravel().tolist(), fill=i, outline=i)
    instances = np.asarray(canvas, dtype=np.int32)
    return (instances > 0).astype(np.int64), instances


# ---------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------
def detect_layout(root: Path) -> str:
    """``"shared"``, ``"lvit"`` or ``"official"``; :class:`DataError` when none matches."""
    root = Path(root)
    found = {"shared": (root / "images").is_dir() and (root / "masks").is_dir(),
             "lvit": (root / "Train_Folder").is_dir() or (root / "Test_Folder").is_dir(),
             "official": bool(_official_releases(root))}
    names = {"shared": "images/ + masks/", "lvit": "LViT Train_Folder/ + Test_Folder/",
             "official": "the official 'Tissue Images/' + 'Annotations/'"}
    present = [k for k, v in found.items() if v]
    if len(present) > 1:
        raise DataError(f"{root}: holds two MoNuSeg layouts at once ({' and '.join(names[k] for k in present)}); keep "
                        "one of them in this folder (move the other elsewhere), so it is clear which images to use")
    if present:
        return present[0]
    raise DataError(f"{root}: unknown MoNuSeg layout; expected images/ + masks/, LViT Train_Folder/img + labelcol, "
                    "or the official 'Tissue Images/' + 'Annotations/': point --data at the dataset folder itself "
                    "(see data/README.md)")


def _official_releases(root: Path) -> list[Path]:
    if (root / "Tissue Images").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "Tissue Images").is_dir())


def _refs_shared(root: Path, working_size: int | None) -> tuple[list[CaseRef], bool, str]:
    pairs = pair_files(list_images(root / "images"), root / "masks", same_stem((".png",)))
    texts = read_text_table(root / "text.csv", key="id", value="text") if (root / "text.csv").is_file() else {}
    rows = read_cases_csv(root / "cases.csv")
    check_case_ids(rows, [p.stem for p, _ in pairs], root / "cases.csv", root / "images")
    if texts:
        check_texts(texts, [p.stem for p, _ in pairs], root / "text.csv")
    refs = []
    for img_path, mask_path in pairs:
        cid = img_path.stem
        xml = root / "annotations" / f"{cid}.xml"
        split = rows.get(cid, {}).get("split") or None
        if split is not None and split not in ("train", "val", "test"):
            raise DataError(f"{root / 'cases.csv'}: case {cid} has split {split!r}; use train, val or test")
        meta = {"image_path": str(img_path), "mask_path": str(mask_path)}
        if xml.is_file():
            meta["xml_path"] = str(xml)
        refs.append(CaseRef(cid, pair_loader(img_path, mask_path, 3, working_size), split, texts.get(cid, ""), meta))
    return refs, bool(texts), "images/ + masks/ layout"


def _lvit_text(root: Path, folder: Path, split_name: str, keys: list[str] | None = None) -> dict[str, str]:
    for cand in (folder / f"{split_name}_text.xlsx", root / f"{split_name}_text.xlsx"):
        if cand.is_file():
            texts = read_text_table(cand)
            if keys is not None:
                check_texts(texts, keys, cand)
            return texts
    return {}


def _refs_lvit(root: Path, working_size: int | None) -> tuple[list[CaseRef], bool, str]:
    refs, any_text = [], False
    for split, prefix in LVIT_FOLDERS.items():
        folder = root / f"{prefix}_Folder"
        if not folder.is_dir():
            continue
        pairs = pair_files(list_images(folder / "img"), folder / "labelcol", same_stem((".png",)))
        texts = _lvit_text(root, folder, prefix, [m.name for _, m in pairs])
        any_text |= bool(texts)
        for img_path, mask_path in pairs:
            refs.append(CaseRef(img_path.stem, pair_loader(img_path, mask_path, 3, working_size), split,
                                texts.get(mask_path.name, ""), {"image_path": str(img_path), "mask_path": str(mask_path)}))
    if not refs:
        raise DataError(f"{root}: LViT layout without any Train_Folder/Val_Folder/Test_Folder holding img/ + labelcol/")
    return refs, any_text, "LViT Train/Val/Test_Folder layout"


def _xml_loader(img_path: Path, xml_path: Path, working_size: int | None):
    def load():
        image = read_image(img_path, 3)
        orig = (int(image.shape[1]), int(image.shape[2]))
        label, instances = rasterise_xml(xml_path, orig)
        if working_size is not None:
            image, label = resize_pair(image, label, working_size)
        return image, label, {"orig_size": orig, "n_nuclei": int(len(np.unique(instances)) - 1)}
    return load


def _refs_official(root: Path, working_size: int | None, seed: int) -> tuple[list[CaseRef], bool, str]:
    refs = []
    for release in _official_releases(root):
        pairs = pair_files(list_images(release / "Tissue Images", "Tissue Images"), release / "Annotations",
                           lambda p: [p.stem + ".xml"], what="XML annotation")
        is_test = "test" in release.name.lower() and release != root
        for img_path, xml_path in pairs:
            refs.append(CaseRef(img_path.stem, _xml_loader(img_path, xml_path, working_size),
                                "test" if is_test else None, "", {"image_path": str(img_path), "xml_path": str(xml_path)}))
    pending = [r.id for r in refs if r.split is None]
    if pending and any(r.split == "test" for r in refs):
        split = seeded_train_val(pending, seed, 0.2)
        for r in refs:
            r.split = r.split or split[r.id]
    return refs, False, "official release (Tissue Images/ + Annotations/ XML rasterised)"


def load_monuseg(root: Path, working_size: int | None = 512, seed: int = 0, max_train: int | None = None,
                 max_eval: int | None = None) -> SegDataset:
    """Load MoNuSeg from any of the three layouts (see the module docstring).

    Args:
        root: the dataset folder.
        working_size: images resized to this side (bilinear; masks nearest), ``None`` keeps 1000 x 1000.
        seed: seeds the split when the layout gives none, and the caps.
        max_train, max_eval: keep at most this many train / val and test cases (decided before reading).
    Returns:
        :class:`SegDataset` with ``image`` ``(3, s, s)``, ``label`` ``(s, s)`` in {0, 1}, the LViT sentence as
        ``text`` (``""`` when absent), ``meta['orig_size']`` and the source file paths.
    """
    root = Path(root)
    layout = detect_layout(root)
    if layout == "shared":
        refs, has_text, what = _refs_shared(root, working_size)
    elif layout == "lvit":
        refs, has_text, what = _refs_lvit(root, working_size)
    else:
        refs, has_text, what = _refs_official(root, working_size, seed)
    if any(r.split is None for r in refs):
        split = assign_seeded_split([r.id for r in refs if r.split is None], seed)
        for r in refs:
            r.split = r.split or split[r.id]
    cases = materialise(refs, max_train, max_eval, seed)
    return SegDataset(name="monuseg", cases=cases, class_names=CLASS_NAMES, in_channels=3, source="real", root=root,
                      has_text=has_text, description=f"MoNuSeg H&E nuclei, {what}"
                      + (" with LViT text annotations" if has_text else ""))
