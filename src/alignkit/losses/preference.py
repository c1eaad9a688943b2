"""Pairwise preference losses: DPO and its variants, under TRL's `loss_type` names, plus ORPO and CPO.

Every function takes the per-pair summed response log-probs, each (B,):
    pc = log πθ(y_w|x), pr = log πθ(y_l|x)      (policy; chosen = y_w, rejected = y_l)
    rc = log πref(y_w|x), rr = log πref(y_l|x)  (reference; ignored by the reference-free losses)
and scalar hyper-parameters (keyword-only: each function names exactly what it uses), and returns per-pair
values (loss, chosen_rewards, rejected_rewards), each (B,). Reduction is the caller's job.

Rewards are what TRL logs: β·(log πθ − log πref) for the reference-based losses (whatever f-divergence shapes
the loss), the method's own reward for the reference-free ones (SimPO, ORPO, CPO), 0 for `sft`.

f-divergence (Wang et al. 2023, "Beyond Reverse KL", §4): the reference-based losses that TRL shapes with
`f_divergence_type` compare f'(u) instead of log u, u = πθ(y|x)/πref(y|x) (`_scores`). reverse_kl is DPO itself.
"""

import math

import torch
import torch.nn.functional as F

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def _scores(policy_logps, ref_logps, f_divergence: str, f_alpha: float):
    """f'(u) up to an additive constant, u = πθ/πref, from log u; (B,). Wang et al. 2023, f' of each divergence."""
    log_u = policy_logps - ref_logps
    if f_divergence == "reverse_kl":  # f(u) = u log u: f'(u) = log u + 1
        return log_u
    if f_divergence == "forward_kl":  # f(u) = −log u: f'(u) = −1/u
        return -torch.exp(-log_u)
    if f_divergence == "js_divergence":  # f'(u) = log(2u / (1 + u)); without log 2: log σ(log u)
        return F.logsigmoid(log_u)
    if f_divergence == "alpha_divergence":  # f'(u) = (1 − u^−α)/α; without 1/α: −u^−α/α
        return -torch.exp(-f_alpha * log_u) / f_alpha
    raise ValueError(f"unknown f-divergence {f_divergence!r} (one of {', '.join(F_DIVERGENCES)})")


def _margin(pc, pr, rc, rr, f_divergence: str, f_alpha: float):
    """(Δ, chosen score, rejected score): Δ = f'(u_w) − f'(u_l); for reverse_kl the DPO log-ratio
    (log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))."""
    chosen = _scores(pc, rc, f_divergence, f_alpha)
    rejected = _scores(pr, rr, f_divergence, f_alpha)
    return chosen - rejected, chosen, rejected


def _smoothed_logistic(logits, label_smoothing: float):
    """−(1 − ε) log σ(x) − ε log σ(−x): the logistic loss with labels flipped at rate ε (cDPO)."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _dpo_rewards(pc, pr, rc, rr, beta: float):
    return beta * (pc - rc).detach(), beta * (pr - rr).detach()


def sigmoid(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0, f_divergence: str = "reverse_kl",
            f_alpha: float = 0.5):
    """DPO, Eq. 7 of Rafailov et al. 2023; with label_smoothing ε it is conservative DPO (cDPO)."""
    delta, _, _ = _margin(pc, pr, rc, rr, f_divergence, f_alpha)
    loss = _smoothed_logistic(beta * delta, label_smoothing)  # Eq. 7: −log σ(βΔ)
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def robust(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0, f_divergence: str = "reverse_kl",
           f_alpha: float = 0.5):
    """Robust DPO (Chowdhury et al. 2024, Eq. 6): unbiased under preference-label flips with rate ε."""
    logits = beta * _margin(pc, pr, rc, rr, f_divergence, f_alpha)[0]
    # Eq. 6: ((1 − ε) ℓ(βΔ) − ε ℓ(−βΔ)) / (1 − 2ε), ℓ(x) = −log σ(x)
    loss = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing
    )
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def hinge(pc, pr, rc, rr, *, beta: float, f_divergence: str = "reverse_kl", f_alpha: float = 0.5):
    """SLiC-style hinge on the DPO log-ratio (Zhao et al. 2023, SLiC-HF's calibration loss): max(0, 1 − βΔ)."""
    loss = torch.relu(1 - beta * _margin(pc, pr, rc, rr, f_divergence, f_alpha)[0])
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def ipo(pc, pr, rc, rr, *, beta: float, length_normalized: bool = False, chosen_tokens=None, rejected_tokens=None,
        f_divergence: str = "reverse_kl", f_alpha: float = 0.5):
    """IPO (Azar et al. 2023, Eq. 17): (Δ − 1/(2β))², β playing the role of the paper's τ.

    Δ from summed log-probs (the default), or, with length_normalized, from each response's score divided by
    its token count (TRL's `ipo`): Δ = s_w/|y_w| − s_l/|y_l|.
    """
    delta, chosen, rejected = _margin(pc, pr, rc, rr, f_divergence, f_alpha)
    if length_normalized:
        delta = chosen / chosen_tokens - rejected / rejected_tokens
    loss = (delta - 1 / (2 * beta)) ** 2  # Eq. 17
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def exo_pair(pc, pr, rc, rr, *, beta: float, label_smoothing: float, f_divergence: str = "reverse_kl",
             f_alpha: float = 0.5):
    """EXO-pref for K = 2 (Ji et al. 2024, Eq. 16): KL(p_θ ‖ p_ε) between p_θ = (σ(βΔ), σ(−βΔ)) and the
    smoothed labels p_ε = (1 − ε, ε); ε = label_smoothing must be > 0 (the paper uses 1e-3)."""
    logits = beta * _margin(pc, pr, rc, rr, f_divergence, f_alpha)[0]
    # Eq. 16: σ(βΔ)(log σ(βΔ) − log(1 − ε)) + σ(−βΔ)(log σ(−βΔ) − log ε)
    loss = (torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-label_smoothing))
            + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - math.log(label_smoothing)))
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def nca_pair(pc, pr, rc, rr, *, beta: float, f_divergence: str = "reverse_kl", f_alpha: float = 0.5):
    """NCA for pairs (Chen et al. 2024, "Noise Contrastive Alignment", the pairwise NCA loss): with r = β·score,
    −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l). It moves each response's own likelihood, not only the margin."""
    _, chosen, rejected = _margin(pc, pr, rc, rr, f_divergence, f_alpha)
    r_w, r_l = beta * chosen, beta * rejected
    loss = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def bco_pair(pc, pr, rc, rr, *, beta: float, delta: float | torch.Tensor = 0.0, f_divergence: str = "reverse_kl",
             f_alpha: float = 0.5):
    """BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization", §3): a binary classifier with logit
    r = β·score, chosen as class 1, rejected as class 0, shifted by δ:
    −log σ(r_w − δ) − log σ(−(r_l − δ)).

    δ is the running mean of the rewards (chosen and rejected) seen so far: state the caller keeps
    (algos/dpo.py) and passes in, so this function stays pure. δ = 0 is TRL 1.x's `bco_pair`.
    """
    _, chosen, rejected = _margin(pc, pr, rc, rr, f_divergence, f_alpha)
    loss = -F.logsigmoid(beta * chosen - delta) - F.logsigmoid(-(beta * rejected - delta))
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def sppo_hard(pc, pr, rc, rr, *, beta: float, f_divergence: str = "reverse_kl", f_alpha: float = 0.5):
    """SPPO with hard labels (Wu et al. 2024, Eq. 4.7 with P(y_w ≻ π) = 1, P(y_l ≻ π) = 0 and η = 1/β):
    (s_w − 1/(2β))² + (s_l + 1/(2β))², s = log πθ − log πref (the reference plays SPPO's previous policy π_t)."""
    _, chosen, rejected = _margin(pc, pr, rc, rr, f_divergence, f_alpha)
    loss = (chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2  # Eq. 4.7, η (P − ½) = ±1/(2β)
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def aot(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0):
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment via Optimal Transport"): first-order
    stochastic dominance of the policy's log-ratios over the reference's, enforced on sorted quantiles:
    Δ_(i) = sort(pc − pr)_i − sort(rc − rr)_i, then the (smoothed) logistic loss −log σ(βΔ_(i)).

    The sort is over the batch this function is given (TRL: the per-device batch; here one micro-batch), so the
    i-th value belongs to the i-th quantile, not to pair i, and the result depends on which pairs share the batch.
    """
    delta = torch.sort(pc - pr, dim=0).values - torch.sort(rc - rr, dim=0).values
    return _smoothed_logistic(beta * delta, label_smoothing), *_dpo_rewards(pc, pr, rc, rr, beta)


def aot_unpaired(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0):
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios' distribution dominates the rejected ones':
    Δ_(i) = sort(pc − rc)_i − sort(pr − rr)_i, then −log σ(βΔ_(i)). Sorted over the batch, as `aot`."""
    delta = torch.sort(pc - rc, dim=0).values - torch.sort(pr - rr, dim=0).values
    return _smoothed_logistic(beta * delta, label_smoothing), *_dpo_rewards(pc, pr, rc, rr, beta)


def apo_zero(pc, pr, rc, rr, *, beta: float):
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): raise chosen, lower rejected, each against the reference:
    (1 − σ(β(pc − rc))) + σ(β(pr − rr)). For chosen responses better than the model's own."""
    loss = (1 - torch.sigmoid(beta * (pc - rc))) + torch.sigmoid(beta * (pr - rr))  # Eq. 7
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def apo_down(pc, pr, rc, rr, *, beta: float):
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): lower chosen, and rejected more:
    σ(β(pc − rc)) + (1 − σ(βΔ)). For chosen responses worse than the model's own."""
    loss = torch.sigmoid(beta * (pc - rc)) + (1 - torch.sigmoid(beta * ((pc - rc) - (pr - rr))))  # Eq. 8
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def discopop(pc, pr, rc, rr, *, beta: float, tau: float = 0.05, f_divergence: str = "reverse_kl",
             f_alpha: float = 0.5):
    """DiscoPOP, the log-ratio modulated loss (Lu et al. 2024, Eq. 5): with ρ = βΔ and m = σ(ρ/τ),
    (1 − m)·(−log σ(ρ)) + m·exp(−ρ): logistic where the margin is negative, exponential where it is positive."""
    rho = beta * _margin(pc, pr, rc, rr, f_divergence, f_alpha)[0]
    modulation = torch.sigmoid(rho / tau)
    loss = (1 - modulation) * -F.logsigmoid(rho) + modulation * torch.exp(-rho)  # Eq. 5
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def sigmoid_norm(pc, pr, rc, rr, *, beta: float, chosen_tokens, rejected_tokens, f_divergence: str = "reverse_kl",
                 f_alpha: float = 0.5):
    """DPO on length-normalised log-ratios (the length normalisation of SimPO, Meng et al. 2024, Eq. 4, kept
    with the reference): −log σ(β(s_w/|y_w| − s_l/|y_l|))."""
    _, chosen, rejected = _margin(pc, pr, rc, rr, f_divergence, f_alpha)
    loss = -F.logsigmoid(beta * (chosen / chosen_tokens - rejected / rejected_tokens))
    return loss, *_dpo_rewards(pc, pr, rc, rr, beta)


def sft(pc, pr, rc, rr, *, chosen_tokens):
    """The NLL of chosen (MPO's generation loss, Wang et al. 2024, §3.2): its mean token NLL, −pc/|y_w|.
    No preference, so no rewards (zeros). rc, rr and pr are ignored."""
    zeros = torch.zeros_like(pc).detach()
    return nll(pc, chosen_tokens), zeros, zeros


def simpo(pc, pr, rc, rr, *, beta: float, gamma: float = 0.5, chosen_tokens, rejected_tokens):
    """SimPO (Meng et al. 2024, Eq. 6), reference-free: −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ).

    rc and rr are ignored. Rewards are the length-normalised, β-scaled log-probs.
    """
    chosen_rewards = beta * pc / chosen_tokens
    rejected_rewards = beta * pr / rejected_tokens
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)  # Eq. 6
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def _log1mexp(x):
    """log(1 − exp(x)) for x < 0, accurate on both sides of −log 2."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)  # x = 0 (probability 1) would give −inf
    far = x < -math.log(2)
    # each branch sees only inputs it is accurate for, so the unused one never puts inf·0 = nan into the gradient
    return torch.where(far, torch.log1p(-torch.exp(torch.where(far, x, -1.0))),
                       torch.log(-torch.expm1(torch.where(far, -1.0, x))))


def orpo(pc, pr, rc, rr, *, beta: float, chosen_tokens, rejected_tokens):
    """ORPO (Hong et al. 2024), reference-free: L_SFT + λ·L_OR with λ = β (as TRL's ORPOConfig names it).

    P(y|x) is the length-normalised likelihood exp(log π(y|x)/|y|); odds(y) = P/(1 − P) (Eq. 4);
    L_OR = −log σ(log odds(y_w) − log odds(y_l)) (Eq. 7); L_SFT is chosen's mean token NLL. rc and rr are
    ignored. Rewards are β·log P, the β-scaled average log-probs (TRL's ORPO rewards).
    """
    chosen_avg, rejected_avg = pc / chosen_tokens, pr / rejected_tokens
    log_odds = (chosen_avg - _log1mexp(chosen_avg)) - (rejected_avg - _log1mexp(rejected_avg))  # Eq. 4
    loss = nll(pc, chosen_tokens) - beta * F.logsigmoid(log_odds)  # Eq. 6: L_SFT + λ L_OR, L_OR of Eq. 7
    return loss, (beta * chosen_avg).detach(), (beta * rejected_avg).detach()


CPO_VARIANTS = ("sigmoid", "hinge", "ipo", "simpo")


def cpo(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0, variant: str = "sigmoid",
        gamma: float = 0.5, nll_weight: float = 1.0, chosen_tokens, rejected_tokens):
    """CPO (Xu et al. 2024), reference-free: L_prefer + α·L_NLL, α = nll_weight (TRL's cpo_alpha, 1 in the paper).

    L_prefer by `variant` (TRL's CPO loss_type), with d = log π(y_w) − log π(y_l):
      sigmoid: −log σ(βd) (Eq. 3; with label_smoothing, smoothed as cDPO); hinge: max(0, 1 − βd);
      ipo: (d̄ − 1/(2β))², simpo: −log σ(βd̄ − γ), where d̄ is d on length-averaged log-probs.
    L_NLL is chosen's mean token NLL. rc and rr are ignored. Rewards are β·log π (β·average for ipo, simpo).
    """
    averaged = variant in ("ipo", "simpo")
    chosen = pc / chosen_tokens if averaged else pc
    rejected = pr / rejected_tokens if averaged else pr
    d = chosen - rejected
    if variant == "sigmoid":
        prefer = _smoothed_logistic(beta * d, label_smoothing)  # Eq. 3: −log σ(β log π(y_w) − β log π(y_l))
    elif variant == "hinge":
        prefer = torch.relu(1 - beta * d)
    elif variant == "ipo":
        prefer = (d - 1 / (2 * beta)) ** 2
    elif variant == "simpo":
        prefer = _smoothed_logistic(beta * d - gamma, label_smoothing)
    else:
        raise ValueError(f"unknown CPO variant {variant!r} (one of {', '.join(CPO_VARIANTS)})")
    loss = prefer + nll_weight * nll(pc, chosen_tokens)  # L_CPO = L_prefer + L_NLL
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


LOSSES = {
    "sigmoid": sigmoid, "robust": robust, "hinge": hinge, "ipo": ipo, "exo_pair": exo_pair, "nca_pair": nca_pair,
    "bco_pair": bco_pair, "sppo_hard": sppo_hard, "aot": aot, "aot_unpaired": aot_unpaired, "apo_zero": apo_zero,
    "apo_down": apo_down, "discopop": discopop, "sft": sft, "sigmoid_norm": sigmoid_norm, "simpo": simpo,
    "orpo": orpo, "cpo": cpo,
}
NEEDS_REFERENCE = {
    "sigmoid": True, "robust": True, "hinge": True, "ipo": True, "exo_pair": True, "nca_pair": True,
    "bco_pair": True, "sppo_hard": True, "aot": True, "aot_unpaired": True, "apo_zero": True, "apo_down": True,
    "discopop": True, "sft": False, "sigmoid_norm": True, "simpo": False, "orpo": False, "cpo": False,
}


def nll(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-pair mean token negative log-likelihood of the chosen response (the RPO term), (B,)."""
    return -chosen_logps / chosen_tokens
