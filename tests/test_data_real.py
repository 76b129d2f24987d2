"""The loaders on the real subsets in ../shared/data (read-only; each test skips when its folder is absent)."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from diffseg_core.config import DataConfig, data_config
from diffseg_core.data import find_dataset_root, load_dataset
from diffseg_core.data.hippocampus import load_hippocampus, slices_to_volume
from diffseg_core.data.io import read_mask
from diffseg_core.data.monuseg import load_monuseg, rasterise_xml

pytestmark = pytest.mark.realdata


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_monuseg_split_counts_text_and_sizes(monuseg_root):
    assert find_dataset_root("monuseg", monuseg_root.parent) == monuseg_root
    ds = load_monuseg(monuseg_root, working_size=64)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [12, 3, 6]
    assert ds.has_text and all(c.text.startswith("The nuclei") for c in ds.cases)
    texts = {r["id"]: r["text"] for r in _rows(monuseg_root / "text.csv")}
    assert {c.id: c.text for c in ds.cases} == texts
    for c in ds.cases:
        assert c.image.shape == (3, 64, 64) and c.meta["orig_size"] == (1000, 1000)
        assert set(np.unique(c.label)) == {0, 1}
    # foreground fraction at the working size stays close to the README's full-resolution value
    fg = {r["id"]: float(r["fg_fraction"]) for r in _rows(monuseg_root / "cases.csv")}
    for c in ds.cases:
        assert abs(c.label.mean() - fg[c.id]) < 0.05


def test_monuseg_smoke_caps(monuseg_root):
    ds = load_dataset("monuseg", monuseg_root, data_config("monuseg", "smoke"))
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    again = load_dataset("monuseg", monuseg_root, data_config("monuseg", "smoke"))
    assert ds.ids() == again.ids()


def test_monuseg_xml_rasterisation_matches_the_masks(monuseg_root):
    rows = [r for r in _rows(monuseg_root / "cases.csv") if r["xml_available"] == "yes"]
    assert len(rows) == 11
    for r in rows[:3]:
        mask = read_mask(monuseg_root / "masks" / f"{r['id']}.png")
        binary, instances = rasterise_xml(monuseg_root / "annotations" / f"{r['id']}.xml", mask.shape)
        dice = 2 * np.sum(binary & mask) / (binary.sum() + mask.sum())
        assert dice >= 0.9, (r["id"], dice)
        assert abs(dice - float(r["mask_vs_xml_dice"])) < 0.01  # the README's own measurement
        assert len(np.unique(instances)) - 1 == pytest.approx(int(r["n_nuclei_xml"]), abs=5)


def test_cxr_grouped_split_keeps_patients_together(cxr_root):
    ds = load_dataset("cxr", cxr_root, DataConfig(working_size=32))
    assert len(ds) == 49 and ds.in_channels == 1
    assert load_dataset("cxr", cxr_root.parent, DataConfig(working_size=32)).ids() == ds.ids()  # a data root works
    splits: dict[str, set] = {}
    for c in ds.cases:
        splits.setdefault(c.meta["patient_id"], set()).add(c.split)
    assert all(len(s) == 1 for s in splits.values()), splits
    assert {c.split for c in ds.cases} == {"train", "val", "test"}
    assert 0.25 < np.mean([c.label.mean() for c in ds.cases]) < 0.5  # README: mean lung fraction 0.387
    lesion = load_dataset("cxr", cxr_root, DataConfig(working_size=32), target="lesion")
    assert {c.id: c.split for c in lesion.cases} == {c.id: c.split for c in ds.cases}
    assert sum(c.label.any() for c in lesion.cases) >= 40  # README: non-empty in 45 of 49


def test_hippocampus_labels_and_slice_round_trip(hippocampus_root):
    ds = load_hippocampus(hippocampus_root, seed=0, intensity="minmax")  # min-max: checkable against the raw file
    assert len({c.meta["volume"] for c in ds.cases}) == 40
    assert set(np.unique(np.concatenate([c.label.ravel() for c in ds.cases]))) == {0, 1, 2}
    vid = "hippocampus_019"
    image, label = slices_to_volume(ds.cases, vid)
    stored = np.asarray(nib.load(str(hippocampus_root / "labels" / f"{vid}.nii.gz")).dataobj)
    np.testing.assert_array_equal(label, stored)
    raw = np.asarray(nib.load(str(hippocampus_root / "images" / f"{vid}.nii.gz")).dataobj).astype(np.float32)
    np.testing.assert_allclose(image, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    groups = {r["id"]: r["pair_group"] for r in _rows(hippocampus_root / "cases.csv")}
    split_of: dict[str, set] = {}
    for c in ds.cases:
        split_of.setdefault(groups[c.meta["volume"]], set()).add(c.split)
    assert all(len(s) == 1 for s in split_of.values())


def test_hippocampus_smoke_preset_keeps_whole_volumes(hippocampus_root):
    ds = load_dataset("hippocampus", hippocampus_root, data_config("hippocampus", "smoke"))
    volumes = {c.meta["volume"] for c in ds.cases}
    assert len(volumes) <= 4
    for v in volumes:  # each kept volume is complete, so per-volume scores are meaningful
        slices_to_volume(ds.cases, v)
