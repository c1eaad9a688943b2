"""Hand-worked values for each preference loss.

Shared inputs for the reference-based losses (one pair):
    log πθ(y_w) = −1, log πθ(y_l) = −3, log πref(y_w) = −2, log πref(y_l) = −2
    Δ = (−1 − (−2)) − (−3 − (−2)) = 1 − (−1) = 2
    chosen reward = β·1, rejected reward = β·(−1)
"""

import math

import pytest
import torch

from alignkit.losses import preference as P

PC, PR, RC, RR = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))


def _softplus(x):
    return math.log1p(math.exp(x))


def test_sigmoid():
    """β = 0.5: βΔ = 1; loss = −log σ(1) = log(1 + e^−1) = 0.3132617."""
    loss, cr, rr = P.sigmoid(PC, PR, RC, RR, beta=0.5)
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)
    assert loss.item() == pytest.approx(_softplus(-1), abs=1e-7)
    assert (cr.item(), rr.item()) == (0.5, -0.5)


def test_sigmoid_label_smoothing_is_cdpo():
    """β = 0.5, ε = 0.1: 0.9·(−log σ(1)) + 0.1·(−log σ(−1)) = 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617."""
    loss, _, _ = P.sigmoid(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.4132617, abs=1e-6)


def test_robust():
    """β = 0.5, ε = 0.1: (0.9·0.3132617 − 0.1·1.3132617) / (1 − 0.2) = 0.1506094 / 0.8 = 0.1882617."""
    loss, _, _ = P.robust(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.1882617, abs=1e-6)


def test_robust_without_smoothing_equals_sigmoid():
    a, _, _ = P.robust(PC, PR, RC, RR, beta=0.3)
    b, _, _ = P.sigmoid(PC, PR, RC, RR, beta=0.3)
    assert a.item() == pytest.approx(b.item(), abs=1e-7)


def test_hinge():
    """β = 0.25: max(0, 1 − 0.25·2) = 0.5; β = 0.5: max(0, 1 − 1) = 0; β = 1: max(0, 1 − 2) = 0."""
    assert P.hinge(PC, PR, RC, RR, beta=0.25)[0].item() == pytest.approx(0.5)
    assert P.hinge(PC, PR, RC, RR, beta=0.5)[0].item() == 0.0
    assert P.hinge(PC, PR, RC, RR, beta=1.0)[0].item() == 0.0


def test_ipo():
    """β = 0.1: (Δ − 1/(2β))² = (2 − 5)² = 9; β = 0.25: (2 − 2)² = 0."""
    assert P.ipo(PC, PR, RC, RR, beta=0.1)[0].item() == pytest.approx(9.0)
    assert P.ipo(PC, PR, RC, RR, beta=0.25)[0].item() == pytest.approx(0.0)


def test_simpo_is_reference_free_and_length_normalised():
    """β = 2, γ = 0.5; log π(y_w) = −4 over 4 tokens, log π(y_l) = −9 over 3 tokens.

    rewards: 2·(−4/4) = −2 and 2·(−9/3) = −6; loss = −log σ(−2 + 6 − 0.5) = log(1 + e^−3.5) = 0.0297505.
    The reference log-probs (here 100, −100) are ignored.
    """
    loss, cr, rr = P.simpo(torch.tensor([-4.0]), torch.tensor([-9.0]), torch.tensor([100.0]), torch.tensor([-100.0]),
                           beta=2.0, gamma=0.5, chosen_tokens=torch.tensor([4.0]), rejected_tokens=torch.tensor([3.0]))
    assert loss.item() == pytest.approx(0.0297505, abs=1e-6)
    assert (cr.item(), rr.item()) == (-2.0, -6.0)


def test_nll_is_mean_token_nll_of_chosen():
    """−(−4)/4 = 1 and −(−9)/3 = 3."""
    assert P.nll(torch.tensor([-4.0, -9.0]), torch.tensor([4.0, 3.0])).tolist() == [1.0, 3.0]


def test_gradient_direction():
    """DPO raises the chosen log-prob and lowers the rejected one."""
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    P.sigmoid(pc, pr, RC, RR, beta=0.5)[0].sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent moves pc up and pr down


def test_batched_matches_per_pair():
    """Every loss but the two AOT ones (which sort over the batch) treats each pair on its own."""
    import inspect

    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6) * 3 - 5 for _ in range(4))
    for name, fn in P.LOSSES.items():
        if name in ("aot", "aot_unpaired"):
            continue
        given = dict(beta=0.2, label_smoothing=0.1, gamma=0.3, delta=0.1, chosen_tokens=torch.arange(1.0, 7.0),
                     rejected_tokens=torch.arange(2.0, 8.0))
        kw = {k: given[k] for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY and k in given}
        batched = fn(pc, pr, rc, rr, **kw)[0]
        for i in range(6):
            kw_i = {k: v[i : i + 1] if k.endswith("_tokens") else v for k, v in kw.items()}
            single = fn(pc[i : i + 1], pr[i : i + 1], rc[i : i + 1], rr[i : i + 1], **kw_i)[0]
            assert batched[i].item() == pytest.approx(single.item(), rel=1e-6), name


def test_a_misspelt_argument_fails():
    """No catch-all keyword: a name a loss does not use is an error, not silently dropped."""
    with pytest.raises(TypeError):
        P.sigmoid(PC, PR, RC, RR, beta=0.5, gama=0.3)
