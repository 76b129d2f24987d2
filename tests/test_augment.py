"""Augmentation policies (diffseg_core.data.batches, DataConfig.augment): the official per-dataset pipelines.

cDAL's CXR pipeline is a random affine only (rotation +-22 deg, zoom 0.75-1.25, no flips: the heart makes the
lungs asymmetric); its MoNuSeg pipeline (SegDiff's) adds flips and strong colour jitter. These tests check the
behaviour on images whose content is known: where a blob can go, whether image and label move together,
that labels stay class indices, and the colour operations against hand-computed values.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffseg_core.config import (AUGMENT_POLICIES, OFFICIAL_AUGMENT, DataConfig, RunConfig, data_config, override,
                                 resolve_augment)
from diffseg_core.data import Case, DataError, train_batches
from diffseg_core.data.batches import RandHueRotated, RandIsoAffined, RandSaturationd, augmentation
from diffseg_core.evaluate import describe_protocol
from diffseg_core.methods import get_config


def _blob_case(channels: int = 1, size: int = 64, left: bool = True, label_value: int = 1) -> Case:
    """A square blob in the left (or right) quarter; the image is the label scaled into (0.15, 0.85)."""
    label = np.zeros((size, size), np.int64)
    x0 = size // 16 if left else size - size // 16 - size // 5
    label[size // 3:size // 3 + size // 4, x0:x0 + size // 5] = label_value
    image = np.repeat((0.15 + 0.7 * (label > 0))[None].astype(np.float32), channels, 0)
    return Case("blob", image, label)


def _batch(case: Case, policy: str, n: int = 64, seed: int = 0) -> dict:
    cfg = DataConfig(crop=case.label.shape[0], batch_size=n, augment=policy)
    return next(train_batches([case], cfg, seed=seed))


def test_official_policy_per_dataset():
    assert resolve_augment("official", "cxr") == "affine"
    assert resolve_augment("official", "monuseg") == "flip-affine-jitter"
    assert resolve_augment("official", "hippocampus") == "none"
    assert resolve_augment("basic", "cxr") == "basic" and resolve_augment(False, "cxr") == "none"
    for preset in ("smoke", "cpu", "gpu", "paper"):
        for dataset, policy in OFFICIAL_AUGMENT.items():
            # the one deviation: Hippocampus slices get rotations and zooms below "paper" (decisions page)
            expected = "affine" if dataset == "hippocampus" and preset != "paper" else policy
            assert data_config(dataset, preset).augment == expected, (dataset, preset)
    assert get_config("cdal", "cxr", "cpu").data.augment == "affine"
    assert get_config("unet", "monuseg", "cpu").data.augment == "flip-affine-jitter"
    # a run config always names the concrete policy, also after an override back to "official"
    cfg = override(get_config("unet", "cxr", "smoke"), **{"data.augment": "none"})
    assert cfg.data.augment == "none"
    assert override(cfg, **{"data.augment": "official"}).data.augment == "affine"


def test_old_boolean_configs_and_bad_names():
    old = RunConfig.from_dict({"method": "unet", "dataset": "cxr", "preset": "cpu", "data": {"augment": True}})
    assert old.data.augment == "basic"  # what True meant before the policies had names
    assert DataConfig(augment=False).augment == "none"
    with pytest.raises(ValueError, match="unknown augmentation policy 'mirror'"):
        DataConfig(augment="mirror")
    with pytest.raises(DataError, match="unknown augmentation policy"):
        augmentation("mirror", 1)
    with pytest.raises(DataError, match="depends on the dataset"):  # a bare DataConfig() is not resolved
        next(train_batches([_blob_case()], DataConfig(crop=64)))
    batch = next(train_batches([_blob_case()], DataConfig(crop=64, batch_size=2), dataset="cxr"))
    assert batch["image"].shape == (2, 1, 64, 64)


def test_cxr_policy_never_flips():
    kinds = {type(t).__name__ for t in augmentation(resolve_augment("official", "cxr"), 1)}
    assert kinds == {"RandIsoAffined"}
    # behaviour: a blob in the left quarter cannot reach the right half by a +-22 deg rotation and a zoom <= 1.25
    # about the centre; a flip would put it there half of the time
    batch = _batch(_blob_case(), "affine", n=96)
    labels = batch["label"].numpy()
    xs = np.array([np.nonzero(lab)[1].mean() for lab in labels if lab.any()])
    assert len(xs) == 96 and (xs < 32).all(), xs.max()
    images = batch["image"][:, 0].numpy()
    assert not np.allclose(images[0], images[1]), "every sample gets its own random affine"


def test_monuseg_policy_flips_and_jitters():
    kinds = [type(t).__name__ for t in augmentation(resolve_augment("official", "monuseg"), 3)]
    assert kinds == ["RandFlipd", "RandFlipd", "RandIsoAffined", "RandomOrder"]
    batch = _batch(_blob_case(channels=3), "flip-affine-jitter", n=96)
    xs = np.array([np.nonzero(lab)[1].mean() for lab in batch["label"].numpy()])
    assert 0.25 < (xs > 32).mean() < 0.75  # horizontal flips with p 0.5
    fg = [img[:, lab > 0].mean() for img, lab in zip(batch["image"].numpy(), batch["label"].numpy())]
    assert np.std(fg) > 0.03  # brightness/contrast vary from sample to sample (no jitter: every value 0.85)


@pytest.mark.parametrize("policy,channels", [("affine", 1), ("flip-affine-jitter", 3), ("basic", 3), ("none", 1)])
def test_image_and_label_stay_aligned(policy, channels):
    # the image is a monotone function of the label; every colour operation keeps foreground brighter than
    # background, so thresholding the image between the two means must give back the label
    case = _blob_case(channels=channels)
    batch = _batch(case, policy, n=32, seed=1)
    for img, lab in zip(batch["image"].numpy(), batch["label"].numpy()):
        grey = img.mean(0)
        if not lab.any():
            continue
        inside = grey[lab > 0].mean()
        outside_mask = (lab == 0) & (grey > 0.02)  # outside the blob, inside the (possibly rotated) frame
        threshold = (inside + grey[outside_mask].mean()) / 2
        agree = ((grey > threshold) == (lab > 0))[outside_mask | (lab > 0)].mean()
        assert agree > 0.985, (policy, agree)  # only bilinear-vs-nearest border pixels may differ


@pytest.mark.parametrize("policy", ["affine", "flip-affine-jitter", "basic"])
def test_labels_stay_class_indices(policy):
    case = _blob_case(channels=3 if policy != "affine" else 1, label_value=2)
    case.label[5:9, 5:9] = 1  # three classes, as the hippocampus has
    batch = _batch(case, policy, n=32)
    assert batch["label"].dtype == torch.int64
    assert set(np.unique(batch["label"].numpy()).tolist()) <= {0, 1, 2}
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0


def test_affine_policy_is_seeded():
    case = _blob_case()
    a, b = _batch(case, "affine", n=8, seed=5), _batch(case, "affine", n=8, seed=5)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], _batch(case, "affine", n=8, seed=6)["image"])


def test_iso_affine_zoom_and_rotation_by_hand():
    square = torch.zeros(1, 64, 64)
    square[0, 24:40, 24:40] = 1.0  # 256 px about the centre
    zoom_in = RandIsoAffined(["label"], degrees=0.0, zoom=(1.25, 1.25), modes=("nearest",))
    area = float(zoom_in({"label": square})["label"].sum())
    assert abs(area - 256 * 1.25 ** 2) < 40  # torchvision's scale: 1.25 enlarges (MONAI's grid scale would shrink)
    zoom_out = RandIsoAffined(["label"], degrees=0.0, zoom=(0.75, 0.75), modes=("nearest",))
    assert abs(float(zoom_out({"label": square})["label"].sum()) - 256 * 0.75 ** 2) < 40
    # a thin horizontal bar rotated by exactly 22 degrees: its principal axis turns by 22 degrees
    bar = torch.zeros(1, 65, 65)
    bar[0, 31:34, 8:57] = 1.0
    rot = RandIsoAffined(["label"], degrees=22.0, zoom=(1.0, 1.0), modes=("bilinear",))
    rot.set_random_state(0)
    out = rot({"label": bar})["label"][0].numpy()
    ys, xs = np.nonzero(out > 0.5)
    angle = math.degrees(0.5 * math.atan2(2 * np.cov(xs, ys)[0, 1], np.var(xs) - np.var(ys)))
    assert abs(abs(angle) - abs(math.degrees(rot.angle))) < 2.0 and abs(math.degrees(rot.angle)) <= 22.0


def test_colour_operations_by_hand():
    # hue: a third of the colour circle maps pure red to pure green (a cyclic permutation of R, G, B)
    m = RandHueRotated.rotation(1 / 3)
    np.testing.assert_allclose(m @ torch.tensor([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(m @ torch.tensor([0.4, 0.4, 0.4]), [0.4, 0.4, 0.4], atol=1e-6)  # grey stays grey
    np.testing.assert_allclose(m @ m.T, torch.eye(3), atol=1e-6)
    # saturation: factor 0 gives the grey image 0.299 R + 0.587 G + 0.114 B in every channel
    sat = RandSaturationd(["image"], strength=1.0)
    sat.randomize = lambda data=None: (setattr(sat, "_do_transform", True), setattr(sat, "f", 0.0))
    rgb = torch.tensor([0.2, 0.6, 1.0]).view(3, 1, 1).expand(3, 2, 2).clone()
    out = sat({"image": rgb})["image"]
    np.testing.assert_allclose(out[:, 0, 0], [0.2 * 0.299 + 0.6 * 0.587 + 1.0 * 0.114] * 3, atol=1e-6)
    grey_image = torch.full((1, 4, 4), 0.3)  # single-channel images pass through saturation and hue
    assert torch.equal(sat({"image": grey_image})["image"], grey_image)


def test_protocol_sentence_names_the_augmentation():
    cfg = get_config("unet", "cxr", "smoke")
    sentence = describe_protocol(cfg, "test", 3, "best.pt")
    assert "augmentation 'affine'" in sentence and AUGMENT_POLICIES["affine"] in sentence
    cfg = override(cfg, **{"data.augment": "none"})
    assert "augmentation 'none'" in describe_protocol(cfg, "test", 3, "best.pt")


def test_hippocampus_slices_get_rotations_and_zooms_except_at_paper_and_3d_runs_say_none():
    """The slice-wise models train with 'affine' at smoke/cpu/gpu (no flips: they would swap anterior and posterior)
    and with no augmentation at paper, as the official pipeline; a 3-D run's sentence says its patches are not
    augmented, whatever the data settings hold."""
    for preset in ("smoke", "cpu", "gpu"):
        assert get_config("cdal", "hippocampus", preset).data.augment == "affine", preset
    assert get_config("cdal", "hippocampus", "paper").data.augment == "none"
    cfg = get_config("cdal", "hippocampus", "cpu")
    assert "augmentation 'affine'" in describe_protocol(cfg, "test", 3, "best.pt", volumes=True)
    cfg3 = override(cfg, **{"model.spatial_dims": 3})
    sentence = describe_protocol(cfg3, "test", 3, "best.pt", volumes=True)
    assert "3-D patches without augmentation" in sentence and "'affine'" not in sentence


def test_cli_augment_flag_reaches_the_run_and_its_protocol(tmp_path):
    import json

    from diffseg_core.cli import main

    run = tmp_path / "run"
    assert main(["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--out", str(run),
                 "--steps", "2", "--augment", "none", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["data"]["augment"] == "none"
    out = tmp_path / "test.json"
    assert main(["evaluate", "--run", str(run), "--json", str(out)]) == 0
    assert "augmentation 'none'" in json.loads(out.read_text())["protocol"]
