"""KTO: a hand-worked value, the paper's formula transcribed directly, and the reference point z0.

Hand-worked inputs (β = 0.5, λ_D = 1, λ_U = 1.5):
    desirable   y1: log πθ = −1, log πref = −2  ->  r1 = 1
    undesirable y2: log πθ = −3, log πref = −2  ->  r2 = −1
    mismatched pairs (x1, y2'), (x2, y1'): log πθ = −4, −5; log πref = −5, −7  ->  log-ratios 1, 2
    z0 = max(0, (1 + 2) / 2) = 1.5
    desirable:   λ_D (1 − σ(β (r1 − z0))) = 1 − σ(−0.25) = σ(0.25) = 0.5621765
    undesirable: λ_U (1 − σ(β (z0 − r2))) = 1.5 (1 − σ(1.25)) = 1.5 · 0.2227001 = 0.3340502
    mean = (0.5621765 + 0.3340502) / 2 = 0.4481134; rewards β r = 0.5, −0.5
"""

import math

import pytest
import torch

from alignkit.losses.kto import kto, reference_point

POLICY, REFERENCE = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
DESIRABLE = torch.tensor([True, False])
MISMATCHED_POLICY, MISMATCHED_REFERENCE = torch.tensor([-4.0, -5.0]), torch.tensor([-5.0, -7.0])


def test_hand_worked_value():
    z0 = reference_point((MISMATCHED_POLICY - MISMATCHED_REFERENCE).sum(), 2)
    assert z0.item() == 1.5
    losses, rewards = kto(POLICY, REFERENCE, DESIRABLE, z0, beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    assert losses.tolist() == pytest.approx([0.5621765, 0.3340502], abs=1e-6)
    assert losses.mean().item() == pytest.approx(0.4481134, abs=1e-6)
    assert rewards.tolist() == [0.5, -0.5]


def _paper(policy, reference, desirable, z0, beta, lambda_d, lambda_u):
    """Ethayarajh et al. 2024, Eq. 7, one completion at a time: L = λ_y − v(x, y) with
    v = λ_D σ(β(r − z0)) for a desirable y and λ_U σ(β(z0 − r)) for an undesirable one."""
    out = []
    for p, q, d in zip(policy.tolist(), reference.tolist(), desirable.tolist()):
        r = p - q
        if d:
            out.append(lambda_d - lambda_d / (1 + math.exp(-beta * (r - z0))))
        else:
            out.append(lambda_u - lambda_u / (1 + math.exp(-beta * (z0 - r))))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_papers_formula_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    n = 64
    policy = -torch.rand(n, generator=g, dtype=torch.float64) * 60
    reference = policy + torch.randn(n, generator=g, dtype=torch.float64) * 5
    desirable = torch.rand(n, generator=g) < 0.4
    mismatched = torch.randn(n, generator=g, dtype=torch.float64) * 3 + (seed - 2)  # some means below 0
    z0 = reference_point(mismatched.sum(), n)
    assert z0.item() == pytest.approx(max(0.0, mismatched.mean().item()), abs=1e-12)
    beta, lambda_d, lambda_u = [0.05, 0.1, 0.3, 1.0, 2.0][seed], 1.0 + seed / 4, 1.33
    losses, rewards = kto(policy, reference, desirable, z0, beta=beta, desirable_weight=lambda_d,
                          undesirable_weight=lambda_u)
    expected = _paper(policy, reference, desirable, z0.item(), beta, lambda_d, lambda_u)
    assert losses.dtype == torch.float64
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert rewards.tolist() == pytest.approx((beta * (policy - reference)).tolist(), abs=1e-12)


def test_reference_point_is_clamped_at_zero():
    assert reference_point(torch.tensor(-3.0), 2).item() == 0.0
    assert reference_point(torch.tensor(0.0), 2).item() == 0.0
    assert reference_point(torch.tensor(3.0), 2).item() == 1.5


def test_no_gradient_flows_through_the_reference_point():
    mismatched = MISMATCHED_POLICY.clone().requires_grad_(True)
    policy = POLICY.clone().requires_grad_(True)
    z0 = reference_point((mismatched - MISMATCHED_REFERENCE).sum(), 2)
    assert not z0.requires_grad
    # Even a z0 handed over with a graph attached is cut off inside the loss.
    attached = (mismatched - MISMATCHED_REFERENCE).mean()
    for point in (z0, attached):
        losses, rewards = kto(policy, REFERENCE, DESIRABLE, point, beta=0.5)
        assert not rewards.requires_grad
        losses.sum().backward()
        assert mismatched.grad is None
        # d/dr of 1 − σ(β(r − z0)) is −β σ'(·); of 1 − σ(β(z0 − r)) is +β σ'(·), z0 held fixed
        s1, s2 = torch.sigmoid(torch.tensor(0.5 * (1 - 1.5))), torch.sigmoid(torch.tensor(0.5 * (1.5 + 1)))
        expected = [-0.5 * s1 * (1 - s1), 0.5 * s2 * (1 - s2)]
        assert policy.grad.tolist() == pytest.approx([e.item() for e in expected], abs=1e-7)
        policy.grad = None


def test_zero_reference_point_is_unpaired_apo_zero():
    """TRL's apo_zero_unpaired: desirable 1 − σ(β r), undesirable σ(β r), weighted as KTO."""
    g = torch.Generator().manual_seed(0)
    policy, reference = -torch.rand(16, generator=g, dtype=torch.float64) * 9, -torch.rand(16, generator=g,
                                                                                        dtype=torch.float64) * 9
    desirable = torch.arange(16) % 3 == 0
    losses, _ = kto(policy, reference, desirable, torch.zeros((), dtype=torch.float64), beta=0.2,
                    desirable_weight=1.2, undesirable_weight=0.8)
    r = policy - reference
    expected = torch.where(desirable, 1.2 * (1 - torch.sigmoid(0.2 * r)), 0.8 * torch.sigmoid(0.2 * r))
    assert losses.tolist() == pytest.approx(expected.tolist(), abs=1e-12)


def test_policy_equal_to_reference_gives_half_of_each_weight():
    """At the first step (πθ = πref, z0 = 0) every completion's loss is λ_y (1 − σ(0)) = λ_y / 2."""
    losses, _ = kto(POLICY, POLICY, DESIRABLE, torch.tensor(0.0), beta=0.1, desirable_weight=2.0,
                    undesirable_weight=3.0)
    assert losses.tolist() == [1.0, 1.5]
