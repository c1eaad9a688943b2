"""Every preference loss beyond the first five: a hand-worked value (in each test's docstring), and a check against
a direct transcription of the paper's formula (plain `math`, pair by pair) on random float64 inputs.

Shared inputs (one pair), as in test_preference.py:
    log πθ(y_w) = −1, log πθ(y_l) = −3, log πref(y_w) = −2, log πref(y_l) = −2
    chosen log-ratio a = 1, rejected log-ratio b = −1, Δ = a − b = 2
Values used below: log σ(1) = −0.3132617, log σ(−1) = −1.3132617, log σ(0.5) = −0.4740770,
log σ(−0.5) = −0.9740770, σ(0.5) = 0.6224593, σ(1) = 0.7310586, softplus(x) = log(1 + eˣ) = −log σ(−x).
"""

import inspect
import math

import pytest
import torch

from alignkit.losses import preference as P

PC, PR, RC, RR = (torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.0))
B = 7


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _random(seed=0, n=B):
    """(pc, pr, rc, rr, chosen_tokens, rejected_tokens), float64: log-probs in (−30, −0.05), 1..40 tokens."""
    g = torch.Generator().manual_seed(seed)
    logps = [-(torch.rand(n, generator=g, dtype=torch.float64) * 30 + 0.05) for _ in range(4)]
    tokens = [torch.randint(1, 41, (n,), generator=g).double() for _ in range(2)]
    return (*logps, *tokens)


def _close(tensor, values):
    assert tensor.tolist() == pytest.approx(values, abs=1e-6, rel=1e-9)


# --- hand-worked values ---------------------------------------------------------------------------------------------

def test_exo_pair():
    """β = 0.5, ε = 0.1: βΔ = 1; σ(1)(log σ(1) − log 0.9) + σ(−1)(log σ(−1) − log 0.1)
    = 0.7310586·(−0.3132617 + 0.1053605) + 0.2689414·(−1.3132617 + 2.3025851) = −0.1519880 + 0.2660701 = 0.1140821."""
    loss, cr, rr = P.exo_pair(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.1140821, abs=1e-6)
    assert (cr.item(), rr.item()) == (0.5, -0.5)


def test_nca_pair():
    """β = 0.5: r_w = 0.5, r_l = −0.5; −log σ(0.5) − ½ log σ(−0.5) − ½ log σ(0.5)
    = 0.4740770 + 0.4870385 + 0.2370385 = 1.1981540."""
    assert P.nca_pair(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(1.1981540, abs=1e-6)


def test_bco_pair():
    """β = 0.5, δ = 0.2: −log σ(0.5 − 0.2) − log σ(−(−0.5 − 0.2)) = softplus(−0.3) + softplus(−0.7)
    = 0.5543552 + 0.4031860 = 0.9575413; with δ = 0: 2·softplus(−0.5) = 2·0.4740770 = 0.9481540."""
    assert P.bco_pair(PC, PR, RC, RR, beta=0.5, delta=0.2)[0].item() == pytest.approx(0.9575413, abs=1e-6)
    assert P.bco_pair(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.9481540, abs=1e-6)


def test_sppo_hard():
    """β = 0.25: 1/(2β) = 2; (a − 2)² + (b + 2)² = (−1)² + 1² = 2. β = 0.5: (1 − 1)² + (−1 + 1)² = 0."""
    assert P.sppo_hard(PC, PR, RC, RR, beta=0.25)[0].item() == pytest.approx(2.0, abs=1e-12)
    assert P.sppo_hard(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.0, abs=1e-12)


def test_aot_sorts_over_the_batch():
    """Two pairs, β = 1. Policy log-ratios pc − pr = [2, −1], reference rc − rr = [0, 3].
    Sorted: [−1, 2] and [0, 3], so Δ = [−1, −1] and each loss is softplus(1) = 1.3132617
    (pair by pair, unsorted, it would be Δ = [2, −4])."""
    pc, pr = torch.tensor([0.0, -1.0], dtype=torch.float64), torch.tensor([-2.0, 0.0], dtype=torch.float64)
    rc, rr = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([-1.0, -3.0], dtype=torch.float64)
    loss, cr, _ = P.aot(pc, pr, rc, rr, beta=1.0)
    _close(loss, [1.3132617, 1.3132617])
    assert cr.tolist() == [1.0, -1.0]  # rewards stay per pair: β(pc − rc)


def test_aot_unpaired_sorts_chosen_and_rejected_apart():
    """β = 1. Chosen log-ratios pc − rc = [1, −3], rejected pr − rr = [−1, 2]; sorted [−3, 1] and [−1, 2],
    Δ = [−2, −1]; losses softplus(2) = 2.1269280 and softplus(1) = 1.3132617."""
    pc, rc = torch.tensor([-1.0, -5.0], dtype=torch.float64), torch.tensor([-2.0, -2.0], dtype=torch.float64)
    pr, rr = torch.tensor([-3.0, -2.0], dtype=torch.float64), torch.tensor([-2.0, -4.0], dtype=torch.float64)
    _close(P.aot_unpaired(pc, pr, rc, rr, beta=1.0)[0], [2.1269280, 1.3132617])


def test_apo_zero_and_apo_down():
    """β = 0.5. zero: (1 − σ(0.5·1)) + σ(0.5·(−1)) = 2·0.3775407 = 0.7550813.
    down: σ(0.5·1) + 1 − σ(0.5·2) = 0.6224593 + 1 − 0.7310586 = 0.8914008."""
    assert P.apo_zero(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.7550813, abs=1e-6)
    assert P.apo_down(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.8914008, abs=1e-6)


def test_discopop():
    """β = 0.5, τ = 1: ρ = 1, m = σ(1) = 0.7310586; (1 − m)·softplus(−1) + m·e⁻¹
    = 0.2689414·0.3132617 + 0.7310586·0.3678794 = 0.0842491 + 0.2689414 = 0.3531905.
    τ = 0.05 (the default): m = σ(20) ≈ 1, so ≈ e⁻¹ = 0.3678794."""
    assert P.discopop(PC, PR, RC, RR, beta=0.5, tau=1.0)[0].item() == pytest.approx(0.3531905, abs=1e-6)
    assert P.discopop(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.3678794, abs=1e-6)


def test_sft_is_mean_token_nll_of_chosen():
    """log π(y_w) = −1 over 2 tokens: NLL 0.5; no preference, so rewards 0."""
    loss, cr, rr = P.sft(PC, PR, RC, RR, chosen_tokens=torch.tensor([2.0], dtype=torch.float64))
    assert (loss.item(), cr.item(), rr.item()) == (0.5, 0.0, 0.0)


TOKENS = {"chosen_tokens": torch.tensor([2.0], dtype=torch.float64),
          "rejected_tokens": torch.tensor([4.0], dtype=torch.float64)}


def test_sigmoid_norm():
    """β = 0.5, |y_w| = 2, |y_l| = 4: a/2 − b/4 = 0.5 + 0.25 = 0.75; softplus(−0.375) = 0.5231233."""
    assert P.sigmoid_norm(PC, PR, RC, RR, beta=0.5, **TOKENS)[0].item() == pytest.approx(0.5231233, abs=1e-6)


def test_ipo_both_forms():
    """β = 0.5: summed, (Δ − 1)² = (2 − 1)² = 1; length-normalised (|y_w| = 2, |y_l| = 4),
    (0.5 + 0.25 − 1)² = 0.0625."""
    assert P.ipo(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(1.0)
    assert P.ipo(PC, PR, RC, RR, beta=0.5, length_normalized=True, **TOKENS)[0].item() == pytest.approx(0.0625)


ORPO_IN = (torch.tensor([-2.0], dtype=torch.float64), torch.tensor([-6.0], dtype=torch.float64), RC, RR)
ORPO_TOKENS = {"chosen_tokens": torch.tensor([4.0], dtype=torch.float64),
               "rejected_tokens": torch.tensor([3.0], dtype=torch.float64)}


def test_orpo():
    """log π(y_w) = −2 over 4 tokens (average −0.5), log π(y_l) = −6 over 3 (average −2); λ = β = 0.1.
    log odds = avg − log(1 − e^avg): −0.5 + 0.9327521 = 0.4327521 and −2 + 0.1454135 = −1.8545865;
    L_OR = softplus(−2.2873387) = 0.0967059; NLL = 2/4 = 0.5; loss = 0.5 + 0.1·0.0967059 = 0.5096706.
    Rewards β·average: −0.05 and −0.2. The reference (here −2, −2) is ignored."""
    loss, cr, rr = P.orpo(*ORPO_IN, beta=0.1, **ORPO_TOKENS)
    assert loss.item() == pytest.approx(0.5096706, abs=1e-6)
    assert (cr.item(), rr.item()) == pytest.approx((-0.05, -0.2))


def test_cpo_variants():
    """Same inputs as ORPO (NLL 0.5). sigmoid, β = 0.1: d = −2 + 6 = 4, softplus(−0.4) = 0.5130153, + 0.5 =
    1.0130153, rewards β·log π = −0.2, −0.6. hinge, β = 0.1: max(0, 1 − 0.4) + 0.5 = 1.1. ipo, β = 0.5 on averages:
    d̄ = −0.5 + 2 = 1.5, (1.5 − 1)² + 0.5 = 0.75. simpo, β = 2, γ = 0.5: softplus(−(3 − 0.5)) + 0.5 = 0.5788897.
    nll_weight = 0: the preference term alone."""
    loss, cr, rr = P.cpo(*ORPO_IN, beta=0.1, **ORPO_TOKENS)
    assert loss.item() == pytest.approx(1.0130153, abs=1e-6)
    assert (cr.item(), rr.item()) == pytest.approx((-0.2, -0.6))
    assert P.cpo(*ORPO_IN, beta=0.1, variant="hinge", **ORPO_TOKENS)[0].item() == pytest.approx(1.1)
    assert P.cpo(*ORPO_IN, beta=0.5, variant="ipo", **ORPO_TOKENS)[0].item() == pytest.approx(0.75)
    assert P.cpo(*ORPO_IN, beta=2.0, variant="simpo", gamma=0.5, **ORPO_TOKENS)[0].item() == pytest.approx(
        0.5788897, abs=1e-6)
    assert P.cpo(*ORPO_IN, beta=0.1, nll_weight=0.0, **ORPO_TOKENS)[0].item() == pytest.approx(0.5130153, abs=1e-6)


def test_f_divergences():
    """β = 0.5, a = 1, b = −1 (u_w = e, u_l = 1/e).
    forward_kl, f'(u) = −1/u: Δ = −e⁻¹ + e = 2.3504024; softplus(−1.1752012) = 0.2690777.
    js_divergence, log σ(log u): Δ = log σ(1) − log σ(−1) = 1; softplus(−0.5) = 0.4740770.
    alpha_divergence, α = 0.5, −u^−α/α: Δ = −2e^−0.5 + 2e^0.5 = 2.0843812; softplus(−1.0421906) = 0.3020887."""
    def loss(kind, **kw):
        return P.sigmoid(PC, PR, RC, RR, beta=0.5, f_divergence=kind, **kw)[0].item()

    assert loss("forward_kl") == pytest.approx(0.2690777, abs=1e-6)
    assert loss("js_divergence") == pytest.approx(0.4740770, abs=1e-6)
    assert loss("alpha_divergence", f_alpha=0.5) == pytest.approx(0.3020887, abs=1e-6)
    assert loss("reverse_kl") == P.sigmoid(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.3132617, abs=1e-6)


# --- against the papers' formulas, transcribed pair by pair -----------------------------------------------------------

def _pairs(seed=0):
    pc, pr, rc, rr, nc, nr = _random(seed)
    return [tuple(float(t[i]) for t in (pc, pr, rc, rr, nc, nr)) for i in range(B)], (pc, pr, rc, rr, nc, nr)


def _f_prime(log_u, kind, alpha=0.5):
    """f'(u) of Wang et al. 2023 less its constant term, which TRL drops: a constant cancels in Δ, but the losses
    that score each response on its own (nca_pair, bco_pair, sppo_hard, sigmoid_norm) see it."""
    u = math.exp(log_u)
    return {"reverse_kl": (math.log(u) + 1) - 1, "forward_kl": -1 / u,
            "js_divergence": math.log(2 * u / (1 + u)) - math.log(2),
            "alpha_divergence": (1 - u ** -alpha) / alpha - 1 / alpha}[kind]


def _formula(name, p, beta, kind="reverse_kl", eps=0.1, delta=0.3, tau=0.05, gamma=0.5):
    """The loss of one pair p = (pc, pr, rc, rr, |y_w|, |y_l|), written from the paper."""
    pc, pr, rc, rr, nc, nr = p
    sw, sl = _f_prime(pc - rc, kind), _f_prime(pr - rr, kind)  # Wang et al. 2023: β f'(u_w) − β f'(u_l)
    x = beta * (sw - sl)
    if name == "sigmoid":
        return -(1 - eps) * _logsig(x) - eps * _logsig(-x)
    if name == "robust":
        return ((1 - eps) * -_logsig(x) - eps * -_logsig(-x)) / (1 - 2 * eps)
    if name == "hinge":
        return max(0.0, 1 - x)
    if name == "ipo":
        return (sw - sl - 1 / (2 * beta)) ** 2
    if name == "exo_pair":
        qw, ql = _sig(x), _sig(-x)
        return qw * math.log(qw / (1 - eps)) + ql * math.log(ql / eps)
    if name == "nca_pair":
        return -_logsig(beta * sw) - 0.5 * _logsig(-beta * sw) - 0.5 * _logsig(-beta * sl)
    if name == "bco_pair":
        return -_logsig(beta * sw - delta) - _logsig(delta - beta * sl)
    if name == "sppo_hard":
        eta = 1 / beta
        return (sw - eta * (1 - 0.5)) ** 2 + (sl - eta * (0 - 0.5)) ** 2
    if name == "apo_zero":
        return 1 - _sig(beta * (pc - rc)) + _sig(beta * (pr - rr))
    if name == "apo_down":
        return _sig(beta * (pc - rc)) + 1 - _sig(beta * ((pc - rc) - (pr - rr)))
    if name == "discopop":
        m = _sig(x / tau)
        return (1 - m) * -_logsig(x) + m * math.exp(-x)
    if name == "sigmoid_norm":
        return -_logsig(beta * (sw / nc - sl / nr))
    if name == "sft":
        return -pc / nc
    if name == "simpo":
        return -_logsig(beta * pc / nc - beta * pr / nr - gamma)
    if name == "orpo":
        pw, pl = math.exp(pc / nc), math.exp(pr / nr)  # Eq. 4: the length-normalised likelihood
        ratio = (pw / (1 - pw)) / (pl / (1 - pl))
        return -pc / nc + beta * -math.log(_sig(math.log(ratio)))  # Eqs. 6, 7
    if name == "cpo":  # Eq. 3, cDPO-smoothed, + the NLL of chosen
        return -(1 - eps) * _logsig(beta * (pc - pr)) - eps * _logsig(-beta * (pc - pr)) - pc / nc
    raise KeyError(name)


KWARGS = {"beta": 0.3, "label_smoothing": 0.1, "delta": 0.3, "tau": 0.05, "gamma": 0.5}


def _call(name, tensors, **extra):
    pc, pr, rc, rr, nc, nr = tensors
    fn = P.LOSSES[name]
    given = {**KWARGS, "chosen_tokens": nc, "rejected_tokens": nr, **extra}
    wanted = [k for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY and k in given]
    return fn(pc, pr, rc, rr, **{k: given[k] for k in wanted})


@pytest.mark.parametrize("name", [n for n in P.LOSSES if n not in ("aot", "aot_unpaired")])
def test_matches_the_papers_formula(name):
    pairs, tensors = _pairs(seed=1)
    loss = _call(name, tensors)[0]
    _close(loss, [_formula(name, p, 0.3) for p in pairs])


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("name", ["sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair",
                                  "sppo_hard", "discopop", "sigmoid_norm"])
def test_f_divergence_matches_the_formula(name, kind):
    pairs, tensors = _pairs(seed=2)
    # small log-ratios keep u^±1 within what the per-pair float formula resolves to 1e-6
    pc, pr, rc, rr, nc, nr = tensors
    tensors = (rc + (pc - rc) * 0.1, rr + (pr - rr) * 0.1, rc, rr, nc, nr)
    pairs = [tuple(float(t[i]) for t in tensors) for i in range(B)]
    loss = _call(name, tensors, f_divergence=kind, f_alpha=0.5)[0]
    _close(loss, [_formula(name, p, 0.3, kind) for p in pairs])


def test_reverse_kl_is_sigmoid_and_alpha_spans_reverse_to_forward():
    """α-divergence's Δ: α → 0 gives reverse KL's Δ, α = 1 forward KL's (the constant 1/α cancels in Δ)."""
    pc, pr, rc, rr, _, _ = _random(3)
    base = P.sigmoid(pc, pr, rc, rr, beta=0.3)[0]
    assert torch.equal(P.sigmoid(pc, pr, rc, rr, beta=0.3, f_divergence="reverse_kl")[0], base)
    small = P.sigmoid(pc * 1e-3, pr * 1e-3, rc * 1e-3, rr * 1e-3, beta=0.3, f_divergence="alpha_divergence",
                      f_alpha=1e-7)[0]
    _close(small, P.sigmoid(pc * 1e-3, pr * 1e-3, rc * 1e-3, rr * 1e-3, beta=0.3)[0].tolist())
    scale = 0.1
    one = P.sigmoid(pc * scale, pr * scale, rc * scale, rr * scale, beta=0.3, f_divergence="alpha_divergence",
                    f_alpha=1.0)[0]
    forward = P.sigmoid(pc * scale, pr * scale, rc * scale, rr * scale, beta=0.3, f_divergence="forward_kl")[0]
    _close(one, forward.tolist())


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_matches_the_sorted_formula(name):
    pairs, tensors = _pairs(seed=4)
    beta, eps = 0.3, 0.1
    if name == "aot":
        policy = sorted(p[0] - p[1] for p in pairs)
        reference = sorted(p[2] - p[3] for p in pairs)
    else:
        policy = sorted(p[0] - p[2] for p in pairs)
        reference = sorted(p[1] - p[3] for p in pairs)
    want = [-(1 - eps) * _logsig(beta * (x - y)) - eps * _logsig(-beta * (x - y)) for x, y in zip(policy, reference)]
    _close(_call(name, tensors)[0], want)


@pytest.mark.parametrize("variant", ["hinge", "ipo", "simpo"])
def test_cpo_variants_match_their_formulas(variant):
    pairs, tensors = _pairs(seed=5)
    beta, gamma, eps = 0.3, 0.5, 0.1
    want = []
    for pc, pr, _, _, nc, nr in pairs:
        d, d_avg = pc - pr, pc / nc - pr / nr
        prefer = {"hinge": max(0.0, 1 - beta * d), "ipo": (d_avg - 1 / (2 * beta)) ** 2,
                  "simpo": -(1 - eps) * _logsig(beta * d_avg - gamma) - eps * _logsig(gamma - beta * d_avg)}[variant]
        want.append(prefer + 0.7 * -pc / nc)
    _close(_call("cpo", tensors, variant=variant, nll_weight=0.7)[0], want)


def test_ipo_length_normalized_matches_the_formula():
    pairs, tensors = _pairs(seed=6)
    want = [((p[0] - p[2]) / p[4] - (p[1] - p[3]) / p[5] - 1 / 0.6) ** 2 for p in pairs]
    _close(_call("ipo", tensors, length_normalized=True)[0], want)


def test_orpo_is_stable_near_probability_one():
    """Average log-probs near 0 (the model almost sure of every token) and exactly 0 stay finite."""
    pc = torch.tensor([-1e-9, 0.0, -1e-3], dtype=torch.float32, requires_grad=True)
    pr = torch.tensor([-5.0, -5.0, 0.0], dtype=torch.float32)
    n = torch.ones(3)
    loss = P.orpo(pc, pr, pr, pr, beta=0.1, chosen_tokens=n, rejected_tokens=n)[0]
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pc.grad).all()


def test_every_loss_is_registered_with_its_reference_need_and_config_name():
    from alignkit.config import LossConfig

    assert set(P.LOSSES) == set(P.NEEDS_REFERENCE)
    for name in P.LOSSES:
        LossConfig(type=name, label_smoothing=0.1)  # every registered name is a valid loss.type
    assert {n for n, needs in P.NEEDS_REFERENCE.items() if not needs} == {"simpo", "orpo", "cpo", "sft"}


# --- the weighted mix and bco_pair's running mean (algos/dpo.py's PairLoss) -------------------------------------------

def test_weighted_mix_is_the_weighted_sum_of_its_parts():
    """MPO: 0.8·sigmoid + 0.2·bco_pair + 1.0·sft, each logged as loss/<name> (unweighted)."""
    from alignkit.algos.dpo import PairLoss
    from alignkit.config import LossConfig

    pc, pr, rc, rr, nc, nr = _random(7)
    cfg = LossConfig(type=["sigmoid", "bco_pair", "sft"], weights=[0.8, 0.2, 1.0], beta=0.3, bco_running_mean=False)
    losses, metrics = PairLoss(cfg)(pc, pr, rc, rr, nc, nr, train=True)
    parts = {n: _call(n, (pc, pr, rc, rr, nc, nr), label_smoothing=0.0, delta=0.0)[0] for n in cfg.types}
    _close(losses, (0.8 * parts["sigmoid"] + 0.2 * parts["bco_pair"] + parts["sft"]).tolist())
    for name, part in parts.items():
        assert metrics[f"loss/{name}"].item() == pytest.approx(part.sum().item(), abs=1e-9)
    assert metrics["loss"].item() == pytest.approx(losses.sum().item(), abs=1e-9)
    assert metrics["rewards/chosen"].item() == pytest.approx((0.3 * (pc - rc)).sum().item())  # the first entry's
    single, _ = PairLoss(LossConfig(type="sigmoid", beta=0.3))(pc, pr, rc, rr, nc, nr, train=True)
    assert torch.equal(single, parts["sigmoid"])


def test_bco_running_mean_moves_once_per_step():
    """δ of step k is the mean of every reward (β·log-ratio, chosen and rejected) of steps 0..k−1: fixed within a
    step (two micro-batches), unchanged by evaluation."""
    from alignkit.algos.dpo import PairLoss, RewardMean
    from alignkit.config import LossConfig

    mean = RewardMean(None, 0, lambda t: t)
    loss = PairLoss(LossConfig(type="bco_pair", beta=0.5), mean)
    one = tuple(torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.0, 1.0, 1.0))
    two = tuple(torch.tensor([v], dtype=torch.float64) for v in (-1.0, -1.0, -3.0, -2.0, 1.0, 1.0))
    mean.begin(0)
    assert mean.delta == 0.0
    loss(*one, train=True)  # rewards 0.5, −0.5
    loss(*two, train=True)  # rewards 1.0, 0.5
    loss(*two, train=False)  # evaluation: not counted
    assert mean.delta == 0.0  # still step 0
    mean.begin(1)
    assert mean.delta == pytest.approx((0.5 - 0.5 + 1.0 + 0.5) / 4)
    got = loss(*one, train=True)[0].item()
    assert got == pytest.approx(P.bco_pair(*one[:4], beta=0.5, delta=0.375)[0].item())


# --- config errors name the key ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key", [
    (["loss.type=dpo2"], "loss.type"),
    (["loss.type=[sigmoid, nosuch]"], "loss.type"),
    (["loss.type=[]"], "loss.type"),
    (["loss.type=[sigmoid, sigmoid]"], "loss.type"),
    (["loss.type=[sigmoid, sft]", "loss.weights=[1.0]"], "loss.weights"),
    (["loss.type=sigmoid", "loss.weights=[1.0, 2.0]"], "loss.weights"),
    (["loss.type=[sigmoid, sft]", "loss.weights=[1.0, -0.5]"], "loss.weights"),
    (["loss.type=[sigmoid, sft]", "loss.weights=[0, 0]"], "loss.weights"),
    (["loss.type=exo_pair"], "loss.label_smoothing"),
    (["loss.f_divergence=chi2"], "loss.f_divergence"),
    (["loss.type=orpo", "loss.f_divergence=forward_kl"], "loss.f_divergence"),
    (["loss.f_alpha=0"], "loss.f_alpha"),
    (["loss.cpo_variant=dpo"], "loss.cpo_variant"),
    (["loss.discopop_tau=-1"], "loss.discopop_tau"),
])
def test_bad_loss_config_names_the_key(tmp_path, overrides, key):
    from alignkit import AlignkitError
    from alignkit.config import DPOConfig, load_config

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: a.jsonl\n")
    with pytest.raises(AlignkitError, match=key.replace(".", r"\.")):
        load_config(DPOConfig, str(path), overrides)


def test_loss_config_accepts_a_string_or_a_list(tmp_path):
    from alignkit.config import DPOConfig, load_config

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: a.jsonl\nloss:\n  type: [sigmoid, bco_pair, sft]\n  weights: [0.8, 0.2, 1.0]\n")
    cfg = load_config(DPOConfig, str(path), [])
    assert cfg.loss.types == ["sigmoid", "bco_pair", "sft"] and cfg.loss.weights == [0.8, 0.2, 1.0]
    assert load_config(DPOConfig, str(path), ["loss.type=ipo", "loss.weights=null"]).loss.types == ["ipo"]
