"""Procedural stand-ins for the three real datasets, used offline (tests, CI, first runs of the book).

Three families, each deterministic given ``(seed, case index)`` and fast (a 256 x 256 case in a fraction
of a second, numpy only). They are made **hard on purpose**: a stand-in that any method segments
perfectly teaches nothing, because every comparison then sits at the ceiling.

* ``nuclei``: H&E-like RGB tiles rendered with the Beer-Lambert stain model
  ``I = L * exp(-(c_E * OD_E + c_H * OD_H + OD_RBC))`` (eosin concentration ``c_E`` as a textured pink
  background, haematoxylin ``c_H`` inside nuclei, illumination ``L``). Four nucleus kinds (epithelial,
  lymphocyte, stromal, pale) of varied size, shape and stain; touching and overlapping nuclei (densities
  add); per-tile stain vectors and strengths, uneven illumination, out-of-focus regions, noise; annotated
  outlines that differ slightly from the stained ones, as hand-drawn polygons do; unlabelled look-alikes
  (out-of-focus nuclei of another plane, debris, red blood cells, tissue folds). Density varies in space
  on purpose (one dense quadrant, even, sparse or clustered), and each case carries an LViT-style sentence
  computed **from its mask** by :func:`describe_density`, so the sentence really describes the label.
* ``lung``: X-ray-like radiographs (body outline, two lung fields of varied shape and size, a heart
  shadow of varied size that the mask excludes, spine, ribs, clavicles, vessel markings; in some images
  opacities inside a lung, a pleural effusion at one base, soft-tissue shadows, a side marker) with
  varied exposure, contrast and noise, the binary lung mask and a sentence from :func:`describe_lungs`.
* ``hippocampus``: small 3-D T1-MRI-like volumes (about 32 x 40 x 32) with a curved tube split into two
  adjacent labelled parts (1 anterior, 2 posterior) of grey-matter intensity among grey and white matter,
  bounded only in places by CSF and white matter; returned as 2-D axial slices along the last axis,
  exactly like :mod:`diffseg_core.data.hippocampus`.

Nothing here claims realism beyond teaching the mechanics: numbers measured on these images say
nothing about the real datasets.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

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
_OD_RBC = -np.log(np.array([0.80, 0.30, 0.35]))  # red blood cells: bright red-orange


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
# Small image tools (numpy only: fast, and no extra dependency)
# ---------------------------------------------------------------------------------------------------
def _interp_matrix(n_out: int, n_in: int, cubic: bool) -> np.ndarray:
    """``(n_out, n_in)`` weights that resample a signal of ``n_in`` samples to ``n_out`` (edges clamped).

    Half-pixel centres (``align_corners=False``); cubic convolution with ``a = -0.75`` (as PyTorch's
    bicubic) or linear interpolation.
    """
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    i0 = np.floor(x).astype(np.int64)
    t = x - i0
    rows = np.arange(n_out)
    w = np.zeros((n_out, n_in))
    taps = range(-1, 3) if cubic else range(0, 2)
    for k in taps:
        d = np.abs(t - k)
        if cubic:
            a = -0.75
            wk = np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                          np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0))
        else:
            wk = np.clip(1 - d, 0, None)
        np.add.at(w, (rows, np.clip(i0 + k, 0, n_in - 1)), wk)
    return w


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Band-limited noise: a coarse Gaussian grid (one value per ``cell`` pixels) upsampled smoothly.

    Separable bicubic (2-D) or linear (3-D) interpolation with small matrices in numpy: fast on a busy
    machine, where a threaded interpolation call waits for cores.

    Args:
        shape: ``(H, W)`` or ``(D, H, W)``.
        cell: feature size in pixels (larger = smoother).
    Returns:
        ``shape`` float32 array, roughly zero mean and unit standard deviation.
    """
    coarse = [max(2, int(math.ceil(s / cell)) + 2) for s in shape]
    out = rng.standard_normal(coarse)
    cubic = len(shape) == 2
    for axis, (n_out, n_in) in enumerate(zip(shape, coarse)):
        out = np.moveaxis(np.tensordot(_interp_matrix(n_out, n_in, cubic), np.moveaxis(out, axis, 0), axes=1), 0, axis)
    out = out.astype(np.float32)
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
                   shape: tuple[int, int], radial: bool = False) -> tuple | None:
    """Boolean patch of an ellipse with a wobbly border, clipped to ``shape``.

    The border radius at angle phi is scaled by ``1 + sum_k w_k cos(k phi + p_k)`` (``wobble`` rows
    ``(k, w_k, p_k)``), which gives nuclei their slightly irregular outlines.
    Returns the ``(rows, cols)`` slices of the bounding box and the boolean patch (and, with ``radial``,
    the normalised radius: 0 at the centre, 1 on the border), or ``None`` when the ellipse lies outside
    the image.
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
    scale = np.ones_like(u)
    if len(wobble):
        phi = np.arctan2(v, u)
        for k, w, p in wobble:
            scale += w * np.cos(k * phi + p)
    rad = np.sqrt(u**2 + v**2)
    inside = rad <= scale
    if radial:
        return (slice(y0, y1), slice(x0, x1)), inside, rad / scale
    return (slice(y0, y1), slice(x0, x1)), inside


# ---------------------------------------------------------------------------------------------------
# Nuclei (H&E)
# ---------------------------------------------------------------------------------------------------
NUCLEI_PATTERNS: tuple[str, ...] = ("quadrant", "even", "sparse", "clustered")

#: nucleus kinds: (radius factor range, elongation range, haematoxylin range, rim-enhanced probability)
NUCLEUS_KINDS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], float]] = {
    "epithelial": ((1.0, 1.45), (1.0, 1.6), (0.4, 0.9), 0.5),    # large, vesicular, often with a darker rim
    "lymphocyte": ((0.6, 0.8), (1.0, 1.2), (1.1, 1.6), 0.0),     # small, round, very dark
    "stromal": ((0.75, 1.05), (2.4, 4.0), (0.7, 1.1), 0.0),      # thin and elongated (fibroblasts)
    "pale": ((0.9, 1.3), (1.0, 1.5), (0.2, 0.38), 0.6),          # faint open chromatin: easy to miss
}


def _stain_od(rng: np.random.Generator, base: np.ndarray, jitter: float) -> np.ndarray:
    """Optical density of unit stain with a per-image hue/saturation jitter (transmittance domain)."""
    t = np.clip(np.exp(-base) + rng.uniform(-jitter, jitter, 3), 0.05, 0.98)
    return -np.log(t)


def make_nuclei(size: int, rng: np.random.Generator, pattern: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """One H&E-like tile with its nucleus mask and density sentence.

    Args:
        size: side of the square tile in pixels.
        rng: the case's random generator.
        pattern: density layout, one of :data:`NUCLEI_PATTERNS` (random when ``None``).
    Returns:
        ``image`` ``(3, size, size)`` float32 in [0, 1], ``label`` ``(size, size)`` int64 in {0, 1},
        ``text`` = :func:`describe_density` of the label.

    What makes it hard (on purpose, so that methods can be told apart): four nucleus kinds of
    :data:`NUCLEUS_KINDS` (pale ones are faint), touching and overlapping nuclei (optical densities add),
    sizes varying within and between tiles, per-tile stain vectors and concentrations, uneven
    illumination, a blur that varies across the tile (out-of-focus regions), noise, and unlabelled
    look-alikes: faint out-of-focus nuclei of another plane, dark debris, red blood cells, tissue folds.
    """
    if size < 16:
        raise DataError(f"synthetic nuclei: size must be at least 16 px, got {size}")
    pattern = pattern or str(rng.choice(NUCLEI_PATTERNS, p=[0.4, 0.25, 0.15, 0.2]))
    if pattern not in NUCLEI_PATTERNS:
        raise DataError(f"synthetic nuclei: unknown pattern {pattern!r}; choose one of {NUCLEI_PATTERNS}")
    s = size
    px = s / 256  # lengths below are given for a 256-px tile
    # ~5.6 px at 256 (MoNuSeg nuclei at the 512 working scale, halved), with a per-tile magnification jitter
    r_mean = max(2.5, 0.022 * s) * rng.uniform(0.85, 1.2)

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

    # the tile's mix of nucleus kinds
    kinds = tuple(NUCLEUS_KINDS)
    mix = rng.dirichlet([2.0, 1.0, 1.0, 1.2])
    radii = r_mean * rng.lognormal(0.0, 0.2, size=cand_y.size)
    # separation factor: 1 = rims just touch; below 1 the nuclei overlap (about a quarter of the pairs)
    sep = np.where(rng.random(cand_y.size) < 0.25, rng.uniform(0.5, 0.8, cand_y.size), rng.uniform(0.8, 1.05, cand_y.size))
    ky, kx, kr = np.empty(n), np.empty(n), np.empty(n)
    m = 0
    for y, x, r, f in zip(cand_y, cand_x, radii, sep):
        if m >= n:
            break
        if m and np.any((ky[:m] - y) ** 2 + (kx[:m] - x) ** 2 < (0.75 * f * (kr[:m] + r)) ** 2):
            continue
        ky[m], kx[m], kr[m] = y, x, r
        m += 1

    label = np.zeros((s, s), dtype=np.int64)
    haem = np.zeros((s, s), dtype=np.float32)
    for y, x, r in zip(ky[:m], kx[:m], kr[:m]):
        kind = kinds[int(rng.choice(len(kinds), p=mix))]
        (r0, r1), (e0, e1), (h0, h1), p_rim = NUCLEUS_KINDS[kind]
        rr = r * rng.uniform(r0, r1)
        elong = rng.uniform(e0, e1)
        a, b = rr * math.sqrt(elong), rr / math.sqrt(elong)
        wobble = np.stack([np.arange(2, 5), rng.uniform(0, 0.1, 3), rng.uniform(0, 2 * math.pi, 3)], 1)
        theta = rng.uniform(0, math.pi)
        patch = _ellipse_patch(y, x, a, b, theta, wobble, (s, s))
        if patch is None:
            continue
        label[patch[0]][patch[1]] = 1
        # the annotator's outline is not the stained outline: up to ~15 % larger or smaller, shifted by a
        # fraction of a pixel (hand-drawn polygons), so borders are uncertain as in real annotations
        f = rng.uniform(0.85, 1.15)
        patch = _ellipse_patch(y + rng.normal(0, 0.4 * px), x + rng.normal(0, 0.4 * px), a * f, b * f, theta, wobble,
                               (s, s), radial=True)
        if patch is None:
            continue
        sl, inside, rho = patch
        stain = rng.uniform(h0, h1)
        profile = np.ones_like(rho)
        if rng.random() < p_rim:  # vesicular nucleus: pale centre, darker membrane
            profile = 0.45 + 0.75 * np.clip(rho, 0, 1) ** 4
        haem[sl][inside] += (stain * profile)[inside]
        if kind in ("epithelial", "pale") and rng.random() < 0.4:  # a nucleolus
            ny, nx = y + rng.normal(0, 0.25 * b), x + rng.normal(0, 0.25 * b)
            dot = _ellipse_patch(ny, nx, max(0.8, 0.18 * rr), max(0.8, 0.18 * rr), 0.0, np.zeros((0, 3)), (s, s))
            if dot is not None:
                haem[dot[0]][dot[1]] += 0.6

    # unlabelled look-alikes
    ghost = np.zeros((s, s), dtype=np.float32)  # nuclei of another focal plane: faint and blurred
    for _ in range(int(rng.uniform(0.15, 0.5) * max(m, 4))):
        y, x = rng.uniform(0, s, 2)
        rr = r_mean * rng.uniform(0.8, 1.3)
        patch = _ellipse_patch(y, x, rr, rr * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi), np.zeros((0, 3)), (s, s))
        if patch is not None:
            ghost[patch[0]][patch[1]] += rng.uniform(0.15, 0.4)
    ghost = gaussian_blur(ghost[None], rng.uniform(1.2, 2.2) * px)[0]
    for _ in range(int(rng.uniform(0.0, 0.25) * max(m, 4))):  # dark debris and pigment specks
        y, x = rng.uniform(0, s, 2)
        rr = max(0.7, r_mean * rng.uniform(0.15, 0.35))
        patch = _ellipse_patch(y, x, rr, rr, 0.0, np.zeros((0, 3)), (s, s))
        if patch is not None:
            haem[patch[0]][patch[1]] += rng.uniform(0.8, 1.4)
    rbc = np.zeros((s, s), dtype=np.float32)  # red blood cells, in a few small vessels
    for _ in range(int(rng.integers(0, 3))):
        vy, vx = rng.uniform(0, s, 2)
        for _ in range(int(rng.integers(4, 14))):
            y, x = vy + rng.normal(0, 3 * r_mean), vx + rng.normal(0, 3 * r_mean)
            rr = r_mean * rng.uniform(0.55, 0.75)
            patch = _ellipse_patch(y, x, rr, rr * rng.uniform(0.8, 1.0), 0.0, np.zeros((0, 3)), (s, s))
            if patch is not None:
                rbc[patch[0]][patch[1]] = rng.uniform(0.6, 1.0)

    # stains: eosin texture (fibres + lumen-like pale areas), chromatin texture inside nuclei
    eosin = 0.95 + 0.25 * smooth_noise(rng, (s, s), s / 6) + 0.12 * smooth_noise(rng, (s, s), max(2.0, s / 64))
    pale = 1 / (1 + np.exp(-4 * (smooth_noise(rng, (s, s), s / 5) - 1.6)))  # a few white spaces
    eosin = np.clip(eosin * (1 - 0.85 * pale), 0.05, None)
    chromatin = 1 + 0.3 * smooth_noise(rng, (s, s), max(1.5, r_mean / 2))
    haem = haem * chromatin + ghost + 0.05 * np.clip(smooth_noise(rng, (s, s), s / 8), 0, None)
    haem = gaussian_blur(haem[None], 0.5 + r_mean / 10)[0]
    c_h, c_e = rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.4)  # staining strength of this tile
    od_h, od_e = _stain_od(rng, _OD_HAEM, 0.08), _stain_od(rng, _OD_EOSIN, 0.06)
    od = (c_e * eosin[None] * od_e[:, None, None] + c_h * haem[None] * od_h[:, None, None]
          + rbc[None] * _OD_RBC[:, None, None])
    if rng.random() < 0.3:  # a tissue fold: a band of doubled thickness
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        ang = rng.uniform(0, math.pi)
        d = (yy - s / 2) * math.cos(ang) - (xx - s / 2) * math.sin(ang) - rng.uniform(-0.3, 0.3) * s
        d = d + 0.1 * s * smooth_noise(rng, (s, s), s / 3)
        od = od * (1 + 0.8 * np.exp(-(d / (rng.uniform(3, 8) * px)) ** 2))[None]
    illum = rng.uniform(0.85, 1.0) * (1 + 0.07 * smooth_noise(rng, (s, s), s / 2))  # uneven illumination
    image = illum[None] * np.exp(-od)
    # focus: a base blur everywhere and a stronger one in a smooth out-of-focus region
    sharp = gaussian_blur(image, rng.uniform(0.5, 1.2) * px)
    if rng.random() < 0.7:
        w = 1 / (1 + np.exp(-3 * (smooth_noise(rng, (s, s), s / 3) - 0.2)))
        image = sharp * (1 - w[None]) + gaussian_blur(image, rng.uniform(1.8, 3.0) * px) * w[None]
    else:
        image = sharp
    image = image + rng.normal(0, rng.uniform(0.02, 0.06), size=image.shape)
    image = np.clip(image, 0, 1) ** rng.uniform(0.85, 1.2)  # camera gamma
    image = image.astype(np.float32)
    return image, label, describe_density(label)


# ---------------------------------------------------------------------------------------------------
# Chest X-ray lungs
# ---------------------------------------------------------------------------------------------------
def make_lung(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """One X-ray-like radiograph with its binary lung mask.

    Returns:
        ``image`` ``(1, size, size)`` float32 in [0, 1], ``label`` ``(size, size)`` int64 in {0, 1},
        ``text`` = :func:`describe_lungs` of the label.

    What varies (so that the lung fields are not simply "the dark pixels"): the patient's position and
    size; each lung's height, width, apex and diaphragm dome; the heart's size and position (the mask
    excludes the heart, whose border is soft); exposure, contrast and gamma; ribs, clavicles and vessel
    markings; and, in some images, opacities inside a lung (still lung: they brighten the field), a
    pleural effusion at one base (not lung: it replaces the bottom of the field), soft-tissue (breast)
    shadows, a side marker and collimation edges.
    """
    if size < 16:
        raise DataError(f"synthetic lung: size must be at least 16 px, got {size}")
    s = size
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    # a random global similarity transform of the whole patient
    ang = rng.uniform(-0.08, 0.08)
    zoom = rng.uniform(0.85, 1.1)
    oy, ox = rng.uniform(-0.03, 0.03), rng.uniform(-0.025, 0.025)
    cy, cx = yy - 0.5 - oy, xx - 0.5 - ox
    y = (cy * math.cos(ang) - cx * math.sin(ang)) / zoom + 0.5
    x = (cy * math.sin(ang) + cx * math.cos(ang)) / zoom + 0.5

    body = ((x - 0.5) / rng.uniform(0.42, 0.5)) ** 2 + ((y - 0.66) / 0.66) ** 2 <= 1
    spine = np.exp(-(((x - 0.5) / 0.035) ** 2))
    heart_c = (rng.uniform(0.64, 0.74), 0.5 + rng.uniform(0.02, 0.07))  # patient's left = image right
    heart_ax = (rng.uniform(0.09, 0.15), rng.uniform(0.1, 0.17))  # large hearts too (cardiomegaly)
    heart_d = ((y - heart_c[0]) / heart_ax[0]) ** 2 + ((x - heart_c[1]) / heart_ax[1]) ** 2
    heart = heart_d <= 1

    lungs = np.zeros((s, s), dtype=bool)
    effusion = np.zeros((s, s), dtype=bool)
    p_effusion = rng.random() < 0.2
    eff_side = int(rng.choice([-1, 1]))
    for side in (-1, 1):
        lcx = 0.5 + side * rng.uniform(0.19, 0.25)
        lcy = rng.uniform(0.45, 0.53)
        ay = rng.uniform(0.25, 0.37)
        ax = rng.uniform(0.15, 0.22)  # lungs of unequal size
        t = np.clip((y - (lcy - ay)) / (2 * ay), 0, 1)  # 0 at the apex, 1 at the base
        ax_eff = ax * (rng.uniform(0.2, 0.4) + rng.uniform(0.6, 0.8) * t ** rng.uniform(0.25, 0.5))  # apex shape
        # the medial border is straighter than the lateral one: shift the centre outwards near the top
        shifted = x - (lcx + side * 0.03 * (1 - t))
        lung = (shifted / ax_eff) ** 2 + ((y - lcy) / ay) ** 2 <= 1
        dome = lcy + ay * rng.uniform(0.65, 0.88) - rng.uniform(0.04, 0.14) * ay * np.cos(np.pi * (x - lcx) / (2 * ax))
        lung &= y <= dome  # the diaphragm: a dome instead of a pointed base
        lung &= np.abs(x - 0.5) > rng.uniform(0.05, 0.075)  # mediastinum
        if p_effusion and side == eff_side:  # fluid fills the base: no longer lung
            level = lcy + ay * rng.uniform(0.2, 0.55) + 0.05 * (shifted * side)
            effusion |= lung & (y > level)
            lung &= y <= level
        lungs |= lung
    lungs &= ~heart
    lungs &= body

    level_body, level_lung = rng.uniform(0.45, 0.65), rng.uniform(0.14, 0.32)
    img = np.where(body, level_body, rng.uniform(0.02, 0.1)).astype(np.float32)
    img += rng.uniform(0.12, 0.22) * spine * body
    img += rng.uniform(0.04, 0.15) * np.clip(1.0 - heart_d, 0, 1) ** 0.3 * body  # the heart shadow, soft-edged
    lung_img = level_lung + 0.05 * smooth_noise(rng, (s, s), max(2.0, s / 20))
    # vessel markings: bright branches fanning out from each hilum, fading towards the periphery
    vessels = np.zeros((s, s), dtype=np.float32)
    for side in (-1, 1):
        hy, hx = rng.uniform(0.42, 0.5), 0.5 + side * rng.uniform(0.08, 0.12)
        for _ in range(int(rng.integers(6, 12))):
            th = rng.uniform(-1.2, 1.2) + (0 if side > 0 else math.pi)
            dy, dx = y - hy, x - hx
            along = dx * math.cos(th) + dy * math.sin(th)
            across = -dx * math.sin(th) + dy * math.cos(th) + 0.02 * np.sin(along * rng.uniform(8, 20))
            vessels = np.maximum(vessels, np.exp(-(across / 0.006) ** 2) * np.clip(1 - along / 0.3, 0, 1) * (along > 0))
    lung_img = lung_img + rng.uniform(0.05, 0.14) * vessels
    if rng.random() < 0.5:  # opacities (consolidation, ground glass): still lung, but brighter
        for _ in range(int(rng.integers(1, 4))):
            oy_, ox_ = rng.uniform(0.3, 0.75), 0.5 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.3)
            r = rng.uniform(0.05, 0.13)
            blob = np.exp(-(((y - oy_) ** 2 + (x - ox_) ** 2) / (2 * r**2)) * (1 + 0.3 * smooth_noise(rng, (s, s), s / 8)))
            lung_img = lung_img + rng.uniform(0.08, 0.28) * blob
    img = np.where(lungs, lung_img, img)
    img = np.where(effusion, level_body + rng.uniform(-0.05, 0.05), img)
    # ribs: bright arcs across each hemithorax, drawn on the image only (lungs include them, as in real masks)
    ribs = np.zeros((s, s), dtype=np.float32)
    gap = rng.uniform(0.062, 0.076)
    for side in (-1, 1):
        for k in range(9):
            y0 = 0.2 + k * gap
            curve = y0 + rng.uniform(0.8, 1.0) * (x - (0.5 + side * 0.05)) ** 2 - 0.05
            band = np.exp(-(((y - curve) / 0.011) ** 2)) * ((x - 0.5) * side > 0.03) * ((x - 0.5) * side < 0.4)
            ribs = np.maximum(ribs, band)
    clav = np.exp(-(((y - (0.17 + 0.25 * (np.abs(x - 0.5) - 0.1) ** 2 * 4)) / 0.012) ** 2)) * (np.abs(x - 0.5) < 0.3)
    img += rng.uniform(0.08, 0.16) * ribs * body + 0.15 * clav * body
    if rng.random() < 0.4:  # soft-tissue (breast) shadows over the lower lateral fields
        for side in (-1, 1):
            d = ((y - rng.uniform(0.72, 0.8)) / 0.14) ** 2 + ((x - 0.5 - side * 0.28) / 0.2) ** 2
            img += rng.uniform(0.04, 0.1) * np.clip(1 - d, 0, 1) * body
    img *= 1 + 0.1 * smooth_noise(rng, (s, s), s / 3)  # exposure variation
    if rng.random() < 0.3:  # collimation: darker bands at two edges
        w = rng.uniform(0.02, 0.06)
        img = np.where((yy < w) | (xx > 1 - w), img * 0.4, img)
    if rng.random() < 0.5:  # a side marker, bright, in a corner
        my, mx = rng.uniform(0.04, 0.12), rng.choice([rng.uniform(0.04, 0.12), rng.uniform(0.82, 0.9)])
        img = np.where((np.abs(yy - my) < 0.025) & (np.abs(xx - mx) < 0.018), 0.95, img)
    img = gaussian_blur(img[None], rng.uniform(0.5, 1.3) * max(1.0, s / 256))[0]
    img = np.clip(img + rng.normal(0, rng.uniform(0.01, 0.04), size=img.shape), 0, 1) ** rng.uniform(0.8, 1.25)
    image = img[None].astype(np.float32)
    label = lungs.astype(np.int64)
    return image, label, describe_lungs(label)


# ---------------------------------------------------------------------------------------------------
# Hippocampus (3-D)
# ---------------------------------------------------------------------------------------------------
def make_hippocampus_volume(rng: np.random.Generator, shape: tuple[int, int, int] | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """One T1-MRI-like volume with a two-part hippocampus-like structure.

    A curved tube runs along the second axis; its front part (large index on axis 1, the "A" of the
    real volumes' RAS orientation) is label 1 ("anterior", thicker head) and its back part label 2
    ("posterior", thinner tail), adjacent as in MSD Task04.

    The contrast is that of a T1 image, where the hippocampus is grey matter among grey matter: white
    matter is bright, grey matter mid-grey, cerebrospinal fluid dark. The hippocampus has the intensity of
    the surrounding grey matter (an unlabelled amygdala-like blob of the same intensity touches its head),
    and its border is given only in places, by a dark temporal horn of CSF along one side and bright white
    matter (alveus and fimbria) above it. A smooth bias field, partial-volume blur and noise complete it.

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
    r_head, r_tail = rng.uniform(5.0, 7.0), rng.uniform(3.0, 4.5)
    radius = r_tail + (r_head - r_tail) * t
    dist = np.sqrt(((xs - xc) / 1.0) ** 2 + ((zs - zc) / 0.8) ** 2)
    inside = (dist <= radius) & (ys >= y0) & (ys <= y1)
    split = rng.uniform(0.5, 0.6)
    label = np.where(inside, np.where(t >= split, 1, 2), 0).astype(np.int64)

    wm_level, gm_level, csf_level = rng.uniform(0.68, 0.8), rng.uniform(0.45, 0.55), rng.uniform(0.1, 0.2)
    # background: grey and white matter in smooth patches
    wm_frac = 1 / (1 + np.exp(-2.5 * smooth_noise(rng, shape, 7.0)))
    img = gm_level + (wm_level - gm_level) * wm_frac
    # white matter above the structure (alveus/fimbria) and below it (parahippocampal), partly
    above = np.exp(-(((zs - (zc + radius + rng.uniform(1.0, 2.5))) / 1.6) ** 2)) * (np.abs(xs - xc) < radius + 2)
    below = np.exp(-(((zs - (zc - radius - rng.uniform(1.5, 3.0))) / 2.0) ** 2)) * (xs - xc < 0)
    img = img + (wm_level - img) * np.clip(above + 0.7 * below, 0, 1)
    # the temporal horn: a thin dark CSF crescent along one side, over part of the length
    side = rng.choice([-1.0, 1.0])
    horn = np.exp(-(((xs - (xc + side * (radius + 1.2))) / 1.1) ** 2 + ((zs - zc - 1.0) / 2.5) ** 2))
    horn = horn * (t > rng.uniform(0.05, 0.35)) * (t < rng.uniform(0.7, 1.0))
    img = img + (csf_level - img) * np.clip(1.3 * horn, 0, 1)
    # the structure itself: grey matter, hardly different from the grey matter around it
    img = np.where(inside, gm_level + rng.uniform(-0.03, 0.03) + 0.03 * smooth_noise(rng, shape, 3.0), img)
    # an amygdala-like blob of the same grey matter touching the head (anterior-superior): not labelled
    ay_ = y1 + rng.uniform(-1.0, 2.0)
    amyg = (((xs - xc) / rng.uniform(4.0, 6.0)) ** 2 + ((ys - ay_) / 3.5) ** 2
            + ((zs - (zc + rng.uniform(2.0, 4.0))) / 4.0) ** 2) <= 1
    img = np.where(amyg & ~inside, gm_level + 0.02 * smooth_noise(rng, shape, 3.0), img)
    img = img * (1 + 0.12 * smooth_noise(rng, shape, 12.0))  # bias field
    img = gaussian_blur(img[None], rng.uniform(0.6, 1.0))[0]  # partial volume
    img += rng.normal(0, rng.uniform(0.02, 0.045), size=img.shape)
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
