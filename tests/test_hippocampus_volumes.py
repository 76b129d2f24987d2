"""Hippocampus volumes: slices back to volumes, 3-D patch batches, per-volume scoring, NIfTI export, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_dataset
from diffseg_core.cli import main
from diffseg_core.data import DataError
from diffseg_core.data.hippocampus import load_hippocampus, volume_to_slices
from diffseg_core.data.nifti import export_predictions, save_label_volume, volume_sources
from diffseg_core.data.synthetic import make_hippocampus_volume
from diffseg_core.data.volumes import cases_to_volumes, volume_batches

AFFINE = np.array([[-1.0, 0.0, 0.0, 12.5], [0.0, 0.0, 1.2, -30.0], [0.0, 1.0, 0.0, 4.0], [0.0, 0.0, 0.0, 1.0]])


def _cfg(crop=16, batch_size=3):
    from diffseg_core.config import DataConfig

    return DataConfig(working_size=None, crop=crop, batch_size=batch_size)


def _slices(n=2, shape=(20, 24, 18)):
    cases = []
    for i in range(n):
        img, lab = make_hippocampus_volume(np.random.default_rng(i), shape=shape)
        cases += volume_to_slices(f"v{i}", img, lab)
    return cases


def test_cases_to_volumes_inverts_volume_to_slices():
    img, lab = make_hippocampus_volume(np.random.default_rng(0), shape=(20, 24, 18))
    cases = volume_to_slices("v0", img, lab) + volume_to_slices("v1", img[::-1].copy(), lab[::-1].copy())
    vols = cases_to_volumes(cases[::-1])                    # any order
    assert [v.id for v in vols] == ["v1", "v0"]
    v0 = vols[1]
    assert v0.image.shape == (1, 20, 24, 18) and np.array_equal(v0.image[0], img) and np.array_equal(v0.label, lab)
    with pytest.raises(DataError, match="complete 0..Z-1"):
        cases_to_volumes(cases[:5] + cases[6:18])
    from diffseg_core.data import Case

    with pytest.raises(DataError, match="not a slice of a volume"):
        cases_to_volumes([Case("x", np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.int64))])


def test_volume_batches_shapes_seeding_and_foreground_centres():
    small = volume_batches(cases_to_volumes(_slices(1, shape=(20, 24, 12))), _cfg(), seed=0)
    assert next(small)["image"].shape == (3, 1, 16, 16, 16)          # depth 12 < crop 16: padded
    vols = cases_to_volumes(_slices(2, shape=(40, 44, 36)))
    a = volume_batches(vols, _cfg(), seed=3)
    b = volume_batches(vols, _cfg(), seed=3)
    batches = [next(a) for _ in range(30)]
    first = next(b)
    assert torch.equal(first["image"], batches[0]["image"]) and torch.equal(first["label"], batches[0]["label"])
    x = batches[0]
    assert x["image"].shape == (3, 1, 16, 16, 16) and x["image"].dtype == torch.float32
    assert x["label"].shape == (3, 16, 16, 16) and x["label"].dtype == torch.int64
    assert 0.0 <= float(x["image"].min()) and float(x["image"].max()) <= 1.0
    assert set(x["id"]) <= {"v0", "v1"} and x["text"] == ["", "", ""]
    centred_on_fg = np.mean([bool((bt["label"][i, 8, 8, 8] > 0)) for bt in batches for i in range(3)])
    assert 0.3 <= centred_on_fg <= 0.75, centred_on_fg          # the 50/50 positive/negative centres
    with pytest.raises(DataError, match="no training volumes"):
        next(volume_batches([], _cfg()))


def _write_dataset(root, n=5, affine=AFFINE):
    """A small hippocampus folder (images/ + labels/) with a non-trivial affine."""
    import nibabel as nib

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        img, lab = make_hippocampus_volume(np.random.default_rng(10 + i), shape=(20, 24, 16))
        nib.save(nib.Nifti1Image((img * 300).astype(np.float32), affine), str(root / "images" / f"hippocampus_{i:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), affine), str(root / "labels" / f"hippocampus_{i:03d}.nii.gz"))
    return root


def test_save_label_volume_keeps_the_input_grid(tmp_path):
    import nibabel as nib

    root = _write_dataset(tmp_path / "hippo", n=1)
    ref = root / "images" / "hippocampus_000.nii.gz"
    pred = np.zeros((20, 24, 16), np.int64)
    pred[5:9, 6:12, 3:7] = 1
    pred[9:12, 6:12, 3:7] = 2
    out = save_label_volume(pred, tmp_path / "out" / "p.nii.gz", ref, num_classes=3)
    back = nib.load(str(out))
    assert back.shape == pred.shape and np.allclose(back.affine, nib.load(str(ref)).affine)
    data = np.asarray(back.dataobj)
    assert data.dtype == np.uint8 and np.array_equal(data, pred) and set(np.unique(data)) == {0, 1, 2}
    assert float(back.header["cal_max"]) == 2.0
    with pytest.raises(DataError, match="does not match the grid"):
        save_label_volume(pred[:, :, :4], tmp_path / "bad.nii.gz", ref)
    with pytest.raises(DataError, match="integer class indices"):
        save_label_volume(pred.astype(float), tmp_path / "bad.nii.gz", ref)
    # synthetic volumes (no source file): identity affine
    assert np.allclose(nib.load(str(save_label_volume(pred, tmp_path / "s.nii", None))).affine, np.eye(4))


def test_loader_records_sources_and_export_writes_every_volume(tmp_path):
    import nibabel as nib

    root = _write_dataset(tmp_path / "hippo", n=3)
    ds = load_hippocampus(root)
    src = volume_sources(ds.cases)
    assert set(src) == {f"hippocampus_{i:03d}" for i in range(3)} and all(p.is_file() for p in src.values())
    vols = cases_to_volumes(ds.cases)
    written = export_predictions({v.id: v.label for v in vols}, tmp_path / "pred", src, num_classes=3)
    assert len(written) == 3
    for v, path in zip(vols, written):
        back = nib.load(str(path))
        assert np.array_equal(np.asarray(back.dataobj), v.label) and np.allclose(back.affine, AFFINE)


@pytest.mark.parametrize("method,extra", [("cdal", ["--spatial-dims", "3"]), ("cdal", []), ("unet", [])])
def test_cli_train_evaluate_export_nifti(tmp_path, method, extra):
    """train and evaluate as documented, 2-D and 3-D: per-class scores per volume, predictions on the input grid."""
    import nibabel as nib

    root = _write_dataset(tmp_path / "hippo", n=5)
    run = tmp_path / "run"
    assert main(["train", "--method", method, "--dataset", "hippocampus", "--data", str(root), "--preset", "smoke",
                 "--steps", "2", "--out", str(run), "--no-progress", *extra]) == 0
    out, nii = tmp_path / "test.json", tmp_path / "nifti"
    assert main(["evaluate", "--run", str(run), "--data", str(root), "--split", "all", "--json", str(out),
                 "--export-nifti", str(nii)]) == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 5 and set(res["per_class"]) == {"anterior", "posterior"}   # evaluate scores every volume
    for k in ("dice_mean", "iou_mean", "precision_mean", "recall_mean"):
        assert all(0.0 <= res["per_class"][c][k] <= 1.0 for c in ("anterior", "posterior"))
    assert ("3-D" in res["protocol"]) == bool(extra) and "volumes" in res["protocol"]
    assert len(res["nifti"]) == res["n_images"]
    for path in res["nifti"]:
        back = nib.load(path)
        ref = nib.load(str(root / "images" / path.split("/")[-1]))
        assert back.shape == ref.shape and np.allclose(back.affine, ref.affine)
        assert set(np.unique(np.asarray(back.dataobj))) <= {0, 1, 2}


def test_export_nifti_needs_volumes(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--steps", "1",
                 "--out", str(run), "--no-progress"]) == 0
    with pytest.raises(SystemExit, match="needs a volume dataset"):
        main(["evaluate", "--run", str(run), "--json", str(tmp_path / "o.json"), "--export-nifti", str(tmp_path / "n")])


@pytest.mark.realdata
def test_real_hippocampus_3d_cli_and_nifti(tmp_path):
    """The shared MSD Task04 subset: a short 3-D cDAL run reports the same keys; its NIfTI overlays the inputs."""
    import nibabel as nib

    root = shared_dataset("hippocampus")
    run = tmp_path / "run"
    assert main(["train", "--method", "cdal", "--dataset", "hippocampus", "--data", str(root), "--preset", "smoke",
                 "--spatial-dims", "3", "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    out, nii = tmp_path / "test.json", tmp_path / "nifti"
    # two test volumes are enough to check the keys and the overlay (every volume costs a 3-D sliding window)
    assert main(["evaluate", "--run", str(run), "--data", str(root), "--split", "test", "--json", str(out),
                 "--export-nifti", str(nii), "--limit", "2"]) == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 2 and set(res["per_class"]) == {"anterior", "posterior"} and len(res["nifti"]) == 2
    for path in res["nifti"]:
        name = path.split("/")[-1]
        back, ref = nib.load(path), nib.load(str(root / "images" / name))
        assert back.shape == ref.shape[:3] and np.allclose(back.affine, ref.affine)
        assert set(np.unique(np.asarray(back.dataobj))) <= {0, 1, 2}


def test_hippocampus_presets_never_flip():
    """Flips and 90-degree rotations of an axial slice would move the anterior label to the posterior side (see
    the real-data check below): the presets use rotations of at most 22 degrees and zooms ("affine"), and "paper"
    none at all, as the official pipeline (the decisions page, "Hippocampus augmentation")."""
    from monai.transforms import RandFlipd, RandRotate90d

    from diffseg_core.config import PRESETS, data_config
    from diffseg_core.data.batches import augmentation

    assert {p: data_config("hippocampus", p).augment for p in PRESETS} == {
        "smoke": "affine", "cpu": "affine", "gpu": "affine", "paper": "none"}
    assert not [t for t in augmentation("affine", 1) if isinstance(t, (RandFlipd, RandRotate90d))]


@pytest.mark.realdata
def test_real_anterior_part_lies_at_larger_second_axis_index():
    import nibabel as nib

    root = shared_dataset("hippocampus")
    for path in sorted((root / "labels").glob("*.nii.gz")):
        lab = np.asarray(nib.load(str(path)).dataobj)
        ant, post = np.nonzero(lab == 1)[1].mean(), np.nonzero(lab == 2)[1].mean()
        assert ant > post + 5, f"{path.name}: anterior centre {ant:.1f} vs posterior {post:.1f} on axis 1"


def test_percentile_scaling_matches_monai_and_is_the_default(tmp_path):
    from monai.transforms import ScaleIntensityRangePercentiles

    from diffseg_core.data.hippocampus import percentile_scale

    v = np.random.default_rng(0).normal(100, 20, (6, 7, 5)).astype(np.float32)
    v[0, 0, 0] = 1e4                                                  # one bright outlier
    ref = np.asarray(ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(v))
    out = percentile_scale(v)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert out.dtype == np.float32 and np.median(out) > 0.3          # min-max would squash everything near 0
    assert not percentile_scale(np.full((3, 3, 3), 7.0)).any()
    root = _write_dataset(tmp_path / "hippo", n=1)
    a = load_hippocampus(root)
    b = load_hippocampus(root, intensity="minmax")
    assert "percentile intensity" in a.description and "minmax intensity" in b.description
    with pytest.raises(ValueError, match="intensity"):
        load_hippocampus(root, intensity="zscore")
