"""MSD Task04 Hippocampus: NIfTI volumes read with nibabel, served as 2-D axial slices.

Layouts accepted (``root`` is the dataset folder):

* the Medical Segmentation Decathlon release: ``imagesTr/*.nii.gz``, ``labelsTr/*.nii.gz``,
  ``dataset.json`` (only the labelled training volumes are used, as in cDAL);
* the shared subset: ``images/*.nii.gz``, ``labels/*.nii.gz``, optional ``cases.csv`` with a
  ``pair_group`` column (volumes of one group stay in the same split).

Each volume is scaled to [0, 1] on its own, by default between its 0.5th and 99.5th intensity percentiles
(clipped; :func:`percentile_scale`, MONAI's ``ScaleIntensityRangePercentiles``). cDAL's pipeline min-max scales
(``ScaleIntensityd``; ``intensity="minmax"`` here), which lets a few bright voxels set the scale: on the
shared 40-volume subset the hippocampus's mean intensity after min-max ranges from 0.10 to 0.44 across
volumes, after percentile scaling from 0.28 to 0.47, and the volume with the brightest min-max contrast is
the one every short run fails on. The volume is kept in its stored orientation (RAS for MSD Task04; cDAL re-orients to LPI, which only flips axes) and cut into 2-D slices
along its **last** axis, the axis cDAL slices its 32^3 crops along. Labels: 0 background, 1 anterior,
2 posterior. Evaluation stacks the slices back (``meta['volume']``, ``meta['slice']``) and scores per volume;
``meta['image_path']`` names the source file, so a predicted volume can be written back on its grid
(:mod:`diffseg_core.data.nifti`). :mod:`diffseg_core.data.volumes` rebuilds whole volumes for 3-D models.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import Case, DataError, SegDataset, assign_seeded_split
from .io import check_labels, check_same_size

CLASS_NAMES: tuple[str, ...] = ("background", "anterior", "posterior")
MSD_TASK04_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar"
MSD_TASK04_MD5 = "9d24dba78a72977dbd1d2e110310f31b"  # as published in monai.apps.DecathlonDataset


# ---------------------------------------------------------------------------------------------------
# Volumes <-> slices
# ---------------------------------------------------------------------------------------------------
def volume_to_slices(volume_id: str, image: np.ndarray, label: np.ndarray,
                     meta: dict[str, Any] | None = None) -> list[Case]:
    """Cut a volume into 2-D cases along its last axis.

    Args:
        volume_id: the volume's id; slice ``k`` gets id ``"<volume_id>_s<k:03d>"``.
        image: ``(X, Y, Z)`` float in [0, 1].
        label: ``(X, Y, Z)`` int class indices.
        meta: extra entries copied into each slice's ``meta``.
    Returns:
        ``Z`` cases with ``image`` ``(1, X, Y)`` float32, ``label`` ``(X, Y)`` int64,
        ``meta['volume'] = volume_id``, ``meta['slice'] = k``, ``meta['volume_shape'] = (X, Y, Z)``.
    """
    if image.ndim != 3 or image.shape != label.shape:
        raise DataError(f"volume {volume_id}: image {image.shape} and label {label.shape} must be equal 3-D shapes")
    image = np.asarray(image, dtype=np.float32)
    label = np.asarray(label, dtype=np.int64)
    out = []
    for k in range(image.shape[-1]):
        m = dict(meta or {})
        m.update(volume=volume_id, slice=k, volume_shape=tuple(int(s) for s in image.shape))
        out.append(Case(id=f"{volume_id}_s{k:03d}", image=np.ascontiguousarray(image[None, :, :, k]),
                        label=np.ascontiguousarray(label[:, :, k]), meta=m))
    return out


def slices_to_volume(slices: Sequence[Any], volume_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack 2-D slice cases back into a volume (inverse of :func:`volume_to_slices`).

    Args:
        slices: cases of one volume (any order; sorted by ``meta['slice']``), or of several volumes
            together with ``volume_id`` choosing one.
    Returns:
        ``image`` ``(X, Y, Z)`` float32 (first channel) and ``label`` ``(X, Y, Z)`` int64.
    """
    chosen = [c for c in slices if volume_id is None or c.meta.get("volume") == volume_id]
    if not chosen:
        raise DataError(f"slices_to_volume: no slice of volume {volume_id!r}")
    vols = {c.meta.get("volume") for c in chosen}
    if len(vols) > 1:
        raise DataError(f"slices_to_volume: slices of several volumes {sorted(map(str, vols))[:4]}; pass volume_id")
    chosen = sorted(chosen, key=lambda c: int(c.meta["slice"]))
    idx = [int(c.meta["slice"]) for c in chosen]
    if idx != list(range(len(chosen))):
        raise DataError(f"slices_to_volume: volume {chosen[0].meta.get('volume')} has slices {idx[:5]}..., "
                        "not a complete 0..Z-1 run (was it capped?)")
    image = np.stack([c.image[0] for c in chosen], axis=-1)
    label = np.stack([c.label for c in chosen], axis=-1)
    return image, label


def _gzip_intact(path: Path) -> bool:
    import gzip

    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except Exception:
        return False
    return True


def read_nifti(path: Path, with_affine: bool = False):
    """A NIfTI file's voxel array (as stored, no re-orientation), and its affine with ``with_affine``.

    Refused with :class:`DataError`: an unreadable file (a corrupt gzip stream is named as such), a 2-D
    image, a 4-D volume with more than one channel / time point.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
    except Exception as exc:
        why = ("the gzip stream is corrupt or truncated" if path.name.endswith(".gz") and not _gzip_intact(path)
               else "the header or the data are invalid")
        raise DataError(f"{path}: cannot read the file as NIfTI ({why}); download or export it again, or remove it "
                        "together with its image or label") from exc
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1):
        raise DataError(f"{path}: a 2-D image of shape {tuple(arr.shape)}; this loader needs 3-D volumes (X, Y, Z): "
                        "export the whole volume, not a single slice")
    if arr.ndim != 3:
        raise DataError(f"{path}: a {arr.ndim}-D volume of shape {tuple(arr.shape)}; this loader needs one 3-D volume "
                        "per file: keep one channel or time point, or split them into separate files")
    return (arr, np.asarray(img.affine, dtype=np.float64)) if with_affine else arr


def minmax(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max scaling to [0, 1] (a constant volume becomes all zeros)."""
    v = volume.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def percentile_scale(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Per-volume robust scaling: the ``lower``-th percentile to 0, the ``upper``-th to 1, clipped to [0, 1]
    (MONAI ``ScaleIntensityRangePercentiles(lower, upper, 0, 1, clip=True)``); a constant volume becomes zeros."""
    v = volume.astype(np.float32)
    lo, hi = (float(x) for x in np.percentile(v, [lower, upper]))
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32) if hi > lo else np.zeros_like(v)


INTENSITY = {"percentile": percentile_scale, "minmax": minmax}


def _nii(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."))


def _vid(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def find_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """``(volume_id, image, label)`` for every labelled volume of an MSD or shared-layout folder."""
    root = Path(root)
    if (root / "imagesTr").is_dir():
        img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
        listed = None
        if (root / "dataset.json").is_file():
            try:
                info = json.loads((root / "dataset.json").read_text())
                listed = [Path(e["image"]).name for e in info.get("training", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{root / 'dataset.json'}: cannot parse the training list ({exc})") from exc
    elif (root / "images").is_dir():
        img_dir, lab_dir, listed = root / "images", root / "labels", None
    else:
        raise DataError(f"{root}: unknown hippocampus layout; expected imagesTr/ + labelsTr/ (MSD Task04) or "
                        "images/ + labels/ holding .nii.gz files: point --data at the dataset folder itself "
                        "(see data/README.md)")
    if (root / "imagesTr").is_dir() and (root / "images").is_dir():
        raise DataError(f"{root}: holds two hippocampus layouts at once (imagesTr/ + labelsTr/ and images/ + labels/); "
                        "keep one of them in this folder (move the other elsewhere), so it is clear which volumes to use")
    if not lab_dir.is_dir():
        raise DataError(f"{lab_dir}: label folder not found next to {img_dir}")
    images = _nii(img_dir)
    if listed is not None:
        images = [p for p in images if p.name in set(listed)]
    if not images:
        raise DataError(f"{img_dir}: no .nii.gz volume found; copy the Task04 files there (see data/README.md)")
    pairs = []
    for img in images:
        lab = lab_dir / img.name
        if not lab.is_file():
            raise DataError(f"{img}: no label volume {lab.name} in {lab_dir}; every image needs its label")
        pairs.append((_vid(img), img, lab))
    return pairs


def _pair_groups(root: Path) -> dict[str, str]:
    path = Path(root) / "cases.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "pair_group" not in rows[0] or "id" not in rows[0]:
        return {}
    ids = [r["id"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{path}: the id {dup[0]} is on {ids.count(dup[0])} rows ({len(dup)} duplicated id(s)); each "
                        "case must have exactly one row: remove the duplicates")
    return {r["id"]: r["pair_group"] for r in rows}


def load_hippocampus(root: Path, max_volumes: int | None = None, seed: int = 0,
                     intensity: str = "percentile") -> SegDataset:
    """Load MSD Task04 (or the shared subset) as 2-D axial slices with a seeded split by volume.

    Args:
        root: the dataset folder.
        max_volumes: keep only this many volumes (smoke runs): a seeded choice made after the split, with one
            volume of each split first, so each kept volume has the split a full load gives it.
        seed: seed of the 60/20/20 train/val/test split by volume (``pair_group`` kept together).
        intensity: per-volume scaling to [0, 1]: ``"percentile"`` (0.5th-99.5th, clipped; default) or
            ``"minmax"`` (the official pipeline's).
    Returns:
        :class:`SegDataset` of slices ``(1, X, Y)`` with ``meta['volume']``, ``meta['slice']``.
    """
    if intensity not in INTENSITY:
        raise ValueError(f"load_hippocampus: intensity must be one of {sorted(INTENSITY)}, got {intensity!r}")
    scale = INTENSITY[intensity]
    root = Path(root)
    pairs = find_pairs(root)
    groups = _pair_groups(root)
    unknown = sorted(set(groups) - {p[0] for p in pairs})
    if unknown:
        raise DataError(f"{root / 'cases.csv'}: {len(unknown)} id(s) match no volume in {pairs[0][1].parent} "
                        f"({', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}); fix the ids (file names without "
                        ".nii.gz) or remove those rows")
    # the split is made over every volume, then capped: a capped (smoke) load and a full load agree on each
    # kept volume's split, so evaluating a smoke run on the full folder never scores a training volume
    vol_split = assign_seeded_split([p[0] for p in pairs], seed=seed, groups={v: groups[v] for v, *_ in pairs if v in groups})
    if max_volumes is not None and len(pairs) > max_volumes:
        order = np.random.default_rng(seed).permutation(len(pairs)).tolist()
        keep = [next(i for i in order if vol_split[pairs[i][0]] == s) for s in ("train", "val", "test")
                if any(vol_split[p[0]] == s for p in pairs)]
        keep += [i for i in order if i not in keep]
        pairs = [pairs[i] for i in sorted(keep[:max_volumes])]
    cases: list[Case] = []
    for vid, img_path, lab_path in pairs:
        image, image_affine = read_nifti(img_path, with_affine=True)
        label, label_affine = read_nifti(lab_path, with_affine=True)
        check_same_size(image, label, img_path, lab_path)
        if not np.allclose(image_affine, label_affine, rtol=1e-4, atol=1e-3):
            raise DataError(f"{lab_path}: its affine (voxel-to-world matrix) differs from that of its image {img_path}; "
                            "the label was saved in another space or orientation: resample it onto the image (e.g. "
                            "MONAI's ResampleToMatch) or export both again from the same source")
        label = check_labels(label, (0, 1, 2), lab_path)
        cases += volume_to_slices(vid, scale(image), label, meta={"orig_size": tuple(image.shape[:2]),
                                                                    "image_path": str(img_path)})
    for c in cases:
        c.split = vol_split[c.meta["volume"]]
    layout = "MSD Task04 (imagesTr/labelsTr)" if (root / "imagesTr").is_dir() else "images/ + labels/"
    return SegDataset(name="hippocampus", cases=cases, class_names=CLASS_NAMES, in_channels=1, source="real",
                      root=root, has_text=False, description=(
                          f"MSD Task04 Hippocampus, {len(pairs)} volumes ({layout}) as axial slices, {intensity} "
                          f"intensity scaling, seeded split by volume{' keeping pair_group together' if groups else ''}"))


def fetch_hippocampus(data_root: Path, progress: bool = True) -> Path:
    """Download and extract MSD Task04 Hippocampus (~27 MB) into ``data_root`` with MONAI; returns its folder.

    Uses :func:`monai.apps.download_and_extract` with the published MD5 and a progress bar. Needs the
    internet; tests never call it. Licence: CC BY-SA 4.0.
    """
    from monai.apps import download_and_extract

    data_root = Path(data_root)
    target = data_root / "Task04_Hippocampus"
    if (target / "imagesTr").is_dir():
        return target
    data_root.mkdir(parents=True, exist_ok=True)
    try:
        download_and_extract(MSD_TASK04_URL, filepath=str(data_root / "Task04_Hippocampus.tar"),
                             output_dir=str(data_root), hash_val=MSD_TASK04_MD5, hash_type="md5", progress=progress)
    except Exception as exc:
        raise DataError(f"could not download {MSD_TASK04_URL} into {data_root} ({exc}); check the connection, or "
                        "download Task04_Hippocampus.tar from http://medicaldecathlon.com by hand and extract it there") from exc
    return target
