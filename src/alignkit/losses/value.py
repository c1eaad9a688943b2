"""Clipped value loss (PPO's value head)."""

import torch

from alignkit.losses.reduce import masked_mean


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped value loss, as in OpenAI's baselines PPO2 and TRL:

        loss = 0.5 · max((V − R)², (clip(V, V_old − c, V_old + c) − R)²)

    clip_range=None gives the plain 0.5 · (V − R)². values, old_values, returns, mask: (B, T); old_values and
    returns are treated as constants (detached). Masked positions get loss 0 and no gradient.

    Returns (loss (B, T), stats) with stats["clip_fraction"]: the fraction of valid tokens whose clipped
    term is strictly larger (zero gradient there); 0 when clip_range is None.
    """
    valid = mask.bool()  # (B, T)
    values = torch.where(valid, values, 0.0)  # masked before squaring: padding cannot send NaN back
    old_values = torch.where(valid, old_values.detach(), 0.0)
    returns = torch.where(valid, returns.detach(), 0.0)
    unclipped = (values - returns) ** 2  # (B, T)
    if clip_range is None:
        loss = 0.5 * unclipped
        clip_active = torch.zeros_like(valid)
    else:
        clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)  # (B, T)
        clipped = (clipped_values - returns) ** 2  # (B, T)
        loss = 0.5 * torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = torch.where(valid, loss, 0.0)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean(clip_active.float(), valid)}
    return loss, stats
