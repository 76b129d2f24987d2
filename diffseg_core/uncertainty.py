"""What an uncertainty map is worth: error detection, calibration, sparsification (pure math on arrays).

Every function works on flat or any-shaped arrays of pixels of a **binary** task (foreground probability
``p`` in [0, 1], target ``y`` in {0, 1}); arrays of several images are simply concatenated (pixels pooled).
Chapter 14 (``notebooks/14_uncertainty.ipynb``) applies them to the cDAL ensemble, MC dropout and test-time
augmentation.

* **Ensemble summaries** of N members ``s_n`` (probabilities): the mean ``p = mean_n s_n``, the variance
  ``v = mean_n (s_n - p)^2`` (chapter 06's map, population variance), the binary entropy of the mean
  ``H(p) = -p log2 p - (1-p) log2 (1-p)`` (bits, in [0, 1]) and the mutual information
  ``H(p) - mean_n H(s_n)`` (the part of the entropy due to disagreement between members).
* **Error detection**: how well an uncertainty score ranks the wrong pixels first. ``auroc`` is the
  probability that a random wrong pixel scores higher than a random correct one (Mann-Whitney, ties count
  one half); ``auprc`` is the average precision (sum over thresholds of the precision times the recall
  gained), whose chance level is the error rate.
* **Calibration**: equal-width bins of the foreground probability; in each bin the mean probability
  (confidence) against the observed foreground frequency (reliability diagram); the expected calibration
  error ``ECE = sum_b (n_b / n) |freq_b - conf_b|`` (Guo et al., ICML 2017, applied to P(foreground)).
* **Temperature scaling**: ``p_T = sigmoid(logit(p) / T)`` with one scalar ``T`` fitted on validation
  pixels by minimising the binary negative log-likelihood. The NLL is convex in ``beta = 1/T``, so the
  fit is a bisection on the sign of its derivative. It changes no decision (``p_T > 0.5`` iff ``p > 0.5``)
  and no ranking: only the confidence.
* **Sparsification**: refer the fraction ``f`` of pixels with the highest uncertainty to a human and score
  the Dice of the remaining ones; the **oracle** refers the wrong pixels first (the best any score can
  do); referring at random keeps the Dice unchanged in expectation. ``ause`` is the area between the
  oracle and a score's curve (Ilg et al., ECCV 2018, with Dice instead of an error).
* **Test-time augmentation**: the eight flips and rotations of a square image (the dihedral group) and
  their inverses.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "binary_entropy", "ensemble_summary", "mutual_information", "average_ranks", "auroc", "auprc",
    "spearman", "reliability_bins", "expected_calibration_error", "prob_to_logit", "apply_temperature",
    "binary_nll", "fit_temperature", "sparsification_curve", "oracle_curve", "ause", "dihedral_transforms",
]

_EPS = 1e-6


def _flat(x: np.ndarray | torch.Tensor | Sequence[float], dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).ravel()


def _binary_target(y: np.ndarray | torch.Tensor, n: int, where: str) -> np.ndarray:
    t = _flat(y)
    if t.size != n:
        raise ValueError(f"{where}: {n} values but {t.size} targets")
    if not np.isin(t, (0.0, 1.0)).all():
        raise ValueError(f"{where}: targets must be 0 or 1 (binary task)")
    return t.astype(bool)


# ---------------------------------------------------------------------------------------------------
# Ensemble summaries
# ---------------------------------------------------------------------------------------------------
def binary_entropy(p: np.ndarray, base: float = 2.0) -> np.ndarray:
    """``H(p) = -p log p - (1 - p) log(1 - p)`` elementwise (same shape as ``p``), in bits for ``base`` 2.

    ``0 log 0 = 0``: H(0) = H(1) = 0, H(0.5) = 1 bit.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log(1 - p), 0.0))
    return h / np.log(base)


def ensemble_summary(members: np.ndarray) -> dict[str, np.ndarray]:
    """Members ``(N, ...)`` of foreground probabilities -> ``mean``, ``variance``, ``entropy`` (of the mean,
    bits) and ``mutual_information`` (bits), each of shape ``(...)``.

    ``variance`` is the population variance over the N members (chapter 06, Eq. ch06-ensemble); with N = 1
    it is zero and the mutual information is zero.
    """
    s = np.asarray(members, dtype=np.float64)
    if s.ndim < 1 or s.shape[0] < 1:
        raise ValueError(f"ensemble_summary: members must be (N, ...) with N >= 1, got shape {s.shape}")
    if s.min() < 0 or s.max() > 1:
        raise ValueError("ensemble_summary: members must be probabilities in [0, 1]")
    mean = s.mean(0)
    return {"mean": mean, "variance": s.var(0), "entropy": binary_entropy(mean),
            "mutual_information": mutual_information(s)}


def mutual_information(members: np.ndarray) -> np.ndarray:
    """``H(mean_n s_n) - mean_n H(s_n)`` (bits, >= 0 by the concavity of H): members ``(N, ...)`` -> ``(...)``."""
    s = np.asarray(members, dtype=np.float64)
    return np.maximum(binary_entropy(s.mean(0)) - binary_entropy(s).mean(0), 0.0)


# ---------------------------------------------------------------------------------------------------
# Error detection: ranking wrong pixels first
# ---------------------------------------------------------------------------------------------------
def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of the flattened ``x`` (ascending), tied values sharing the mean of their ranks.

    >>> average_ranks(np.array([10., 20., 20., 5.])).tolist()
    [2.0, 3.5, 3.5, 1.0]
    """
    x = _flat(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]          # first index of each run of equal values
    ends = np.r_[starts[1:], xs.size]
    mean_rank = (starts + 1 + ends) / 2.0                        # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``positives`` (e.g. wrong pixels); any shapes
    with the same number of elements.

    ``AUROC = (R_+ - n_+ (n_+ + 1) / 2) / (n_+ n_-)`` with ``R_+`` the sum of the positives' average ranks
    (Mann-Whitney U): the probability that a random positive scores above a random negative, ties counting
    one half. 0.5 = chance, 1 = every positive above every negative. NaN when one class is absent.
    """
    s = _flat(scores)
    y = _binary_target(positives, s.size, "auroc")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r_pos = average_ranks(s)[y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of ``scores`` for ``positives``: ``AP = sum_k (R_k - R_{k-1}) P_k`` over the
    distinct score thresholds in decreasing order (P_k, R_k: precision and recall of "score >= threshold k";
    tied scores enter together). Its chance level is the positive rate; NaN when there is no positive.
    """
    s = _flat(scores)
    y = _binary_target(positives, s.size, "auprc")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]   # end index of each tie group
    tp = np.cumsum(ys)[last_of_group].astype(np.float64)
    predicted = (last_of_group + 1).astype(np.float64)
    precision, recall = tp / predicted, tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of ``a`` and ``b`` (same
    length n). NaN when n < 2 or either is constant (undefined)."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.size != rb.size:
        raise ValueError(f"spearman: need two sequences of the same length, got {ra.size} and {rb.size}")
    if ra.size < 2:
        return float("nan")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------
def reliability_bins(prob: np.ndarray, target: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width bins of the foreground probability: bin b holds ``b/M <= p < (b+1)/M`` (the last bin also
    ``p = 1``), M = ``n_bins``.

    Returns ``edges`` (M + 1,), ``count`` (M,) pixels per bin, ``confidence`` (M,) mean probability in the
    bin and ``frequency`` (M,) observed foreground fraction in the bin (both NaN for empty bins).
    """
    p = _flat(prob)
    y = _binary_target(target, p.size, "reliability_bins").astype(np.float64)
    if n_bins < 1:
        raise ValueError(f"reliability_bins: n_bins must be >= 1, got {n_bins}")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("reliability_bins: probabilities must lie in [0, 1]")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "confidence": conf, "frequency": freq}


def expected_calibration_error(prob: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    """``ECE = sum_b (n_b / n) |freq_b - conf_b|`` over the bins of :func:`reliability_bins` (empty bins
    contribute nothing); 0 = calibrated at this binning, in probability units."""
    r = reliability_bins(prob, target, n_bins)
    n = r["count"].sum()
    if n == 0:
        raise ValueError("expected_calibration_error: no pixels")
    full = r["count"] > 0
    return float(np.sum(r["count"][full] / n * np.abs(r["frequency"][full] - r["confidence"][full])))


def prob_to_logit(p: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]`` (an ensemble mean can be exactly 0 or 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def apply_temperature(p: np.ndarray, temperature: float, eps: float = _EPS) -> np.ndarray:
    """Temperature scaling ``p_T = sigmoid(logit(p) / T)`` (same shape as ``p``); T > 1 softens, T < 1 sharpens."""
    if not temperature > 0:
        raise ValueError(f"apply_temperature: temperature must be > 0, got {temperature}")
    return 1.0 / (1.0 + np.exp(-prob_to_logit(p, eps) / temperature))


def binary_nll(p: np.ndarray, target: np.ndarray, eps: float = _EPS) -> float:
    """Mean ``-[y log p + (1 - y) log(1 - p)]`` (nats) over all pixels, ``p`` clipped to ``[eps, 1 - eps]``."""
    q = np.clip(_flat(p), eps, 1.0 - eps)
    y = _binary_target(target, q.size, "binary_nll")
    return float(-np.mean(np.where(y, np.log(q), np.log1p(-q))))


def fit_temperature(prob: np.ndarray, target: np.ndarray, t_min: float = 0.05, t_max: float = 100.0,
                    eps: float = _EPS, iters: int = 60) -> float:
    """The temperature minimising :func:`binary_nll` of ``apply_temperature(prob, T)`` on these pixels.

    With ``z = logit(p)`` and ``beta = 1/T`` the NLL is ``mean softplus(-(2y - 1) beta z)``, convex in beta,
    with derivative ``mean (sigmoid(beta z) - y) z``: non-decreasing, so the minimiser is where it changes
    sign, found by bisection on ``log beta`` within ``[1/t_max, 1/t_min]`` (a bound is returned when the
    sign never changes, e.g. when every pixel is right and sharper is always better).
    """
    z = prob_to_logit(_flat(prob), eps)
    y = _binary_target(target, z.size, "fit_temperature").astype(np.float64)

    def slope(beta: float) -> float:
        return float(np.mean((1.0 / (1.0 + np.exp(-beta * z)) - y) * z))

    lo, hi = np.log(1.0 / t_max), np.log(1.0 / t_min)
    if slope(np.exp(lo)) >= 0:
        return float(t_max)
    if slope(np.exp(hi)) <= 0:
        return float(t_min)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if slope(np.exp(mid)) > 0:
            hi = mid
        else:
            lo = mid
    return float(1.0 / np.exp(0.5 * (lo + hi)))


# ---------------------------------------------------------------------------------------------------
# Sparsification
# ---------------------------------------------------------------------------------------------------
def _dice_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1e-12), 1.0)


def sparsification_curve(uncertainty: np.ndarray, pred: np.ndarray, target: np.ndarray,
                         fractions: np.ndarray | Sequence[float]) -> np.ndarray:
    """Dice of the pixels kept after referring the fraction ``f`` with the highest ``uncertainty``.

    Args:
        uncertainty, pred, target: arrays with the same number of pixels (pooled over images); ``pred`` and
            ``target`` binary.
        fractions: referral fractions in [0, 1], shape (F,).
    Returns:
        (F,) pooled Dice ``2 TP / (2 TP + FP + FN)`` of the kept pixels (1 when none of them is foreground
        in either map). Pixels tied in uncertainty are referred **in proportion**: a partly referred tie
        group removes the same share of its TP, FP and FN (the expectation of a random order within the
        tie, for the counts), so a constant score gives a flat curve at the full Dice.
    """
    u = _flat(uncertainty)
    p = _binary_target(pred, u.size, "sparsification_curve (pred)")
    t = _binary_target(target, u.size, "sparsification_curve (target)")
    f = np.asarray(fractions, dtype=np.float64)
    if f.size and (f.min() < 0 or f.max() > 1):
        raise ValueError("sparsification_curve: fractions must lie in [0, 1]")
    order = np.argsort(-u, kind="mergesort")
    us = u[order]
    ends = np.r_[np.flatnonzero(np.diff(us)) + 1, us.size]                  # referred count after each tie group
    cum = {}
    for name, m in (("tp", p & t), ("fp", p & ~t), ("fn", ~p & t)):
        c = np.cumsum(m[order])
        cum[name] = np.r_[0.0, c[ends - 1]]                                 # referred counts at 0, ends...
    xs = np.r_[0.0, ends.astype(np.float64)]
    k = f * u.size                                                          # pixels referred
    kept = {name: float(c[-1]) - np.interp(k, xs, c) for name, c in cum.items()}
    return _dice_from_counts(kept["tp"], kept["fp"], kept["fn"])


def oracle_curve(pred: np.ndarray, target: np.ndarray, fractions: np.ndarray | Sequence[float]) -> np.ndarray:
    """The best sparsification curve: wrong pixels referred first (``uncertainty = [pred != target]``).

    Referring a wrong pixel removes one FP or FN and raises the Dice; referring a right one cannot: no score
    does better. Reaches 1 once the fraction exceeds the error rate.
    """
    p, t = _flat(pred), _flat(target)
    return sparsification_curve((p != t).astype(np.float64), p, t, fractions)


def ause(fractions: np.ndarray | Sequence[float], curve: np.ndarray, oracle: np.ndarray) -> float:
    """Area between the oracle and a sparsification curve, ``int (oracle - curve) df`` (trapezoids over
    ``fractions``, Dice units x fraction): 0 = as good as the oracle."""
    f = np.asarray(fractions, dtype=np.float64)
    gap = np.asarray(oracle, dtype=np.float64) - np.asarray(curve, dtype=np.float64)
    return float(np.sum(np.diff(f) * (gap[1:] + gap[:-1]) / 2.0))


# ---------------------------------------------------------------------------------------------------
# Test-time augmentation
# ---------------------------------------------------------------------------------------------------
Transform = Callable[[torch.Tensor], torch.Tensor]


def dihedral_transforms() -> list[tuple[str, Transform, Transform]]:
    """The eight symmetries of a square acting on the last two dims of a tensor ``(..., H, W)``, as
    ``(name, forward, inverse)``: identity, horizontal and vertical flips, rotations by 90, 180 and 270
    degrees, and the two diagonal reflections. Identity comes first, so the first n form a prefix a
    smaller budget can take. Rotations and diagonal reflections need H = W.
    """
    def rot(k: int) -> Transform:
        return lambda x: torch.rot90(x, k, dims=(-2, -1))

    def flip(dim: int) -> Transform:
        return lambda x: torch.flip(x, dims=(dim,))

    def transpose(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)

    def anti_transpose(x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, 2, dims=(-2, -1)).transpose(-2, -1)

    ident: Transform = lambda x: x  # noqa: E731
    return [
        ("identity", ident, ident),
        ("flip left-right", flip(-1), flip(-1)),
        ("flip up-down", flip(-2), flip(-2)),
        ("rotate 90", rot(1), rot(-1)),
        ("rotate 180", rot(2), rot(2)),
        ("rotate 270", rot(3), rot(1)),
        ("transpose", transpose, transpose),
        ("anti-transpose", anti_transpose, anti_transpose),
    ]
