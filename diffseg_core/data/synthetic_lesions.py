"""A procedural stand-in for the chest X-ray **lesion** target: radiograph-like images with opacities.

Each case is a synthetic radiograph of :func:`~diffseg_core.data.synthetic.make_lung` with zero to three
brighter, textured "opacities" (ground-glass-like blobs) drawn inside the lung fields, at a random side and
zone. The label is the opacity mask clipped to the lungs (as radiologists outline infection inside the lung
field); the text is the LViT-style report generated from that mask and the lung mask
(:func:`~diffseg_core.data.reports.lesion_report`), exactly as the real loader does for ``target="lesion"``.
About one case in six has no opacity (a negative case: "No pulmonary infection, no infected areas.").

Nothing here claims realism: it teaches the mechanics offline, and numbers measured on it say nothing about
real chest X-rays.
"""
from __future__ import annotations

import numpy as np

from .base import Case, DataError, SegDataset, assign_seeded_split
from .io import resize_pair
from .reports import lesion_report, split_lungs, zone_of_rows
from .synthetic import gaussian_blur, make_lung, smooth_noise

__all__ = ["make_lesion_case", "synthetic_lesion_dataset"]

_FAMILY_SEED = 7  # keeps these cases' random streams apart from the other synthetic families


def make_lesion_case(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One radiograph with opacities.

    Returns:
        ``image`` ``(1, size, size)`` float32 in [0, 1], ``lesion`` ``(size, size)`` int64 in {0, 1}, ``lung``
        ``(size, size)`` int64 in {0, 1}, and the report of the lesion mask.
    """
    if size < 32:
        raise DataError(f"synthetic lesions: size must be at least 32 px, got {size}")
    image, lung, _ = make_lung(size, rng)
    lungs = lung.astype(bool)
    sides = split_lungs(lungs)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    lesion = np.zeros((size, size), dtype=bool)
    n = 0 if rng.random() < 1 / 6 else int(rng.integers(1, 4))
    ys, xs = np.nonzero(lungs)
    on_left = sides.side_of_columns(xs)
    wobble = 0.35 * smooth_noise(rng, (size, size), max(2.0, size / 16)) if n else None
    for _ in range(n):
        side = "left" if rng.random() < 0.5 else "right"
        zone = int(rng.integers(0, 3))
        pick = (on_left == (side == "left")) & (zone_of_rows(ys, *sides.rows[side]) == zone)
        if not pick.any():
            continue
        k = int(rng.choice(np.nonzero(pick)[0]))
        cy, cx = float(ys[k]), float(xs[k])
        ry, rx = size * rng.uniform(0.07, 0.15), size * rng.uniform(0.05, 0.1)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 + wobble
        lesion |= blob & lungs
    if lesion.any():
        soft = gaussian_blur(lesion[None].astype(np.float32), max(1.0, size / 100))[0]
        texture = 0.7 + 0.3 * smooth_noise(rng, (size, size), max(2.0, size / 40))
        image = np.clip(image + rng.uniform(0.14, 0.22) * soft * texture, 0, 1).astype(np.float32)
    lesion_label, lung_label = lesion.astype(np.int64), lungs.astype(np.int64)
    return image, lesion_label, lung_label, lesion_report(lesion_label, lung_label)


def synthetic_lesion_dataset(n_cases: int = 24, size: int = 256, seed: int = 0,
                             working_size: int | None = None) -> SegDataset:
    """A seeded set of :func:`make_lesion_case` radiographs with a seeded 60/20/20 split.

    Cases carry ``text`` (the generated report, from the masks at ``size``), ``meta['lung']`` (the lung mask at
    the working size, uint8) and ``meta['text_source'] = "generated"``, like the real ``cxr`` lesion target.
    """
    if n_cases < 1:
        raise DataError(f"synthetic lesions: n_cases must be at least 1, got {n_cases}")
    cases = []
    for i in range(n_cases):
        image, label, lung, text = make_lesion_case(size, np.random.default_rng([seed, _FAMILY_SEED, i]))
        if working_size is not None and working_size != size:
            lung = resize_pair(image, lung, working_size)[1]
            image, label = resize_pair(image, label, working_size)
        cases.append(Case(id=f"synth_lesion_{i:03d}", image=image, label=label, text=text,
                          meta={"orig_size": (size, size), "source": "synthetic", "lung": lung.astype(np.uint8),
                                "text_source": "generated"}))
    split = assign_seeded_split([c.id for c in cases], seed=seed)
    for c in cases:
        c.split = split[c.id]
    return SegDataset(name="synthetic-lesion", cases=cases, class_names=("background", "lesion"), in_channels=1,
                      source="synthetic", has_text=True, description=(
                          f"synthetic lesions: {n_cases} procedural X-ray-like radiographs with opacities and "
                          f"generated LViT-style reports ({size}px, seed {seed}); not real data"))
