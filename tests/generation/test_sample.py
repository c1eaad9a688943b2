"""Batched KV-cache sampling against transformers' own generate and a full forward pass."""

import pytest
import torch

from alignkit.generation.sample import chat_prompt_ids, generate


@pytest.fixture(scope="module")
def lm(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


QUESTIONS = ["What is 2 + 2?", "Add 17 and 25, please, and explain each step in detail.", "你好", "x"]


def _prompts(tok):
    return [chat_prompt_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_greedy_matches_transformers_generate_one_prompt_at_a_time(lm):
    model, tok = lm
    prompts = _prompts(tok)
    batched = generate(model, tok, prompts, n=1, temperature=0, max_new_tokens=12, batch_size=4, stop_ids=set())
    for prompt, (sample,) in zip(prompts, batched):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        assert sample.token_ids == ref  # left padding and the shrinking batch change nothing
        assert not sample.finished and len(sample.token_ids) == 12


def test_logps_equal_a_full_forward(lm):
    model, tok = lm
    prompts = _prompts(tok)
    samples = generate(model, tok, prompts, n=2, temperature=1.0, max_new_tokens=8, seed=3, stop_ids=set())
    for prompt, row in zip(prompts, samples):
        for s in row:
            ids = torch.tensor([prompt + s.token_ids])
            with torch.no_grad():
                logps = model(ids).logits[0, len(prompt) - 1:-1].log_softmax(-1)
            expected = logps.gather(1, torch.tensor(s.token_ids)[:, None]).squeeze(1)
            assert torch.allclose(torch.tensor(s.logps), expected, atol=1e-4)


def test_score_end_gives_a_cut_samples_end_of_turn_log_probs_and_changes_no_sample(lm):
    """With score_end, each sample cut at max_new_tokens gets the log-prob of every end-of-turn id right after its
    last token, equal to a full forward pass; finished samples get none, and the samples are the same."""
    model, tok = lm
    prompts = _prompts(tok)
    plain = generate(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=6, seed=4)
    free = generate(model, tok, prompts, n=1, temperature=0, max_new_tokens=6, stop_ids=set())
    stop = {free[1][0].token_ids[2], tok.eos_token_id}  # prompt 1 finishes at its third greedy token
    scored = generate(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=6, seed=4, score_end=True)
    assert [[s.token_ids for s in row] for row in scored] == [[s.token_ids for s in row] for row in plain]
    stopped = generate(model, tok, prompts, n=1, temperature=0, max_new_tokens=6, stop_ids=stop, score_end=True)
    assert stopped[1][0].finished and stopped[1][0].end_logps is None
    cut = [s for row in scored + stopped for s in row if not s.finished]
    assert len(cut) >= 4 and all(s.end_logps is None for row in plain for s in row)
    no_stops = generate(model, tok, prompts[:1], n=1, temperature=0, max_new_tokens=3, stop_ids=set(), score_end=True)
    assert no_stops[0][0].end_logps == {}  # no end-of-turn ids: nothing to score, and no error
    from alignkit.data.chat import end_of_turn_ids

    for stop_ids, rows in ((end_of_turn_ids(tok), scored), (stop, stopped)):
        for prompt, row in zip(prompts, rows):
            for s in row:
                if s.finished:
                    continue
                with torch.no_grad():
                    after = model(torch.tensor([prompt + s.token_ids])).logits[0, -1].log_softmax(-1)
                assert set(s.end_logps) == stop_ids
                for t, lp in s.end_logps.items():
                    assert lp == pytest.approx(float(after[t]), abs=1e-4)


def test_a_rows_sample_does_not_depend_on_its_batch(lm):
    model, tok = lm
    prompts = _prompts(tok)
    together = generate(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=10, seed=5, batch_size=12)
    apart = generate(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=10, seed=5, batch_size=2)
    pieces = [generate(model, tok, [p], n=3, temperature=1.0, max_new_tokens=10, seed=5, prompt_keys=[i])[0]
              for i, p in enumerate(prompts)]
    ids = lambda rows: [[s.token_ids for s in row] for row in rows]  # noqa: E731
    assert ids(together) == ids(apart) == ids(pieces)
    assert len({tuple(s.token_ids) for s in together[0]}) > 1  # different samples per prompt
    other_seed = generate(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=10, seed=6)
    assert ids(other_seed) != ids(together)


def test_stops_at_end_of_turn_and_drops_it_from_text(lm):
    model, tok = lm
    prompts = _prompts(tok)
    free = generate(model, tok, prompts, n=1, temperature=0, max_new_tokens=6, stop_ids=set())
    stop_token = free[1][0].token_ids[2]  # make the third greedy token of prompt 1 the end of turn
    stopped = generate(model, tok, prompts, n=1, temperature=0, max_new_tokens=6, stop_ids={stop_token})
    s = stopped[1][0]
    cut = free[1][0].token_ids.index(stop_token)
    assert s.finished and s.token_ids == free[1][0].token_ids[: cut + 1]
    assert s.text == tok.decode(s.token_ids[:-1], skip_special_tokens=True)
    assert len(s.logps) == len(s.token_ids)


def test_top_p_tiny_is_greedy(lm):
    model, tok = lm
    prompts = _prompts(tok)
    greedy = generate(model, tok, prompts, temperature=0, max_new_tokens=6, stop_ids=set())
    nucleus = generate(model, tok, prompts, temperature=1.0, top_p=1e-6, max_new_tokens=6, stop_ids=set(), seed=9)
    assert [r[0].token_ids for r in greedy] == [r[0].token_ids for r in nucleus]


def test_the_local_backend_in_bf16_samples_under_autocast(lm):
    """`LocalBackend(bf16=True)` (student.bf16, eval accuracy --bf16) runs the sampler under bf16 autocast: its
    log-probs are a bf16 forward's, near float32's but not equal, and it says so (`precision`)."""
    from alignkit.generation.rollout import LocalBackend

    model, tok = lm
    prompts = _prompts(tok)
    fp32, bf16 = LocalBackend(model, tok, 4), LocalBackend(model, tok, 4, bf16=True)
    assert (fp32.precision, bf16.precision) == ("torch.float32", "bf16-autocast")
    a = fp32.generate(prompts, n=1, temperature=0, max_new_tokens=1)
    b = bf16.generate(prompts, n=1, temperature=0, max_new_tokens=1)
    assert any(x[0].token_ids == y[0].token_ids for x, y in zip(a, b))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = [model(torch.tensor([p])).logits[0, -1].float().log_softmax(-1) for p in prompts]
    for (x,), (y,), e in zip(a, b, expected):
        assert y.logps[0] == pytest.approx(float(e[y.token_ids[0]]), abs=1e-3)  # the bf16 forward's value
        if x.token_ids == y.token_ids:
            assert y.logps[0] != x.logps[0] and y.logps[0] == pytest.approx(x.logps[0], abs=0.1)
    assert model.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")  # nothing left switched on


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.3, 0.8)])
def test_a_sampled_token_follows_the_tempered_top_p_distribution(temperature, top_p):
    """20,000 rows, each with its own stream, draw from one distribution: every token's frequency is within five
    standard errors of its probability (after temperature and top-p), and tokens without mass never come up."""
    from alignkit.generation.sample import _pick

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, float("-inf"), 1.5])
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        ordered[(ordered.cumsum(0) - ordered) > top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, ordered)
        probs /= probs.sum()
    rows = 20_000
    picked = _pick(logits.expand(rows, -1).clone(), temperature, top_p,
                   [torch.Generator().manual_seed(i) for i in range(rows)])
    freq = torch.bincount(picked, minlength=len(logits)).double() / rows
    se = (probs.double() * (1 - probs.double()) / rows).sqrt()
    assert torch.all((freq - probs.double()).abs() <= 5 * se + 1e-12), (freq, probs)
    assert freq[probs == 0].sum() == 0 and (probs == 0).sum() >= 1
