"""Paired comparisons and seed summaries on hand-made predictions, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sentiment_lora.analysis.stats import bootstrap_interval, compare, f1_at, holm, roc_auc, seed_summary


def correctness(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return np.array(a), np.array(b)


def test_one_seed_uses_mcnemars_exact_test():
    a, b = correctness(both=80, only_a=10, only_b=2, neither=8)
    result = compare(a, b)
    # Exact McNemar: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    assert result.p == pytest.approx(2 * 79 / 4096)
    assert result.diff == pytest.approx((90 - 82) / 100)
    assert result.test == "mcnemar-exact" and result.n_reviews == 100
    assert result.low < result.diff < result.high and result.low > 0  # 10 vs 2 discordant: A is better


def test_concordant_reviews_do_not_change_mcnemar():
    small = compare(*correctness(both=5, only_a=10, only_b=2, neither=3))
    large = compare(*correctness(both=500, only_a=10, only_b=2, neither=300))
    assert small.p == pytest.approx(large.p)


def test_identical_predictions_differ_by_nothing():
    a, _ = correctness(both=30, only_a=5, only_b=0, neither=5)
    result = compare(a, a.copy())
    assert (result.diff, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)


def test_replicates_average_seeds_per_review_and_use_a_paired_permutation_test():
    rng = np.random.default_rng(0)
    n = 400
    truth_a, truth_b = correctness(both=320, only_a=40, only_b=8, neither=32)  # A better on 32 net reviews
    truth_a, truth_b = truth_a.astype(bool), truth_b.astype(bool)
    a = np.stack([truth_a ^ (rng.random(n) < 0.03) for _ in range(3)])  # 3 seeds, a few reviews flip per seed
    b = np.stack([truth_b ^ (rng.random(n) < 0.03) for _ in range(3)])
    result = compare(a, b)
    assert result.test == "paired-permutation"
    assert result.diff == pytest.approx(a.mean() - b.mean())
    assert result.p < 0.01 and result.low > 0
    same = compare(a, a[::-1])  # the same configuration's seeds in another order: no difference
    assert same.diff == pytest.approx(0.0) and same.p == 1.0


def test_replicates_with_one_seed_each_agree_with_mcnemar_in_the_limit():
    a, b = correctness(both=40, only_a=9, only_b=3, neither=8)
    exact = compare(a, b).p
    permuted = compare(np.stack([a, a]), np.stack([b, b])).p  # two identical seeds: same per-review values
    assert permuted == pytest.approx(exact, abs=0.02)  # a Monte Carlo estimate of the same exact test


def test_reviews_must_be_the_same():
    with pytest.raises(ValueError, match="share a test set"):
        compare(np.ones(10), np.ones(11))


def test_holm_multiplies_the_smallest_by_m_and_keeps_order():
    adjusted = holm([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])  # 0.01*3; max(0.03*2, 0.03); max(0.04*1, 0.06)
    assert len(holm([])) == 0


def test_seed_summary_is_the_t_interval_of_the_mean():
    summary = seed_summary([0.80, 0.82, 0.84])
    assert summary["mean"] == pytest.approx(0.82) and summary["sd"] == pytest.approx(0.02) and summary["n"] == 3
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert (summary["low"], summary["high"]) == pytest.approx((0.82 - half, 0.82 + half))
    assert seed_summary([0.8]) == {"mean": 0.8, "sd": None, "n": 1, "low": None, "high": None}


def test_bootstrap_metrics_equal_scikit_learns_and_the_interval_holds_the_estimate():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    probs = np.round(np.clip(0.3 * labels + rng.random(200) * 0.7, 0, 1), 2)  # rounded: ties in the ranks
    assert roc_auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert f1_at(labels, probs) == pytest.approx(f1_score(labels, (probs >= 0.5).astype(int)), abs=1e-12)
    assert f1_at(np.array([0, 1]), np.array([0.1, 0.2])) == 0.0  # nothing predicted positive: 0, as zero_division=0
    low, high = bootstrap_interval(labels, probs, roc_auc)
    assert low < roc_auc(labels, probs) < high and high - low < 0.2
    # A resample of one class has no ROC AUC: it is skipped, and too few two-class resamples give no interval.
    assert bootstrap_interval(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]), roc_auc) == (1.0, 1.0)
    assert bootstrap_interval(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.9]), roc_auc) is None


def test_replicates_that_differ_on_one_review_are_no_evidence():
    a = np.ones((2, 50))
    b = a.copy()
    b[:, 7] = 0  # both seeds of b miss one review a gets right
    result = compare(a, b)
    assert result.test == "paired-permutation" and result.p == 1.0 and result.diff == pytest.approx(0.02)
