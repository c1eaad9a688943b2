"""KL estimators, KL-shaped rewards and the KL controllers."""

import pytest
import torch

from alignkit.losses.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_shaped_rewards,
)


def test_estimator_hand_values():
    """logp − ref = +1: k1 = 1, k2 = 0.5, k3 = e^−1 − (−1) − 1 = 0.3678794.
    logp − ref = −1: k1 = −1, k2 = 0.5, k3 = e^1 − 1 − 1 = 0.7182818. Equal log-probs: all 0."""
    logps, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-2.0, -1.0, -0.5])
    assert kl_estimate(logps, ref, "k1").tolist() == [1.0, -1.0, 0.0]
    assert kl_estimate(logps, ref, "k2").tolist() == [0.5, 0.5, 0.0]
    assert kl_estimate(logps, ref, "k3").tolist() == pytest.approx([0.3678794, 0.7182818, 0.0], abs=1e-6)


def test_k3_is_non_negative():
    g = torch.Generator().manual_seed(0)
    logps, ref = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert (kl_estimate(logps, ref, "k3") >= 0).all()
    assert (kl_estimate(logps, ref, "k1") < 0).any()  # k1 alone is not


def test_k1_and_k3_are_unbiased_for_kl_of_sampled_tokens():
    """π_θ = [0.5, 0.25, 0.15, 0.07, 0.03], π_ref = [0.1, 0.2, 0.3, 0.2, 0.2]: KL(π_θ ‖ π_ref) = 0.6261.
    20,000 tokens from π_θ (seed 0): k1 and k3 means within 0.04 (about 5 standard errors) of it;
    k2 is biased here (≈ 0.78)."""
    p = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
    q = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64)
    true_kl = (p * (p / q).log()).sum().item()
    assert true_kl == pytest.approx(0.6261, abs=1e-4)
    tokens = torch.multinomial(p, 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logps, ref = p.log()[tokens], q.log()[tokens]
    assert kl_estimate(logps, ref, "k1").mean().item() == pytest.approx(true_kl, abs=0.04)
    assert kl_estimate(logps, ref, "k3").mean().item() == pytest.approx(true_kl, abs=0.04)
    assert abs(kl_estimate(logps, ref, "k2").mean().item() - true_kl) > 0.1


def test_unknown_estimator():
    with pytest.raises(ValueError, match=r"'k4'.*k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_kl_shaped_rewards():
    """kl_coef = 0.1, logp − ref = [[0.5, −0.5, 1.0], [0.2, 0.4, 9.0]], mask rows of length 3 and 2, scores [1, 2]:
    row 0: [−0.05, 0.05, −0.1 + 1] = [−0.05, 0.05, 0.9]
    row 1: [−0.02, −0.04 + 2, 0]   = [−0.02, 1.96, 0]   (the padded 9.0 is ignored)"""
    logps = torch.tensor([[0.5, -0.5, 1.0], [0.2, 0.4, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = kl_shaped_rewards(torch.tensor([1.0, 2.0]), logps, torch.zeros(2, 3), mask, kl_coef=0.1)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.05, 0.9, -0.02, 1.96, 0.0], abs=1e-6)
    assert not rewards.requires_grad


def test_kl_shaped_rewards_needs_a_token_per_row():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        kl_shaped_rewards(torch.ones(2), torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([[1, 0], [0, 0]]), 0.1)


def test_adaptive_kl_controller():
    """init 0.1, target 6, horizon 10,000.
    KL 7.5, 256 steps: e = 7.5/6 − 1 = 0.25 -> clipped 0.2; β = 0.1·(1 + 0.2·256/10⁴) = 0.1·1.00512 = 0.100512.
    KL 3, 100 steps: e = −0.5 -> −0.2; β = 0.100512·(1 − 0.002) = 0.100310976.
    KL 6.6, 1000 steps: e = 0.1 (inside the clip); β = 0.100310976·1.01 = 0.10131408576."""
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    assert ctl.update(7.5, 256) == pytest.approx(0.100512, rel=1e-12)
    assert ctl.update(3.0, 100) == pytest.approx(0.100310976, rel=1e-12)
    assert ctl.update(6.6, 1000) == pytest.approx(0.10131408576, rel=1e-12)
    assert ctl.value == pytest.approx(0.10131408576, rel=1e-12)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10_000)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 256) == 0.05 and ctl.value == 0.05
