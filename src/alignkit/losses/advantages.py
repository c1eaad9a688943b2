"""Advantage estimators: GAE for PPO with a value model; without one, group-relative advantages (GRPO), the
leave-one-out baseline (RLOO) and REINFORCE++'s returns normalised over the global batch.

All work on rollout data and return detached tensors: advantages and returns are targets, never a path
for gradients.
"""

import torch

from alignkit.losses.reduce import masked_mean, masked_var


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


def rloo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, Eq. 5): each completion's baseline is
    the mean reward of the other completions of its prompt,

        A_i = r_i − 1/(G−1) · Σ_{j≠i} r_j   ( = G/(G−1) · (r_i − mean_group) )

    rewards: (B·G,), consecutive runs of `group_size` completions of the same prompt. Returns (B·G,).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B·G,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"the leave-one-out baseline needs group_size >= 2, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.detach().reshape(-1, group_size)  # (B, G)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (B, G) mean of the others
    return (grouped - others).reshape(-1)  # (B·G,)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte Carlo returns G_t = Σ_{l≥0} γ^l r_{t+l} over each row's valid tokens (masked positions skipped, as in
    `gae`, which this equals with V = 0 and λ = 1). rewards, mask: (B, T). Returns (B, T), 0 at masked positions.
    """
    valid = mask.bool()
    rewards = rewards.detach()
    running = torch.zeros_like(rewards[:, 0])  # (B,)  G_{t+1}
    out = []
    for t in reversed(range(rewards.shape[1])):
        now = rewards[:, t] + gamma * running  # G_t = r_t + γ G_{t+1}
        running = torch.where(valid[:, t], now, running)
        out.append(torch.where(valid[:, t], now, 0.0))
    return torch.stack(out[::-1], dim=1)  # (B, T)


def moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """(Σ x, Σ x², n) over the valid positions: what processes sum to normalise over the global batch."""
    valid = mask.bool()
    x = x.detach().double()
    return float(x[valid].sum()), float((x[valid] ** 2).sum()), float(valid.sum())


def batch_normalize(x: torch.Tensor, mask: torch.Tensor, totals: tuple[float, float, float] | None = None,
                    eps: float = 1e-8) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + eps) over every valid position of the global batch, σ² unbiased; 0 at masked positions.

    totals: `moments` summed over every process's share of the batch; None: this tensor is the whole batch.
    """
    if totals is None:
        mean, var = masked_mean(x.detach(), mask), masked_var(x.detach(), mask)
    else:
        s, sq, n = totals
        if n < 2:
            raise ValueError(f"normalising over the batch needs at least 2 valid positions, got {int(n)}")
        mean = torch.tensor(s / n, dtype=x.dtype)
        var = torch.tensor(max(sq - s * s / n, 0.0) / (n - 1), dtype=x.dtype)
    return torch.where(mask.bool(), (x.detach() - mean) * torch.rsqrt(var + eps), 0.0)


def reinforce_pp(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                 totals: tuple[float, float, float] | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, §3): per-token rewards r_t = −β·KL_t, plus the score at the last token (the KL to the
    reference is in the reward, token by token); the advantage is the return G_t = Σ_{l≥0} γ^l r_{t+l}, normalised
    over every valid token of the global batch (not per prompt):

        A_t = (G_t − mean_batch(G)) / std_batch(G)

    token_rewards, mask: (B, T) (`kl.kl_shaped_rewards` builds the rewards). For REINFORCE++-baseline the score is
    first centred on its group's mean (`group_advantages(..., scale=False)`). With several processes, pass
    `totals`: the returns' `moments` summed over processes. Returns (B, T), 0 at masked positions.
    """
    return batch_normalize(discounted_returns(token_rewards, mask, gamma), mask, totals)
