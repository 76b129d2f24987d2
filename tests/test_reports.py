"""LViT-style reports generated from lesion masks: hand-made masks with known sentences, the grammar read
back, and every real sentence recomputed from its mask by an independent implementation of the rules."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from diffseg_core.config import DataConfig
from diffseg_core.data import load_dataset
from diffseg_core.data.io import read_mask
from diffseg_core.data.reports import (MANY_AREAS, NO_INFECTION, ZONES, LesionFindings, connected_components,
                                       format_report, lesion_findings, lesion_report, parse_report, split_lungs)

# ---------------------------------------------------------------------------------------------------
# A phantom: two rectangular lungs, rows 10..69 (zones of 20 rows: upper 10-29, middle 30-49, lower 50-69);
# the image's left lung (columns 5..34) is the patient's RIGHT lung, the image's right one (45..74) the LEFT.
# ---------------------------------------------------------------------------------------------------
H = W = 80
IMAGE_LEFT = slice(5, 35)   # patient's right lung
IMAGE_RIGHT = slice(45, 75)  # patient's left lung


def phantom_lungs() -> np.ndarray:
    lung = np.zeros((H, W), dtype=np.int64)
    lung[10:70, IMAGE_LEFT] = 1
    lung[10:70, IMAGE_RIGHT] = 1
    return lung


def blob(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.int64)
    m[rows, cols] = 1
    return m


def test_the_lvit_example_and_the_radiological_convention():
    """Upper lesion on the image's RIGHT = the patient's LEFT lung; lower on the image's left = right lung."""
    lesion = blob(slice(12, 25), slice(50, 65)) + blob(slice(55, 68), slice(10, 25))
    assert lesion_report(lesion, phantom_lungs()) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.")
    assert lesion_report(blob(slice(12, 25), slice(50, 65)), phantom_lungs()) == (
        "Unilateral pulmonary infection, one infected area, upper left lung.")
    assert lesion_report(blob(slice(55, 68), slice(10, 25)), phantom_lungs()) == (
        "Unilateral pulmonary infection, one infected area, lower right lung.")


@pytest.mark.parametrize("rows, words", [
    (slice(12, 68), "all"), (slice(32, 68), "middle lower"), (slice(12, 48), "upper middle"),
    (slice(32, 48), "middle"),
])
def test_zones_are_thirds_of_the_lung_height(rows, words):
    assert lesion_report(blob(rows, slice(10, 30)), phantom_lungs()) == (
        f"Unilateral pulmonary infection, one infected area, {words} right lung.")


def test_two_areas_in_one_lung_and_non_adjacent_zones():
    lesion = blob(slice(12, 20), slice(50, 60)) + blob(slice(60, 68), slice(50, 60))
    assert lesion_report(lesion, phantom_lungs()) == (
        "Unilateral pulmonary infection, two infected areas, upper lower left lung.")


def test_zone_named_only_above_ten_percent_of_the_lungs_lesion():
    # 18 rows x 10 in the upper zone (180 px) plus 2 rows x 10 in the middle (20 px = 10 %): both named;
    # with 1 row in the middle (10 px = 5.3 %) only the upper zone
    assert lesion_report(blob(slice(12, 32), slice(50, 60)), phantom_lungs()).endswith("upper middle left lung.")
    assert lesion_report(blob(slice(12, 31), slice(50, 60)), phantom_lungs()).endswith(", upper left lung.")


def test_negative_cases_and_specks():
    lung = phantom_lungs()
    assert lesion_report(np.zeros((H, W), dtype=np.int64), lung) == NO_INFECTION
    # min area = 0.5 % of the lung field (3600 px -> 18 px): a 4 x 4 speck is not an infected area
    assert lesion_report(blob(slice(20, 24), slice(20, 24)), lung) == NO_INFECTION
    speck_and_area = blob(slice(20, 24), slice(20, 24)) + blob(slice(40, 45), slice(50, 60))
    assert lesion_report(speck_and_area, lung) == "Unilateral pulmonary infection, one infected area, middle left lung."
    assert lesion_findings(np.zeros((H, W)), lung).laterality == "none"


def test_diagonal_neighbours_are_one_area_and_many_areas_are_multiple():
    lesion = np.zeros((H, W), dtype=np.int64)
    for k in range(6):  # a diagonal staircase of 3 x 3 squares touching at corners: one 8-connected area
        lesion[12 + 3 * k:15 + 3 * k, 50 + 3 * k:53 + 3 * k] = 1
    assert lesion_findings(lesion, phantom_lungs()).n_areas == 1
    many = np.zeros((H, W), dtype=np.int64)
    for r, c in itertools.product(range(12, 68, 9), (8, 20)):  # 7 x 2 = 14 separate 5 x 5 squares
        many[r:r + 5, c:c + 5] = 1
    f = lesion_findings(many, phantom_lungs())
    assert f.n_areas == MANY_AREAS and format_report(f) == (
        "Unilateral pulmonary infection, multiple infected areas, all right lung.")


def test_mirroring_the_image_swaps_left_and_right():
    rng = np.random.default_rng(0)
    lung = phantom_lungs()
    for _ in range(20):
        lesion = np.zeros((H, W), dtype=np.int64)
        for _ in range(rng.integers(1, 4)):
            r, c = int(rng.integers(10, 60)), int(rng.choice([rng.integers(5, 25), rng.integers(45, 65)]))
            lesion[r:r + int(rng.integers(4, 12)), c:c + int(rng.integers(4, 10))] = 1
        lesion &= lung
        f, g = lesion_findings(lesion, lung), lesion_findings(lesion[:, ::-1], lung[:, ::-1])
        assert g == f.mirrored() and g.mirrored() == f
        assert lesion_report(lesion, lung) == lesion_report(lesion.copy(), lung.copy())  # deterministic


def test_lungs_touching_are_split_at_the_narrowest_column():
    lung = phantom_lungs()
    lung[40:44, 35:45] = 1  # a bridge: one connected component
    assert len(connected_components(lung)[1]) == 1
    sides = split_lungs(lung)
    assert 35 <= sides.midline <= 45
    assert sides.rows == {"left": (10, 70), "right": (10, 70)}
    assert split_lungs(phantom_lungs()).midline == 40.0  # half-way across the gap 35..44
    with pytest.raises(ValueError, match="lung mask is empty"):
        split_lungs(np.zeros((H, W)))


# ---------------------------------------------------------------------------------------------------
# Connected components against an independent labelling (vectorised union-find on pixels)
# ---------------------------------------------------------------------------------------------------
def reference_components(mask: np.ndarray) -> np.ndarray:
    """Component id (smallest flat index of the component) per pixel, -1 on background; 8-connectivity."""
    mask = np.asarray(mask) != 0
    h, w = mask.shape
    idx = np.arange(h * w).reshape(h, w)
    a_list, b_list = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ys, xs = np.nonzero(mask)
        ny, nx = ys + dy, xs + dx
        ok = (ny < h) & (nx >= 0) & (nx < w)
        ys, xs, ny, nx = ys[ok], xs[ok], ny[ok], nx[ok]
        ok = mask[ny, nx]
        a_list.append(idx[ys[ok], xs[ok]])
        b_list.append(idx[ny[ok], nx[ok]])
    a, b = np.concatenate(a_list), np.concatenate(b_list)
    parent = np.arange(h * w)
    while True:
        pa, pb = parent[a], parent[b]
        if np.array_equal(pa, pb):
            break
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return np.where(mask, parent.reshape(h, w), -1)


def test_connected_components_match_an_independent_labelling():
    rng = np.random.default_rng(1)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((37, 53)) < density
        labels, sizes = connected_components(mask)
        ref = reference_components(mask)
        assert (labels > 0).sum() == mask.sum()
        # the same partition: a bijection between our labels and the reference ids
        pairs = {(int(l), int(r)) for l, r in zip(labels[mask], ref[mask])}
        assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs}) == len(sizes)
        assert sizes.sum() == mask.sum() and all(sizes[k - 1] == (labels == k).sum() for k in range(1, len(sizes) + 1))
        # numbered in raster order of each component's first pixel
        firsts = [int(np.flatnonzero(labels.ravel() == k)[0]) for k in range(1, len(sizes) + 1)]
        assert firsts == sorted(firsts)


# ---------------------------------------------------------------------------------------------------
# The grammar, both ways
# ---------------------------------------------------------------------------------------------------
def _zone_choices():
    return [()] + [tuple(z for z in ZONES if z in c) for r in (1, 2, 3) for c in itertools.combinations(ZONES, r)]


def test_every_findings_round_trips_through_its_sentence():
    n_checked = 0
    for n in range(0, MANY_AREAS + 1):
        for left, right in itertools.product(_zone_choices(), repeat=2):
            try:
                f = LesionFindings(n, left, right)
            except ValueError:
                continue
            sentence = format_report(f)
            assert parse_report(sentence) == f, sentence
            n_checked += 1
    assert n_checked > 400


@pytest.mark.parametrize("bad", [
    "Bilateral pulmonary infection, two infected areas, upper left lung.",          # bilateral, one lung
    "Unilateral pulmonary infection, one infected areas, upper left lung.",          # number agreement
    "Unilateral pulmonary infection, one infected area, lower upper left lung.",     # zone order
    "Unilateral pulmonary infection, one infected area, upper middle lower left lung.",  # must be "all"
    "Bilateral pulmonary infection, two infected areas, upper right lung and upper left lung.",  # left first
    "Unilateral pulmonary infection, eleven infected areas, upper left lung.",       # unknown count word
    "Bilateral pulmonary infection, one infected area, upper left lung and upper right lung.",  # 1 area, 2 lungs
    "The nuclei are evenly distributed.",
])
def test_sentences_outside_the_grammar_are_refused(bad):
    with pytest.raises(ValueError, match="parse_report"):
        parse_report(bad)


# ---------------------------------------------------------------------------------------------------
# Real data: every generated sentence is a true description of the mask it came from
# ---------------------------------------------------------------------------------------------------
def recompute(lesion: np.ndarray, lung: np.ndarray) -> tuple[int, dict[str, set[str]]]:
    """The module docstring's rules, re-implemented on the reference labelling (not on the module's code)."""
    lung_ids = reference_components(lung)
    ids, counts = np.unique(lung_ids[lung_ids >= 0], return_counts=True)
    assert len(ids) >= 2, "every lung mask of the shared subset has two lung fields"
    two = ids[np.argsort(-counts, kind="stable")[:2]]
    cols = sorted((np.nonzero(lung_ids == i)[1] for i in two), key=lambda c: c.mean())
    midline = (cols[0].max() + 1 + cols[1].min()) / 2 if cols[0].max() < cols[1].min() else \
        (cols[0].mean() + cols[1].mean()) / 2 + 0.5
    ly, lx = np.nonzero(lung)
    extent = {}
    for side, sel in (("left", lx + 0.5 >= midline), ("right", lx + 0.5 < midline)):
        extent[side] = (ly[sel].min(), ly[sel].max() + 1)
    les_ids = reference_components(lesion)
    ids, counts = np.unique(les_ids[les_ids >= 0], return_counts=True)
    min_area = math.ceil(0.005 * lung.sum())
    zone_px = {"left": np.zeros(3), "right": np.zeros(3)}
    n = 0
    for i, c in zip(ids, counts):
        if c < min_area:
            continue
        n += 1
        ys, xs = np.nonzero(les_ids == i)
        side = "left" if (xs + 0.5 >= midline).sum() * 2 > len(xs) else "right"
        top, bottom = extent[side]
        third = (bottom - top) / 3
        for z in range(3):
            lo, hi = top + z * third, top + (z + 1) * third
            centre = ys + 0.5
            zone_px[side][z] += ((centre >= lo) & (centre < hi) if 0 < z < 2 else
                                 (centre < hi) if z == 0 else (centre >= lo)).sum()
    zones = {s: {ZONES[z] for z in range(3) if zone_px[s].sum() and zone_px[s][z] >= 0.1 * zone_px[s].sum()}
             for s in zone_px}
    return n, zones


@pytest.mark.realdata
def test_every_real_report_describes_its_mask(cxr_root):
    ds = load_dataset("cxr", cxr_root, DataConfig(working_size=None, target="lesion"))
    assert ds.has_text and len(ds) == 49
    negatives = 0
    for c in ds.cases:
        assert c.meta["text_source"] == "generated"
        lesion = read_mask(cxr_root / "lesion_masks" / f"{c.id}.png")
        lung = read_mask(cxr_root / "masks" / f"{c.id}.png")
        np.testing.assert_array_equal(c.label, lesion)  # native size: the label is the file
        said = parse_report(c.text)
        assert format_report(said) == c.text  # the sentence round-trips through the grammar
        n, zones = recompute(lesion, lung)
        assert said.n_areas == min(n, MANY_AREAS), (c.id, c.text, n)
        assert set(said.left) == zones["left"] and set(said.right) == zones["right"], (c.id, c.text, zones)
        negatives += said.n_areas == 0
        if said.laterality == "unilateral":  # the patient's left lung is on the image's right
            xs = np.nonzero(lesion)[1].mean()
            assert (xs > np.nonzero(lung)[1].mean()) == bool(said.left), (c.id, c.text)
    assert 3 <= negatives <= 5  # README: lesion masks non-empty in 45 of 49 (one holds a single-pixel speck)
