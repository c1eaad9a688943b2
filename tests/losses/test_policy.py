"""Clipped policy loss at and around both clip edges, by hand.

Inputs are given as ratios: old_logps = 0 and logps = log(ratio), in float64. With eps_low = 0.2 and
eps_high = 0.28 the clip interval is [0.8, 1.28]; loss = −min(r·A, clip(r)·A).

    A = +1:  r = 1.19 -> −1.19   1.2 -> −1.2   1.21 -> −1.21   1.27 -> −1.27
             r = 1.28 -> −1.28   1.29 -> −1.28 (clipped)
    A = −1:  r = 0.79 -> 0.8 (clipped)   0.8 -> 0.8   0.81 -> 0.81   1.5 -> 1.5 (no upper clip for A < 0)
    A = +1:  r = 0.5 -> −0.5 (no lower clip for A > 0)

With the symmetric default eps_high = eps_low = 0.2 the interval is [0.8, 1.2], so A = +1, r = 1.21 -> −1.2.
Unclipped tokens have d loss / d logp = −A·r (d r / d logp = r); clipped tokens have 0.
"""

import math

import pytest
import torch

from alignkit.losses.policy import clipped_policy_loss


def _run(ratios, advantages, mask=None, **kw):
    logps = torch.tensor([ratios], dtype=torch.float64).log().requires_grad_()
    old = torch.zeros_like(logps)
    adv = torch.tensor([advantages], dtype=torch.float64)
    mask = torch.ones_like(old, dtype=torch.bool) if mask is None else torch.tensor([mask])
    loss, stats = clipped_policy_loss(logps, old, adv, mask, **kw)
    loss.sum().backward()
    return loss[0].tolist(), logps.grad[0].tolist(), stats


def test_positive_advantage_around_upper_edges():
    ratios = [1.19, 1.2, 1.21, 1.27, 1.28, 1.29, 0.5]
    loss, _, _ = _run(ratios, [1.0] * 7, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx([-1.19, -1.2, -1.21, -1.27, -1.28, -1.28, -0.5], abs=1e-12)
    symmetric, _, _ = _run(ratios, [1.0] * 7, eps_low=0.2)
    assert symmetric == pytest.approx([-1.19, -1.2, -1.2, -1.2, -1.2, -1.2, -0.5], abs=1e-12)


def test_negative_advantage_around_lower_edge():
    loss, _, _ = _run([0.79, 0.8, 0.81, 1.5], [-1.0] * 4, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx([0.8, 0.8, 0.81, 1.5], abs=1e-12)


def test_advantage_scales_loss():
    """A = 2.5, r = 1.1 -> −2.75; A = −0.5, r = 0.7 -> −min(−0.35, −0.4) = 0.4; A = 0 -> 0."""
    loss, _, _ = _run([1.1, 0.7, 3.0], [2.5, -0.5, 0.0], eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx([-2.75, 0.4, 0.0], abs=1e-12)


def test_gradient_zero_where_clipped_and_minus_a_r_elsewhere():
    """Away from the edges: A = +1 at r = 1.1, 1.35, 0.5 and A = −1 at r = 0.7, 0.9, 1.5.
    Clipped: (+1, 1.35) and (−1, 0.7). Others: −A·r = −1.1, −0.5, 0.9, 1.5."""
    _, grad, _ = _run([1.1, 1.35, 0.5, 0.7, 0.9, 1.5], [1.0, 1.0, 1.0, -1.0, -1.0, -1.0], eps_low=0.2, eps_high=0.28)
    assert grad == pytest.approx([-1.1, 0.0, -0.5, 0.0, 0.9, 1.5], abs=1e-12)
    assert grad[1] == 0.0 and grad[3] == 0.0


def test_clip_fraction_counts_exactly_the_clipped_tokens():
    """Valid: (+1, 1.1), (+1, 1.35) clipped high, (−1, 0.7) clipped low, (−1, 0.95); a padded (+1, 5.0) would be
    clipped but is masked. clip_fraction = 2/4, low = high = 1/4."""
    _, _, stats = _run([1.1, 1.35, 0.7, 0.95, 5.0], [1.0, 1.0, -1.0, -1.0, 1.0], mask=[True] * 4 + [False],
                       eps_low=0.2, eps_high=0.28)
    assert stats["clip_fraction"].item() == 0.5
    assert stats["clip_fraction_low"].item() == 0.25
    assert stats["clip_fraction_high"].item() == 0.25
    assert "dual_clip_fraction" not in stats
    assert all(not v.requires_grad for v in stats.values())


def test_approx_kl_is_k3_and_ratio_mean():
    """log r = 0.1 and −0.1: k3 = (e^0.1 − 1 − 0.1, e^−0.1 − 1 + 0.1) = (0.0051709, 0.0048374),
    mean 0.0050042;
    ratio mean (1.1051709 + 0.9048374)/2 = 1.0050042. The padded third token (log r = 3) is ignored."""
    logps = torch.tensor([[0.1, -0.1, 3.0]])
    _, stats = clipped_policy_loss(logps, torch.zeros(1, 3), torch.ones(1), torch.tensor([[1, 1, 0]]))
    assert stats["approx_kl"].item() == pytest.approx(0.0050042, abs=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx(1.0050042, abs=1e-6)


def test_mask_zeroes_padded_tokens_even_with_overflowing_values():
    """A padded token whose log-ratio overflows exp (1e4) still gives loss 0 and gradient 0, with no NaN."""
    logps = torch.tensor([[0.1, 1e4, 1e4]], requires_grad=True)
    adv = torch.tensor([[1.0, float("nan"), -1.0]])
    loss, stats = clipped_policy_loss(logps, torch.zeros(1, 3), adv, torch.tensor([[True, False, False]]))
    loss.sum().backward()
    assert loss[0, 1:].tolist() == [0.0, 0.0]
    assert loss[0, 0].item() == pytest.approx(-math.exp(0.1), rel=1e-6)
    assert logps.grad[0].tolist() == pytest.approx([-math.exp(0.1), 0.0, 0.0], rel=1e-6)
    assert not any(math.isnan(v.item()) for v in stats.values())


def test_sequence_advantages_broadcast_over_tokens():
    torch.manual_seed(0)
    logps, old = torch.randn(3, 4) * 0.3, torch.randn(3, 4) * 0.3
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0, 0.5])
    per_seq, _ = clipped_policy_loss(logps, old, adv, mask, eps_high=0.28)
    per_token, _ = clipped_policy_loss(logps, old, adv[:, None].expand(3, 4), mask, eps_high=0.28)
    assert torch.equal(per_seq, per_token)
    assert (per_seq[~mask] == 0).all() and (per_seq[mask] != 0).all()


def test_dual_clip():
    """c = 3. A = −1: r = 1.5 -> min(1.5, 3) = 1.5; r = 4 -> min(4, 3) = 3 (dual clipped, gradient 0).
    A = −2, r = 4 -> min(8, 6) = 6. A = +1, r = 4 -> −1.28 as before (dual clip is for A < 0 only).
    Without the dual clip the second and third tokens would be 4 and 8. dual_clip_fraction = 2/4."""
    kw = {"eps_low": 0.2, "eps_high": 0.28}
    loss, grad, stats = _run([1.5, 4.0, 4.0, 4.0], [-1.0, -1.0, -2.0, 1.0], dual_clip=3.0, **kw)
    assert loss == pytest.approx([1.5, 3.0, 6.0, -1.28], abs=1e-12)
    assert grad == pytest.approx([1.5, 0.0, 0.0, 0.0], abs=1e-12)
    assert stats["dual_clip_fraction"].item() == 0.5
    assert stats["clip_fraction"].item() == 0.25  # only the A = +1 token hits the PPO clip
    plain, _, _ = _run([1.5, 4.0, 4.0, 4.0], [-1.0, -1.0, -2.0, 1.0], **kw)
    assert plain == pytest.approx([1.5, 4.0, 8.0, -1.28], abs=1e-12)
    with pytest.raises(ValueError, match="greater than 1"):
        _run([1.0], [1.0], dual_clip=1.0)


def test_truncated_is_weights_by_hand():
    """π_old / π_sampler = e^{log ratio}: ratios 0.5, 1, 1.5, 4 with cap 2 give 0.5, 1, 1.5, 2 (truncated); the
    weights carry no gradient, and a masked position (log ratio 0) weighs 1."""
    from alignkit.losses.policy import truncated_is_weights

    log_ratio = torch.tensor([[math.log(0.5), 0.0, math.log(1.5), math.log(4.0)]], requires_grad=True)
    w = truncated_is_weights(log_ratio, cap=2.0)
    assert w[0].tolist() == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert not w.requires_grad
    with pytest.raises(ValueError):
        truncated_is_weights(log_ratio, cap=0.0)
