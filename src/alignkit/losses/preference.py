"""Pairwise preference losses (DPO and its variants).

Every function takes per-pair summed log-probs of shape (B,) and scalar hyper-parameters and returns
per-pair values (loss, chosen_rewards, rejected_rewards), each (B,). Reduction is the caller's job.
"""

import torch
import torch.nn.functional as F


def _logratios(pc, pr, rc, rr):
    # Δ = (log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))
    return (pc - rc) - (pr - rr)


def sigmoid(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0, **_):
    """DPO, Eq. 7 of Rafailov et al. 2023; with label_smoothing ε it is conservative DPO (cDPO)."""
    logits = beta * _logratios(pc, pr, rc, rr)
    loss = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return loss, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def robust(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0, **_):
    """Robust DPO (Chowdhury et al. 2024, Eq. 6): unbiased under preference-label flips with rate ε."""
    logits = beta * _logratios(pc, pr, rc, rr)
    loss = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing
    )
    return loss, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def hinge(pc, pr, rc, rr, *, beta: float, **_):
    """SLiC-style hinge on the DPO log-ratio: max(0, 1 − βΔ)."""
    loss = torch.relu(1 - beta * _logratios(pc, pr, rc, rr))
    return loss, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def ipo(pc, pr, rc, rr, *, beta: float, **_):
    """IPO (Azar et al. 2023, Eq. 17): (Δ − 1/(2β))², β playing the role of the paper's τ."""
    loss = (_logratios(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2
    return loss, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def simpo(pc, pr, rc, rr, *, beta: float, gamma: float = 0.5, chosen_tokens, rejected_tokens, **_):
    """SimPO (Meng et al. 2024, Eq. 6), reference-free: −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ).

    rc and rr are ignored. Rewards are the length-normalised, β-scaled log-probs.
    """
    chosen_rewards = beta * pc / chosen_tokens
    rejected_rewards = beta * pr / rejected_tokens
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


LOSSES = {"sigmoid": sigmoid, "robust": robust, "hinge": hinge, "ipo": ipo, "simpo": simpo}
NEEDS_REFERENCE = {"sigmoid": True, "robust": True, "hinge": True, "ipo": True, "simpo": False}


def nll(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-pair mean token negative log-likelihood of the chosen response (the RPO term), (B,)."""
    return -chosen_logps / chosen_tokens
