"""Procedural stand-ins for the three real datasets, used offline (tests, CI, first runs of the book).

Three families, each deterministic given ``(seed, case index)`` and fast (a 256 x 256 case in a few
milliseconds):

* ``nuclei``: H&E-like RGB tiles. The image is rendered with the Beer-Lambert stain model
  ``I = exp(-(c_E * OD_E + c_H * OD_H))`` (eosin concentration ``c_E`` as a textured pink background,
  haematoxylin concentration ``c_H`` inside nuclei), blurred and noised. The nuclei are ellipses of varied
  size, orientation and stain; their density varies in space on purpose (one dense quadrant, even,
  sparse or clustered), and each case carries an LViT-style sentence computed **from its mask** by
  :func:`describe_density`, so the sentence really describes the label.
* ``lung``: X-ray-like grayscale radiographs (body outline, two dark lung fields of varied shape, heart
  shadow, spine, ribs, noise) with the binary lung mask and a sentence from :func:`describe_lungs`.
* ``hippocampus``: small 3-D MRI-like volumes (about 32 x 40 x 32) with a curved tube split into two
  adjacent labelled parts (1 anterior, 2 posterior), returned as 2-D axial slices along the last axis,
  exactly like :mod:`diffseg_core.data.hippocampus`.

Nothing here claims realism beyond teaching the mechanics: numbers measured on these images say
nothing about the real datasets.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .base import Case, DataError, SegDataset, assign_seeded_split
from .hippocampus import volume_to_slices
from .io import resize_pair

FAMILIES: tuple[str, ...] = ("nuclei", "lung", "hippocampus")

QUADRANTS: tuple[str, ...] = ("upper left", "upper right", "lower left", "lower right")

# Thresholds of the density sentence (see describe_density).
SPARSE_FRACTION = 0.08  # foreground fraction below which nuclei are "sparsely distributed"
QUADRANT_RATIO = 1.5  # densest quadrant / mean of quadrants at or above which that quadrant is "high"
IRREGULAR_CV = 0.55  # coefficient of variation over a 4 x 4 grid above which nuclei are "irregular"

# Optical densities (-log transmitted light) of unit stain concentration, RGB.
_OD_EOSIN = -np.log(np.array([0.93, 0.62, 0.80]))
_OD_HAEM = -np.log(np.array([0.42, 0.28, 0.62]))


# ---------------------------------------------------------------------------------------------------
# Sentences computed from masks
# ---------------------------------------------------------------------------------------------------
def quadrant_fractions(mask: np.ndarray) -> np.ndarray:
    """Foreground fraction of the four image quadrants.

    Args:
        mask: ``(H, W)`` binary (any value > 0 is foreground).
    Returns:
        ``(4,)`` fractions in the order of :data:`QUADRANTS` (upper left, upper right, lower left,
        lower right), each over its own quadrant's pixels.
    """
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise DataError(f"quadrant_fractions expects an (H, W) mask, got shape {m.shape}")
    h, w = m.shape
    hh, hw = h // 2, w // 2
    quads = (m[:hh, :hw], m[:hh, hw:], m[hh:, :hw], m[hh:, hw:])
    return np.array([q.mean() if q.size else 0.0 for q in quads], dtype=np.float64)


def describe_density(mask: np.ndarray) -> str:
    """An LViT-template sentence about the nuclei density of a binary mask.

    Rules, applied in order (thresholds are module constants):

    1. foreground fraction < :data:`SPARSE_FRACTION` -> "The nuclei are sparsely distributed."
    2. densest quadrant >= :data:`QUADRANT_RATIO` x the mean quadrant fraction ->
       "The nuclei density in the <upper/lower> <left/right> is high."
    3. coefficient of variation of the fractions over a 4 x 4 grid > :data:`IRREGULAR_CV` ->
       "The nuclei are irregularly distributed."
    4. otherwise "The nuclei are evenly distributed."

    Args:
        mask: ``(H, W)`` binary nucleus mask.
    """
    m = np.asarray(mask) > 0
    if m.mean() < SPARSE_FRACTION:
        return "The nuclei are sparsely distributed."
    q = quadrant_fractions(m)
    if q.max() >= QUADRANT_RATIO * q.mean():
        return f"The nuclei density in the {QUADRANTS[int(q.argmax())]} is high."
    h, w = m.shape
    cells = [m[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4].mean() for i in range(4) for j in range(4)]
    cells = np.asarray(cells)
    if cells.std() / max(cells.mean(), 1e-8) > IRREGULAR_CV:
        return "The nuclei are irregularly distributed."
    return "The nuclei are evenly distributed."


def describe_lungs(mask: np.ndarray) -> str:
    """A QaTa-style sentence comparing the two lung fields of a binary lung mask.

    The image's left half shows the patient's **right** lung (radiological convention). The sentence
    says which lung field is larger when their areas differ by more than 15 %, else that they are
    similar; an empty half is reported as a missing field.

    Args:
        mask: ``(H, W)`` binary lung mask.
    """
    m = np.asarray(mask) > 0
    w = m.shape[1]
    right, left = float(m[:, : w // 2].sum()), float(m[:, w // 2:].sum())  # patient's right is image left
    if right == 0 and left == 0:
        return "No lung field is visible."
    if right == 0 or left == 0:
        return f"Only the {'left' if right == 0 else 'right'} lung field is visible."
    if max(right, left) > 1.15 * min(right, left):
        return f"Two lung fields, the {'right' if right > left else 'left'} lung is larger."
    return "Two lung fields of similar size."


# ---------------------------------------------------------------------------------------------------
# Small image tools (torch on CPU: fast, and no extra dependency)
# ---------------------------------------------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Band-limited noise: a coarse Gaussian grid (one value per ``cell`` pixels) upsampled bicubically.

    Args:
        shape: ``(H, W)`` or ``(D, H, W)``.
        cell: feature size in pixels (larger = smoother).
    Returns:
        ``shape`` float32 array, roughly zero mean and unit standard deviation.
    """
    coarse = [max(2, int(math.ceil(s / cell)) + 2) for s in shape]
    grid = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    mode = "bicubic" if len(shape) == 2 else "trilinear"
    out = F.interpolate(grid, size=tuple(shape), mode=mode, align_corners=False)[0, 0].numpy()
    return (out - out.mean()) / (out.std() + 1e-6)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of every channel (edges replicated).

    Implemented as a weighted sum of shifted copies, which is faster than a convolution call for the
    small kernels used here.

    Args:
        x: ``(C, H, W)`` (2-D) or ``(C, D, H, W)`` (3-D) float array.
        sigma: standard deviation in pixels (``<= 0`` returns ``x`` unchanged).
    Returns:
        float32 array of the same shape.
    """
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).astype(np.float32)
    out = np.asarray(x, dtype=np.float32)
    for axis in range(1, out.ndim):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for j, w in enumerate(k):
            acc += w * _slice(padded, axis, j, j + n)
        out = acc
    return out


def _slice(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(start, stop)
    return a[tuple(idx)]


def _ellipse_patch(cy: float, cx: float, a: float, b: float, theta: float, wobble: np.ndarray,
                   shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Boolean patch of an ellipse with a wobbly border, clipped to ``shape``.

    The border radius at angle phi is scaled by ``1 + sum_k w_k cos(k phi + p_k)`` (``wobble`` rows
    ``(k, w_k, p_k)``), which gives nuclei their slightly irregular outlines.
    Returns the ``(rows, cols)`` slices of the bounding box and the boolean patch, or ``None`` when the
    ellipse lies outside the image.
    """
    r = int(math.ceil(max(a, b) * 1.3)) + 1
    y0, y1 = max(0, int(cy) - r), min(shape[0], int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(shape[1], int(cx) + r + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    c, s = math.cos(theta), math.sin(theta)
    u, v = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
    phi = np.arctan2(v, u)
    scale = np.ones_like(phi)
    for k, w, p in wobble:
        scale += w * np.cos(k * phi + p)
    inside = (u**2 + v**2) <= scale**2
    return (slice(y0, y1), slice(x0, x1)), inside


# ---------------------------------------------------------------------------------------------------
# Nuclei (H&E)
# ---------------------------------------------------------------------------------------------------
NUCLEI_PATTERNS: tuple[str, ...] = ("quadrant", "even", "sparse", "clustered")


def make_nuclei(size: int, rng: np.random.Generator, pattern: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """One H&E-like tile with its nucleus mask and density sentence.

    Args:
        size: side of the square tile in pixels.
        rng: the case's random generator.
        pattern: density layout, one of :data:`NUCLEI_PATTERNS` (random when ``None``).
    Returns:
        ``image`` ``(3, size, size)`` float32 in [0, 1], ``label`` ``(size, size)`` int64 in {0, 1},
        ``text`` = :func:`describe_density` of the label.
    """
    if size < 16:
        raise DataError(f"synthetic nuclei: size must be at least 16 px, got {size}")
    pattern = pattern or str(rng.choice(NUCLEI_PATTERNS, p=[0.4, 0.25, 0.15, 0.2]))
    if pattern not in NUCLEI_PATTERNS:
        raise DataError(f"synthetic nuclei: unknown pattern {pattern!r}; choose one of {NUCLEI_PATTERNS}")
    s = size
    r_mean = max(2.5, 0.022 * s)  # ~5.6 px at 256, ~11 px at 512 (MoNuSeg nuclei at the 512 working scale)

    # density field on a coarse grid, then nucleus centres drawn from it
    g = 16
    gy, gx = np.mgrid[0:g, 0:g] / (g - 1)
    if pattern == "quadrant":
        qy, qx = rng.integers(0, 2, size=2)
        soft = 14.0
        wy = 1 / (1 + np.exp(-soft * ((gy - 0.5) if qy else (0.5 - gy))))
        wx = 1 / (1 + np.exp(-soft * ((gx - 0.5) if qx else (0.5 - gx))))
        density = 0.12 + wy * wx
        target = rng.uniform(0.10, 0.16)
    elif pattern == "even":
        density = np.ones((g, g))
        target = rng.uniform(0.16, 0.26)
    elif pattern == "sparse":
        density = np.ones((g, g))
        target = rng.uniform(0.02, 0.05)
    else:  # clustered
        density = np.exp(1.6 * smooth_noise(rng, (g, g), 4.0))
        target = rng.uniform(0.12, 0.2)
    n = int(target * s * s / (math.pi * r_mean**2 * 0.85))
    p = (density / density.sum()).ravel()
    cells = rng.choice(g * g, size=4 * n + 8, p=p)
    cand_y = (cells // g + rng.random(cells.size)) * s / g
    cand_x = (cells % g + rng.random(cells.size)) * s / g

    radii = r_mean * rng.lognormal(0.0, 0.22, size=cand_y.size)
    ky, kx, kr = np.empty(n), np.empty(n), np.empty(n)
    m = 0
    for y, x, r in zip(cand_y, cand_x, radii):
        if m >= n:
            break
        # mostly separated, some touching: centres may come within 0.75 x the sum of radii
        if m and np.any((ky[:m] - y) ** 2 + (kx[:m] - x) ** 2 < (0.75 * (kr[:m] + r)) ** 2):
            continue
        ky[m], kx[m], kr[m] = y, x, r
        m += 1
    keep_y, keep_x, keep_r = ky[:m], kx[:m], kr[:m]

    label = np.zeros((s, s), dtype=np.int64)
    haem = np.zeros((s, s), dtype=np.float32)
    for y, x, r in zip(keep_y, keep_x, keep_r):
        elong = rng.uniform(1.0, 1.7)
        a, b = r * math.sqrt(elong), r / math.sqrt(elong)
        wobble = np.stack([np.arange(2, 5), rng.uniform(0, 0.08, 3), rng.uniform(0, 2 * math.pi, 3)], 1)
        patch = _ellipse_patch(y, x, a, b, rng.uniform(0, math.pi), wobble, (s, s))
        if patch is None:
            continue
        sl, inside = patch
        label[sl][inside] = 1
        stain = rng.uniform(0.55, 1.25)
        haem[sl][inside] = np.maximum(haem[sl][inside], stain)

    # stains: eosin texture (fibres + lumen-like pale areas), chromatin texture inside nuclei
    eosin = 0.95 + 0.25 * smooth_noise(rng, (s, s), s / 6) + 0.12 * smooth_noise(rng, (s, s), max(2.0, s / 64))
    pale = 1 / (1 + np.exp(-4 * (smooth_noise(rng, (s, s), s / 5) - 1.6)))  # a few white spaces
    eosin = np.clip(eosin * (1 - 0.85 * pale), 0.05, None)
    chromatin = 1 + 0.25 * smooth_noise(rng, (s, s), max(1.5, r_mean / 2))
    haem = haem * chromatin + 0.05 * np.clip(smooth_noise(rng, (s, s), s / 8), 0, None)
    haem = gaussian_blur(haem[None], 0.5 + r_mean / 10)[0]
    od = eosin[None] * _OD_EOSIN[:, None, None] + haem[None] * _OD_HAEM[:, None, None]
    stain_jitter = rng.uniform(0.85, 1.15, size=(3, 1, 1))
    image = np.exp(-od * stain_jitter)
    image = gaussian_blur(image, 0.6 * max(1.0, s / 256)) + rng.normal(0, 0.015, size=image.shape)
    image = np.clip(image, 0, 1).astype(np.float32)
    return image, label, describe_density(label)


# ---------------------------------------------------------------------------------------------------
# Chest X-ray lungs
# ---------------------------------------------------------------------------------------------------
def make_lung(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """One X-ray-like radiograph with its binary lung mask.

    Returns:
        ``image`` ``(1, size, size)`` float32 in [0, 1], ``label`` ``(size, size)`` int64 in {0, 1},
        ``text`` = :func:`describe_lungs` of the label.
    """
    if size < 16:
        raise DataError(f"synthetic lung: size must be at least 16 px, got {size}")
    s = size
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    # a small random global similarity transform of the whole patient
    ang = rng.uniform(-0.06, 0.06)
    zoom = rng.uniform(0.9, 1.08)
    oy, ox = rng.uniform(-0.03, 0.03, 2)
    cy, cx = yy - 0.5 - oy, xx - 0.5 - ox
    y = (cy * math.cos(ang) - cx * math.sin(ang)) / zoom + 0.5
    x = (cy * math.sin(ang) + cx * math.cos(ang)) / zoom + 0.5

    body = ((x - 0.5) / rng.uniform(0.44, 0.49)) ** 2 + ((y - 0.66) / 0.66) ** 2 <= 1
    spine = np.exp(-(((x - 0.5) / 0.035) ** 2))
    heart_c = (rng.uniform(0.68, 0.74), 0.5 + rng.uniform(0.03, 0.06))  # patient's left = image right
    heart_ax = (rng.uniform(0.1, 0.13), rng.uniform(0.1, 0.14))
    heart = ((y - heart_c[0]) / heart_ax[0]) ** 2 + ((x - heart_c[1]) / heart_ax[1]) ** 2 <= 1

    lungs = np.zeros((s, s), dtype=bool)
    for side in (-1, 1):
        lcx = 0.5 + side * rng.uniform(0.2, 0.24)
        lcy = rng.uniform(0.47, 0.52)
        ay = rng.uniform(0.28, 0.35)
        ax = rng.uniform(0.17, 0.21) * rng.uniform(0.85, 1.05)  # lungs of unequal size
        t = np.clip((y - (lcy - ay)) / (2 * ay), 0, 1)  # 0 at the apex, 1 at the base
        ax_eff = ax * (0.3 + 0.7 * t**0.35)  # narrow apex, wide base
        # the medial border is straighter than the lateral one: shift the centre outwards near the top
        shifted = x - (lcx + side * 0.03 * (1 - t))
        lung = (shifted / ax_eff) ** 2 + ((y - lcy) / ay) ** 2 <= 1
        dome = lcy + ay * rng.uniform(0.7, 0.85) - 0.08 * ay * np.cos(np.pi * (x - lcx) / (2 * ax))
        lung &= y <= dome  # the diaphragm: a shallow dome instead of a pointed base
        lung &= np.abs(x - 0.5) > rng.uniform(0.045, 0.07)  # mediastinum
        lungs |= lung
    lungs &= ~heart
    lungs &= body

    img = np.where(body, 0.55, 0.06).astype(np.float32)
    img += 0.18 * spine * body + 0.08 * heart
    img = np.where(lungs, 0.2 + 0.05 * smooth_noise(rng, (s, s), max(2.0, s / 20)), img)
    # ribs: bright arcs across each hemithorax, drawn on the image only (lungs include them, as in real masks)
    ribs = np.zeros((s, s), dtype=np.float32)
    for side in (-1, 1):
        for k in range(9):
            y0 = 0.2 + k * rng.uniform(0.066, 0.074)
            curve = y0 + 0.9 * (x - (0.5 + side * 0.05)) ** 2 - 0.05
            band = np.exp(-(((y - curve) / 0.011) ** 2)) * ((x - 0.5) * side > 0.03) * ((x - 0.5) * side < 0.4)
            ribs = np.maximum(ribs, band)
    clav = np.exp(-(((y - (0.17 + 0.25 * (np.abs(x - 0.5) - 0.1) ** 2 * 4)) / 0.012) ** 2)) * (np.abs(x - 0.5) < 0.3)
    img += 0.13 * ribs * body + 0.15 * clav * body
    img *= 1 + 0.08 * smooth_noise(rng, (s, s), s / 3)  # exposure variation
    img = gaussian_blur(img[None], 0.8 * max(1.0, s / 256))[0]
    img += rng.normal(0, 0.02, size=img.shape)
    image = np.clip(img, 0, 1)[None].astype(np.float32)
    label = lungs.astype(np.int64)
    return image, label, describe_lungs(label)


# ---------------------------------------------------------------------------------------------------
# Hippocampus (3-D)
# ---------------------------------------------------------------------------------------------------
def make_hippocampus_volume(rng: np.random.Generator, shape: tuple[int, int, int] | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """One MRI-like volume with a two-part hippocampus-like structure.

    A curved tube runs along the second axis; its front part (large index on axis 1, the "A" of the
    real volumes' RAS orientation) is label 1 ("anterior", thicker head) and its back part label 2
    ("posterior", thinner tail), adjacent as in MSD Task04. A dark CSF pocket lies beside it and a
    brighter white-matter blob above it.

    Args:
        shape: ``(X, Y, Z)``; default about 32 x 40 x 32 with a few voxels of random jitter.
    Returns:
        ``image`` ``(X, Y, Z)`` float32 min-max scaled to [0, 1]; ``label`` ``(X, Y, Z)`` int64 in {0, 1, 2}.
    """
    if shape is None:
        shape = (32 + int(rng.integers(-3, 5)), 40 + int(rng.integers(-3, 7)), 32 + int(rng.integers(-3, 5)))
    X, Y, Z = shape
    if min(shape) < 12:
        raise DataError(f"synthetic hippocampus: every side must be at least 12 voxels, got {shape}")
    xs, ys, zs = np.meshgrid(np.arange(X, dtype=np.float32), np.arange(Y, dtype=np.float32),
                             np.arange(Z, dtype=np.float32), indexing="ij")
    y0, y1 = Y * rng.uniform(0.12, 0.2), Y * rng.uniform(0.82, 0.9)
    t = np.clip((ys - y0) / (y1 - y0), 0, 1)  # position along the tube, 0 = posterior end, 1 = anterior
    bend = rng.uniform(-0.2, 0.2) * X
    xc = X * rng.uniform(0.45, 0.55) + bend * np.sin(math.pi * t)
    zc = Z * rng.uniform(0.45, 0.55) + rng.uniform(-0.15, 0.15) * Z * (t - 0.5)
    r_head, r_tail = rng.uniform(5.5, 7.0), rng.uniform(3.5, 4.5)
    radius = r_tail + (r_head - r_tail) * t
    dist = np.sqrt(((xs - xc) / 1.0) ** 2 + ((zs - zc) / 0.8) ** 2)
    inside = (dist <= radius) & (ys >= y0) & (ys <= y1)
    split = rng.uniform(0.5, 0.6)
    label = np.where(inside, np.where(t >= split, 1, 2), 0).astype(np.int64)

    tissue = 0.5 + 0.06 * smooth_noise(rng, shape, 6.0)
    white = np.exp(-(((xs - xc - 0.0) / 8.0) ** 2 + ((zs - (zc + radius + 4.0)) / 4.0) ** 2))
    csf = np.exp(-(((xs - (xc + radius + 1.5)) / 2.0) ** 2 + ((zs - zc) / 3.0) ** 2)) * (t > 0.05) * (t < 0.95)
    img = tissue + 0.25 * white - 0.35 * csf
    img = np.where(inside, 0.42 + 0.04 * smooth_noise(rng, shape, 3.0), img)
    img = gaussian_blur(img[None], 0.7)[0]
    img += rng.normal(0, 0.03, size=img.shape)
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    return img.astype(np.float32), label


# ---------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------
def _case_rng(seed: int, family: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, FAMILIES.index(family), index])


def synthetic_dataset(family: str = "nuclei", n_cases: int = 24, size: int = 256, seed: int = 0,
                      working_size: int | None = None) -> SegDataset:
    """A seeded procedural dataset of one family, with a seeded train/val/test split (60/20/20).

    Args:
        family: ``"nuclei"``, ``"lung"`` or ``"hippocampus"``.
        n_cases: number of 2-D images (nuclei, lung) or of 3-D volumes (hippocampus).
        size: side of the generated 2-D images (ignored by ``hippocampus``: volumes are ~32 x 40 x 32).
        seed: the same seed gives the same cases, byte for byte.
        working_size: resize 2-D images to this side (bilinear; labels nearest) when it differs from
            ``size``; the hippocampus family keeps its native slice size like the real loader.
    Returns:
        :class:`SegDataset` with ``source="synthetic"``; hippocampus slices carry ``meta['volume']``
        and ``meta['slice']``; the split keeps all slices of a volume together.
    """
    if family not in FAMILIES:
        raise DataError(f"unknown synthetic family {family!r}; choose one of {', '.join(FAMILIES)}")
    if n_cases < 1:
        raise DataError(f"synthetic {family}: n_cases must be at least 1, got {n_cases}")
    cases: list[Case] = []
    if family == "hippocampus":
        for i in range(n_cases):
            vid = f"synth_hippocampus_{i:03d}"
            image, label = make_hippocampus_volume(_case_rng(seed, family, i))
            cases += volume_to_slices(vid, image, label, meta={"source": "synthetic"})
        groups = {c.id: c.meta["volume"] for c in cases}
        split = assign_seeded_split([c.id for c in cases], seed=seed, groups=groups)
        for c in cases:
            c.split = split[c.id]
        return SegDataset(
            name="synthetic-hippocampus", cases=cases, class_names=("background", "anterior", "posterior"),
            in_channels=1, source="synthetic", description=(
                f"synthetic hippocampus: {n_cases} procedural MRI-like volumes (seed {seed}) as axial slices; "
                "labels 1 anterior, 2 posterior; not real data"), has_text=False)

    make: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray, str]] = (
        make_nuclei if family == "nuclei" else make_lung)
    for i in range(n_cases):
        image, label, text = make(size, _case_rng(seed, family, i))
        meta = {"orig_size": (size, size), "source": "synthetic"}
        if working_size is not None and working_size != size:
            image, label = resize_pair(image, label, working_size)
            text = describe_density(label) if family == "nuclei" else describe_lungs(label)
        cases.append(Case(id=f"synth_{family}_{i:03d}", image=image, label=label, text=text, meta=meta))
    split = assign_seeded_split([c.id for c in cases], seed=seed)
    for c in cases:
        c.split = split[c.id]
    if family == "nuclei":
        names, channels, what = ("background", "nucleus"), 3, "H&E-like tiles with density sentences"
    else:
        names, channels, what = ("background", "lung"), 1, "X-ray-like radiographs with lung masks"
    return SegDataset(name=f"synthetic-{family}", cases=cases, class_names=names, in_channels=channels,
                      source="synthetic", has_text=True, description=(
                          f"synthetic {family}: {n_cases} procedural {what} ({size}px, seed {seed}); not real data"))
