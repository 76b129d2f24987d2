"""Procedural datasets are deterministic, their sentences describe their masks, and batches are honest crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffseg_core.config import DataConfig, data_config
from diffseg_core.data import DataError, load_dataset, train_batches
from diffseg_core.data.base import Case
from diffseg_core.data.synthetic import (QUADRANTS, describe_density, describe_lungs, gaussian_blur,
                                         make_hippocampus_volume, make_lung, make_nuclei, quadrant_fractions,
                                         synthetic_dataset)


# ---------------------------------------------------------------------------------------------------
# Sentences, on hand-made masks
# ---------------------------------------------------------------------------------------------------
def test_quadrant_fractions_by_hand():
    m = np.zeros((4, 4), dtype=np.int64)
    m[0, 2:] = 1  # 2 of the 4 upper-right pixels
    m[3, 0] = 1  # 1 of the 4 lower-left pixels
    np.testing.assert_allclose(quadrant_fractions(m), [0.0, 0.5, 0.25, 0.0])


def test_density_sentences_on_hand_made_masks():
    assert describe_density(np.zeros((64, 64))) == "The nuclei are sparsely distributed."
    dense_ul = np.zeros((64, 64))
    dense_ul[:32, :32][::2] = 1  # 50 % of the upper-left quadrant, nothing elsewhere: fraction 0.125
    assert describe_density(dense_ul) == "The nuclei density in the upper left is high."
    dense_lr = np.full((64, 64), 0.0)
    dense_lr[::4] = 1  # 25 % everywhere ...
    dense_lr[32:, 32:][1::4] = 1  # ... plus 25 % more in the lower right: 0.5 vs mean 0.3125 -> ratio 1.6
    assert describe_density(dense_lr) == "The nuclei density in the lower right is high."
    even = np.zeros((64, 64))
    even[::3, ::2] = 1
    assert describe_density(even) == "The nuclei are evenly distributed."
    # every quadrant 50 % full, but in whole 16 x 16 cells (checkerboard of cells): irregular, not quadrant
    cells = (np.add.outer(np.arange(64) // 16, np.arange(64) // 16) % 2).astype(float)
    assert describe_density(cells) == "The nuclei are irregularly distributed."


def test_lung_sentences_on_hand_made_masks():
    m = np.zeros((10, 10))
    m[2:8, 1:4] = 1  # 18 px in the image's left half = the patient's right lung
    m[2:8, 6:9] = 1
    assert describe_lungs(m) == "Two lung fields of similar size."
    m[2:8, 4] = 1  # right lung now 24 px vs 18
    assert describe_lungs(m) == "Two lung fields, the right lung is larger."
    m[:, :5] = 0
    assert describe_lungs(m) == "Only the left lung field is visible."
    assert describe_lungs(np.zeros((4, 4))) == "No lung field is visible."


def test_gaussian_blur_keeps_mass_and_constants():
    x = np.zeros((1, 21, 21), dtype=np.float32)
    x[0, 10, 10] = 1.0
    y = gaussian_blur(x, 1.5)
    assert y.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(y[0], y[0].T, atol=1e-7)  # isotropic
    np.testing.assert_allclose(y[0], y[0, ::-1], atol=1e-7)
    assert y[0, 10, 10] == y.max()
    c = np.full((2, 7, 9), 0.3, dtype=np.float32)
    np.testing.assert_allclose(gaussian_blur(c, 2.0), c, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["nuclei", "lung", "hippocampus"])
def test_synthetic_is_deterministic_by_seed(family):
    a = synthetic_dataset(family, n_cases=3, size=48, seed=5)
    b = synthetic_dataset(family, n_cases=3, size=48, seed=5)
    c = synthetic_dataset(family, n_cases=3, size=48, seed=6)
    assert [x.id for x in a.cases] == [x.id for x in b.cases]
    for x, y in zip(a.cases, b.cases):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label, y.label)
        assert (x.text, x.split) == (y.text, y.split)
    assert not np.array_equal(np.concatenate([x.image.ravel() for x in a.cases[:3]]),
                              np.concatenate([x.image.ravel() for x in c.cases[:3]]))


def test_nuclei_sentences_describe_their_masks_and_vary():
    ds = synthetic_dataset("nuclei", n_cases=24, size=96, seed=0)
    texts = set()
    for case in ds.cases:
        assert case.image.shape == (3, 96, 96) and case.image.dtype == np.float32
        assert 0.0 <= case.image.min() and case.image.max() <= 1.0
        assert set(np.unique(case.label)) <= {0, 1}
        assert case.text == describe_density(case.label)
        m = case.label > 0
        if "is high" in case.text:  # the named quadrant really is the densest, counted directly
            q = [m[:48, :48].mean(), m[:48, 48:].mean(), m[48:, :48].mean(), m[48:, 48:].mean()]
            assert QUADRANTS[int(np.argmax(q))] in case.text
            assert max(q) >= 1.5 * np.mean(q)
        if "sparsely" in case.text:
            assert m.mean() < 0.08
        texts.add(case.text)
    assert len(texts) >= 3, texts


def test_nuclei_are_darker_and_bluer_than_the_background():
    gaps = []
    for i in range(10):
        image, label, _ = make_nuclei(128, np.random.default_rng(i), pattern="even")
        nuc, bg = image[:, label == 1].mean(1), image[:, label == 0].mean(1)
        gaps.append(bg.mean() - nuc.mean())
        assert gaps[-1] > 0.05, i  # haematoxylin absorbs more light, on every tile ...
        assert nuc[2] > nuc[1] and bg[0] > bg[1], i  # purple nuclei (B > G), pink background (R > G)
    assert np.mean(gaps) > 0.12  # ... but by varying amounts: some tiles are pale, some dark


def _components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of a binary mask (a small flood fill, for tests only)."""
    seen = np.zeros_like(mask, dtype=bool)
    sizes = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, n = [start], 0
        seen[start] = True
        while stack:
            y, x = stack.pop()
            n += 1
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        sizes.append(n)
    return sizes


def test_nuclei_are_hard_on_purpose():
    """Touching/overlapping nuclei, varied sizes, varied stains: the default data must not be trivial."""
    tiles = [make_nuclei(128, np.random.default_rng([3, i]), pattern="even") for i in range(8)]
    merged = 0
    for _, label, _ in tiles:
        sizes = np.array(_components(label > 0))
        merged += int((sizes > 2.5 * np.median(sizes)).sum())  # blobs of several touching nuclei
        assert sizes.max() > 4 * sizes.min()  # small and large nuclei in one tile
    assert merged >= 8, merged
    background = np.array([im[:, lb == 0].mean(1) for im, lb, _ in tiles])
    assert background.std(0).max() > 0.02  # the stain and illumination differ between tiles
    # a threshold on darkness does not segment them: the best global threshold on the mean intensity
    # leaves a clear error (the pale nuclei, the blur, the unlabelled look-alikes)
    im, lb, _ = tiles[0]
    gray, fg = im.mean(0).ravel(), lb.ravel() > 0
    dice = max(2 * (fg & (gray < t)).sum() / (fg.sum() + (gray < t).sum()) for t in np.quantile(gray, np.linspace(0.05, 0.6, 23)))
    assert dice < 0.9, dice


@pytest.mark.parametrize(("pattern", "words"), [("quadrant", ("is high",)), ("sparse", ("sparsely",)),
                                                ("even", ("evenly", "irregularly"))])
def test_density_patterns_give_their_sentences(pattern, words):
    """The sentence is computed from the mask; the layouts are drawn so that it usually says what they meant."""
    texts = [make_nuclei(96, np.random.default_rng([7, i]), pattern=pattern)[2] for i in range(12)]
    hits = sum(any(w in t for w in words) for t in texts)
    assert hits >= 10, texts


def test_sentences_stay_true_at_the_working_size():
    ds = synthetic_dataset("nuclei", n_cases=6, size=128, seed=2, working_size=64)
    for case in ds.cases:
        assert case.label.shape == (64, 64) and case.text == describe_density(case.label)
    ds = synthetic_dataset("lung", n_cases=4, size=96, seed=2, working_size=48)
    assert all(c.text == describe_lungs(c.label) for c in ds.cases)


def test_lungs_are_two_dark_fields():
    image, label, text = make_lung(128, np.random.default_rng(3))
    assert image.shape == (1, 128, 128) and set(np.unique(label)) == {0, 1}
    assert label[:, :64].sum() > 0 and label[:, 64:].sum() > 0
    assert label[:, 62:66].sum() == 0  # the mediastinum separates them
    body = image[0] > 0.25
    assert image[0][label == 1].mean() < image[0][body & (label == 0)].mean() - 0.1
    assert text == describe_lungs(label)


def test_lungs_vary_and_are_not_just_the_dark_pixels():
    cases = [make_lung(96, np.random.default_rng([5, i])) for i in range(12)]
    areas = np.array([lb.mean() for _, lb, _ in cases])
    assert areas.std() > 0.01  # lung fields of different sizes
    assert len({t for *_, t in cases}) >= 2  # and different sentences
    for im, lb, t in cases:
        assert lb[:, 46:50].sum() == 0 and t == describe_lungs(lb)
    # in some images part of a lung is brighter than the median of the non-lung body (opacities, vessels)
    brighter = [float((im[0][lb == 1] > np.median(im[0][(lb == 0) & (im[0] > 0.2)])).mean()) for im, lb, _ in cases]
    assert max(brighter) > 0.005, brighter


def test_hippocampus_volume_has_adjacent_anterior_and_posterior_parts():
    image, label = make_hippocampus_volume(np.random.default_rng(0), shape=(32, 40, 32))
    assert image.shape == label.shape == (32, 40, 32)
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)
    assert set(np.unique(label)) == {0, 1, 2}
    y = np.arange(40)[None, :, None]
    ant, post = (np.broadcast_to(y, label.shape)[label == k].mean() for k in (1, 2))
    assert ant > post  # anterior = larger index on the second axis (RAS), as in MSD Task04
    # adjacent: some anterior voxel touches a posterior one along the second axis
    assert np.any((label[:, 1:, :] == 1) & (label[:, :-1, :] == 2))
    assert 0.01 < (label > 0).mean() < 0.12


def test_hippocampus_has_grey_matter_contrast():
    """T1-like: the structure is about as bright as the tissue just around it (no easy threshold)."""
    for i in range(4):
        image, label = make_hippocampus_volume(np.random.default_rng(i))
        inside = torch.from_numpy((label > 0).astype(np.float32))[None, None]
        ring = (torch.nn.functional.max_pool3d(inside, 5, stride=1, padding=2)[0, 0].numpy() > 0) & (label == 0)
        gap = abs(image[label > 0].mean() - image[ring].mean())
        assert gap < 0.15, (i, gap)
        assert image[label > 0].std() > 0.02  # noise and bias field, not a flat region


def test_hippocampus_family_is_sliced_and_split_by_volume():
    ds = synthetic_dataset("hippocampus", n_cases=5, seed=0)
    assert ds.num_classes == 3 and ds.in_channels == 1 and ds.is_synthetic
    by_volume: dict[str, set] = {}
    for c in ds.cases:
        by_volume.setdefault(c.meta["volume"], set()).add(c.split)
    assert all(len(s) == 1 for s in by_volume.values())
    assert {s for v in by_volume.values() for s in v} == {"train", "val", "test"}
    first = [c for c in ds.cases if c.meta["volume"] == "synth_hippocampus_000"]
    assert [c.meta["slice"] for c in first] == list(range(len(first)))


def test_load_dataset_synthetic_uses_the_config():
    cfg = DataConfig(working_size=40, synthetic_cases=6, synthetic_size=64)
    ds = load_dataset("synthetic", None, cfg, seed=1, family="lung")
    assert len(ds) == 6 and ds.source == "synthetic" and "not real" in ds.description
    assert all(c.image.shape == (1, 40, 40) and c.meta["orig_size"] == (64, 64) for c in ds.cases)
    assert {c.split for c in ds.cases} == {"train", "val", "test"}
    ds = load_dataset("synthetic", None, data_config("synthetic", "smoke"), seed=0)
    assert ds.name == "synthetic-nuclei" and ds.has_text and ds.in_channels == 3
    with pytest.raises(DataError, match="unknown synthetic family"):
        load_dataset("synthetic", None, cfg, family="liver")


# ---------------------------------------------------------------------------------------------------
# Training batches
# ---------------------------------------------------------------------------------------------------
def _coordinate_case(h=20, w=24, cid="c"):
    """Image whose pixel values encode their position, so a crop's location can be read off it."""
    pos = np.arange(h * w, dtype=np.float32).reshape(h, w)
    image = np.stack([pos / (h * w), 1 - pos / (h * w)])
    label = (pos.astype(np.int64) % 3)
    return Case(cid, image, label, text=f"text of {cid}")


def test_train_batches_are_true_crops_without_augmentation():
    case = _coordinate_case()
    cfg = DataConfig(crop=8, batch_size=5, augment=False)
    batch = next(train_batches([case], cfg, seed=0))
    assert batch["image"].shape == (5, 2, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (5, 8, 8) and batch["label"].dtype == torch.int64
    assert batch["text"] == ["text of c"] * 5 and batch["id"] == ["c"] * 5
    for img, lab in zip(batch["image"].numpy(), batch["label"].numpy()):
        k = int(round(img[0, 0, 0] * 20 * 24))
        y, x = divmod(k, 24)
        np.testing.assert_allclose(img, case.image[:, y:y + 8, x:x + 8], atol=1e-6)
        np.testing.assert_array_equal(lab, case.label[y:y + 8, x:x + 8])  # multi-class indices kept


def test_train_batches_are_seeded_and_pad_small_images():
    cases = [_coordinate_case(cid=f"c{i}") for i in range(3)]
    cfg = DataConfig(crop=32, batch_size=4, augment=True)  # crop larger than the 20 x 24 images
    a, b = train_batches(cases, cfg, seed=3), train_batches(cases, cfg, seed=3)
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) and x["id"] == y["id"]
        assert x["image"].shape == (4, 2, 32, 32) and 0 <= x["image"].min() and x["image"].max() <= 1
        assert (x["image"] == 0).all(dim=1).sum() >= 4 * (32 * 32 - 20 * 24)  # zero padding
    c = next(train_batches(cases, cfg, seed=4))
    assert not torch.equal(c["image"], x["image"])


def test_foreground_biased_crops_for_sparse_labels():
    rng = np.random.default_rng(0)
    cases = []
    for i in range(4):
        label = np.zeros((64, 64), dtype=np.int64)
        y, x = rng.integers(0, 56, size=2)
        label[y:y + 4, x:x + 4] = 1 + i % 2  # 16 px of 4096: 0.4 % foreground
        cases.append(Case(f"s{i}", rng.random((1, 64, 64)).astype(np.float32), label))
    cfg = DataConfig(crop=16, batch_size=16, augment=False)
    hits = {}
    for bias in (None, False):
        it = train_batches(cases, cfg, seed=0, fg_bias=bias)
        hits[bias] = np.mean([(next(it)["label"] > 0).flatten(1).any(1).float().mean().item() for _ in range(8)])
    # uniform crops contain the 4 x 4 object with probability about (16+3)^2 / 49^2 ~ 0.15;
    # half of the biased crops are centred on it, so at least ~0.5 of them contain it
    assert hits[False] < 0.35 and hits[None] > 0.45, hits
    labels = np.unique(next(train_batches(cases, cfg, seed=1))["label"].numpy())
    assert set(labels.tolist()) <= {0, 1, 2}


def test_train_batches_refuse_bad_input():
    with pytest.raises(DataError, match="no training cases"):
        next(train_batches([], DataConfig()))
    mixed = [_coordinate_case(cid="a"), Case("b", np.zeros((3, 8, 8), np.float32), np.zeros((8, 8), np.int64))]
    with pytest.raises(DataError, match="channel counts"):
        next(train_batches(mixed, DataConfig(crop=8)))
