"""KL estimators, KL-shaped rewards for PPO, and the KL-coefficient controllers.

The estimators follow Schulman, "Approximating KL Divergence" (2020). With tokens sampled from π_θ and
log r = log π_ref − log π_θ, each estimates KL(π_θ ‖ π_ref) per token:

    k1 = −log r = logp − ref_logp               unbiased, high variance, can be negative
    k2 = ½ (log r)²                             biased, low variance, ≥ 0
    k3 = (r − 1) − log r                        unbiased, low variance, ≥ 0
"""

import torch


def k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    return logps - ref_logps


def k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logps - ref_logps) ** 2


def k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    log_r = ref_logps - logps
    return torch.exp(log_r) - log_r - 1


KL_ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) with estimator `kind` ("k1", "k2" or "k3"); same shape as logps."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid kinds: {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logps, ref_logps)


def kl_shaped_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token PPO rewards (Ziegler et al. 2019, Eq. 2; as in TRL's PPO and OpenRLHF):

        r_t = −kl_coef · (logp_t − ref_logp_t)  at every valid token, plus the sequence score at the last one

    scores: (B,); logps, ref_logps, mask: (B, T). Returns detached rewards (B, T), 0 at masked positions.
    Every row needs at least one valid token (its score has nowhere else to go).
    """
    valid = mask.bool()  # (B, T)
    if not valid.any(-1).all():
        empty = (~valid.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no valid response token to carry their score")
    kl = k1(logps.detach(), ref_logps.detach())  # (B, T)
    rewards = torch.where(valid, -kl_coef * kl, 0.0)  # (B, T)
    positions = torch.arange(valid.shape[1], device=valid.device)  # (T,)
    last = torch.where(valid, positions, -1).amax(dim=-1, keepdim=True)  # (B, 1)
    return rewards.scatter_add(1, last, scores.detach().to(rewards.dtype).unsqueeze(-1))


class FixedKLController:
    """A constant KL coefficient; `update` does nothing."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019), steering the measured KL towards `target`:

        e = clip(KL / target − 1, −0.2, 0.2),    β ← β · (1 + e · n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update from the KL measured over the last `n_steps` samples; returns the new coefficient."""
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon
        return self.value
