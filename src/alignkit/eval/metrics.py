"""Pure accuracy metrics over sampled answers."""

from __future__ import annotations

from collections import Counter
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, Eq. 1): 1 − C(n−c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority(answers: list[str | None]) -> str | None:
    """The most common extracted answer (None, no answer, never wins); ties go to the one seen first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def win_rate(wins: int, ties: int, losses: int) -> float:
    """(wins + ties / 2) / n: a tie counts half a win."""
    n = wins + ties + losses
    if n == 0:
        raise ValueError("win rate of no comparisons")
    return (wins + 0.5 * ties) / n


def bootstrap_interval(values, resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                       groups=None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`: `resamples` seeded resamples with replacement,
    sorted, and their (1 − confidence)/2 and (1 + confidence)/2 quantiles.

    With `groups` (one key per value), whole groups are resampled instead of single values: values of one group
    (several annotators on one item, say) are not independent. Each resample draws k groups (k = the number of
    groups) and takes sum(values) / count(values) over them, so larger groups weigh more, as in the plain mean.
    """
    import numpy as np

    if not len(values):
        raise ValueError("bootstrap interval of no values")
    data = np.asarray(values, dtype=np.float64)  # (n,)
    if groups is None:
        sums, counts = data, np.ones_like(data)  # every value its own group
    else:
        if len(groups) != len(data):
            raise ValueError(f"{len(data)} values but {len(groups)} groups")
        index: dict = {}
        keys = np.array([index.setdefault(g, len(index)) for g in groups])
        sums = np.bincount(keys, weights=data)  # (k,)
        counts = np.bincount(keys).astype(np.float64)  # (k,)
    k = len(sums)
    draws = np.random.default_rng(seed).integers(0, k, size=(resamples, k))  # (resamples, k)
    means = np.sort(sums[draws].sum(axis=1) / counts[draws].sum(axis=1))  # (resamples,)
    tail = (1 - confidence) / 2
    low = means[int(np.floor(tail * resamples))]
    high = means[max(int(np.ceil((1 - tail) * resamples)) - 1, 0)]
    return float(low), float(high)


def agreement(answers: list[str | None]) -> float:
    """Share of answers equal to the majority answer; no answer (None) never agrees, so all-None gives 0."""
    top = majority(answers)
    return 0.0 if top is None else sum(a == top for a in answers) / len(answers)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    from math import exp

    return exp(nll_sum / tokens)
