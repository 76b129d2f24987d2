"""Predicted label volumes written as NIfTI, on the grid of the input image, readable by any viewer.

A prediction for a hippocampus volume is an ``(X, Y, Z)`` array of class indices in the **stored** voxel
order of its input (the loader does not re-orient, :mod:`diffseg_core.data.hippocampus`). Writing it with
the input image's affine and header puts it exactly on top of the image in ITK-SNAP, 3D Slicer, FSLeyes or
nibabel. The header is copied and only what must change is changed: data type ``uint8``, no intensity
scaling (slope 1, intercept 0), a display window of ``0..K-1`` and a description.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .base import DataError

__all__ = ["save_label_volume", "volume_sources", "export_predictions"]


def save_label_volume(label: np.ndarray, path: str | Path, reference: str | Path | None = None,
                      num_classes: int | None = None) -> Path:
    """Write a label volume as NIfTI with the affine and header of ``reference``.

    Args:
        label: ``(X, Y, Z)`` integer class indices (>= 0, < 256).
        path: output file (``.nii.gz`` or ``.nii``); parent folders are created.
        reference: the input image the prediction belongs to; its affine and header are copied and its
            shape must equal ``label.shape``. ``None`` (synthetic volumes) writes a 1 mm identity affine.
        num_classes: K for the display window ``cal_max = K - 1`` (default: the largest label).
    Returns:
        The written path.
    """
    import nibabel as nib

    label = np.asarray(label)
    if label.ndim != 3:
        raise DataError(f"save_label_volume: label must be (X, Y, Z), got shape {label.shape}")
    if label.dtype.kind not in "iub":
        raise DataError(f"save_label_volume: label must hold integer class indices, got dtype {label.dtype}")
    if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
        raise DataError(f"save_label_volume: labels must lie in 0..255, got {int(label.min())}..{int(label.max())}")
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise DataError(f"save_label_volume: {path} must end in .nii or .nii.gz")
    data = label.astype(np.uint8)
    if reference is not None:
        reference = Path(reference)
        if not reference.is_file():
            raise DataError(f"save_label_volume: reference image {reference} not found")
        ref = nib.load(str(reference))
        if tuple(ref.shape[:3]) != data.shape:
            raise DataError(f"save_label_volume: prediction {data.shape} does not match the grid {tuple(ref.shape)} "
                            f"of {reference}")
        header = ref.header.copy()
        if len(ref.shape) > 3:  # a (X, Y, Z, 1) image: the label is 3-D
            header.set_data_shape(data.shape)
        img = nib.Nifti1Image(data, ref.affine, header)
    else:
        img = nib.Nifti1Image(data, np.eye(4))
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = (num_classes - 1) if num_classes else int(data.max()) if data.size else 0
    img.header["descrip"] = b"diffseg prediction (class indices)"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def volume_sources(cases: Sequence[object]) -> dict[str, Path | None]:
    """Volume id -> the NIfTI image it was read from (``meta['image_path']``; ``None`` for synthetic volumes)."""
    out: dict[str, Path | None] = {}
    for c in cases:
        meta = getattr(c, "meta", {})
        vid = meta.get("volume")
        if vid is None:
            raise DataError(f"case {getattr(c, 'id', '?')} is not a slice of a volume (no meta['volume'])")
        src = meta.get("image_path")
        out.setdefault(str(vid), Path(src) if src else None)
    return out


def export_predictions(predictions: Mapping[str, np.ndarray], out_dir: str | Path,
                       sources: Mapping[str, Path | None] | None = None, num_classes: int | None = None) -> list[Path]:
    """Write every ``volume id -> (X, Y, Z) prediction`` as ``out_dir/<id>.nii.gz`` on its input's grid.

    ``sources`` maps ids to input images (:func:`volume_sources`); a missing or ``None`` source writes an
    identity affine. Returns the written paths.
    """
    out_dir = Path(out_dir)
    sources = sources or {}
    return [save_label_volume(pred, out_dir / f"{vid}.nii.gz", sources.get(vid), num_classes)
            for vid, pred in predictions.items()]
