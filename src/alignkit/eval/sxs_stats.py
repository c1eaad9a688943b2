"""Win rates from side-by-side labels. Pure: no I/O, no model.

    from alignkit.eval.sxs_stats import win_rate
    scores = [1.0, 0.5, 0.0, 1.0]            # one per label: win 1, tie or both-bad 0.5, loss 0
    win_rate(scores)                          # 0.625

Their interval is `eval.metrics.bootstrap_interval(scores, groups=pair_ids)`: labels of the same prompt
(several annotators on one pair) are not independent, so it resamples pairs, not single labels.
"""

from __future__ import annotations

from collections.abc import Sequence

SCORES = {"win": 1.0, "tie": 0.5, "both_bad": 0.5, "loss": 0.0}


def win_rate(scores: Sequence[float]) -> float:
    """Mean score: wins count 1, ties and both-bad ½, losses 0."""
    if not scores:
        raise ValueError("win_rate of no labels")
    return float(sum(scores) / len(scores))
