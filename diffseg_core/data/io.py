"""Reading, validating and resizing image/mask files: the checks every loader shares.

Every failure raises :class:`~diffseg_core.data.base.DataError` with the offending file (or folder) in
the message and what to do about it: an unreadable file, the wrong number of channels, a mask that is
not binary or has labels outside the expected set, an image and mask of different sizes, a missing
pair, an empty folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import Case, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ---------------------------------------------------------------------------------------------------
# Files and folders
# ---------------------------------------------------------------------------------------------------
def list_images(folder: Path, what: str = "images") -> list[Path]:
    """Image files of ``folder`` (sorted by name; hidden files skipped).

    Raises :class:`DataError` when the folder is missing or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found; check the dataset layout (see data/README.md)")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: {what} folder is empty (no {'/'.join(IMAGE_EXTENSIONS)} file); "
                        "copy the dataset files into it (see data/README.md)")
    return files


def pair_files(images: Sequence[Path], mask_dir: Path, mask_name: Callable[[Path], Iterable[str]],
               what: str = "mask") -> list[tuple[Path, Path]]:
    """Match each image with its mask in ``mask_dir``.

    Args:
        images: image files.
        mask_dir: folder holding the masks.
        mask_name: candidate mask file names for an image (the first that exists wins).
    Raises:
        DataError naming the first image without a mask.
    """
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: {what} folder not found; check the dataset layout (see data/README.md)")
    present = {p.name: p for p in mask_dir.iterdir() if p.is_file()}
    pairs = []
    for img in images:
        names = list(mask_name(img))
        hit = next((present[n] for n in names if n in present), None)
        if hit is None:
            raise DataError(f"{img}: no {what} found in {mask_dir} (looked for {', '.join(names)}); "
                            "every image needs its mask: add it or remove the image")
        pairs.append((img, hit))
    return pairs


def same_stem(extensions: Sequence[str] = (".png",)) -> Callable[[Path], list[str]]:
    """Mask-name rule: the image's stem with each of ``extensions`` (e.g. ``a.tif`` -> ``a.png``)."""
    return lambda p: [p.stem + e for e in extensions] + [p.name]


# ---------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------
def _to_unit(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer or float pixels -> float32 in [0, 1] (by the dtype's range)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype.kind in "iu":
        top = 65535.0 if arr.max() > 255 else 255.0
        return np.clip(arr.astype(np.float32) / top, 0, 1)
    if arr.dtype.kind == "f":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo >= 0 and hi <= 1:
            return arr.astype(np.float32)
        return ((arr - lo) / (hi - lo + 1e-8)).astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {arr.dtype}")


def _open(path: Path):
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        im = Image.open(path)
        im.load()
    except Exception as exc:  # PIL raises many types
        raise DataError(f"{path}: cannot read the file as an image ({exc}); re-export it as PNG or remove it") from exc
    return im


def read_image(path: Path, channels: int) -> np.ndarray:
    """Read an image file as ``(C, H, W)`` float32 in [0, 1].

    Args:
        path: PNG/JPEG/TIFF/BMP file.
        channels: 3 (RGB: grayscale files are refused) or 1 (grayscale: RGB files whose channels are
            identical or not are averaged over channels, as cDAL's lung loader does; alpha is dropped).
    """
    path = Path(path)
    im = _open(path)
    if channels == 3:
        if im.mode in ("RGBA", "P", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        if im.mode != "RGB":
            raise DataError(f"{path}: expected an RGB image (3 channels), got mode {im.mode!r} with "
                            f"{len(im.getbands())} channel(s); this dataset needs colour images")
        arr = np.asarray(im)
        return np.ascontiguousarray(np.moveaxis(_to_unit(arr, path), -1, 0))
    if channels == 1:
        if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
            arr = _to_unit(np.asarray(im.convert("RGB")), path).mean(-1)
        elif im.mode == "LA":
            arr = _to_unit(np.asarray(im)[..., 0], path)
        else:
            arr = _to_unit(np.asarray(im), path)
        if arr.ndim != 2:
            raise DataError(f"{path}: expected a grayscale image, got pixel array of shape {arr.shape}")
        return arr[None].astype(np.float32)
    raise DataError(f"read_image: channels must be 1 or 3, got {channels}")


def read_mask(path: Path) -> np.ndarray:
    """Read a binary mask file as ``(H, W)`` int64 in {0, 1} (foreground = pixel > 0).

    Accepted: one value on a zero background ({0, 255}, {0, 1}, ...). A colour mask is accepted only
    when its channels are identical. Anything else (e.g. a JPEG-compressed mask with intermediate values)
    raises :class:`DataError` naming the file.
    """
    path = Path(path)
    im = _open(path)
    arr = np.asarray(im.convert("RGB") if im.mode in ("P", "RGBA") else im)
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(f"{path}: mask has {arr.shape[-1]} differing colour channels; save it as a "
                            "single-channel (grayscale) binary mask")
        arr = arr[..., 0]
    values = np.unique(arr)
    nonzero = values[values != 0]
    if nonzero.size > 1:
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise DataError(f"{path}: mask is not binary (values {shown}); expected 0 for background and one "
                        "foreground value such as 255. Threshold it (e.g. pixel > 127) and save it as PNG")
    return (arr > 0).astype(np.int64)


def check_labels(label: np.ndarray, allowed: Sequence[int], path: Path | str) -> np.ndarray:
    """Raise :class:`DataError` when ``label`` holds a value outside ``allowed``; return it as int64.

    Non-integer values (e.g. a label map resampled with linear interpolation) are refused too.
    """
    arr = np.asarray(label)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: label map holds non-integer values; it must store class indices "
                            f"{sorted(allowed)} (was it resampled with linear interpolation?)")
    values = np.unique(arr).astype(np.int64)
    bad = sorted(set(values.tolist()) - set(int(a) for a in allowed))
    if bad:
        raise DataError(f"{path}: label values {bad[:6]} are outside the expected set {sorted(allowed)}")
    return arr.astype(np.int64)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path | str, mask_path: Path | str) -> None:
    """Raise :class:`DataError` when an image ``(C, H, W)`` (or volume) and its label differ in size."""
    ishape = tuple(image.shape[1:]) if image.ndim == label.ndim + 1 else tuple(image.shape)
    if ishape != tuple(label.shape):
        raise DataError(f"{mask_path}: label size {tuple(label.shape)} differs from its image {image_path} "
                        f"{ishape}; image and mask must be pixel-aligned (same size)")


# ---------------------------------------------------------------------------------------------------
# Resizing and capping
# ---------------------------------------------------------------------------------------------------
def resize_pair(image: np.ndarray, label: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image bilinearly (with antialiasing when shrinking) and its label by nearest neighbour.

    Args:
        image: ``(C, H, W)`` float in [0, 1].
        label: ``(H, W)`` int class indices.
        size: output side (square, aspect ratio not kept, as cDAL and TextDiff do) or ``(h, w)``.
    Returns:
        ``(C, h, w)`` float32 in [0, 1] and ``(h, w)`` int64.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[1:]) == hw:
        return image.astype(np.float32, copy=False), label.astype(np.int64, copy=False)
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    img = F.interpolate(img, size=hw, mode="bilinear", align_corners=False, antialias=True)[0]
    lab = torch.from_numpy(np.ascontiguousarray(label)).to(torch.float32)[None, None]
    lab = F.interpolate(lab, size=hw, mode="nearest-exact")[0, 0]
    return img.clamp(0, 1).numpy(), lab.to(torch.int64).numpy()


def cap_cases(cases: list, max_train: int | None, max_eval: int | None, seed: int = 0) -> list[Case]:
    """Keep at most ``max_train`` training and ``max_eval`` val / test cases each (a seeded choice).

    Cases that carry ``meta['volume']`` (hippocampus slices) are capped by whole volumes: volumes are
    added in a seeded order while the slice count stays within the cap (at least one volume per split),
    so per-volume scores stay meaningful. Order of the kept cases is preserved.
    """
    keep: set[int] = set()
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test", None):
        idx = [i for i, c in enumerate(cases) if c.split == split]
        cap = max_train if split == "train" else max_eval if split in ("val", "test") else None
        if cap is None or len(idx) <= cap:
            keep.update(idx)
            continue
        if "volume" in cases[idx[0]].meta:
            vols: dict[str, list[int]] = {}
            for i in idx:
                vols.setdefault(cases[i].meta["volume"], []).append(i)
            names = sorted(vols)
            total = 0
            for k in rng.permutation(len(names)):
                members = vols[names[k]]
                if total and total + len(members) > cap:
                    continue
                keep.update(members)
                total += len(members)
        else:
            keep.update(idx[k] for k in rng.permutation(len(idx))[:cap])
    return [c for i, c in enumerate(cases) if i in keep]


# ---------------------------------------------------------------------------------------------------
# Pairs and text tables
# ---------------------------------------------------------------------------------------------------
def load_pair(image_path: Path, mask_path: Path, channels: int, working_size: int | None
              ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read, validate and resize one image/mask pair.

    Returns:
        ``image`` ``(C, h, w)`` float32 in [0, 1], ``label`` ``(h, w)`` int64 in {0, 1} (``h = w =
        working_size`` unless it is ``None``) and the original ``(H, W)``.
    """
    image = read_image(image_path, channels)
    label = read_mask(mask_path)
    check_same_size(image, label, image_path, mask_path)
    orig = (int(image.shape[1]), int(image.shape[2]))
    if working_size is not None:
        image, label = resize_pair(image, label, working_size)
    return image, label, orig


def read_text_table(path: Path, key: str = "Image", value: str = "Description") -> dict[str, str]:
    """A two-column text table (LViT ``*_text.xlsx`` or a CSV) as ``{key: sentence}``.

    LViT's xlsx files have columns ``Image`` (the mask file name) and ``Description``; our CSVs have
    ``id`` and ``text``. Multi-line descriptions are joined with spaces.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: text table not found")
    try:
        df = pd.read_excel(path) if path.suffix.lower() in (".xlsx", ".xls") else pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the text table ({exc})") from exc
    if key not in df.columns or value not in df.columns:
        raise DataError(f"{path}: expected columns {key!r} and {value!r}, found {list(df.columns)}")
    out = {}
    for k, v in zip(df[key], df[value]):
        if isinstance(k, str) and k.strip():
            out[k.strip()] = " ".join(str(v).split()) if isinstance(v, str) else ""
    return out


def read_cases_csv(path: Path) -> dict[str, dict[str, str]]:
    """``cases.csv`` rows keyed by ``id`` (``{}`` when the file is absent)."""
    import csv

    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "id" not in rows[0]:
        raise DataError(f"{path}: expected an 'id' column, found {list(rows[0])}")
    return {r["id"]: r for r in rows}


def seeded_train_val(ids: Sequence[str], seed: int = 0, val_fraction: float = 0.2,
                     groups: dict[str, str] | None = None) -> dict[str, str]:
    """Split ``ids`` into ``train``/``val`` only (for datasets whose test set is separate).

    At least one group goes to ``val`` when there are two or more groups.
    """
    ids = list(ids)
    keys = sorted({(groups or {}).get(i, i) for i in ids})
    order = [keys[k] for k in np.random.default_rng(seed).permutation(len(keys))]
    n_val = max(1, round(val_fraction * len(order))) if len(order) >= 2 else 0
    val = set(order[:n_val])
    return {i: ("val" if (groups or {}).get(i, i) in val else "train") for i in ids}


# ---------------------------------------------------------------------------------------------------
# Lazy cases: split and cap before any pixel is read
# ---------------------------------------------------------------------------------------------------
class CaseRef:
    """A case not read yet: its id, split, text, meta and a ``load()`` returning ``(image, label, extra_meta)``.

    Loaders build these first, so splits and the smoke-preset caps are decided from file names alone and
    only the kept files are decoded (MoNuSeg's 1000 x 1000 PNGs take ~0.1 s each).
    """

    def __init__(self, id: str, load: Callable[[], tuple[np.ndarray, np.ndarray, dict]], split: str | None = None,
                 text: str = "", meta: dict | None = None) -> None:
        self.id, self.load, self.split, self.text, self.meta = id, load, split, text, dict(meta or {})

    def materialise(self) -> Case:
        image, label, extra = self.load()
        return Case(self.id, image, label, text=self.text, split=self.split, meta={**self.meta, **extra})


def materialise(refs: Sequence[CaseRef], max_train: int | None = None, max_eval: int | None = None,
                seed: int = 0) -> list[Case]:
    """Cap ``refs`` with :func:`cap_cases` (every ref must have its split), then read the kept ones."""
    missing = [r.id for r in refs if r.split is None]
    if missing:
        raise DataError(f"materialise: cases {missing[:3]} have no split yet")
    ids = [r.id for r in refs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"case ids {dup[:3]} appear more than once (e.g. in two folders); each image must be unique")
    return [r.materialise() for r in cap_cases(list(refs), max_train, max_eval, seed)]


def pair_loader(image_path: Path, mask_path: Path, channels: int, working_size: int | None
                ) -> Callable[[], tuple[np.ndarray, np.ndarray, dict]]:
    """A ``CaseRef.load`` for one image/mask file pair (see :func:`load_pair`)."""
    def load() -> tuple[np.ndarray, np.ndarray, dict]:
        image, label, orig = load_pair(image_path, mask_path, channels, working_size)
        return image, label, {"orig_size": orig}
    return load
