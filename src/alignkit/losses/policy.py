"""Clipped policy-gradient loss (PPO), with DAPO's decoupled clip range and optional dual clip."""

import torch

from alignkit.losses.reduce import masked_mean


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, per token (Schulman et al. 2017, Eq. 7), negated to be minimised:

        ratio = exp(logp − old_logp)
        loss  = −min(ratio·A, clip(ratio, 1 − eps_low, 1 + eps_high)·A)

    eps_high defaults to eps_low; DAPO's clip-higher (Yu et al. 2025, §3.1) uses eps_low=0.2, eps_high=0.28.
    dual_clip = c > 1 (dual-clip PPO, Ye et al. 2020) bounds the loss of tokens with A < 0 by −c·A, so a huge ratio
    on a bad token cannot blow up the update.

    logps, old_logps, mask: (B, T). advantages: (B,) per sequence (broadcast over T) or (B, T) per token.
    old_logps and advantages are treated as constants (detached). Masked positions get loss 0 and no
    gradient, whatever they hold.

    Returns (loss (B, T), stats); stats are detached scalars over valid tokens:
        clip_fraction       tokens where the clip is active (the clipped term is strictly chosen, zero gradient)
        clip_fraction_low   ... of them with A < 0 and ratio < 1 − eps_low
        clip_fraction_high  ... of them with A > 0 and ratio > 1 + eps_high
        dual_clip_fraction  tokens where the dual clip is active (only when dual_clip is given)
        approx_kl           k3 estimate of KL(π_old ‖ π_θ): mean of (ratio − 1) − log ratio, ≥ 0 per token
        ratio_mean          mean ratio
    """
    if eps_high is None:
        eps_high = eps_low
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be greater than 1, got {dual_clip}")
    valid = mask.bool()  # (B, T)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (B, 1)
    advantages = torch.where(valid, advantages.detach(), 0.0)  # (B, T)
    log_ratio = torch.where(valid, logps - old_logps.detach(), 0.0)  # (B, T); masked before exp
    ratio = torch.exp(log_ratio)  # (B, T)

    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)  # (B, T)
    loss = torch.maximum(unclipped, clipped)  # −min(ratio·A, clip(ratio)·A)
    if dual_clip is not None:
        dual_bound = -dual_clip * advantages  # −max(min(ratio·A, clip(ratio)·A), c·A) for A < 0
        dual_active = (advantages < 0) & (dual_bound < loss)  # (B, T)
        loss = torch.where(dual_active, dual_bound, loss)
    loss = torch.where(valid, loss, 0.0)

    with torch.no_grad():
        clip_active = clipped > unclipped  # (B, T)
        stats = {
            "clip_fraction": masked_mean(clip_active.float(), valid),
            "clip_fraction_low": masked_mean((clip_active & (advantages < 0)).float(), valid),
            "clip_fraction_high": masked_mean((clip_active & (advantages > 0)).float(), valid),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, valid),
            "ratio_mean": masked_mean(ratio, valid),
        }
        if dual_clip is not None:
            stats["dual_clip_fraction"] = masked_mean(dual_active.float(), valid)
    return loss, stats


def truncated_is_weights(log_ratio: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance-sampling weights for rollouts from a sampler that is not exactly the trained policy
    (an inference engine's kernels, precision or quantisation): w_t = min(π_old(y_t) / π_sampler(y_t), C).

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training" (TIS); TRL's
    `vllm_importance_sampling_correction` with `vllm_importance_sampling_cap` is the same correction. The policy
    loss of token t is multiplied by w_t, which corrects the sampling distribution to π_old in expectation while
    the cap C bounds the variance. log_ratio = log π_old − log π_sampler (B, T), 0 at masked positions (weight 1).
    Returns (B, T) detached weights.
    """
    if cap <= 0:
        raise ValueError(f"the truncation cap must be positive, got {cap}")
    return torch.exp(log_ratio.detach()).clamp(max=cap)
