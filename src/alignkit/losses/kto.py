"""KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv:2402.01306).

Unpaired completions, each labelled desirable or undesirable. With the implied reward
r = log πθ(y|x) − log πref(y|x) (summed over the completion's tokens) and the reference point z0, a detached
estimate of KL(πθ ‖ πref), each completion's loss is λ_y − v(x, y):

    desirable:    λ_D · (1 − σ(β (r − z0)))
    undesirable:  λ_U · (1 − σ(β (z0 − r)))

z0 is estimated on mismatched pairs (x, y'), each prompt with another row's completion:
z0 = max(0, mean of log πθ(y'|x) − log πref(y'|x)), never back-propagated through.

Where the mean is taken is the caller's choice. The paper and TRL take it over each micro-batch (TRL then
averages it over the processes), so under gradient accumulation each micro-batch of one optimizer step has a
z0 of its own, and the trajectory depends on how the step is split. `algos/kto.py` takes it over the whole
optimizer step instead, summed over every process (`Run.sum_over_processes`) and divided by the global batch:
one z0 per step, the same for any micro-batch size and any number of processes.

With z0 = 0 this is the unpaired variant of APO-zero (D'Oosterlinck et al. 2024; TRL's `apo_zero_unpaired`):
desirable 1 − σ(β r), undesirable 1 − σ(−β r) = σ(β r).

Pure tensor math: per-example values, reduction by the caller.
"""

import torch


def reference_point(mismatched_logratio_sum: torch.Tensor, count: int) -> torch.Tensor:
    """z0 = max(0, Σ (log πθ(y'|x) − log πref(y'|x)) / count), detached: the sum over `count` mismatched pairs
    (all of them, over every process) of their log-ratios."""
    return (mismatched_logratio_sum.detach() / count).clamp(min=0)


def kto(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor,
        reference_point: torch.Tensor, *, beta: float, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-completion KTO losses and rewards, (B,) each.

    policy_logps, reference_logps: (B,) summed completion log-probs; desirable: (B,) bool; reference_point: z0
    (a scalar tensor; detached here). Rewards are β·r, detached (TRL's rewards/chosen and rewards/rejected)."""
    z0 = reference_point.detach()
    logratios = policy_logps - reference_logps  # r_θ(x, y), (B,)
    # Eq. 7 of Ethayarajh et al. 2024: L_KTO = E[λ_y − v(x, y)], v = λ_D σ(β(r − z0)) or λ_U σ(β(z0 − r))
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return losses, beta * logratios.detach()
