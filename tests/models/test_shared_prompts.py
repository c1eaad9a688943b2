"""The shared-prompt forward (one prompt pass per distinct prompt, a response pass on its KV cache) gives the
plain forward's log-probs and gradients."""

import pytest
import torch

from alignkit.data.chat import TokenizedPair
from alignkit.data.collate import collate
from alignkit.models.logprobs import SequenceLogps, _shared_prompts


def _pairs(seed: int, n: int, vocab: int, system: int = 0):
    """n random pairs; with `system`, every prompt starts with the same `system` tokens."""
    g = torch.Generator().manual_seed(seed)
    head = tuple(torch.randint(5, vocab, (system,), generator=g).tolist())
    pairs = []
    for row in range(n):
        lens = torch.randint(2, 12, (3,), generator=g).tolist()
        prompt, chosen, rejected = (tuple(torch.randint(5, vocab, (k,), generator=g).tolist()) for k in lens)
        pairs.append(TokenizedPair(row, head + prompt, chosen, rejected))
    return pairs


def _model(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():  # a random model with tied, non-trivial weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("seed,system", [(0, 0), (1, 0), (2, 6), (3, 9)])
def test_shared_equals_plain_logps_and_grads(tiny_model, seed, system):
    model = _model(tiny_model)
    batch = collate(_pairs(seed, 4, model.config.vocab_size, system), pad_id=0)
    plan = _shared_prompts(batch.input_ids, batch.response_mask)
    assert plan is not None and len(plan[1]) == 4  # 8 rows, 4 distinct prompts
    assert plan[4] >= system  # the common prefix runs once

    results = []
    for share in (False, True):
        model.zero_grad()
        logps = SequenceLogps(model, chunk=7, share_prompts=share)(batch.input_ids, batch.response_mask)
        (logps * torch.linspace(-1, 1, len(logps))).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), grads))
    (plain, plain_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-4)
    assert plain_grads.keys() == shared_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(shared_grads[name], plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_shared_matches_per_row_forward(tiny_model):
    """Each row's log-prob equals a direct log_softmax over that row alone, unpadded."""
    model = _model(tiny_model)
    pairs = _pairs(5, 3, model.config.vocab_size)
    batch = collate(pairs, pad_id=0)
    with torch.no_grad():
        shared = SequenceLogps(model, share_prompts=True)(batch.input_ids, batch.response_mask)
        for k, p in enumerate(pairs):
            for j, response in ((k, p.chosen_ids), (k + len(pairs), p.rejected_ids)):
                ids = torch.tensor([p.prompt_ids + response])
                logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
                targets = ids[0, 1:]
                direct = logits.gather(1, targets[:, None]).squeeze(1)[len(p.prompt_ids) - 1 :].sum()
                torch.testing.assert_close(shared[j], direct, rtol=1e-5, atol=1e-4)


def test_common_prefix_without_repeated_prompts(tiny_model):
    """Distinct prompts (SFT-like rows) still share their common head; log-probs and gradients unchanged."""
    model = _model(tiny_model)
    pairs = _pairs(7, 5, model.config.vocab_size, system=8)
    batch = collate(pairs, pad_id=0)
    ids, mask = batch.input_ids[:5], batch.response_mask[:5]  # chosen rows only: no prompt repeats
    plan = _shared_prompts(ids, mask)
    assert plan is not None and len(plan[1]) == 5 and plan[4] >= 8
    out = []
    for share in (False, True):
        model.zero_grad()
        logps = SequenceLogps(model, share_prompts=share)(ids, mask)
        logps.sum().backward()
        out.append((logps.detach(), model.model.embed_tokens.weight.grad.clone()))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-4, atol=1e-5)


def test_no_shared_prompt_falls_back(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[False, True, True, True], [False, False, True, False]])
    assert _shared_prompts(ids, mask) is None  # two different prompts
    mask0 = torch.tensor([[True, True, True, True], [False, True, True, False]])
    assert _shared_prompts(torch.tensor([[5, 6, 7, 8], [5, 6, 7, 0]]), mask0) is None  # a row without prompt


@pytest.mark.parametrize("share", [False, True])
def test_per_token_logps_sum_to_the_sequence_logps(tiny_model, share):
    model = _model(tiny_model)
    batch = collate(_pairs(11, 3, model.config.vocab_size, system=5), pad_id=0)
    f = SequenceLogps(model, share_prompts=share)
    with torch.no_grad():
        per_token = f(batch.input_ids, batch.response_mask, per_token=True)
        summed = f(batch.input_ids, batch.response_mask)
        plain = SequenceLogps(model, share_prompts=False)(batch.input_ids, batch.response_mask, per_token=True)
    assert per_token.shape == batch.input_ids.shape
    assert bool((per_token[~batch.response_mask] == 0).all())  # prompt and padding hold nothing
    assert bool((per_token[batch.response_mask] < 0).all())
    torch.testing.assert_close(per_token.sum(1), summed, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(per_token, plain, rtol=1e-5, atol=1e-5)  # token by token, at the same places


def test_masks_in_several_runs_take_the_plain_pass(tiny_model):
    """Multi-turn rows train on several assistant spans; the shared path assumes one run and must step aside."""
    model = _model(tiny_model)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, model.config.vocab_size, (3, 20), generator=g)
    ids[:, :6] = ids[0, :6]  # a common head, as a system prompt gives
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[:, 8:11] = True
    mask[:, 14:18] = True  # a second assistant turn
    assert _shared_prompts(ids, mask) is None
    with torch.no_grad():
        per_token = SequenceLogps(model, share_prompts=True)(ids, mask, per_token=True)
        logits = model(input_ids=ids).logits[:, :-1].log_softmax(-1)
    direct = logits.gather(2, ids[:, 1:, None]).squeeze(2)
    torch.testing.assert_close(per_token[:, 1:][mask[:, 1:]], direct[mask[:, 1:]], rtol=1e-5, atol=1e-5)
