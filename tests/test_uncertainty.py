"""The uncertainty measures against values worked out by hand (and AUROC/AP against scikit-learn when present)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffseg_core import uncertainty as U


# ---- ensemble summaries --------------------------------------------------------------------------
def test_binary_entropy_hand_values():
    h = U.binary_entropy(np.array([0.0, 0.5, 1.0, 0.25]))
    # H(0.25) = -(1/4 log2 1/4 + 3/4 log2 3/4) = 0.5 + 0.75 * 0.4150375 = 0.8112781
    np.testing.assert_allclose(h, [0.0, 1.0, 0.0, 0.8112781], atol=1e-6)
    np.testing.assert_allclose(U.binary_entropy(np.array([0.5]), base=np.e), [np.log(2)])


def test_ensemble_summary_hand_values():
    members = np.array([[0.0, 1.0], [1.0, 1.0]])         # N = 2 members, 2 pixels
    s = U.ensemble_summary(members)
    np.testing.assert_allclose(s["mean"], [0.5, 1.0])
    np.testing.assert_allclose(s["variance"], [0.25, 0.0])  # population variance of {0, 1}
    np.testing.assert_allclose(s["entropy"], [1.0, 0.0])
    # pixel 1: members certain (H = 0 each) but disagreeing: all of the entropy is mutual information
    np.testing.assert_allclose(s["mutual_information"], [1.0, 0.0])
    # two members that agree at 0.5: entropy 1 bit, no disagreement
    np.testing.assert_allclose(U.mutual_information(np.array([[0.5], [0.5]])), [0.0])
    with pytest.raises(ValueError, match="probabilities"):
        U.ensemble_summary(np.array([[1.5]]))


# ---- error detection ------------------------------------------------------------------------------
def test_average_ranks_with_ties():
    assert U.average_ranks(np.array([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_auroc_and_auprc_hand_values():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    wrong = np.array([0, 0, 1, 1])
    # pairs (positive, negative): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4
    assert U.auroc(scores, wrong) == pytest.approx(0.75)
    # thresholds 0.8 (P 1, R 1/2), 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1), 0.1 (P 1/2, R 1)
    # AP = 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 + 0 = 5/6
    assert U.auprc(scores, wrong) == pytest.approx(5 / 6)


def test_auroc_ties_and_degenerate_cases():
    assert U.auroc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert U.auprc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)   # chance = positive rate
    assert U.auroc(np.array([0.0, 1.0]), np.array([0, 1])) == 1.0
    assert U.auroc(np.array([1.0, 0.0]), np.array([0, 1])) == 0.0
    assert np.isnan(U.auroc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert np.isnan(U.auprc(np.array([0.1, 0.2]), np.array([0, 0])))
    with pytest.raises(ValueError, match="targets"):
        U.auroc(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))


def test_auroc_auprc_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.2
    s = np.round(rng.random(500) + 0.5 * y, 1)              # rounded: many ties
    assert U.auroc(s, y) == pytest.approx(metrics.roc_auc_score(y, s))
    assert U.auprc(s, y) == pytest.approx(metrics.average_precision_score(y, s))


def test_spearman_hand_value():
    # d = (0, 1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert U.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert U.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert np.isnan(U.spearman([1, 2, 3], [5, 5, 5]))
    assert np.isnan(U.spearman([1], [2]))
    with pytest.raises(ValueError, match="same length"):
        U.spearman([1, 2], [1, 2, 3])


# ---- calibration ----------------------------------------------------------------------------------
def test_reliability_bins_and_ece_hand_values():
    p = np.array([0.05, 0.05, 0.95, 0.95, 1.0])
    y = np.array([0, 1, 1, 1, 1])
    r = U.reliability_bins(p, y, n_bins=10)
    assert r["count"][0] == 2 and r["count"][9] == 3 and r["count"].sum() == 5   # p = 1 lands in the last bin
    assert r["confidence"][0] == pytest.approx(0.05) and r["frequency"][0] == pytest.approx(0.5)
    assert r["confidence"][9] == pytest.approx(2.9 / 3) and r["frequency"][9] == pytest.approx(1.0)
    assert np.isnan(r["confidence"][5])
    assert U.reliability_bins(np.array([0.1]), np.array([0]), n_bins=10)["count"][1] == 1   # left edge closed
    # ECE = 2/5 |0.5 - 0.05| + 3/5 |1 - 2.9/3| = 0.18 + 0.02 = 0.2
    assert U.expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.2)
    assert U.expected_calibration_error(np.array([0.25, 0.25, 0.25, 0.25]), np.array([1, 0, 0, 0]), 4) == pytest.approx(0.0)


def test_temperature_scaling_closed_form():
    # logits +-2, right 3 times out of 4 at each: the NLL-optimal sigmoid(2 / T) = 3/4, T = 2 / ln 3
    p = 1 / (1 + np.exp(-np.array([2.0] * 4 + [-2.0] * 4)))
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    t = U.fit_temperature(p, y)
    assert t == pytest.approx(2 / np.log(3), rel=1e-6)
    np.testing.assert_allclose(U.apply_temperature(p, t)[:4], 0.75, rtol=1e-6)
    assert U.binary_nll(U.apply_temperature(p, t), y) < U.binary_nll(p, y)
    # scaling changes no decision
    q = np.linspace(0.01, 0.99, 50)
    assert ((U.apply_temperature(q, 3.0) > 0.5) == (q > 0.5)).all()
    # separable data: sharper is always better, the lower bound comes back
    assert U.fit_temperature(np.array([0.2, 0.8]), np.array([0, 1]), t_min=0.05) == 0.05
    with pytest.raises(ValueError, match="temperature"):
        U.apply_temperature(q, 0.0)


def test_prob_to_logit_clips():
    z = U.prob_to_logit(np.array([0.0, 0.5, 1.0]), eps=1e-6)
    assert np.isfinite(z).all() and z[1] == 0.0 and z[0] == pytest.approx(-np.log(1e6 - 1), rel=1e-9)


# ---- sparsification -------------------------------------------------------------------------------
def test_sparsification_curve_hand_values():
    pred = np.array([1, 1, 0, 0, 1])
    target = np.array([1, 0, 0, 1, 1])           # TP at 0 and 4, FP at 1, FN at 3, TN at 2
    unc = np.array([0.1, 0.9, 0.2, 0.8, 0.3])
    f = np.array([0.0, 0.2, 0.4, 0.6])
    # full: 2*2/(4+1+1) = 2/3; refer the FP: 4/5; then the FN: 1; then pixel 4 (TP): 2/2 = 1
    np.testing.assert_allclose(U.sparsification_curve(unc, pred, target, f), [2 / 3, 0.8, 1.0, 1.0])
    np.testing.assert_allclose(U.oracle_curve(pred, target, f), [2 / 3, 0.8, 1.0, 1.0])
    # the reverse ranking refers pixel 0 (TP): 2/(2+1+1); then 2 (TN): unchanged; then 4 (TP): 0/(0+1+1)
    np.testing.assert_allclose(U.sparsification_curve(-unc, pred, target, [0.2, 0.4, 0.6]), [0.5, 0.5, 0.0])


def test_sparsification_ties_are_referred_in_proportion():
    rng = np.random.default_rng(1)
    pred, target = rng.random(200) < 0.4, rng.random(200) < 0.4
    f = np.linspace(0, 0.9, 10)
    flat = U.sparsification_curve(np.zeros(200), pred, target, f)
    np.testing.assert_allclose(flat, flat[0])                 # a constant score = referring at random
    assert U.sparsification_curve(np.zeros(4), [1, 1, 1, 1], [1, 1, 1, 1], [1.0])[0] == 1.0   # nothing kept


def test_oracle_dominates_and_ause():
    rng = np.random.default_rng(2)
    target = rng.random(1000) < 0.3
    pred = target ^ (rng.random(1000) < 0.1)
    f = np.linspace(0, 0.5, 11)
    oracle = U.oracle_curve(pred, target, f)
    for score in (rng.random(1000), (pred != target) + rng.random(1000)):
        assert (U.sparsification_curve(score, pred, target, f) <= oracle + 1e-12).all()
    assert U.ause(f, oracle, oracle) == 0.0
    # a constant gap of 0.1 over a width of 0.5
    assert U.ause(f, oracle - 0.1, oracle) == pytest.approx(0.05)


# ---- test-time augmentation -----------------------------------------------------------------------
def test_dihedral_transforms_are_eight_distinct_invertible_maps():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    ts = U.dihedral_transforms()
    assert len(ts) == 8 and ts[0][0] == "identity"
    outs = []
    for name, fwd, inv in ts:
        y = fwd(x)
        assert y.shape == x.shape
        assert torch.equal(inv(y), x), name
        outs.append(tuple(y.flatten().tolist()))
    assert len(set(outs)) == 8
    # the anti-diagonal reflection maps (i, j) to (n-1-j, n-1-i)
    y = dict((n, f) for n, f, _ in ts)["anti-transpose"](x[0])
    assert y[0, 1] == x[0, 2, 3]
