"""Overlong penalty (DAPO Eq. 13) and the missing-eos penalty, by hand."""

import pytest
import torch

from alignkit.losses.shaping import no_eos_penalty, overlong_penalty


def test_overlong_penalty_hand_values():
    """L_max = 20, buffer = 4, so the ramp starts after L_max − buffer = 16:
    L = 10 -> 0, 16 -> 0 (edge), 17 -> (16 − 17)/4 = −0.25, 18 -> −0.5, 19 -> −0.75, 20 -> −1 (edge),
    21 -> −1, 100 -> −1. With factor 0.5 every value halves."""
    lengths = torch.tensor([10, 16, 17, 18, 19, 20, 21, 100])
    want = [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    assert overlong_penalty(lengths, max_length=20, buffer=4).tolist() == want
    halved = overlong_penalty(lengths, max_length=20, buffer=4, penalty_factor=0.5).tolist()
    assert halved == [v / 2 for v in want]


def test_overlong_penalty_is_float_and_validates_buffer():
    assert overlong_penalty(torch.tensor([3]), 4, 2).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(torch.tensor([3]), 4, 0)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(torch.tensor([3]), 4, 5)


def test_no_eos_penalty_adds_to_unfinished():
    """penalty −1: finished 1.0 stays; unfinished 0.5 -> −0.5 and −0.2 -> −1.2 (added, not replaced)."""
    out = no_eos_penalty(torch.tensor([1.0, 0.5, -0.2]), torch.tensor([True, False, False]), -1.0)
    assert out.tolist() == pytest.approx([1.0, -0.5, -1.2])
