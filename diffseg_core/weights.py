"""The authors' weights and the papers' frozen backbones: where each file comes from, where it is kept, how to get it.

Nothing here runs at import time and no test or notebook downloads anything: a chapter that needs a file
looks for it with :func:`find_weights` and skips with :func:`missing_message` when it is absent.

**Where files are kept**: ``$DIFFSEG_WEIGHTS`` if set, else ``~/.cache/diffseg/weights`` (:func:`weights_dir`).
A file is found there under its own name (``<dir>/<filename>``) or, for the cDAL files, also in a
``saved_models/`` sub-folder (the authors' layout, so their folder can be copied as it is).

**Online**: :func:`fetch_weights` (or ``python -m diffseg_core.weights fetch NAME``) downloads one file into
that folder: through ``huggingface_hub`` when it is installed and the file is on the hub (the hub client
checks the file's SHA-256 itself), otherwise by plain HTTP with a progress bar, into ``<file>.part`` first
and renamed only when complete. The SHA-256 is checked against the published value when there is one (the
authors publish none) or against the hub's own record of the file (its ``X-Linked-Etag``), and is written
next to the file (``<file>.sha256``) so later corruption is detected. The final check is always the strict
load: every converter refuses a file whose names or shapes differ from the official network.

**Offline**: :class:`WeightsNotFound` says which file is missing, where to download it on another machine
and where to put it.

Files (:data:`WEIGHTS`): the cDAL generators released by Hejrati et al. (MoNuSeg, CXR folds, Hippocampus),
OpenAI's ADM-256 unconditional ImageNet diffusion model that TextDiff reads its features from, and (a model
folder, :func:`fetch_clinical_bert`) Bio_ClinicalBERT, TextDiff's text encoder.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .data.download import file_digest

__all__ = ["WeightsFile", "WEIGHTS", "WeightsNotFound", "weights_dir", "find_weights", "require_weights",
           "missing_message", "fetch_weights", "fetch_clinical_bert", "CLINICAL_BERT_REPO", "main"]

CLINICAL_BERT_REPO = "emilyalsentzer/Bio_ClinicalBERT"
_CDAL_HUB = "Hejrati/cDAL"
_CDAL_LICENCE = ("no separate licence for the weights; the cDAL repository's LICENSE.txt places the project "
                 "under the NVIDIA Source Code License-NC (it derives from DDGAN): non-commercial research or "
                 "evaluation only")


@dataclass(frozen=True)
class WeightsFile:
    """One downloadable weights file.

    Attributes:
        name: registry key (``cdal-monuseg``, ``adm256-uncond``, ...).
        filename: the file's own name (kept unchanged in the weights folder).
        what: one line saying what the file holds.
        source: who released it and where it is documented.
        licence: the terms it comes with.
        url: a plain-HTTP URL.
        hf_repo, hf_path: the Hugging Face hub repository and path, when the file is on the hub.
        sha256: the published checksum (``None``: not published).
        approx_bytes: the expected size, for the message shown before a download.
    """

    name: str
    filename: str
    what: str
    source: str
    licence: str
    url: str
    hf_repo: str | None = None
    hf_path: str | None = None
    sha256: str | None = None
    approx_bytes: int | None = None


def _cdal(name: str, filename: str, what: str, params: int, note: str = "") -> WeightsFile:
    path = f"saved_models/{filename}"
    return WeightsFile(name, filename, what,
                       source=f"Hejrati et al., cDAL (MICCAI 2024): github.com/Hejrati/cDAL, saved_models/ "
                              f"(0-byte placeholders in git; files on the Hugging Face hub, {_CDAL_HUB}){note}",
                       licence=_CDAL_LICENCE, url=f"https://huggingface.co/{_CDAL_HUB}/resolve/main/{path}",
                       hf_repo=_CDAL_HUB, hf_path=path, approx_bytes=4 * params)


#: every file the book can use, by name
WEIGHTS: dict[str, WeightsFile] = {w.name: w for w in (
    _cdal("cdal-monuseg", "monu_mIoU_0.7095723733663516_F1_0.829242061772747.pth",
          "cDAL generator for MoNuSeg (parameters_monu.json; test mIoU 0.7096, F1 0.8292 in its name)", 41_666_753),
    _cdal("cdal-cxr-fold1", "lung_fold1_mIoU_0.9206181147637785_F1_0.9578827138871646.pth",
          "cDAL generator for chest X-ray lungs, fold 1 (parameters_lung.json; test F1 0.9579)", 8_843_777),
    _cdal("cdal-cxr-fold2", "lung_fold2_mIoU_0.9305454547271645_F1_0.9637979750951863.pth",
          "cDAL generator for chest X-ray lungs, fold 2 (parameters_lung.json; test F1 0.9638)", 8_843_777),
    _cdal("cdal-cxr-fold0", "lung_fold0_mIoU_0.9400968685008461_F1_0.9687744376478108.pth",
          "cDAL generator for chest X-ray lungs, fold 0 (Montgomery test set; test F1 0.9688)", 8_843_777,
          note="; listed in the repository's first commit, whether the hub holds it is not recorded"),
    _cdal("cdal-hippocampus", "Hippo_fold0.pth",
          "cDAL generator for MSD Hippocampus, fold 0 (sampling_hippo.py config, EMA weights)", 3_682_275,
          note="; the name is the one sampling_hippo.py loads"),
    WeightsFile("adm256-uncond", "256x256_diffusion_uncond.pt",
                "OpenAI ADM 256x256 unconditional ImageNet diffusion model (guided-diffusion), TextDiff's backbone",
                source="Dhariwal & Nichol, 'Diffusion Models Beat GANs on Image Synthesis' (2021): "
                       "github.com/openai/guided-diffusion, README 'Download pre-trained models'",
                licence="MIT (guided-diffusion code and released checkpoints); trained on ImageNet, whose terms of "
                        "access allow non-commercial research and education only",
                url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
                approx_bytes=4 * 552_814_086),
)}


class WeightsNotFound(FileNotFoundError):
    """A weights file is not on this machine; the message says where to get it and where to put it."""


def weights_dir() -> Path:
    """The folder weights are kept in: ``$DIFFSEG_WEIGHTS``, else ``~/.cache/diffseg/weights``."""
    env = os.environ.get("DIFFSEG_WEIGHTS", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffseg" / "weights"


def _entry(name: str) -> WeightsFile:
    if name not in WEIGHTS:
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def _candidates(entry: WeightsFile) -> list[Path]:
    root = weights_dir()
    return [root / entry.filename, root / "saved_models" / entry.filename]


def find_weights(name: str) -> Path | None:
    """The path of a non-empty copy of ``name`` in :func:`weights_dir`, or ``None``."""
    for path in _candidates(_entry(name)):
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def missing_message(name: str) -> str:
    """What to do when ``name`` is absent: the online command and, offline, where to put the file."""
    e = _entry(name)
    size = f" (about {e.approx_bytes / 2**20:,.0f} MiB)" if e.approx_bytes else ""
    return (f"{e.what}: {e.filename} is not in {weights_dir()}. Online: python -m diffseg_core.weights fetch {name} "
            f"(or diffseg_core.weights.fetch_weights({name!r})). Offline: download {e.url}{size} on a machine "
            f"with internet access and copy it to {weights_dir() / e.filename} (or point DIFFSEG_WEIGHTS at the "
            f"folder that holds it). Source: {e.source}. Licence: {e.licence}.")


def require_weights(name: str) -> Path:
    """:func:`find_weights` or :class:`WeightsNotFound` with :func:`missing_message`."""
    path = find_weights(name)
    if path is None:
        raise WeightsNotFound(missing_message(name))
    return path


def _check_sha(path: Path, expected: str | None, where: str) -> str:
    got = file_digest(path, "sha256")
    if expected and got != expected.lower():
        path.unlink(missing_ok=True)
        raise ValueError(f"{where}: SHA-256 {got} does not match the expected {expected}; the download is corrupt "
                         "or the file changed upstream. Nothing was kept; try again")
    return got


def _http_download(url: str, dest: Path, expected_sha: str | None, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``dest.part`` (progress bar, SHA-256 on the fly), check, rename; returns the SHA-256."""
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            hub_sha = (resp.headers.get("X-Linked-Etag") or "").strip('"').lower()
            expected_sha = expected_sha or (hub_sha if len(hub_sha) == 64 else None)
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"received {part.stat().st_size} of {total} bytes")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise WeightsNotFound(f"could not download {url} ({exc}).") from exc
    got = h.hexdigest()
    if expected_sha and got != expected_sha.lower():
        part.unlink(missing_ok=True)
        raise ValueError(f"{url}: SHA-256 {got} does not match {expected_sha}; nothing was kept, try again")
    os.replace(part, dest)
    return got


def fetch_weights(name: str, progress: bool = True, force: bool = False, timeout: float = 60.0) -> Path:
    """Download ``name`` into :func:`weights_dir` (kept if already there) and return its path.

    Uses ``huggingface_hub`` for files on the hub when it is installed, else plain HTTP (progress bar,
    ``.part`` file, SHA-256 checked against the published or hub-recorded value and written to
    ``<file>.sha256``). A file already present is re-checked against its ``.sha256`` record.

    Raises:
        WeightsNotFound: the download failed (e.g. offline); the message says how to do it by hand.
        ValueError: the checksum does not match (nothing is kept).
    """
    e = _entry(name)
    dest = weights_dir() / e.filename
    record = dest.with_name(dest.name + ".sha256")
    found = find_weights(name)
    if found is not None and not force:
        if found == dest and record.is_file():
            _check_sha(found, record.read_text().split()[0], str(found))
        return found
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        got = None
        if e.hf_repo is not None:
            try:
                from huggingface_hub import hf_hub_download
            except ImportError:
                hf_hub_download = None
            if hf_hub_download is not None:
                cached = Path(hf_hub_download(repo_id=e.hf_repo, filename=e.hf_path))   # verified by the client
                part = dest.with_name(dest.name + ".part")
                shutil.copyfile(cached, part)
                os.replace(part, dest)
                got = _check_sha(dest, e.sha256, str(dest))
        if got is None:
            got = _http_download(e.url, dest, e.sha256, progress, timeout)
    except WeightsNotFound as exc:
        raise WeightsNotFound(f"{exc} {missing_message(name)}") from exc
    except ValueError:
        raise
    except Exception as exc:  # hub errors (offline, gated, moved) all end in the same advice
        raise WeightsNotFound(f"could not fetch {name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                              f"{missing_message(name)}") from exc
    record.write_text(f"{got}  {e.filename}\n")
    return dest


def fetch_clinical_bert() -> str:
    """Download Bio_ClinicalBERT (TextDiff's text encoder, MIT licence on its model card; trained on MIMIC-III
    notes) into the Hugging Face cache, where ``load_text_encoder('clinical')`` then finds it offline.

    Returns the local folder. Needs ``huggingface_hub`` (installed with ``transformers``) and the internet.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers brings it
        raise WeightsNotFound("fetch_clinical_bert needs huggingface_hub (pip install huggingface_hub)") from exc
    try:
        return snapshot_download(CLINICAL_BERT_REPO)
    except Exception as exc:
        raise WeightsNotFound(f"could not download {CLINICAL_BERT_REPO} ({type(exc).__name__}). Offline, copy a "
                              f"Hugging Face cache that holds it to this machine (HF_HOME), or save the model folder "
                              f"and pass it as the text encoder (--text-encoder is 'clinical' or 'minilm'; "
                              f"load_text_encoder accepts a folder)") from exc


def main(argv: list[str] | None = None) -> int:
    """``python -m diffseg_core.weights list | where NAME | fetch NAME [--force] | fetch-bert``."""
    p = argparse.ArgumentParser(prog="python -m diffseg_core.weights", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every known file, whether it is here, its source and licence")
    w = sub.add_parser("where", help="the path of a file, or what to do when it is absent")
    w.add_argument("name", choices=sorted(WEIGHTS))
    f = sub.add_parser("fetch", help="download a file into the weights folder")
    f.add_argument("name", choices=sorted(WEIGHTS))
    f.add_argument("--force", action="store_true")
    sub.add_parser("fetch-bert", help="download Bio_ClinicalBERT into the Hugging Face cache")
    args = p.parse_args(argv)
    if args.cmd == "list":
        print(f"weights folder: {weights_dir()}  (set DIFFSEG_WEIGHTS to change it)")
        for e in WEIGHTS.values():
            print(f"- {e.name}: {'present' if find_weights(e.name) else 'absent'}, {e.filename}\n    {e.what}\n"
                  f"    source: {e.source}\n    licence: {e.licence}")
        return 0
    try:
        if args.cmd == "where":
            print(require_weights(args.name))
        elif args.cmd == "fetch":
            print(fetch_weights(args.name, force=args.force))
        else:
            print(fetch_clinical_bert())
    except (WeightsNotFound, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
