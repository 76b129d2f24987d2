"""Every layout on tiny trees written to tmp_path, and every validation error naming its file."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffseg_core.config import DataConfig
from diffseg_core.data import DataError, find_dataset_root, load_dataset
from diffseg_core.data.cxr import load_cxr
from diffseg_core.data.download import MANUAL_STEPS, download, fetch_monuseg, fetch_qata, file_digest
from diffseg_core.data.hippocampus import load_hippocampus, slices_to_volume, volume_to_slices
from diffseg_core.data.io import cap_cases, read_image, read_mask, resize_pair
from diffseg_core.data.monuseg import load_monuseg, rasterise_xml
from diffseg_core.data.qata import load_qata


# ---------------------------------------------------------------------------------------------------
# tiny file writers
# ---------------------------------------------------------------------------------------------------
def _rgb(path: Path, h=12, w=12, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _gray(path: Path, h=12, w=12, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _mask(path: Path, h=12, w=12, box=(2, 2, 6, 6), value=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), dtype=np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = value
    Image.fromarray(m).save(path)
    return m > 0


def _xlsx(path: Path, rows: dict[str, str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"Image": list(rows), "Description": list(rows.values())}).to_excel(path, index=False)


def _xml(path: Path, polygons):
    path.parent.mkdir(parents=True, exist_ok=True)
    regions = "".join(
        f'<Region Id="{i}"><Vertices>' + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in poly) + "</Vertices></Region>"
        for i, poly in enumerate(polygons, 1))
    path.write_text(f'<Annotations><Annotation Id="1"><Regions>{regions}</Regions></Annotation></Annotations>')


def _nii(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


# ---------------------------------------------------------------------------------------------------
# validation errors name the file
# ---------------------------------------------------------------------------------------------------
def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png.*cannot read"):
        read_image(bad, 3)
    with pytest.raises(DataError, match="missing.png.*not found"):
        read_image(tmp_path / "missing.png", 1)


def test_wrong_channel_count_names_the_file(tmp_path):
    _gray(tmp_path / "gray.png")
    with pytest.raises(DataError, match="gray.png.*expected an RGB image"):
        read_image(tmp_path / "gray.png", 3)
    grey = _gray(tmp_path / "unused.png").astype(np.int16)  # an X-ray saved as RGB, channels nearly equal
    rgb = np.clip(np.stack([grey, grey + 1, grey - 1], -1), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")  # averaged over channels (cDAL does the same)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png", 1)[0], rgb.mean(-1) / 255, atol=1e-6)
    _rgb(tmp_path / "colour.png")  # a real colour image is not an X-ray
    with pytest.raises(DataError, match="colour.png: expected a grayscale image, got a colour one"):
        read_image(tmp_path / "colour.png", 1)


def test_mask_not_binary_names_the_file(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:2], m[2:4] = 100, 255
    Image.fromarray(m).save(tmp_path / "soft.png")
    with pytest.raises(DataError, match="soft.png.*not binary"):
        read_mask(tmp_path / "soft.png")
    Image.fromarray(np.stack([m, m * 0, m * 0], -1)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png.*colour channels"):
        read_mask(tmp_path / "colour.png")
    _mask(tmp_path / "ok.png", value=1)
    assert set(np.unique(read_mask(tmp_path / "ok.png"))) == {0, 1}


def test_size_mismatch_missing_pair_empty_folder_unknown_layout(tmp_path):
    root = tmp_path / "cxr"
    _gray(root / "images" / "a.png", 12, 12)
    _mask(root / "masks" / "a.png", 10, 12)
    with pytest.raises(DataError, match=r"masks/a.png.*differs from its image"):
        load_cxr(root)
    _mask(root / "masks" / "a.png")
    _gray(root / "images" / "b.png")
    with pytest.raises(DataError, match=r"images/b.png: no mask found"):
        load_cxr(root)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(DataError, match="images.*folder is empty"):
        load_cxr(empty)
    (tmp_path / "junk").mkdir()
    for loader, name in ((load_cxr, "chest X-ray"), (load_monuseg, "MoNuSeg"), (load_qata, "QaTa-COV19"),
                         (load_hippocampus, "hippocampus")):
        with pytest.raises(DataError, match=f"junk: unknown {name} layout"):
            loader(tmp_path / "junk")


def test_labels_outside_the_expected_set_name_the_file(tmp_path):
    root = tmp_path / "hippo"
    _nii(root / "images" / "hippocampus_001.nii.gz", np.zeros((6, 7, 5), np.float32))
    lab = np.zeros((6, 7, 5), np.uint8)
    lab[1, 1, 1] = 3
    _nii(root / "labels" / "hippocampus_001.nii.gz", lab)
    with pytest.raises(DataError, match=r"hippocampus_001.nii.gz: label values \[3\]"):
        load_hippocampus(root)
    _nii(root / "labels" / "hippocampus_001.nii.gz", np.full((6, 7, 4), 1, np.uint8))
    with pytest.raises(DataError, match="differs from its image"):
        load_hippocampus(root)


# ---------------------------------------------------------------------------------------------------
# MoNuSeg layouts
# ---------------------------------------------------------------------------------------------------
def test_rasterise_xml_by_hand(tmp_path):
    _xml(tmp_path / "a.xml", [[(2, 2), (5, 2), (5, 5), (2, 5)], [(7, 1), (9, 1), (9, 3)]])
    binary, instances = rasterise_xml(tmp_path / "a.xml", (10, 12))
    assert binary.shape == (10, 12) and instances.shape == (10, 12)
    square = np.zeros((10, 12), bool)
    square[2:6, 2:6] = True  # PIL fills the polygon with its border: rows/cols 2..5
    np.testing.assert_array_equal(instances == 1, square)
    assert set(np.unique(instances)) == {0, 1, 2}
    assert binary.sum() == (instances > 0).sum()
    # attribute order and extra attributes do not matter; a region with two vertices is skipped
    (tmp_path / "b.xml").write_text(
        '<Annotations><Regions><Region Id="1"><Vertices><Vertex Y="1" X="0" Z="0"/><Vertex X="3" Y="1"/>'
        '<Vertex X="3" Y="2"/></Vertices></Region><Region Id="2"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="2"/>'
        '</Vertices></Region></Regions></Annotations>')
    b, inst = rasterise_xml(tmp_path / "b.xml", (4, 5))
    assert set(np.unique(inst)) == {0, 1} and b[1, 0] == 1 and b[2, 3] == 1 and b[3].sum() == 0
    (tmp_path / "bad.xml").write_text("<Annotations><Region>")
    with pytest.raises(DataError, match="bad.xml: cannot parse"):
        rasterise_xml(tmp_path / "bad.xml", (4, 4))


def _monuseg_shared(root: Path, n=5):
    for i in range(n):
        _rgb(root / "images" / f"case{i}.png", 20, 20, seed=i)
        _mask(root / "masks" / f"case{i}.png", 20, 20, box=(i, i, i + 6, i + 6))
    pd.DataFrame({"id": [f"case{i}" for i in range(n)], "text": [f"sentence {i}" for i in range(n)]}).to_csv(
        root / "text.csv", index=False)


def test_monuseg_shared_layout_with_split_text_and_resize(tmp_path):
    root = tmp_path / "monuseg"
    _monuseg_shared(root)
    pd.DataFrame({"id": [f"case{i}" for i in range(5)], "split": ["train", "train", "val", "test", "test"]}).to_csv(
        root / "cases.csv", index=False)
    ds = load_monuseg(root, working_size=10)
    assert ds.in_channels == 3 and ds.class_names == ("background", "nucleus") and ds.has_text
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [2, 1, 2]
    c = ds.cases[0]
    assert c.image.shape == (3, 10, 10) and c.label.shape == (10, 10) and c.meta["orig_size"] == (20, 20)
    assert c.text == "sentence 0" and c.label.sum() == 9  # the 6 x 6 box halved by nearest neighbour
    full = load_monuseg(root, working_size=None)
    np.testing.assert_array_equal(full.cases[1].label[1:7, 1:7], 1)


def test_monuseg_lvit_layout_reads_text_by_mask_name(tmp_path):
    root = tmp_path / "MoNuSeg"
    for split, n in (("Train", 3), ("Val", 1), ("Test", 2)):
        folder = root / f"{split}_Folder"
        rows = {}
        for i in range(n):
            ext = ".tif" if split == "Test" else ".png"
            _rgb(folder / "img" / f"{split}{i}{ext}", 16, 16, seed=i)
            _mask(folder / "labelcol" / f"{split}{i}.png", 16, 16)
            rows[f"{split}{i}.png"] = f"{split} sentence {i}"
        _xlsx(folder / f"{split}_text.xlsx", rows)
    ds = load_monuseg(root, working_size=None)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [3, 1, 2]
    test = {c.id: c.text for c in ds.split("test")}
    assert test == {"Test0": "Test sentence 0", "Test1": "Test sentence 1"}
    assert find_dataset_root("monuseg", tmp_path) == root


def test_monuseg_official_release_rasterises_the_xml(tmp_path):
    root = tmp_path / "monuseg"
    for release, names in (("MoNuSeg 2018 Training Data", ["t1", "t2", "t3"]), ("MoNuSegTestData", ["s1"])):
        for k, name in enumerate(names):
            _rgb(root / release / "Tissue Images" / f"{name}.tif", 16, 16, seed=k)
            _xml(root / release / "Annotations" / f"{name}.xml", [[(1, 1), (4, 1), (4, 4), (1, 4)]])
    ds = load_monuseg(root, working_size=None)
    assert {c.id: c.split for c in ds.cases}["s1"] == "test"
    assert sorted(c.split for c in ds.cases if c.id != "s1") == ["train", "train", "val"]
    for c in ds.cases:
        assert c.label.sum() == 16 and c.label[1:5, 1:5].all() and c.meta["n_nuclei"] == 1
    (root / "MoNuSegTestData" / "Annotations" / "s1.xml").unlink()
    with pytest.raises(DataError, match=r"s1.tif: no XML annotation found"):
        load_monuseg(root)


# ---------------------------------------------------------------------------------------------------
# chest X-ray layouts
# ---------------------------------------------------------------------------------------------------
def test_cxr_plain_layout_split_grouped_by_patient(tmp_path):
    root = tmp_path / "cxr_lung"
    ids = [f"x{i}" for i in range(12)]
    for i, cid in enumerate(ids):
        _gray(root / "images" / f"{cid}.png", 10, 14, seed=i)
        _mask(root / "masks" / f"{cid}.png", 10, 14)
        _mask(root / "lesion_masks" / f"{cid}.png", 10, 14, box=(0, 0, 2, 2))
    patients = [i // 3 for i in range(12)]  # 4 patients with 3 images each
    pd.DataFrame({"id": ids, "patient_id": patients}).to_csv(root / "cases.csv", index=False)
    ds = load_cxr(root, working_size=8, seed=0)
    assert ds.in_channels == 1 and all(c.image.shape == (1, 8, 8) for c in ds.cases)
    by_patient: dict[str, set] = {}
    for c in ds.cases:
        by_patient.setdefault(c.meta["patient_id"], set()).add(c.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {c.split for c in ds.cases} == {"train", "val", "test"}
    lesion = load_cxr(root, working_size=None, target="lesion")
    assert lesion.class_names == ("background", "lesion") and all(c.label.sum() == 4 for c in lesion.cases)


def test_cxr_montgomery_unites_left_and_right(tmp_path):
    root = tmp_path / "Montgomery"
    for i in range(3):
        _gray(root / "CXR_png" / f"MCUCXR_{i:04d}_0.png", 10, 12, seed=i)
        _mask(root / "ManualMask" / "leftMask" / f"MCUCXR_{i:04d}_0.png", 10, 12, box=(2, 1, 8, 4))
        _mask(root / "ManualMask" / "rightMask" / f"MCUCXR_{i:04d}_0.png", 10, 12, box=(2, 8, 8, 11))
    ds = load_cxr(root, working_size=None)
    assert len(ds) == 3 and all(c.label.sum() == 36 for c in ds.cases)
    assert find_dataset_root("cxr", tmp_path) == root


def test_cxr_kaggle_layout_mask_names_and_cdal_fold0(tmp_path):
    root = tmp_path / "cxr"
    for i in range(4):
        _gray(root / "CXR_png" / f"CHNCXR_{i:04d}_0.png", seed=i)
        _mask(root / "masks" / f"CHNCXR_{i:04d}_0_mask.png")
    for i in range(2):
        _gray(root / "CXR_png" / f"MCUCXR_{i:04d}_0.png", seed=10 + i)
        _mask(root / "masks" / f"MCUCXR_{i:04d}_0.png")
    _gray(root / "CXR_png" / "CHNCXR_9999_1.png")  # no mask: skipped (the Kaggle release has such images)
    ds = load_cxr(root, working_size=None, split_protocol="cdal_fold0")
    assert len(ds) == 6 and "1 images without mask skipped" in ds.description
    split = {c.id: c.split for c in ds.cases}
    assert split["MCUCXR_0000_0"] == split["MCUCXR_0001_0"] == "test"
    assert sorted(split[f"CHNCXR_{i:04d}_0"] for i in range(4)) == ["train", "train", "train", "val"]


# ---------------------------------------------------------------------------------------------------
# hippocampus
# ---------------------------------------------------------------------------------------------------
def _hippo_volume(seed, shape=(6, 7, 5)):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 20, shape).astype(np.float32)
    lab = rng.integers(0, 3, shape).astype(np.uint8)
    return img, lab


def test_hippocampus_msd_layout_minmax_slices_and_round_trip(tmp_path):
    root = tmp_path / "Task04_Hippocampus"
    vols = {}
    for i in range(1, 5):
        img, lab = _hippo_volume(i)
        vols[f"hippocampus_{i:03d}"] = (img, lab)
        _nii(root / "imagesTr" / f"hippocampus_{i:03d}.nii.gz", img)
        _nii(root / "labelsTr" / f"hippocampus_{i:03d}.nii.gz", lab)
    _nii(root / "imagesTr" / "hippocampus_099.nii.gz", _hippo_volume(9)[0])  # not listed: ignored
    (root / "dataset.json").write_text(json.dumps({"training": [
        {"image": f"./imagesTr/hippocampus_{i:03d}.nii.gz", "label": f"./labelsTr/hippocampus_{i:03d}.nii.gz"}
        for i in range(1, 5)]}))
    ds = load_hippocampus(root, seed=0, intensity="minmax")
    assert ds.class_names == ("background", "anterior", "posterior") and len(ds) == 4 * 5
    assert find_dataset_root("hippocampus", tmp_path) == root
    for vid, (img, lab) in vols.items():
        image, label = slices_to_volume(ds.cases, vid)
        expected = (img - img.min()) / (img.max() - img.min())
        np.testing.assert_allclose(image, expected, atol=1e-6)
        np.testing.assert_array_equal(label, lab)
    assert len({c.split for c in ds.cases if c.meta["volume"] == "hippocampus_001"}) == 1
    assert len(load_hippocampus(root, max_volumes=2)) == 2 * 5


def test_hippocampus_pair_groups_stay_together(tmp_path):
    root = tmp_path / "hippocampus"
    ids = [f"hippocampus_{i:03d}" for i in range(1, 13)]
    for k, vid in enumerate(ids):
        img, lab = _hippo_volume(k, (4, 4, 2))
        _nii(root / "images" / f"{vid}.nii.gz", img)
        _nii(root / "labels" / f"{vid}.nii.gz", lab)
    pd.DataFrame({"id": ids, "pair_group": [(i + 1) // 2 for i in range(1, 13)]}).to_csv(root / "cases.csv", index=False)
    for seed in range(3):
        split = {c.meta["volume"]: c.split for c in load_hippocampus(root, seed=seed).cases}
        for a, b in zip(ids[::2], ids[1::2]):
            assert split[a] == split[b]


def test_volume_slice_helpers():
    img, lab = _hippo_volume(0, (3, 4, 6))
    slices = volume_to_slices("v", img, lab.astype(np.int64))
    assert len(slices) == 6 and slices[2].image.shape == (1, 3, 4) and slices[2].meta["slice"] == 2
    np.testing.assert_array_equal(slices[2].label, lab[:, :, 2])
    back_img, back_lab = slices_to_volume(list(reversed(slices)))
    np.testing.assert_array_equal(back_img, img)
    np.testing.assert_array_equal(back_lab, lab)
    with pytest.raises(DataError, match="not a complete"):
        slices_to_volume(slices[:2] + slices[3:])


# ---------------------------------------------------------------------------------------------------
# QaTa-COV19 (LViT layout; nothing shipped, so a tiny tree is the only test)
# ---------------------------------------------------------------------------------------------------
def test_qata_lvit_layout_with_mask_prefix_and_xlsx(tmp_path):
    root = tmp_path / "QaTa-COV19"
    for split, n in (("Train", 5), ("Test", 2)):
        rows = {}
        for i in range(n):
            name = f"covid_{split.lower()}_{i}.png"
            _gray(root / f"{split}_Folder" / "img" / name, 10, 10, seed=i)
            _mask(root / f"{split}_Folder" / "labelcol" / f"mask_{name}", 10, 10)
            rows[f"mask_{name}"] = f"Bilateral pulmonary infection, {i} infected areas."
        _xlsx(root / f"{split}_text.xlsx", rows)
    ds = load_qata(root, working_size=8, seed=0)
    assert ds.class_names == ("background", "infection") and ds.has_text and ds.in_channels == 1
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [4, 1, 2]  # val carved from train (20 %)
    by_id = {c.id: c for c in ds.cases}
    assert by_id["covid_test_1"].text == "Bilateral pulmonary infection, 1 infected areas."
    assert by_id["covid_test_1"].image.shape == (1, 8, 8)
    assert find_dataset_root("qata", tmp_path) == root
    capped = load_dataset("qata", root, DataConfig(working_size=8, max_train_cases=2, max_eval_cases=1))
    assert [len(capped.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    (root / "Train_Folder" / "labelcol" / "mask_covid_train_0.png").unlink()
    with pytest.raises(DataError, match="covid_train_0.png: no mask found.*mask_covid_train_0.png"):
        load_qata(root)


# ---------------------------------------------------------------------------------------------------
# finding roots, capping, resizing
# ---------------------------------------------------------------------------------------------------
def test_find_dataset_root_aliases_and_absence(tmp_path):
    _monuseg_shared(tmp_path / "MoNuSeg", 3)
    assert find_dataset_root("monuseg", tmp_path) == tmp_path / "MoNuSeg"
    assert find_dataset_root("monuseg", tmp_path / "MoNuSeg") == tmp_path / "MoNuSeg"
    assert find_dataset_root("monuseg", str(tmp_path / "MoNuSeg")) == tmp_path / "MoNuSeg"
    assert find_dataset_root("cxr", tmp_path) is None
    assert find_dataset_root("monuseg", "") is None and find_dataset_root("monuseg", None) is None
    assert find_dataset_root("monuseg", tmp_path / "nowhere") is None
    assert find_dataset_root("synthetic", tmp_path) is None
    with pytest.raises(ValueError, match="unknown dataset"):
        find_dataset_root("liver", tmp_path)


def test_caps_are_deterministic_and_keep_whole_volumes():
    from diffseg_core.data.base import Case

    flat = [Case(f"c{i}", np.zeros((1, 2, 2), np.float32), np.zeros((2, 2), np.int64), split=s)
            for i, s in enumerate(["train"] * 6 + ["val"] * 3 + ["test"] * 3)]
    a, b = cap_cases(flat, 2, 1, seed=0), cap_cases(flat, 2, 1, seed=0)
    assert [c.id for c in a] == [c.id for c in b]
    assert [sum(c.split == s for c in a) for s in ("train", "val", "test")] == [2, 1, 1]
    vols = []
    for v, n in (("A", 4), ("B", 3), ("C", 5)):
        vols += volume_to_slices(v, np.zeros((2, 2, n), np.float32), np.zeros((2, 2, n), np.int64))
    for c in vols:
        c.split = "val"
    kept = cap_cases(vols, None, 6, seed=0)
    per_volume = {v: sum(c.meta["volume"] == v for c in kept) for v in "ABC"}
    assert all(n in (0, {"A": 4, "B": 3, "C": 5}[v]) for v, n in per_volume.items())
    assert 0 < len(kept) <= 7


def test_resize_pair_bilinear_image_nearest_label():
    image = np.zeros((1, 4, 4), np.float32)
    image[0, :, 2:] = 1.0
    label = np.zeros((4, 4), np.int64)
    label[:, 2:] = 2
    img, lab = resize_pair(image, label, 8)
    assert img.shape == (1, 8, 8) and lab.shape == (8, 8) and lab.dtype == np.int64
    assert set(np.unique(lab)) == {0, 2}  # no interpolated class
    np.testing.assert_array_equal(lab[:, 4:], 2)
    assert 0 < img[0, 0, 3] < 1 and img[0, 0, 0] == 0 and img[0, 0, 7] == 1


# ---------------------------------------------------------------------------------------------------
# downloads (file:// URLs: no network)
# ---------------------------------------------------------------------------------------------------
def test_download_verifies_checksums_and_renames_atomically(tmp_path):
    src = tmp_path / "payload.bin"
    src.write_bytes(b"diffseg" * 1000)
    md5 = file_digest(src, "md5")
    out = download(src.as_uri(), tmp_path / "out" / "payload.bin", md5=md5, progress=False)
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(DataError, match="md5 checksum .* does not match"):
        download(src.as_uri(), tmp_path / "bad.bin", md5="0" * 32, progress=False)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()
    with pytest.raises(DataError, match="could not download .* offline"):
        download((tmp_path / "absent.bin").as_uri(), tmp_path / "x.bin", progress=False)


def test_manual_datasets_explain_the_steps(tmp_path):
    with pytest.raises(DataError, match="monuseg.grand-challenge.org"):
        fetch_monuseg(tmp_path)
    with pytest.raises(DataError, match="Train_Folder"):
        fetch_qata(tmp_path)
    assert set(MANUAL_STEPS) == {"monuseg", "cxr", "qata"}
