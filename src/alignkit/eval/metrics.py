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


def bootstrap_interval(values: list[float], resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample `values` with replacement `resamples` times (seeded),
    sort the resampled means and take the (1 − confidence)/2 and (1 + confidence)/2 quantiles."""
    import numpy as np

    if not values:
        raise ValueError("bootstrap interval of no values")
    data = np.asarray(values, dtype=np.float64)  # (n,)
    rng = np.random.default_rng(seed)
    means = np.sort(data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1))  # (resamples,)
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
