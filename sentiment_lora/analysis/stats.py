"""Statistics for comparing configurations evaluated on the same test reviews.

Runs of a table share one test set, so two configurations can be compared review by review (paired), which is far
more sensitive than comparing two independent intervals. The unit of sampling is the review: a test set is a
sample of reviews, and what a reader wants to know is whether the difference would hold on other reviews.

- One seed per configuration: McNemar's exact test on the discordant reviews (statsmodels).
- Several seeds: each review's correctness is averaged over a configuration's seeds, and a paired sign-flip
  permutation test on the per-review differences gives the p-value (scipy). With one seed this is the same test
  as McNemar's exact test. Seeds are averaged rather than resampled: with the 3 seeds a study affords, resampling
  seeds says little, and seed-to-seed spread is reported in each row's own mean and interval.
- Intervals of a difference: a paired bootstrap over reviews (scipy, BCa).
- Many comparisons: Holm's step-down correction (statsmodels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

RESAMPLES = 9999
LEVEL = 0.95


@dataclass(frozen=True)
class Comparison:
    diff: float  # accuracy of A minus accuracy of B (seed-averaged), on the same reviews
    low: float  # 95% interval of diff (paired bootstrap over reviews)
    high: float
    p: float  # two-sided p-value of "no difference" (uncorrected)
    test: str  # "mcnemar-exact" or "paired-permutation"
    n_reviews: int


def _per_review(correct: np.ndarray) -> np.ndarray:
    """(n_seeds, n_reviews) or (n_reviews,) 0/1 correctness -> each review's mean correctness over seeds."""
    correct = np.asarray(correct, dtype=float)
    return correct if correct.ndim == 1 else correct.mean(axis=0)


def compare(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0) -> Comparison:
    """Paired comparison of two configurations' correctness on the same reviews, in the same order."""
    a, b = _per_review(correct_a), _per_review(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"compare: different review counts ({a.size} vs {b.size}); runs must share a test set")
    diff = float(a.mean() - b.mean())
    single_seed = np.ndim(correct_a) == 1 or np.shape(correct_a)[0] == 1
    single_seed = single_seed and (np.ndim(correct_b) == 1 or np.shape(correct_b)[0] == 1)
    if np.array_equal(a, b):
        return Comparison(0.0, 0.0, 0.0, 1.0, "mcnemar-exact" if single_seed else "paired-permutation", a.size)
    if single_seed:
        only_a, only_b = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
        both, neither = int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 0) & (b == 0)))
        p = float(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
        test = "mcnemar-exact"
    else:
        # Swapping a and b within a review flips the sign of its difference: a sign-flip test. Reviews with no
        # difference flip to themselves, so they are left out; the mean over the rest is the full mean rescaled,
        # which gives the same p-value 5-10x faster (scipy draws a permutation of every element per resample).
        differences = (a - b)[a != b]
        test, p = "paired-permutation", 1.0  # one differing review: its two sign flips are the two extremes
        if differences.size > 1:
            p = float(
                scipy_stats.permutation_test(
                    (differences,),
                    lambda d, axis: np.mean(d, axis=axis),
                    permutation_type="samples",
                    vectorized=True,
                    n_resamples=RESAMPLES,
                    random_state=seed,
                ).pvalue
            )
    interval = scipy_stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        paired=True,
        vectorized=True,
        confidence_level=LEVEL,
        n_resamples=RESAMPLES,
        method="percentile" if a.size < 10 else "BCa",
        random_state=seed,
    ).confidence_interval
    return Comparison(diff, float(interval.low), float(interval.high), p, test, int(a.size))


def holm(pvalues: list[float]) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error control across the comparisons of one table)."""
    if not len(pvalues):
        return np.array([])
    return multipletests(pvalues, method="holm")[1]


def seed_summary(values: list[float]) -> dict[str, float | int | None]:
    """Mean, standard deviation, n and the 95% t-interval of the mean of one configuration's per-seed values."""
    values = np.asarray(values, dtype=float)
    n = int(values.size)
    mean = float(values.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "n": n, "low": None, "high": None}
    sd = float(values.std(ddof=1))
    if sd == 0:
        return {"mean": mean, "sd": 0.0, "n": n, "low": mean, "high": mean}
    low, high = scipy_stats.t.interval(LEVEL, n - 1, loc=mean, scale=sd / np.sqrt(n))
    return {"mean": mean, "sd": sd, "n": n, "low": float(low), "high": float(high)}


def bootstrap_interval(
    labels: np.ndarray, probs: np.ndarray, metric, resamples: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval over reviews of metric(labels, probs); resamples holding one class only
    are skipped (ROC AUC is undefined there). None when fewer than half the resamples count."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        index = rng.integers(0, labels.size, labels.size)
        if np.unique(labels[index]).size == 2:
            values.append(metric(labels[index], probs[index]))
    if len(values) < resamples / 2:
        return None
    low, high = np.percentile(values, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(low), float(high)


def f1_at(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the positive class at `threshold` (0 when nothing is predicted or labelled positive, as scikit-learn's
    zero_division=0); plain numpy, for the thousand calls of a bootstrap."""
    predicted = probs >= threshold
    true_pos = np.sum(predicted & (labels == 1))
    denominator = np.sum(predicted) + np.sum(labels == 1)
    return float(2 * true_pos / denominator) if denominator else 0.0


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half), equal to scikit-learn's roc_auc_score."""
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = scipy_stats.rankdata(probs)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for an accuracy of correct/n (sound for small n and accuracies near 1)."""
    interval = scipy_stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return interval.low, interval.high
