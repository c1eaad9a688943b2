"""`alignkit logps` against an independent computation, on awkward text, under DESIGN.md's contract."""

import json

import pytest
import torch

from alignkit.cli import main
from conftest import write_jsonl

SYSTEM = {"role": "system", "content": "Answer briefly.  "}
CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": "  你好，世界 🌍 What is 2+2? "}],
     "chosen": [{"role": "assistant", "content": " 2 + 2 = 4 🎉 答案是四。 "}],
     "rejected": [{"role": "assistant", "content": "5"}]},
    {"prompt": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 😊"},
                {"role": "user", "content": "\tList 3 emoji:\n"}],
     "chosen": [{"role": "assistant", "content": "🍎🍌🍇\n"}],
     "rejected": [{"role": "assistant", "content": "   no"}]},
    {"prompt": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                {"role": "user", "content": "三?"}],
     "chosen": "three 三",  # a plain string reply in a conversational row
     "rejected": {"role": "assistant", "content": "four"}},
    {"chosen": [SYSTEM, {"role": "user", "content": "implicit prompt ✓"}, {"role": "assistant", "content": "yes "}],
     "rejected": [SYSTEM, {"role": "user", "content": "implicit prompt ✓"}, {"role": "assistant", "content": " no"}]},
]
STANDARD = [
    {"prompt": " The capital of France is", "chosen": " Paris. ", "rejected": " 巴黎？🙃"},
    {"prompt": "emoji 🧪 test\n", "chosen": "  ok  ", "rejected": "not ok"},
    {"prompt": "Q: 1+1=", "chosen": "2", "rejected": "3"},
]


def _independent(model, tok, prompt, response):
    """Token ids and summed log-prob of `response` after `prompt`, derived from the contract directly."""
    if isinstance(prompt, str):
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        r_ids = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    else:
        if isinstance(response, str):
            response = [{"role": "assistant", "content": response}]
        if isinstance(response, dict):
            response = [response]
        p_text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(prompt + response, tokenize=False)
        assert full.startswith(p_text)
        added = full[len(p_text):]
        end = added.rindex("<|im_end|>") + len("<|im_end|>")
        assert added[end:] == "\n"  # what the template renders after the end-of-turn token is excluded
        p_ids = tok(p_text, add_special_tokens=False).input_ids
        r_ids = tok(added[:end], add_special_tokens=False).input_ids
        assert r_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)  # one forward, log-softmax
    targets = ids[0, 1:]
    per_token = logp[:-1].gather(1, targets[:, None]).squeeze(1)  # gather
    return per_token[len(p_ids) - 1 :].sum().item(), len(r_ids)  # sum over the response


def _split_implicit(row):
    c, r = row["chosen"], row["rejected"]
    n = 0
    while c[n] == r[n]:
        n += 1
    return c[:n], c[n:], r[n:]


@pytest.mark.parametrize("rows", [CONVERSATIONAL, STANDARD], ids=["conversational", "standard"])
def test_logps_match_independent_computation(rows, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "logps.jsonl"
    main(["logps", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--batch-size", "3"])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["row"] for g in got] == list(range(1, len(rows) + 1))

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for row, g in zip(rows, got):
        prompt, chosen, rejected = (row["prompt"], row["chosen"], row["rejected"]) if "prompt" in row \
            else _split_implicit(row)
        c_logp, c_tokens = _independent(model, tok, prompt, chosen)
        r_logp, r_tokens = _independent(model, tok, prompt, rejected)
        assert (g["chosen_tokens"], g["rejected_tokens"]) == (c_tokens, r_tokens)
        assert g["chosen_logp"] == pytest.approx(c_logp, abs=1e-3)
        assert g["rejected_logp"] == pytest.approx(r_logp, abs=1e-3)


def test_prompt_and_response_are_tokenized_separately(tokenizer):
    """A prompt ending in a space and a response starting with a letter: joint tokenization would merge them."""
    from alignkit.data.chat import Tokenize
    from alignkit.data.records import parse_row

    pair = Tokenize(tokenizer)(parse_row({"prompt": "say ", "chosen": "hello", "rejected": "bye"}, "x", 1), "x")
    assert list(pair.prompt_ids) == tokenizer("say ", add_special_tokens=False).input_ids
    assert list(pair.chosen_ids) == tokenizer("hello", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    joint = tokenizer("say hello", add_special_tokens=False).input_ids
    assert list(pair.prompt_ids) + list(pair.chosen_ids[:-1]) != joint


def test_template_that_renders_prompt_differently_is_an_error(tokenizer):
    """A template whose generation prompt is not a prefix of the rendered conversation names the row."""
    import copy

    from alignkit import AlignkitError
    from alignkit.data.chat import Tokenize
    from alignkit.data.records import parse_row

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant-start>{% endif %}")
    row = parse_row({"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}, "f.jsonl", 7)
    with pytest.raises(AlignkitError, match=r"f.jsonl: row 7: field 'chosen': the rendered prompt is not a prefix"):
        Tokenize(tok)(row, "f.jsonl")
