"""Advantage estimators: GAE for PPO with a value model, group-relative advantages for GRPO.

Both work on rollout data and return detached tensors: advantages and returns are targets, never a path
for gradients.
"""

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) over response tokens.

        δ_t = r_t + γ V_{t+1} − V_t,    A_t = Σ_{l≥0} (γλ)^l δ_{t+l},    returns_t = A_t + V_t

    rewards, values, mask: (B, T). V after the last valid token is 0. Masked positions are skipped: the
    recursion links each valid token to the next valid one, so with right padding this is the usual GAE,
    and an interior gap (say, tool output inside a response) does not cut it. Whatever rewards or values
    hold at masked positions is ignored; advantages and returns are 0 there. Returns (advantages, returns),
    each (B, T).
    """
    valid = mask.bool()  # (B, T)
    rewards, values = rewards.detach(), values.detach()
    next_value = torch.zeros_like(values[:, 0])  # (B,)  V_{t+1}, 0 beyond the last valid token
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)  A_{t+1}
    advantages = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage  # A_t = δ_t + γλ A_{t+1}
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
        advantages.append(torch.where(valid[:, t], advantage, 0.0))
    advantages = torch.stack(advantages[::-1], dim=1)  # (B, T)
    returns = torch.where(valid, advantages + values, 0.0)  # (B, T)
    return advantages, returns


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024, §4.1.2): (r − mean_group) / (std_group + eps).

    rewards: (B·G,), consecutive runs of `group_size` completions of the same prompt. std is the unbiased
    sample standard deviation (n − 1 denominator, torch.std's default, as in TRL's GRPO). scale=False gives
    r − mean_group, Dr. GRPO's choice (Liu et al. 2025), which drops the division by std. A group whose
    rewards are all equal gets zero advantages. Returns (B·G,).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B·G,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    if scale and group_size < 2:
        raise ValueError("scale=True needs group_size >= 2: the unbiased std of one reward is undefined")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.detach().reshape(-1, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)  # unbiased std
    return centred.reshape(-1)  # (B·G,)
