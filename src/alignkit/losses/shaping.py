"""Reward shaping on sequence-level scores: DAPO's overlong penalty and a penalty for unfinished responses."""

import torch


def overlong_penalty(
    lengths: torch.Tensor, max_length: int, buffer: int, penalty_factor: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), to add to each response's reward:

        0                                       L ≤ L_max − buffer
        ((L_max − buffer) − L) / buffer · f      L_max − buffer < L ≤ L_max
        −f                                      L > L_max

    lengths: (B,) response lengths in tokens. Returns (B,) penalties in the default float dtype.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"buffer must be in (0, max_length={max_length}], got {buffer}")
    lengths = lengths.to(torch.get_default_dtype())  # (B,)
    expected = max_length - buffer
    ramp = (expected - lengths) / buffer * penalty_factor  # (B,)
    beyond = torch.full_like(lengths, -penalty_factor)
    return torch.where(lengths <= expected, 0.0, torch.where(lengths <= max_length, ramp, beyond))


def no_eos_penalty(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores of responses that ended with eos unchanged; the others get `penalty` added, not substituted.

    penalty is normally negative (e.g. −1.0). TRL's `missing_eos_penalty` is a positive number that is
    subtracted, so its 1.0 is this function's −1.0. scores, finished: (B,). Returns (B,).
    """
    return torch.where(finished.bool(), scores, scores + penalty)
