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
