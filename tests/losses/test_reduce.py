"""Masked reductions and aggregation modes, on hand-worked examples.

Shared example (B = 2, T = 4); masked positions hold 100 (or NaN) to show they are ignored:
    loss = [[1, 2, 3, 100],
            [5, 6, 100, 100]]
    mask = [[1, 1, 1, 0],
            [1, 1, 0, 0]]
    valid tokens: 1, 2, 3 | 5, 6   (5 tokens, sum 17; row sums 6 and 11; row means 2 and 5.5)
"""

import math

import pytest
import torch

from alignkit.losses import reduce as R

LOSS = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 6.0, 100.0, 100.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)


def test_masked_sum_and_mean():
    """Sum 17, mean 17/5 = 3.4; along dim -1: sums [6, 11], means [2, 5.5]."""
    assert R.masked_sum(LOSS, MASK).item() == 17.0
    assert R.masked_mean(LOSS, MASK).item() == pytest.approx(3.4)
    assert R.masked_sum(LOSS, MASK, dim=-1).tolist() == [6.0, 11.0]
    assert R.masked_mean(LOSS, MASK, dim=-1).tolist() == [2.0, 5.5]


def test_masked_positions_may_hold_nan():
    """NaN under the mask must not reach the result (a multiply-by-zero mask would give NaN)."""
    loss = LOSS.clone()
    loss[~MASK] = float("nan")
    assert R.masked_mean(loss, MASK).item() == pytest.approx(3.4)
    assert R.masked_sum(loss, MASK.float(), dim=-1).tolist() == [6.0, 11.0]  # a 0/1 float mask works too


def test_masked_mean_of_empty_row_is_zero():
    mask = MASK.clone()
    mask[1] = False
    assert R.masked_mean(LOSS, mask, dim=-1).tolist() == [2.0, 0.0]


def test_masked_var_is_unbiased():
    """x = 1, 3, 5 valid: μ = 3, Σ(x − μ)² = 8; unbiased 8/2 = 4 (the biased value would be 8/3)."""
    x = torch.tensor([[1.0, 3.0, 5.0, 1000.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert R.masked_var(x, m).item() == pytest.approx(4.0)
    assert R.masked_var(x, m, unbiased=False).item() == pytest.approx(8 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        R.masked_var(x, torch.tensor([[1, 0, 0, 0]]))


def test_whiten():
    """x = 1, 3, 5 valid: μ = 3, σ = 2 (unbiased) -> [−1, 0, 1], masked position 0.

    shift_mean=False adds μ back: [2, 3, 4].
    """
    x = torch.tensor([[1.0, 3.0], [5.0, 1000.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    assert R.whiten(x, m).flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert R.whiten(x, m, shift_mean=False).flatten().tolist() == pytest.approx([2.0, 3.0, 4.0, 0.0], abs=1e-6)


def test_token_mean():
    """17 / 5 = 3.4; with global_tokens = 10 (the step's token count): 17 / 10 = 1.7."""
    assert R.aggregate(LOSS, MASK, "token-mean").item() == pytest.approx(3.4)
    assert R.aggregate(LOSS, MASK, "token-mean", global_tokens=10).item() == pytest.approx(1.7)


def test_token_mean_over_micro_batches_with_global_tokens_equals_token_mean_of_step():
    """Micro-batches of 5 and 1 tokens: summing their global_tokens=6 means gives the step's token mean,
    (17 + 4)/6 = 3.5; summing their own token means would give 3.4 + 4 = 7.4 (or 3.7 halved)."""
    loss2 = torch.tensor([[4.0, 100.0, 100.0, 100.0]])
    mask2 = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)
    step = R.aggregate(torch.cat([LOSS, loss2]), torch.cat([MASK, mask2]), "token-mean")
    accumulated = sum(R.aggregate(lo, m, "token-mean", global_tokens=6) for lo, m in ((LOSS, MASK), (loss2, mask2)))
    assert step.item() == pytest.approx(3.5)
    assert accumulated.item() == pytest.approx(3.5)


def test_seq_mean_token_mean():
    """(2 + 5.5) / 2 = 3.75."""
    assert R.aggregate(LOSS, MASK, "seq-mean-token-mean").item() == pytest.approx(3.75)


def test_seq_mean_token_sum():
    """(6 + 11) / 2 = 8.5; with max_len = 4: (6/4 + 11/4) / 2 = (1.5 + 2.75) / 2 = 2.125."""
    assert R.aggregate(LOSS, MASK, "seq-mean-token-sum").item() == pytest.approx(8.5)
    assert R.aggregate(LOSS, MASK, "seq-mean-token-sum", max_len=4).item() == pytest.approx(2.125)


def test_sequence_modes_skip_rows_without_tokens():
    """A third, fully masked row is not a sequence: the results stay 3.75 and 8.5 (not 2.5 and 17/3)."""
    loss = torch.cat([LOSS, torch.full((1, 4), 100.0)])
    mask = torch.cat([MASK, torch.zeros(1, 4, dtype=torch.bool)])
    assert R.aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(3.75)
    assert R.aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx(8.5)


def test_aggregate_is_differentiable_and_ignores_masked_gradients():
    """token-mean: d/dloss = 1/5 on valid tokens, 0 on masked ones."""
    loss = LOSS.clone().requires_grad_()
    R.aggregate(loss, MASK, "token-mean").backward()
    assert loss.grad.flatten().tolist() == pytest.approx([0.2, 0.2, 0.2, 0.0, 0.2, 0.2, 0.0, 0.0])


def test_modes_dict_and_errors():
    assert list(R.AGGREGATIONS) == ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
    with pytest.raises(ValueError, match=r"'seq-mean'.*token-mean, seq-mean-token-mean, seq-mean-token-sum"):
        R.aggregate(LOSS, MASK, "seq-mean")
    with pytest.raises(ValueError, match="global_tokens"):
        R.aggregate(LOSS, MASK, "seq-mean-token-mean", global_tokens=10)
    with pytest.raises(ValueError, match="max_len"):
        R.aggregate(LOSS, MASK, "token-mean", max_len=4)
    with pytest.raises(ValueError, match="positive"):
        R.aggregate(LOSS, MASK, "token-mean", global_tokens=0)


def test_all_modes_agree_when_rows_have_equal_lengths():
    """Equal lengths n: token-mean = seq-mean-token-mean = seq-mean-token-sum / n = seq-mean-token-sum(max_len=n)."""
    torch.manual_seed(0)
    loss, mask = torch.randn(3, 5), torch.ones(3, 5, dtype=torch.bool)
    mask[:, 4] = False
    tm = R.aggregate(loss, mask, "token-mean").item()
    assert R.aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(tm, rel=1e-6)
    assert R.aggregate(loss, mask, "seq-mean-token-sum").item() / 4 == pytest.approx(tm, rel=1e-6)
    assert R.aggregate(loss, mask, "seq-mean-token-sum", max_len=4).item() == pytest.approx(tm, rel=1e-6)
    assert not math.isclose(R.aggregate(loss, mask, "seq-mean-token-sum").item(), tm)
