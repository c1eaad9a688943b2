"""GAE against a direct evaluation of its defining sum; group advantages against a per-group loop."""

import math
import statistics

import pytest
import torch

from alignkit.losses.advantages import gae, group_advantages


def _direct_gae(rewards, values, mask, gamma, lam):
    """A_t = Σ_{l≥0} (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t over the valid positions of each row, in
    order (V after the last valid one = 0), by explicit double loops. Returns nested lists."""
    advantages, returns = [], []
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx] + [0.0]
        delta = [r[i] + gamma * v[i + 1] - v[i] for i in range(len(idx))]
        row_adv, row_ret = [0.0] * rewards.shape[1], [0.0] * rewards.shape[1]
        for i, t in enumerate(idx):
            row_adv[t] = sum((gamma * lam) ** k * delta[i + k] for k in range(len(idx) - i))
            row_ret[t] = row_adv[t] + v[i]
        advantages.append(row_adv)
        returns.append(row_ret)
    return advantages, returns


def _right_padded(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def test_gae_hand_values():
    """r = [0, 0, 1], V = [0.5, 0.5, 0.5], γ = λ = 0.5, then one padded position:
    δ_2 = 1 + 0.5·0 − 0.5 = 0.5, δ_1 = 0 + 0.25 − 0.5 = −0.25, δ_0 = −0.25
    A_2 = 0.5, A_1 = −0.25 + 0.25·0.5 = −0.125, A_0 = −0.25 + 0.25·(−0.125) = −0.28125
    returns = A + V = [0.21875, 0.375, 1.0]; the padded position gets 0 in both.
    """
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 9.0]])
    adv, ret = gae(rewards, values, _right_padded([3], 4), gamma=0.5, lam=0.5)
    assert adv.tolist() == [[-0.28125, -0.125, 0.5, 0.0]]
    assert ret.tolist() == [[0.21875, 0.375, 1.0, 0.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.5, 1.0), (1.0, 0.0)])
def test_gae_equals_direct_sum_of_td_residuals(seed, gamma, lam):
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 7
    lengths = torch.randint(0, T + 1, (B,), generator=g).tolist()
    lengths[0], lengths[1] = T, 1  # always one full row and a one-token row
    mask = _right_padded(lengths, T)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    rewards[~mask] = float("nan")  # padding content must not matter
    values[~mask] = 1e6
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = _direct_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(want_adv, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(ret, torch.tensor(want_ret, dtype=torch.float64), atol=1e-9, rtol=0)
    assert torch.equal(ret[mask], (adv + values)[mask])
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_lambda_one_gamma_one_is_return_to_go_minus_value():
    """γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t.

    rewards [1, 2, 3] -> return-to-go [6, 5, 3]; V = [1, 1, 1] -> A = [5, 4, 2].
    """
    adv, ret = gae(torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), 1.0, 1.0)
    assert adv.tolist() == [[5.0, 4.0, 2.0]]
    assert ret.tolist() == [[6.0, 5.0, 3.0]]


def test_gae_skips_interior_gaps():
    """An interior gap (mask 1 1 0 0 1 1 0) links token 1 straight to token 4."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0], [0, 1, 0, 1, 0, 1, 1]], dtype=torch.bool)
    rewards = torch.randn(2, 7, generator=g, dtype=torch.float64)
    values = torch.randn(2, 7, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, 0.9, 0.8)
    want_adv, want_ret = _direct_gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, torch.tensor(want_adv, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(ret, torch.tensor(want_ret, dtype=torch.float64), atol=1e-9, rtol=0)


def test_gae_outputs_are_detached():
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(torch.randn(2, 3), values, torch.ones(2, 3, dtype=torch.bool), 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad


def _loop_group_advantages(rewards, group_size, scale, eps=1e-6):
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = statistics.fmean(group)
        std = statistics.stdev(group)  # unbiased, n − 1
        out += [(r - mean) / (std + eps) if scale else r - mean for r in group]
    return out


def test_group_advantages_hand_values():
    """Group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.5773503 -> ±0.5/0.5773503 = ±0.8660254
    (the population std 0.5 would give ±1). Group [3, 1, 2, 2]: mean 2, std sqrt(2/3) = 0.8164966 ->
    [1.2247449, −1.2247449, 0, 0]. scale=False: [0.5, −0.5, −0.5, 0.5, 1, −1, 0, 0]."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0])
    a, b = 0.8660254, 1.2247449
    assert group_advantages(rewards, 4).tolist() == pytest.approx([a, -a, -a, a, b, -b, 0, 0], abs=1e-5)
    assert group_advantages(rewards, 4, scale=False).tolist() == [0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("group_size", [2, 3, 8])
@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_equal_per_group_loop(seed, group_size, scale):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(4 * group_size, generator=g, dtype=torch.float64)
    want = _loop_group_advantages(rewards.tolist(), group_size, scale)
    assert group_advantages(rewards, group_size, scale=scale).tolist() == pytest.approx(want, abs=1e-9)


def test_group_with_equal_rewards_gives_zero_not_nan():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), 3)
    assert not any(math.isnan(x) for x in adv.tolist())
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert adv[3:].tolist() == pytest.approx([-0.5773503, 1.1547005, -0.5773503], abs=1e-5)


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="7 rewards do not split into groups of 3"):
        group_advantages(torch.zeros(7), 3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(4), 1)
    assert group_advantages(torch.tensor([2.0, 5.0]), 1, scale=False).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)


# -- RLOO and REINFORCE++ ----------------------------------------------------------------------------------------
from alignkit.losses.advantages import batch_normalize, discounted_returns, moments, reinforce_pp, rloo  # noqa: E402


def test_rloo_hand_values():
    """One group r = [1, 0, 0, 1]: each baseline is the mean of the other three:
    A_0 = 1 − (0 + 0 + 1)/3 = 2/3, A_1 = 0 − (1 + 0 + 1)/3 = −2/3, A_2 = −2/3, A_3 = 2/3.
    A second group [2, 2, 2, 2] gets zeros."""
    out = rloo(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    assert out.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0], abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("G", [2, 3, 8])
def test_rloo_equals_a_loop_over_the_others(seed, G):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(5 * G, generator=g, dtype=torch.float64)
    want = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G].tolist()
        for i, r in enumerate(group):
            want.append(r - sum(x for j, x in enumerate(group) if j != i) / (G - 1))
    assert rloo(rewards, G).tolist() == pytest.approx(want, abs=1e-12)
    # = G/(G−1)·(r − mean_group): the scaled Dr. GRPO advantage
    assert rloo(rewards, G).tolist() == pytest.approx(
        (group_advantages(rewards, G, scale=False) * G / (G - 1)).tolist(), abs=1e-12)


def test_rloo_rejects_bad_groups():
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="do not split"):
        rloo(torch.zeros(5), 2)


def test_discounted_returns_hand_values():
    """r = [1, 0, 2] then padding, γ = 0.5: G_2 = 2, G_1 = 0 + 0.5·2 = 1, G_0 = 1 + 0.5·1 = 1.5."""
    out = discounted_returns(torch.tensor([[1.0, 0.0, 2.0, 9.0]]), _right_padded([3], 4), 0.5)
    assert out.tolist() == [[1.5, 1.0, 2.0, 0.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_discounted_returns_equal_the_direct_sum(seed, gamma):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    mask = torch.rand(B, T, generator=g) > 0.3  # interior gaps too: they are skipped, not cut
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    rewards[~mask] = float("nan")
    out = discounted_returns(rewards, mask, gamma)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        for k, t in enumerate(idx):
            want = sum(gamma ** j * rewards[b, idx[k + j]].item() for j in range(len(idx) - k))
            assert out[b, t].item() == pytest.approx(want, abs=1e-12)
        assert all(out[b, t].item() == 0.0 for t in range(T) if not mask[b, t])
    # = GAE with V = 0 and λ = 1
    assert torch.allclose(out, gae(torch.nan_to_num(rewards), torch.zeros(B, T, dtype=torch.float64), mask,
                                   gamma, 1.0)[0])


def test_reinforce_pp_hand_values():
    """Two sequences, β = 0 so the token rewards are the score at the last token: scores 1 (3 tokens) and 0
    (1 token), γ = 1. Returns: [1, 1, 1] and [0]; over the 4 tokens mean 0.75, unbiased var
    (3·0.0625 + 0.5625)/3 = 0.25, std 0.5: A = [0.5, 0.5, 0.5] and [−1.5]."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = _right_padded([3, 1], 3)
    out = reinforce_pp(rewards, mask, 1.0)
    assert out.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5, -1.5, 0.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_pp_equals_a_direct_transcription(seed):
    """A_t = (G_t − mean) / sqrt(var + 1e-8) over every valid token of the batch, G_t the γ-discounted return."""
    g = torch.Generator().manual_seed(seed)
    B, T, gamma = 5, 7, 0.95
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    mask = _right_padded(lengths, T)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    returns = {}
    for b in range(B):
        for t in range(lengths[b]):
            returns[b, t] = sum(gamma ** (s - t) * rewards[b, s].item() for s in range(t, lengths[b]))
    values = list(returns.values())
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    out = reinforce_pp(rewards, mask, gamma)
    for (b, t), v in returns.items():
        assert out[b, t].item() == pytest.approx((v - mean) / math.sqrt(var + 1e-8), abs=1e-9)


def test_batch_normalize_over_shares_equals_the_whole_batch():
    """Two processes' shares normalised with their summed moments == the whole batch normalised at once."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 5, generator=g) > 0.4
    whole = batch_normalize(x, mask)
    a, b = moments(x[:2], mask[:2]), moments(x[2:], mask[2:])
    totals = tuple(p + q for p, q in zip(a, b))
    parts = torch.cat([batch_normalize(x[:2], mask[:2], totals), batch_normalize(x[2:], mask[2:], totals)])
    assert torch.allclose(parts, whole, atol=1e-12)
