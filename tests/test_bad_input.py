"""Every bad input of the Troubleshooting table: exit status 2, one paragraph, no traceback, nothing written.

The cases (id, command, exact message) live in :mod:`diffseg_core.troubleshooting`; this file only builds
each case's files (``BUILDERS``), runs the table's command in that folder and compares. The same table
renders the book's Troubleshooting page, which must equal the committed ``book/troubleshooting.md``.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO
from diffseg_core.cli import main
from diffseg_core.troubleshooting import CASES, GROUPS, render_markdown

BY_ID = {c.id: c for c in CASES}


# ---------------------------------------------------------------------------------------------------
# tiny dataset writers (3 cases: the seeded split gives one train, one val, one test case)
# ---------------------------------------------------------------------------------------------------
def _rgb(path: Path, h=24, w=24, seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _gray(path: Path, h=24, w=24, seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)).save(path)


def _mask(path: Path, h=24, w=24, value=255, empty=False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    if not empty:
        m[4:12, 6:16] = value
    Image.fromarray(m).save(path)


def monuseg(root: Path, ids=("a", "b", "c"), text=True, empty_masks=False) -> Path:
    for i, cid in enumerate(ids):
        _rgb(root / "images" / f"{cid}.png", seed=i)
        _mask(root / "masks" / f"{cid}.png", empty=empty_masks)
    if text:
        pd.DataFrame({"id": list(ids), "text": [f"The nuclei of {c} are dense." for c in ids]}).to_csv(
            root / "text.csv", index=False)
    return root


def cxr(root: Path, ids=("a", "b", "c")) -> Path:
    for i, cid in enumerate(ids):
        _gray(root / "images" / f"{cid}.png", seed=i)
        _mask(root / "masks" / f"{cid}.png")
    return root


def _nii(path: Path, arr, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def hippocampus(root: Path, n=3) -> Path:
    for i in range(1, n + 1):
        rng = np.random.default_rng(i)
        lab = np.zeros((12, 12, 6), np.uint8)
        lab[3:6, 3:7, 1:5], lab[6:9, 4:8, 1:5] = 1, 2
        _nii(root / "images" / f"hippocampus_{i:03d}.nii.gz", rng.random((12, 12, 6)).astype(np.float32))
        _nii(root / "labels" / f"hippocampus_{i:03d}.nii.gz", lab)
    return root


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels; its data are a few bytes (never decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------------
# runs the checkpoint cases start from (trained once per session, copied per case)
# ---------------------------------------------------------------------------------------------------
class Runs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self._monuseg: Path | None = None
        self._cxr3: Path | None = None

    def monuseg(self, dest: Path) -> None:
        """A finished U-Net run on a 3-image MoNuSeg folder (copied to ``dest``)."""
        if self._monuseg is None:
            work = self.base / "monuseg"
            monuseg(work / "DATA")
            assert main(["train", "--method", "unet", "--dataset", "monuseg", "--data", str(work / "DATA"), "--preset",
                         "smoke", "--steps", "1", "--out", str(work / "RUN"), "--no-progress"]) == 0
            self._monuseg = work / "RUN"
        shutil.copytree(self._monuseg, dest)

    def cxr_on_rgb(self, dest: Path) -> None:
        """A 'cxr' U-Net run trained from Python on 3-channel synthetic tiles (the mistake evaluate must catch)."""
        if self._cxr3 is None:
            from diffseg_core.config import override
            from diffseg_core.data import load_dataset
            from diffseg_core.methods import get_config
            from diffseg_core.train import run_training

            cfg = override(get_config("unet", "cxr", "smoke"), **{"train.steps": 1, "train.val_every": 1})
            ds = load_dataset("synthetic", None, override(get_config("unet", "synthetic", "smoke")).data)
            run_training(cfg, ds, run_dir=self.base / "cxr3", progress=False, verbose=False)
            self._cxr3 = self.base / "cxr3"
        shutil.copytree(self._cxr3, dest)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"))


# ---------------------------------------------------------------------------------------------------
# one builder per case id: it writes the case's files under ``root`` (the folder the command runs in)
# ---------------------------------------------------------------------------------------------------
def _image_case(fn):
    def build(root: Path, runs: Runs) -> None:
        monuseg(root / "DATA")
        fn(root / "DATA")
    return build


def _truncated(d: Path) -> None:
    p = d / "images" / "a.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _corrupt_tiff(d: Path) -> None:
    (d / "images" / "a.png").unlink()
    (d / "images" / "a.tif").write_text("this is a text file, not a TIFF image")


def _rgba(d: Path) -> None:
    arr = np.full((24, 24, 4), 200, np.uint8)
    arr[:8, :8, 3] = 0
    Image.fromarray(arr, "RGBA").save(d / "images" / "a.png")


def _sixteen_bit(root: Path, runs: Runs) -> None:
    cxr(root / "DATA")
    arr = (np.random.default_rng(0).random((24, 24)) * 4095).astype(np.uint16)
    Image.fromarray(arr).save(root / "DATA" / "images" / "a.png")


def _rgb_for_grey(root: Path, runs: Runs) -> None:
    cxr(root / "DATA")
    _rgb(root / "DATA" / "images" / "a.png")


def _tiny(d: Path) -> None:
    _rgb(d / "images" / "a.png", 8, 8)
    _mask(d / "masks" / "a.png", 8, 8, empty=True)


def _mask_values(d: Path) -> None:
    m = np.zeros((24, 24), np.uint8)
    m[2:8, 2:8], m[10:16, 10:16] = 1, 2
    Image.fromarray(m).save(d / "masks" / "a.png")


def _mask_jpeg(d: Path) -> None:
    """A binary mask with the soft, ringing edges JPEG leaves (made with numpy, so the levels do not depend on
    the JPEG codec's version): a 3 x 3 box blur of the box plus a faint checkerboard ripple near it."""
    m = np.zeros((24, 24), np.float64)
    m[4:14, 5:17] = 255
    blurred = sum(np.roll(np.roll(m, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    ripple = ((np.indices((24, 24)).sum(0) % 2) * 6.0) * ((blurred > 0) & (blurred < 255))
    Image.fromarray(np.clip(blurred + ripple, 0, 255).astype(np.uint8)).save(d / "masks" / "a.png")


def _folder_wrong(root: Path, runs: Runs) -> None:
    (root / "DATA" / "scans").mkdir(parents=True)
    (root / "DATA" / "labels.txt").write_text("a 1\n")


def _two_layouts(root: Path, runs: Runs) -> None:
    monuseg(root / "DATA")
    _rgb(root / "DATA" / "Train_Folder" / "img" / "x.png")
    _mask(root / "DATA" / "Train_Folder" / "labelcol" / "x.png")


def _cases_csv(rows: list[tuple[str, str]]):
    def build(d: Path) -> None:
        pd.DataFrame(rows, columns=["id", "split"]).to_csv(d / "cases.csv", index=False)
    return build


def _hippo_case(fn):
    def build(root: Path, runs: Runs) -> None:
        hippocampus(root / "DATA")
        fn(root / "DATA")
    return build


H1 = "hippocampus_001.nii.gz"


def _nifti_gzip(d: Path) -> None:
    p = d / "images" / H1
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])


def _text_columns(root: Path, runs: Runs) -> None:
    folder = root / "DATA" / "Train_Folder"
    for i, cid in enumerate(("a", "b", "c")):
        _rgb(folder / "img" / f"{cid}.png", seed=i)
        _mask(folder / "labelcol" / f"{cid}.png")
    pd.DataFrame({"Name": ["a.png", "b.png", "c.png"], "Text": ["x", "y", "z"]}).to_excel(
        folder / "Train_text.xlsx", index=False)


def _text_encoding(d: Path) -> None:
    (d / "text.csv").write_bytes("id,text\na,Noyaux serrés.\nb,Très dense.\nc,Épars.\n".encode("latin-1"))


def _with_data_and_run(root: Path, runs: Runs) -> None:
    monuseg(root / "DATA")
    runs.monuseg(root / "RUN")


def _other_kind(root: Path, runs: Runs) -> None:
    runs.monuseg(root / "RUN")
    hippocampus(root / "VOLUMES")


def _channels(root: Path, runs: Runs) -> None:
    cxr(root / "DATA")
    runs.cxr_on_rgb(root / "RUN")


def _truncated_checkpoint(root: Path, runs: Runs) -> None:
    _with_data_and_run(root, runs)
    p = root / "RUN" / "best.pt"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _other_method_checkpoint(root: Path, runs: Runs) -> None:
    _with_data_and_run(root, runs)
    p = root / "RUN" / "best.pt"
    ckpt = torch.load(p, weights_only=False)
    ckpt["config"]["method"] = "cdal"
    torch.save(ckpt, p)


def _other_data(root: Path, runs: Runs) -> None:
    runs.monuseg(root / "RUN")
    monuseg(root / "DATA")
    for i, cid in enumerate("abc"):
        _rgb(root / "DATA" / "images" / f"{cid}.png", seed=10 + i)


def _unknown_keys(root: Path, runs: Runs) -> None:
    _with_data_and_run(root, runs)
    p = root / "RUN" / "config.json"
    cfg = json.loads(p.read_text())
    cfg["data"]["tile_cache"] = True
    p.write_text(json.dumps(cfg))


def _locked(root: Path, runs: Runs, holder: list) -> None:
    _with_data_and_run(root, runs)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    holder.append(proc)
    import socket
    import time
    (root / "RUN" / ".lock").write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "started": time.time()}))


BUILDERS = {
    "image-truncated": _image_case(_truncated),
    "image-corrupt-tiff": _image_case(_corrupt_tiff),
    "image-empty": _image_case(lambda d: (d / "images" / "a.png").write_bytes(b"")),
    "image-rgba": _image_case(_rgba),
    "image-16bit": _sixteen_bit,
    "image-grey-for-rgb": _image_case(lambda d: _gray(d / "images" / "a.png")),
    "image-rgb-for-grey": _rgb_for_grey,
    "image-tiny": _image_case(_tiny),
    "image-huge": _image_case(lambda d: png_header_only(d / "images" / "a.png", 10_000, 10_000)),
    "mask-values": _image_case(_mask_values),
    "mask-jpeg": _image_case(_mask_jpeg),
    "mask-size": _image_case(lambda d: _mask(d / "masks" / "a.png", 24, 20)),
    "mask-missing": _image_case(lambda d: _rgb(d / "images" / "d.png")),
    "mask-orphan": _image_case(lambda d: _mask(d / "masks" / "z.png")),
    "mask-all-background": lambda root, runs: monuseg(root / "DATA", empty_masks=True),
    "folder-empty": lambda root, runs: (root / "DATA").mkdir(),
    "folder-missing": lambda root, runs: None,
    "folder-wrong-layout": _folder_wrong,
    "folder-two-layouts": _two_layouts,
    "cases-unknown-split": _image_case(_cases_csv([("a", "training"), ("b", "val"), ("c", "test")])),
    "cases-unknown-id": _image_case(_cases_csv([("a", "train"), ("b", "val"), ("c", "test"), ("ghost", "test")])),
    "cases-duplicate-id": _image_case(_cases_csv([("a", "train"), ("a", "val"), ("b", "val"), ("c", "test")])),
    "nifti-2d": _hippo_case(lambda d: _nii(d / "images" / H1, np.zeros((12, 12), np.float32))),
    "nifti-4d": _hippo_case(lambda d: _nii(d / "images" / H1, np.zeros((12, 12, 6, 2), np.float32))),
    "nifti-labels": _hippo_case(lambda d: _nii(d / "labels" / H1, np.full((12, 12, 6), 3, np.uint8))),
    "nifti-shape": _hippo_case(lambda d: _nii(d / "labels" / H1, np.zeros((12, 12, 5), np.uint8))),
    "nifti-affine": _hippo_case(lambda d: _nii(d / "labels" / H1, np.zeros((12, 12, 6), np.uint8),
                                               np.diag([2.0, 2.0, 2.0, 1.0]))),
    "nifti-gzip": _hippo_case(_nifti_gzip),
    "text-missing-row": _image_case(lambda d: pd.DataFrame({"id": ["a", "b"], "text": ["x", "y"]}).to_csv(
        d / "text.csv", index=False)),
    "text-empty": _image_case(lambda d: pd.DataFrame({"id": ["a", "b", "c"], "text": ["x", "", "z"]}).to_csv(
        d / "text.csv", index=False)),
    "text-columns": _text_columns,
    "text-encoding": _image_case(_text_encoding),
    "option-unknown-method": lambda root, runs: None,
    "option-unknown-dataset": lambda root, runs: None,
    "option-unknown-preset": lambda root, runs: None,
    "option-wrong-method": lambda root, runs: None,
    "option-train-images": lambda root, runs: monuseg(root / "DATA"),
    "option-timesteps-zero": lambda root, runs: None,
    "option-steps-zero": lambda root, runs: None,
    "option-data-missing": lambda root, runs: None,
    "option-out-unwritable": lambda root, runs: (root / "FILE").write_text("a file, not a folder"),
    "option-out-holds-run": _with_data_and_run,
    "option-resume-no-checkpoint": lambda root, runs: monuseg(root / "DATA"),
    "evaluate-other-kind": _other_kind,
    "evaluate-channels": _channels,
    "evaluate-limit-zero": _with_data_and_run,
    "evaluate-not-a-run": lambda root, runs: (monuseg(root / "DATA"), (root / "RUN").mkdir()),
    "checkpoint-truncated": _truncated_checkpoint,
    "checkpoint-other-method": _other_method_checkpoint,
    "resume-other-method": _with_data_and_run,
    "resume-other-settings": _with_data_and_run,
    "resume-other-data": _other_data,
    "config-unknown-keys": _unknown_keys,
    "run-locked": _locked,
}


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its content (folders: "dir")."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def normalise(text: str, root: Path) -> str:
    text = text.replace(str(root) + "/", "").replace(str(root), ".")
    return re.sub(r"pid \d+ on \S+, started [\d-]+ [\d:]+", "pid PID on HOST, started TIME", text)


# ---------------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------------
def test_the_table_has_at_least_25_cases_each_with_a_builder():
    assert len(CASES) >= 25
    assert len(BY_ID) == len(CASES), "case ids must be unique"
    assert set(BUILDERS) == set(BY_ID), f"builders without a case: {set(BUILDERS) - set(BY_ID)}; cases without a " \
                                        f"builder: {set(BY_ID) - set(BUILDERS)}"
    assert {c.group for c in CASES} == set(GROUPS)
    for c in CASES:
        assert "\n" not in c.message and c.message.strip() == c.message, c.id
        assert ";" in c.message or ". " in c.message, f"{c.id}: the message must also say what to do"


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_bad_input(case_id, tmp_path, runs, monkeypatch, capsys):
    case = BY_ID[case_id]
    monkeypatch.delenv("DIFFSEG_DATA", raising=False)
    monkeypatch.delenv("DIFFSEG_PRESET", raising=False)
    holder: list = []
    try:
        if case_id == "run-locked":
            _locked(tmp_path, runs, holder)
        else:
            BUILDERS[case_id](tmp_path, runs)
        monkeypatch.chdir(tmp_path)
        before = snapshot(tmp_path)
        capsys.readouterr()
        status = main(shlex.split(case.command)[3:])  # drop "python -m diffseg_core"
        err = capsys.readouterr().err
    finally:
        for proc in holder:
            proc.kill()
            proc.wait()
    assert status == case.status, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert normalise(lines[0], tmp_path) == f"error: {case.message}"
    assert snapshot(tmp_path) == before, "a refused command must not create, change or leave anything"


@pytest.mark.parametrize("case_id", ["image-truncated"])
def test_real_process_exits_2_without_traceback(case_id, tmp_path, runs):
    """The same through ``python -m diffseg_core`` in a fresh process (argparse and all)."""
    BUILDERS[case_id](tmp_path, runs)
    before = snapshot(tmp_path)
    out = subprocess.run([sys.executable, "-m", "diffseg_core", *shlex.split(BY_ID[case_id].command)[3:]],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip() == f"error: {BY_ID[case_id].message}"
    assert snapshot(tmp_path) == before


def test_troubleshooting_page_is_the_rendered_table():
    page = REPO / "book" / "troubleshooting.md"
    assert page.read_text() == render_markdown(), (
        "book/troubleshooting.md is out of date: python -m diffseg_core.troubleshooting > book/troubleshooting.md")
    for c in CASES:
        assert f"error: {c.message}" in page.read_text()


def test_troubleshooting_page_is_in_the_toc():
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    appendices = next(p for p in toc["parts"] if p["caption"] == "Appendices")
    assert {"file": "book/troubleshooting"} in appendices["chapters"]


def test_huge_image_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    """The 10 000 x 10 000 PNG holds a few bytes of data: decoding it would fail, so reaching the size
    message proves the check ran on the header alone (memory stays bounded)."""
    from PIL import ImageFile

    from diffseg_core.data import DataError
    from diffseg_core.data.io import MAX_IMAGE_PIXELS, read_image, read_mask

    png_header_only(tmp_path / "big.png", 10_000, 10_000)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    for reader in (lambda p: read_image(p, 3), lambda p: read_image(p, 1), read_mask):
        with pytest.raises(DataError, match="megapixel limit"):
            reader(tmp_path / "big.png")
    assert not decoded
    assert 10_000 * 10_000 > MAX_IMAGE_PIXELS >= 4020 * 4892, "Montgomery X-rays (4020 x 4892) must still load"


def test_opaque_rgba_and_grey_x_rays_saved_as_rgb_still_load(tmp_path):
    """The checks refuse what is wrong, not what is merely unusual."""
    from diffseg_core.data.io import read_image

    arr = np.full((16, 16, 4), 255, np.uint8)
    arr[..., :3] = np.random.default_rng(0).integers(0, 256, (16, 16, 3))
    Image.fromarray(arr, "RGBA").save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png", 3).shape == (3, 16, 16)
    grey = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "xray.jpg", quality=90)
    assert read_image(tmp_path / "xray.jpg", 1).shape == (1, 16, 16)
