"""Win rates from side-by-side labels, with a seeded bootstrap interval. Pure: no I/O, no model.

    from alignkit.eval.sxs_stats import bootstrap_interval, win_rate
    scores = [1.0, 0.5, 0.0, 1.0]            # one per label: win 1, tie or both-bad 0.5, loss 0
    win_rate(scores)                          # 0.625
    bootstrap_interval(scores, groups=["p1", "p1", "p2", "p3"], seed=0)   # (low, high)

Labels of the same prompt (several annotators on one pair) are not independent, so the bootstrap resamples
groups (pairs), not single labels, when `groups` is given.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

SCORES = {"win": 1.0, "tie": 0.5, "both_bad": 0.5, "loss": 0.0}


def win_rate(scores: Sequence[float]) -> float:
    """Mean score: wins count 1, ties and both-bad ½, losses 0."""
    if not scores:
        raise ValueError("win_rate of no labels")
    return float(sum(scores) / len(scores))


def bootstrap_interval(scores: Sequence[float], groups: Sequence[Hashable] | None = None, n_boot: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the win rate; resamples whole groups when `groups` is given.

    Each resample draws k groups with replacement (k = the number of groups) and takes the ratio
    sum(scores) / count(labels) over them, so groups with more labels weigh more, as they do in `win_rate`.
    """
    if not scores:
        raise ValueError("bootstrap_interval of no labels")
    if groups is None:
        groups = range(len(scores))
    if len(groups) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(groups)} groups")
    index: dict[Hashable, int] = {}
    for g in groups:
        index.setdefault(g, len(index))
    k = len(index)
    sums, counts = np.zeros(k), np.zeros(k)  # (k,)
    for g, s in zip(groups, scores):
        sums[index[g]] += s
        counts[index[g]] += 1
    draws = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))  # (n_boot, k)
    rates = sums[draws].sum(1) / counts[draws].sum(1)  # (n_boot,)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(rates, [tail, 100 - tail])
    return float(low), float(high)
