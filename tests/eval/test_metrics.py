"""pass@k and majority vote, hand-worked."""

import pytest

from alignkit.eval.metrics import majority, pass_at_k


def test_pass_at_k_hand_values():
    """n = 4 samples, c = 1 correct: pass@1 = 1/4; pass@2 = 1 − C(3,2)/C(4,2) = 1 − 3/6 = 1/2;
    pass@4 = 1 − C(3,4)/C(4,4) = 1 (any 4 of 4 include the right one)."""
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority():
    assert majority(["3", "4", "4", None, None, None]) == "4"  # None never wins
    assert majority(["5", "6"]) == "5"  # tie: the first seen
    assert majority([None, None]) is None


def test_win_rate_counts_a_tie_as_half():
    """3 wins, 2 ties, 1 loss: (3 + 2/2) / 6 = 4/6."""
    from alignkit.eval.metrics import win_rate

    assert win_rate(3, 2, 1) == pytest.approx(4 / 6)
    assert win_rate(0, 5, 0) == 0.5
    with pytest.raises(ValueError):
        win_rate(0, 0, 0)


def test_bootstrap_interval_hand_checks():
    """Constant scores: every resampled mean is that constant, so the interval is (c, c).

    Two items scored 0 and 1: a resampled mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4. Of 1000
    resamples about 250 are 0 and 250 are 1, so the 2.5% and 97.5% quantiles (the 26th and 975th sorted means)
    are 0 and 1.

    100 items, 40 scored 1 and 60 scored 0: the mean's standard error is sqrt(0.4 · 0.6 / 100) ≈ 0.049, so the
    95% interval is about 0.4 ± 1.96 · 0.049 = (0.304, 0.496); a percentile bootstrap of 4000 resamples lands
    within 0.02 of each end. The same seed gives the same interval."""
    from alignkit.eval.metrics import bootstrap_interval

    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_interval([0.0, 1.0], resamples=1000) == (0.0, 1.0)
    scores = [1.0] * 40 + [0.0] * 60
    low, high = bootstrap_interval(scores, resamples=4000, seed=3)
    assert low == pytest.approx(0.304, abs=0.02) and high == pytest.approx(0.496, abs=0.02)
    assert bootstrap_interval(scores, resamples=4000, seed=3) == (low, high)


def test_agreement_with_the_majority():
    """['7', '7', '8', None]: the majority is '7', given by 2 of 4 answers; no answer at all gives 0."""
    from alignkit.eval.metrics import agreement, perplexity

    assert agreement(["7", "7", "8", None]) == 0.5
    assert agreement(["3", "3", "3"]) == 1.0
    assert agreement([None, None]) == 0.0
    assert perplexity(2 * 0.6931471805599453, 2) == pytest.approx(2.0)  # mean NLL ln 2 -> perplexity 2
