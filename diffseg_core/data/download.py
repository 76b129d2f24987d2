"""Downloading datasets (for online users; tests and notebooks never download anything).

* :func:`download` fetches one URL with a progress bar, verifies an MD5/SHA-256 checksum, and renames the
  file into place only when it is complete and correct (a ``.part`` file meanwhile), so an interrupted
  or corrupted download never looks like a finished one.
* :func:`fetch_hippocampus` gets MSD Task04 through MONAI (stable public URL, published MD5).
* :func:`fetch_monuseg`, :func:`fetch_cxr`, :func:`fetch_qata` have no stable anonymous URL (registration,
  Kaggle login or Google Drive); they raise :class:`DataError` with the manual steps, also in ``data/README.md``.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .base import DataError
from .hippocampus import fetch_hippocampus

__all__ = ["download", "file_digest", "fetch_hippocampus", "fetch_monuseg", "fetch_cxr", "fetch_qata", "MANUAL_STEPS"]

MANUAL_STEPS: dict[str, str] = {
    "monuseg": (
        "MoNuSeg has no anonymous download link. Either (1) register at https://monuseg.grand-challenge.org/Data/ "
        "and download 'MoNuSeg 2018 Training Data' and 'MoNuSegTestData', extracting both into <data>/monuseg/ "
        "(each keeps its 'Tissue Images/' and 'Annotations/' folders), or (2) take the LViT release "
        "(https://github.com/HUANGLIZI/LViT, datasets/MoNuSeg: Train_Folder, Val_Folder, Test_Folder and the "
        "*_text.xlsx files) into <data>/monuseg/. Licence: CC BY-NC-SA 4.0."),
    "cxr": (
        "Chest X-ray lungs: download the Kaggle dataset 'Chest X-ray masks and labels' (needs a Kaggle account; "
        "https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels) and extract it so that "
        "<data>/cxr/CXR_png/ and <data>/cxr/masks/ exist; or the Montgomery County set from the U.S. National "
        "Library of Medicine (CXR_png/ + ManualMask/leftMask/ + ManualMask/rightMask/) into <data>/cxr/."),
    "qata": (
        "QaTa-COV19 images are on Kaggle ('QaTa-COV19 Dataset', Qatar University / Tampere University; Kaggle "
        "account needed) and the text annotations come from LViT (https://github.com/HUANGLIZI/LViT, links in its "
        "README). Arrange them as <data>/qata/Train_Folder/{img,labelcol}, <data>/qata/Test_Folder/{img,labelcol} "
        "with Train_text.xlsx and Test_text.xlsx, masks named mask_<image name>."),
}


def file_digest(path: Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file (``md5`` or ``sha256``), read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, md5: str | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` with a tqdm progress bar, check its checksum, rename atomically.

    An existing ``dest`` with the right checksum is kept (no download). The data go to ``dest + '.part'``
    first; the checksum is verified there and only then is the file renamed to ``dest``.

    Raises:
        DataError: the URL cannot be reached (e.g. offline; the message says how to download by hand) or
            the checksum does not match (the partial file is deleted).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    expected = [(a, v.lower()) for a, v in (("md5", md5), ("sha256", sha256)) if v]
    if dest.is_file() and all(file_digest(dest, a) == v for a, v in expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({exc}). Are you offline? Download it by hand (a browser works) "
                        f"and save it as {dest}") from exc
    for algorithm, value in expected:
        got = file_digest(part, algorithm)
        if got != value:
            part.unlink(missing_ok=True)
            raise DataError(f"{url}: {algorithm} checksum {got} does not match the expected {value}; the download is "
                            "corrupt or the file changed upstream. Nothing was saved; try again")
    os.replace(part, dest)
    return dest


def _manual(name: str, data_root: str | Path) -> Path:
    raise DataError(f"no automatic download for {name} (into {Path(data_root) / name}). {MANUAL_STEPS[name]}")


def fetch_monuseg(data_root: str | Path) -> Path:
    """Explains the manual MoNuSeg download (raises :class:`DataError`); see :data:`MANUAL_STEPS`."""
    return _manual("monuseg", data_root)


def fetch_cxr(data_root: str | Path) -> Path:
    """Explains the manual chest X-ray download (raises :class:`DataError`)."""
    return _manual("cxr", data_root)


def fetch_qata(data_root: str | Path) -> Path:
    """Explains the manual QaTa-COV19 download (raises :class:`DataError`)."""
    return _manual("qata", data_root)
