"""Clipped value loss around the clip edges, by hand.

V_old = 1, R = 2, c = 0.2, so clip(V) lies in [0.8, 1.2]; loss = ½·max((V − R)², (clip(V) − R)²).

    V = 1.1   ½·max(0.81, 0.81)             = 0.405
    V = 1.19  ½·max(0.6561, 0.6561)         = 0.32805
    V = 1.2   ½·max(0.64, 0.64)             = 0.32      (edge)
    V = 1.21  ½·max(0.6241, 0.64)           = 0.32      clipped
    V = 1.3   ½·max(0.49, 0.64)             = 0.32      clipped
    V = 2.5   ½·max(0.25, 0.64)             = 0.32      clipped (past the return)
    V = 0.8   ½·max(1.44, 1.44)             = 0.72      (edge)
    V = 0.79  ½·max(1.4641, 1.44)           = 0.73205   not clipped: the unclipped error is the larger
    V = 0.7   ½·max(1.69, 1.44)             = 0.845     not clipped
Unclipped tokens have d loss / dV = V − R; clipped ones 0.
"""

import pytest
import torch

from alignkit.losses.value import clipped_value_loss

VALUES = [1.1, 1.19, 1.2, 1.21, 1.3, 2.5, 0.8, 0.79, 0.7]


def _run(values, clip_range, mask=None):
    v = torch.tensor([values], dtype=torch.float64, requires_grad=True)
    old, ret = torch.ones_like(v), torch.full_like(v, 2.0)
    mask = torch.ones_like(old, dtype=torch.bool) if mask is None else torch.tensor([mask])
    loss, stats = clipped_value_loss(v, old, ret, mask, clip_range)
    loss.sum().backward()
    return loss[0].tolist(), v.grad[0].tolist(), stats


def test_hand_values_around_clip_edges():
    loss, _, _ = _run(VALUES, 0.2)
    assert loss == pytest.approx([0.405, 0.32805, 0.32, 0.32, 0.32, 0.32, 0.72, 0.73205, 0.845], abs=1e-12)


def test_gradient_and_clip_fraction():
    """Away from the edges: 1.1, 1.3 (clipped), 2.5 (clipped), 0.7 -> grads −0.9, 0, 0, −1.3; clip fraction 2/4.
    A padded 5.0 (would be clipped) is masked out."""
    loss, grad, stats = _run([1.1, 1.3, 2.5, 0.7, 5.0], 0.2, mask=[True] * 4 + [False])
    assert grad == pytest.approx([-0.9, 0.0, 0.0, -1.3, 0.0], abs=1e-12)
    assert loss[4] == 0.0
    assert stats["clip_fraction"].item() == 0.5


def test_no_clip_range_is_plain_squared_error():
    """½(V − R)²: 1.3 -> 0.245, 2.5 -> 0.125, 0.7 -> 0.845; grads V − R = −0.7, 0.5, −1.3."""
    loss, grad, stats = _run([1.3, 2.5, 0.7], None)
    assert loss == pytest.approx([0.245, 0.125, 0.845], abs=1e-12)
    assert grad == pytest.approx([-0.7, 0.5, -1.3], abs=1e-12)
    assert stats["clip_fraction"].item() == 0.0


def test_masked_inf_gives_no_nan_gradient():
    """V = 1.1 valid -> ½·0.81 = 0.405, gradient −0.9; the padded inf gives loss 0 and gradient 0."""
    v = torch.tensor([[1.1, float("inf")]], dtype=torch.float64, requires_grad=True)
    old, ret = torch.ones_like(v), torch.full_like(v, 2.0)
    loss, _ = clipped_value_loss(v, old, ret, torch.tensor([[1, 0]]), 0.2)
    loss.sum().backward()
    assert loss[0].tolist() == pytest.approx([0.405, 0.0], abs=1e-12)
    assert v.grad[0].tolist() == pytest.approx([-0.9, 0.0], abs=1e-12)
