"""LViT-style reports generated from a lesion mask and a lung mask, and read back.

LViT (Li et al., IEEE TMI 2023) gave each QaTa-COV19 chest X-ray one structured sentence, written by
professionals from the infection annotation, e.g. "Bilateral pulmonary infection, two infected areas, upper
left lung and lower right lung.": whether one or both lungs are infected, how many infected areas there are,
and roughly where (upper / middle / lower zone of the left / right lung). TextDiff (Feng, MICCAI 2024) feeds
these sentences to its text encoder. A dataset with lesion masks but no text (the shared chest X-ray subset)
gets sentences of the same grammar **generated here from its masks**: deterministic, and true of the mask
they came from by construction (:func:`parse_report` reads a sentence back so tests can check it).

Grammar (our reading of LViT's examples; "all" for the three zones of one lung is our choice)::

    report     := "No pulmonary infection, no infected areas."
                | LATERALITY " pulmonary infection, " COUNT " infected " ("area" | "areas") ", " PLACES "."
    LATERALITY := "Unilateral" | "Bilateral"
    COUNT      := "one" | "two" | ... | "ten" | "multiple"          (multiple = more than ten)
    PLACES     := PLACE | PLACE " and " PLACE                       (the left lung first)
    PLACE      := ZONES " " ("left" | "right") " lung"
    ZONES      := "all" | zone words top to bottom: "upper", "middle", "lower", "upper middle", "middle lower",
                  "upper lower"

How a sentence is computed from the masks (the conventions a reader must know):

* **Left and right are the patient's.** A frontal radiograph is displayed as if facing the patient, so the
  patient's **left** lung is on the **image's right** (larger column index). The two lungs are told apart by a
  vertical midline: half-way across the gap between the two largest connected components of the lung mask
  (between their centroids when their columns overlap; at the narrowest column of the central third when the
  lung mask is one component). Pixels right of the midline (in image columns) belong to the left lung.
* **Zones** are thirds of each lung's own vertical extent (its top to its bottom row): upper, middle, lower.
* **Infected areas** are 8-connected components of the lesion mask with at least ``min_area_fraction`` of the
  lung field's area (default 0.5 %); smaller specks are not counted (nor described).
* Each area belongs to the lung side that holds most of its pixels; a side is infected when it holds an area
  (so "Unilateral ..., two infected areas" means both areas lie in one lung).
* A zone of an infected lung is named when it holds at least ``zone_fraction`` (default 10 %) of the pixels
  of that lung's areas; all three zones are written "all".
* No area left: "No pulmonary infection, no infected areas." (a valid negative case; LViT's QaTa release has
  none, so this sentence is ours).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["ZONES", "SIDES", "MANY_AREAS", "NO_INFECTION", "LesionFindings", "LungSides", "connected_components",
           "split_lungs", "zone_of_rows", "lesion_findings", "format_report", "parse_report", "lesion_report"]

ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIDES: tuple[str, ...] = ("left", "right")  # the patient's sides, in the order a report names them
NUMBER_WORDS: tuple[str, ...] = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
#: the count a report writes as "multiple" (any number of areas above ten)
MANY_AREAS: int = len(NUMBER_WORDS)
NO_INFECTION = "No pulmonary infection, no infected areas."


@dataclass(frozen=True)
class LesionFindings:
    """What a report says: the number of infected areas and the zones named for each (patient's) lung.

    Attributes:
        n_areas: infected areas, ``0..10``, or :data:`MANY_AREAS` (11) for "multiple" (more than ten).
        left, right: zones named for the patient's left / right lung, a sub-tuple of :data:`ZONES` in that
            order; empty when that lung is not infected.
    """

    n_areas: int
    left: tuple[str, ...] = ()
    right: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.n_areas <= MANY_AREAS:
            raise ValueError(f"LesionFindings: n_areas must be in 0..{MANY_AREAS}, got {self.n_areas}")
        for side in SIDES:
            zones = getattr(self, side)
            if tuple(z for z in ZONES if z in zones) != tuple(zones):
                raise ValueError(f"LesionFindings: {side} zones {zones} must be distinct words of {ZONES}, "
                                 "top to bottom")
        sides = sum(bool(getattr(self, s)) for s in SIDES)
        if (self.n_areas == 0) != (sides == 0) or self.n_areas < sides:
            raise ValueError(f"LesionFindings: {self.n_areas} area(s) cannot cover {sides} infected lung(s)")

    @property
    def laterality(self) -> str:
        """``"none"``, ``"unilateral"`` or ``"bilateral"``."""
        return ("none", "unilateral", "bilateral")[sum(bool(getattr(self, s)) for s in SIDES)]

    def mirrored(self) -> "LesionFindings":
        """The findings of the mirror image: left and right swapped (a false sentence unless symmetric)."""
        return LesionFindings(self.n_areas, self.right, self.left)


@dataclass(frozen=True)
class LungSides:
    """The two lungs of a lung mask, told apart by a vertical midline (see the module docstring).

    Attributes:
        midline: column coordinate (pixel centres are at ``x + 0.5``); the patient's left lung lies right of it.
        rows: per side (``"left"``, ``"right"``: the patient's), the lung's ``(top, bottom)`` rows, bottom
            exclusive; the zones are thirds of this range.
    """

    midline: float
    rows: dict[str, tuple[int, int]]

    def side_of_columns(self, x: np.ndarray) -> np.ndarray:
        """``True`` where column ``x`` (int) lies in the patient's **left** lung half (the image's right)."""
        return np.asarray(x) + 0.5 >= self.midline

    def zone_bounds(self, side: str) -> tuple[float, float, float, float]:
        """Row coordinates ``(top, upper|middle, middle|lower, bottom)`` of one lung's three zones."""
        top, bottom = self.rows[side]
        h = (bottom - top) / 3
        return float(top), top + h, top + 2 * h, float(bottom)


# ---------------------------------------------------------------------------------------------------
# Connected components (8-connectivity), from runs of foreground pixels
# ---------------------------------------------------------------------------------------------------
def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of foreground: rows, starts, ends (exclusive), in raster order."""
    H, W = mask.shape
    padded = np.zeros((H, W + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    r0, s = np.nonzero(d == 1)
    r1, e = np.nonzero(d == -1)
    assert np.array_equal(r0, r1)
    return r0, s, e


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a binary mask.

    Args:
        mask: ``(H, W)`` bool or {0, 1}.
    Returns:
        ``labels`` ``(H, W)`` int32, 0 = background and ``1..n`` numbered in raster order of each component's
        first pixel; ``sizes`` ``(n,)`` int64 pixel counts (``sizes[k - 1]`` for label ``k``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"connected_components: mask must be (H, W), got shape {mask.shape}")
    rows, starts, ends = _runs(mask != 0)
    n = len(rows)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # runs of consecutive rows touch (8-connectivity) when [s, e) and [s' - 1, e' + 1) overlap
    row_first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        a, a_end = row_first[r - 1], row_first[r]  # runs of row r - 1
        b, b_end = row_first[r], row_first[r + 1]  # runs of row r
        while a < a_end and b < b_end:
            if starts[a] <= ends[b] and starts[b] <= ends[a]:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    roots = [find(i) for i in range(n)]
    label_of: dict[int, int] = {}
    labels = np.zeros(mask.shape, dtype=np.int32)
    sizes: list[int] = []
    for i, root in enumerate(roots):
        if root not in label_of:  # roots are the smallest run index: raster order of first pixels
            label_of[root] = len(label_of) + 1
            sizes.append(0)
        k = label_of[root]
        labels[rows[i], starts[i]:ends[i]] = k
        sizes[k - 1] += int(ends[i] - starts[i])
    return labels, np.asarray(sizes, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Lungs, zones, findings
# ---------------------------------------------------------------------------------------------------
def split_lungs(lung: np.ndarray) -> LungSides:
    """The midline between the two lungs and each lung's vertical extent (patient's left = image right).

    Args:
        lung: ``(H, W)`` binary lung mask (both lungs).
    Raises:
        ValueError when the lung mask is empty.
    """
    lung = np.asarray(lung) != 0
    labels, sizes = connected_components(lung)
    if sizes.size == 0:
        raise ValueError("split_lungs: the lung mask is empty; zones and sides need both lung fields")
    if sizes.size >= 2:
        two = np.argsort(-sizes, kind="stable")[:2] + 1
        cols = [np.nonzero(labels == k)[1] for k in two]
        a, b = sorted(cols, key=lambda c: float(c.mean()))  # a: image left (patient's right lung)
        if a.max() < b.min():
            midline = (a.max() + 1 + b.min()) / 2  # half-way across the gap (column edges)
        else:
            midline = (a.mean() + b.mean()) / 2 + 0.5  # centroid columns, as pixel-centre coordinates
    else:
        xs = np.nonzero(lung.any(axis=0))[0]
        x0, x1 = int(xs.min()), int(xs.max()) + 1
        lo, hi = x0 + (x1 - x0) // 3, x1 - (x1 - x0) // 3
        profile = lung[:, lo:hi].sum(axis=0) if hi > lo else lung[:, x0:x1].sum(axis=0)
        midline = (lo if hi > lo else x0) + int(np.argmin(profile)) + 0.5
    sides = LungSides(float(midline), {})
    ys, xs = np.nonzero(lung)
    on_left = sides.side_of_columns(xs)
    for side, sel in (("left", on_left), ("right", ~on_left)):
        rows_ = ys[sel] if sel.any() else ys  # one lung missing: use the other's extent
        sides.rows[side] = (int(rows_.min()), int(rows_.max()) + 1)
    return sides


def zone_of_rows(rows: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Zone index (0 upper, 1 middle, 2 lower) of pixel rows, thirds of ``[top, bottom)``; clipped outside."""
    h = max(bottom - top, 1) / 3
    return np.clip(np.floor((np.asarray(rows) + 0.5 - top) / h), 0, 2).astype(np.int64)


def lesion_findings(lesion: np.ndarray, lung: np.ndarray, min_area_fraction: float = 0.005,
                    zone_fraction: float = 0.1) -> LesionFindings:
    """Laterality, number and zones of the infected areas of a lesion mask (see the module docstring).

    Args:
        lesion: ``(H, W)`` binary lesion mask (may be empty: a negative case).
        lung: ``(H, W)`` binary lung mask of the same image (gives sides and zones).
        min_area_fraction: areas smaller than this fraction of the lung field are specks, not counted.
        zone_fraction: a zone is named when it holds at least this fraction of its lung's lesion pixels.
    Returns:
        :class:`LesionFindings` (counts above ten become :data:`MANY_AREAS`).
    """
    lesion, lung = np.asarray(lesion) != 0, np.asarray(lung) != 0
    if lesion.shape != lung.shape or lesion.ndim != 2:
        raise ValueError(f"lesion_findings: lesion {lesion.shape} and lung {lung.shape} must be the same (H, W)")
    if not lesion.any():
        return LesionFindings(0)
    sides = split_lungs(lung)
    labels, sizes = connected_components(lesion)
    min_area = max(1, math.ceil(min_area_fraction * int(lung.sum())))
    zone_counts = {s: np.zeros(3, dtype=np.int64) for s in SIDES}
    n_areas = 0
    for k in np.nonzero(sizes >= min_area)[0] + 1:
        ys, xs = np.nonzero(labels == k)
        side = "left" if 2 * int(sides.side_of_columns(xs).sum()) > len(xs) else "right"
        zone_counts[side] += np.bincount(zone_of_rows(ys, *sides.rows[side]), minlength=3)
        n_areas += 1
    zones = {}
    for s in SIDES:
        total = int(zone_counts[s].sum())
        zones[s] = tuple(z for z, c in zip(ZONES, zone_counts[s]) if total and c >= zone_fraction * total)
    return LesionFindings(min(n_areas, MANY_AREAS), zones["left"], zones["right"])


# ---------------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------------
def format_report(findings: LesionFindings) -> str:
    """The LViT-style sentence of ``findings`` (grammar in the module docstring)."""
    if findings.n_areas == 0:
        return NO_INFECTION
    count = "multiple" if findings.n_areas >= MANY_AREAS else NUMBER_WORDS[findings.n_areas]
    noun = "area" if findings.n_areas == 1 else "areas"
    places = []
    for side in SIDES:
        zones = getattr(findings, side)
        if zones:
            places.append(f"{'all' if len(zones) == len(ZONES) else ' '.join(zones)} {side} lung")
    return (f"{findings.laterality.capitalize()} pulmonary infection, {count} infected {noun}, "
            f"{' and '.join(places)}.")


_ZONES_RE = r"all|(?:upper|middle|lower)(?: (?:upper|middle|lower))*"
_REPORT_RE = re.compile(
    rf"^(?P<lat>Unilateral|Bilateral) pulmonary infection, (?P<count>\w+) infected (?P<noun>areas?), "
    rf"(?P<z1>{_ZONES_RE}) (?P<s1>left|right) lung(?: and (?P<z2>{_ZONES_RE}) (?P<s2>left|right) lung)?\.$")


def parse_report(sentence: str) -> LesionFindings:
    """Read a sentence of the grammar back into :class:`LesionFindings` (the inverse of :func:`format_report`).

    Raises:
        ValueError naming the sentence when it does not follow the grammar or contradicts itself (e.g.
        "Bilateral" with one lung named, "one infected areas").
    """
    text = " ".join(str(sentence).split())
    if text == NO_INFECTION:
        return LesionFindings(0)
    m = _REPORT_RE.match(text)
    if m is None:
        raise ValueError(f"parse_report: {sentence!r} does not follow the LViT report grammar "
                         "(see diffseg_core.data.reports)")
    count = m["count"]
    if count == "multiple":
        n = MANY_AREAS
    elif count in NUMBER_WORDS[1:]:
        n = NUMBER_WORDS.index(count)
    else:
        raise ValueError(f"parse_report: {sentence!r}: unknown count {count!r}")
    if (n == 1) != (m["noun"] == "area"):
        raise ValueError(f"parse_report: {sentence!r}: '{count} infected {m['noun']}' does not agree in number")
    zones: dict[str, tuple[str, ...]] = {}
    for z, s in ((m["z1"], m["s1"]), (m["z2"], m["s2"])):
        if s is None:
            continue
        if s in zones:
            raise ValueError(f"parse_report: {sentence!r} names the {s} lung twice")
        words = ZONES if z == "all" else tuple(z.split())
        if z != "all" and (tuple(w for w in ZONES if w in words) != words or len(words) == len(ZONES)):
            raise ValueError(f"parse_report: {sentence!r}: zones {z!r} must be distinct, top to bottom "
                             "('all' for the three)")
        zones[s] = words
    if list(zones) != [s for s in SIDES if s in zones]:
        raise ValueError(f"parse_report: {sentence!r}: the left lung is named first")
    lat = "bilateral" if len(zones) == 2 else "unilateral"
    if m["lat"].lower() != lat:
        raise ValueError(f"parse_report: {sentence!r} says {m['lat']} but names {len(zones)} lung(s)")
    try:
        return LesionFindings(n, zones.get("left", ()), zones.get("right", ()))
    except ValueError as exc:
        raise ValueError(f"parse_report: {sentence!r}: {exc}") from exc


def lesion_report(lesion: np.ndarray, lung: np.ndarray, min_area_fraction: float = 0.005,
                  zone_fraction: float = 0.1) -> str:
    """The LViT-style report of a lesion mask, ``format_report(lesion_findings(...))``.

    >>> lung = np.zeros((60, 60), int); lung[10:50, 5:25] = 1; lung[10:50, 35:55] = 1
    >>> lesion = np.zeros_like(lung); lesion[12:20, 40:50] = 1   # image right = the patient's left lung, top
    >>> lesion_report(lesion, lung)
    'Unilateral pulmonary infection, one infected area, upper left lung.'
    """
    return format_report(lesion_findings(lesion, lung, min_area_fraction, zone_fraction))
