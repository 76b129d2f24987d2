"""Reading, validating and resizing image/mask files: the checks every loader shares.

Every failure raises :class:`~diffseg_core.data.base.DataError` with the offending file (or folder) in
the message and what to do about it: an unreadable file, the wrong number of channels, a mask that is
not binary or has labels outside the expected set, an image and mask of different sizes, a missing
pair, an empty folder.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import Case, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: images with more pixels are refused from their header, before any pixel is decoded. Loading an image of
#: this size peaks at about 1.2 GB (uint8 decode, float32 copy, channel-first copy), so one bad file can
#: never take the machine's memory; the largest real images used here (Montgomery X-rays) have 20 M pixels.
MAX_IMAGE_PIXELS: int = 40_000_000
#: images with a side shorter than this are refused (thumbnails, icons, a wrong file): no structure a
#: segmentation model could learn fits in fewer pixels.
MIN_IMAGE_SIDE: int = 10
#: a grayscale dataset refuses RGB files whose channels differ by more than this (grey levels of 255, mean
#: over pixels): a colour photograph, not an X-ray saved in colour (those differ by 0-2 levels).
GREY_CHANNEL_SPREAD: float = 12.0
#: a mask with more distinct values than this is described as JPEG-damaged rather than multi-class.
JPEG_GREY_LEVELS: int = 8


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
        names = list(dict.fromkeys(mask_name(img)))
        hit = next((present[n] for n in names if n in present), None)
        if hit is None:
            raise DataError(f"{img}: no {what} found in {mask_dir} (looked for {', '.join(names)}); "
                            "every image needs its mask: add it or remove the image")
        pairs.append((img, hit))
    used = {m.name for _, m in pairs}
    orphans = sorted(n for n, p in present.items()
                     if n not in used and p.suffix.lower() in IMAGE_EXTENSIONS and not n.startswith("."))
    if orphans and images:
        raise DataError(f"{mask_dir / orphans[0]}: a {what} without an image ({len(orphans)} such file(s) in {mask_dir}; "
                        f"no image in {Path(images[0]).parent} matches it); add its image or remove the {what}")
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


def _open(path: Path, decode: bool = True, min_side: int = 1):
    """Open an image file with PIL, checking its size from the header before any pixel is decoded.

    Refused with :class:`DataError`: a missing or empty file, a file PIL cannot identify, more than
    :data:`MAX_IMAGE_PIXELS` pixels, a side under ``min_side`` (images: :data:`MIN_IMAGE_SIDE`; a mask is
    checked against its image instead), truncated or corrupt pixel data.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); copy it again from the dataset's source, or remove it "
                        "(and its mask or image)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: the image is far larger than the {MAX_IMAGE_PIXELS // 10**6}-megapixel limit; "
                        "downscale it, or cut it into tiles (e.g. 1000 x 1000) and load those") from exc
    except Exception as exc:  # PIL raises many types
        raise DataError(f"{path}: cannot read the file as an image (it is not a PNG, JPEG, TIFF or BMP image, or its "
                        "header is corrupt); re-export it as PNG, or remove it (and its mask or image)") from exc
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: {w} x {h} pixels ({w * h / 1e6:.0f} megapixels) is more than the "
                        f"{MAX_IMAGE_PIXELS // 10**6}-megapixel limit, refused before decoding to keep memory bounded; "
                        "downscale it, or cut it into tiles (e.g. 1000 x 1000) and load those")
    if min(w, h) < min_side:
        raise DataError(f"{path}: {w} x {h} pixels is too small to segment (the smallest side accepted is "
                        f"{MIN_IMAGE_SIDE} pixels); is it a thumbnail or the wrong file? Replace it with the full image "
                        "or remove it (and its mask or image)")
    return _decode(im, path) if decode else im


def _decode(im, path: Path):
    """Decode the pixels of an image opened by :func:`_open` (``decode=False``)."""
    try:
        im.load()
    except Exception as exc:
        raise DataError(f"{path}: the image data are truncated or corrupt (the header reads, the pixels do not); "
                        "copy or export it again, or remove it (and its mask or image)") from exc
    return im


def _bit_depth(im) -> int:
    """Bits per channel of an opened (not yet decoded) PIL image: 16 for 16-bit PNG/TIFF, 32 for I/F modes."""
    if im.mode in ("I", "F"):
        return 32
    if im.mode.startswith("I;16"):
        return 16
    raw = " ".join(str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in (getattr(im, "tile", None) or []))
    return 16 if ";16" in raw else 8


def _refuse_transparency(im, path: Path) -> None:
    """Raise when ``im`` has an alpha channel (or palette transparency) that is not fully opaque."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            raise DataError(f"{path}: the image has transparent pixels (an alpha channel that is not fully opaque); "
                            "flatten it onto a background and save it without alpha (RGB or grayscale PNG)")


def read_image(path: Path, channels: int) -> np.ndarray:
    """Read an image file as ``(C, H, W)`` float32 in [0, 1].

    Args:
        path: PNG/JPEG/TIFF/BMP file.
        channels: 3 (RGB: grayscale files are refused) or 1 (grayscale: an RGB file is averaged over its
            channels, as cDAL's lung loader does, when they are (nearly) equal, i.e. an X-ray saved in colour;
            a real colour image is refused, see :data:`GREY_CHANNEL_SPREAD`).

    Refused as well (:class:`DataError` naming the file and what to do): 16- and 32-bit pixels, transparent
    pixels, and everything :func:`_open` refuses (empty, unreadable, truncated, too large, too small).
    A fully opaque alpha channel is dropped.
    """
    path = Path(path)
    if channels not in (1, 3):
        raise DataError(f"read_image: channels must be 1 or 3, got {channels}")
    im = _open(path, decode=False, min_side=MIN_IMAGE_SIDE)
    bits = _bit_depth(im)
    if bits != 8:
        raise DataError(f"{path}: {bits}-bit pixels (PIL mode {im.mode}); the loaders read 8-bit images. Convert it "
                        "to 8 bits (rescale by its own maximum so the contrast is kept) and save it as PNG")
    im = _decode(im, path)
    _refuse_transparency(im, path)
    if channels == 3:
        if im.mode in ("RGBA", "P", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        if im.mode != "RGB":
            raise DataError(f"{path}: expected an RGB image (3 channels), got a grayscale one (PIL mode {im.mode}); "
                            "this dataset needs colour images. Check that the file belongs to this dataset (is "
                            "--dataset right?), or save it as RGB if it really is a colour image stored as grey")
        arr = np.asarray(im)
        return np.ascontiguousarray(np.moveaxis(_to_unit(arr, path), -1, 0))
    if channels == 1:
        if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
            rgb = np.asarray(im.convert("RGB"))
            spread = float(np.mean(rgb.max(-1).astype(np.int16) - rgb.min(-1)))
            if spread > GREY_CHANNEL_SPREAD:
                raise DataError(f"{path}: expected a grayscale image, got a colour one (its red, green and blue "
                                "channels differ); this dataset needs grayscale X-rays. Check that the file belongs "
                                "to this dataset (is --dataset right?), or convert it to grayscale if it is an X-ray")
            arr = _to_unit(rgb, path).mean(-1)
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
            raise DataError(f"{path}: the mask has {arr.shape[-1]} differing colour channels; save it as a "
                            "single-channel (grayscale) binary PNG, 0 for background and 255 for the structure")
        arr = arr[..., 0]
    values = np.unique(arr)
    nonzero = values[values != 0]
    if values.size > JPEG_GREY_LEVELS:
        raise DataError(f"{path}: the mask is not binary: it has {values.size} grey levels, typical of JPEG "
                        "compression or of resizing with interpolation. Masks must be stored losslessly: threshold "
                        "it (e.g. pixel > 127) and save it as PNG")
    if nonzero.size > 1:
        shown = ", ".join(str(v) for v in values)
        raise DataError(f"{path}: the mask is not binary: it holds the values {shown}, where a binary mask holds 0 "
                        "for background and one foreground value (e.g. 255). If it is a multi-class label map, merge "
                        "the classes this task needs (e.g. pixel > 0) and save it as PNG")
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
        raise DataError(f"{path}: label values {bad[:6]} are outside the expected set {sorted(allowed)}; check that "
                        "it is this dataset's label map (not a probability map or the labels of another task) and "
                        "re-export it")
    return arr.astype(np.int64)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path | str, mask_path: Path | str) -> None:
    """Raise :class:`DataError` when an image ``(C, H, W)`` (or volume) and its label differ in size."""
    ishape = tuple(image.shape[1:]) if image.ndim == label.ndim + 1 else tuple(image.shape)
    if ishape != tuple(label.shape):
        raise DataError(f"{mask_path}: label size {tuple(label.shape)} differs from its image {image_path} "
                        f"{ishape}; image and label must be pixel-aligned: export the label at the image's size, or "
                        "remove the pair")


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
    excel = path.suffix.lower() in (".xlsx", ".xls")
    try:
        df = pd.read_excel(path) if excel else pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the text table is not UTF-8 text; save it again with UTF-8 encoding (e.g. "
                        "'CSV UTF-8' in a spreadsheet program)") from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot read the text table (not a valid {'Excel' if excel else 'CSV'} file); "
                        "export it again, or remove it to load the images without text") from exc
    if key not in df.columns or value not in df.columns:
        raise DataError(f"{path}: the text table needs the columns {key!r} and {value!r}, found {list(df.columns)}; "
                        "rename its columns (see data/README.md for each layout's table)")
    out = {}
    for k, v in zip(df[key], df[value]):
        if isinstance(k, str) and k.strip():
            out[k.strip()] = " ".join(str(v).split()) if isinstance(v, str) else ""
    return out


def check_texts(texts: dict[str, str], keys: Sequence[str], path: Path | str) -> None:
    """Every key (an image id or mask file name) has a non-empty sentence in the table at ``path``.

    Called only when a text table exists: a table that misses an image would silently give it no text.
    """
    missing = [k for k in keys if k not in texts]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise DataError(f"{path}: no sentence for {len(missing)} of {len(keys)} images ({shown}); add a row for each "
                        "image, or remove the table to load the images without text")
    empty = [k for k in keys if not str(texts[k]).strip()]
    if empty:
        shown = ", ".join(empty[:3]) + (" ..." if len(empty) > 3 else "")
        raise DataError(f"{path}: the sentence for {shown} is empty; write the image's description, or remove the "
                        "table to load the images without text")


def read_cases_csv(path: Path) -> dict[str, dict[str, str]]:
    """``cases.csv`` rows keyed by ``id`` (``{}`` when the file is absent).

    Refused: a file that is not UTF-8, no ``id`` column, an id on two rows, a ``split`` other than
    ``train``/``val``/``test`` (or empty, for a seeded split).
    """
    import csv

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text; save it again with UTF-8 encoding") from exc
    if rows and "id" not in rows[0]:
        raise DataError(f"{path}: expected an 'id' column, found {list(rows[0])}; the first row must name the "
                        "columns (id, split, ...)")
    ids = [r["id"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{path}: the id {dup[0]} is on {ids.count(dup[0])} rows ({len(dup)} duplicated id(s)); each "
                        "case must have exactly one row: remove the duplicates")
    for r in rows:
        split = (r.get("split") or "").strip()
        if split and split not in ("train", "val", "test"):
            raise DataError(f"{path}: case {r['id']} has split {split!r}; the split column takes train, val or test "
                            "(or stays empty for a seeded split)")
    return {r["id"]: r for r in rows}


def check_case_ids(rows: dict[str, dict[str, str]], ids: Sequence[str], path: Path | str, folder: Path | str) -> None:
    """Every id of ``cases.csv`` (``rows``) names a case found in ``folder``."""
    known = set(ids)
    unknown = [i for i in rows if i not in known]
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise DataError(f"{path}: {len(unknown)} id(s) match no file in {folder} ({shown}); fix the ids (file names "
                        "without extension) or remove those rows")


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
