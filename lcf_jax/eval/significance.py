"""Paired significance tests between evaluation conditions on the same questions.

Every condition answers the same questions, so the tests are paired: exact McNemar on per-question
correctness (EM, or multiple-choice accuracy) and the Wilcoxon signed-rank test on per-question F1.
Paired tests see the per-question differences, which is far more sensitive than comparing two means
(most questions are answered the same way by both conditions and carry no information).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

Alternative = Literal["two-sided", "greater", "less"]
_ALTERNATIVES = ("two-sided", "greater", "less")


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")


def _binary(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array of per-question 0/1 outcomes, got shape {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 (or booleans): McNemar compares right/wrong per question")
    return arr.astype(bool)


def _binomial_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly: integer sums and one correctly rounded division, so
    tiny p-values at n in the thousands neither underflow early nor lose precision."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(
    correct_a: Sequence[float] | np.ndarray,
    correct_b: Sequence[float] | np.ndarray,
    alternative: Alternative = "two-sided",
) -> tuple[int, int, float]:
    """Exact McNemar test on paired right/wrong outcomes of conditions a and b.

    Returns (b, c, p) with b = #(a right, b wrong) and c = #(a wrong, b right). Under H0 the discordant
    questions split as Binomial(b + c, 1/2). "two-sided" is min(1, 2 * smaller tail); "greater" tests
    that a is better than b (p = P(X >= b)); "less" that a is worse (p = P(X <= b)). With no discordant
    question there is no evidence either way and p = 1.
    """
    _check_alternative(alternative)
    a = _binary(correct_a, "correct_a")
    bb = _binary(correct_b, "correct_b")
    if a.shape != bb.shape:
        raise ValueError(f"paired outcomes must have the same length, got {a.shape[0]} and {bb.shape[0]}")
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    n = b + c
    if n == 0:
        return b, c, 1.0
    if alternative == "greater":  # P(X >= b) = P(X <= n - b) by symmetry, with no 1 - cdf cancellation
        p = _binomial_half_cdf(c, n)
    elif alternative == "less":
        p = _binomial_half_cdf(b, n)
    else:  # Binomial(n, 1/2) is symmetric, so the smaller tail is the one at min(b, c)
        p = min(1.0, 2.0 * _binomial_half_cdf(min(b, c), n))
    return b, c, p


def wilcoxon_signed_rank(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, alternative: Alternative = "two-sided"
) -> tuple[float, float]:
    """Wilcoxon signed-rank test on paired scores (per-question F1 of two conditions).

    Zero differences are dropped (zero_method="wilcox"): questions both conditions score the same say
    nothing about which is better. Returns (statistic, p) as scipy defines them (two-sided: the smaller
    of the positive and negative rank sums; one-sided: the positive rank sum). scipy's method="auto" is
    used: exact for n <= 50 without ties or zeros, a deterministic permutation test for n <= 13 with
    them, else the normal approximation. When every difference is zero scipy has nothing to rank (it
    warns and returns NaN); we return (0.0, 1.0) instead, since there is no evidence of a difference.
    "greater" tests that x is larger than y.
    """
    from scipy import stats  # noqa: PLC0415 - scipy.stats costs ~1 s to import; only this test needs it

    _check_alternative(alternative)
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(f"x and y must be 1-d and paired (same length), got shapes {xa.shape} and {ya.shape}")
    if xa.size == 0:
        raise ValueError("nothing to test: x and y are empty")
    if not np.any(xa != ya):
        return 0.0, 1.0
    result = stats.wilcoxon(xa, ya, zero_method="wilcox", alternative=alternative)
    return float(result.statistic), float(result.pvalue)


def compare_to(
    reference_name: str,
    conditions: Mapping[str, Mapping[str, Any]],
    *,
    alternative: Alternative = "two-sided",
) -> dict[str, dict[str, Any]]:
    """Paired significance of every other condition against `reference_name`.

    `conditions` maps a name to its per-question results, e.g. the dict `lcf_jax.eval.metrics.score`
    returns: "em" (0/1 array) is required, "f1" is optional (multiple choice has no F1, and then
    wilcoxon_p is None). The direction is condition vs reference: "greater" tests that the condition
    beats the reference, and b counts questions the condition gets right and the reference wrong.
    Returns {name: {"mcnemar_p", "wilcoxon_p", "b", "c"}} without an entry for the reference itself.
    """
    if reference_name not in conditions:
        raise ValueError(f"reference condition {reference_name!r} not among {sorted(conditions)}")
    ref = conditions[reference_name]
    out: dict[str, dict[str, Any]] = {}
    for name, cond in conditions.items():
        if name == reference_name:
            continue
        for key in ("em",) + (("f1",) if "f1" in cond and "f1" in ref else ()):
            if len(cond[key]) != len(ref[key]):
                raise ValueError(
                    f"condition {name!r} has {len(cond[key])} {key} values but the reference {reference_name!r} "
                    f"has {len(ref[key])}: paired tests need the same questions in the same order"
                )
        b, c, p_mcnemar = mcnemar_exact(cond["em"], ref["em"], alternative)
        p_wilcoxon = None
        if "f1" in cond and "f1" in ref:
            p_wilcoxon = wilcoxon_signed_rank(cond["f1"], ref["f1"], alternative)[1]
        out[name] = {"mcnemar_p": p_mcnemar, "wilcoxon_p": p_wilcoxon, "b": b, "c": c}
    return out


# Bootstrap intervals: resample the questions with replacement (the same resamples for every
# condition of a run, seeded, so a rerun reproduces them) and take the 2.5th and 97.5th percentiles
# of the mean. Paired: the difference of two conditions is resampled question by question.
RESAMPLES = 10_000


def _resample_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    index = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    return values[index].mean(axis=1)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-question `values`."""
    arr = np.asarray(values, np.float64)
    if arr.ndim != 1 or not len(arr):
        raise ValueError(f"need a non-empty 1-d array of per-question values, got shape {arr.shape}")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(_resample_means(arr, resamples, seed), [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Mean of a - b over the same questions and its paired 95% bootstrap interval: {mean, lo, hi}."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same questions: got {a.shape} and {b.shape}")
    low, high = bootstrap_ci(a - b, resamples=resamples, seed=seed)
    return {"mean": float((a - b).mean()), "lo": low, "hi": high}
