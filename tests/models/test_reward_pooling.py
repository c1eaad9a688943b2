"""A reward model's score pools the head's per-token values over the response tokens: last, mean or min."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit import AlignkitError
from alignkit.models.heads import ScalarHead


@pytest.fixture(scope="module")
def rows(tiny_model):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    vocab = model.config.vocab_size
    # two rows, right-padded with 0: prompt 12 + response 4, and prompt 3 + response 3 then 10 pads
    ids = torch.randint(1, vocab, (2, 16))
    ids[1, 6:] = 0
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 12:], mask[1, 3:6] = True, True
    return model, ids, mask


@pytest.mark.parametrize("pooling", ["last", "mean", "min"])
def test_each_pooling_reads_only_the_response_tokens(rows, pooling):
    model, ids, mask = rows
    torch.manual_seed(1)
    scorer = ScalarHead(model, pooling=pooling)
    with torch.no_grad():
        values = scorer(ids)  # (2, 16): a value at every position
        got = scorer(ids, response_mask=mask)
    response = [values[0, 12:], values[1, 3:6]]
    want = {"last": [r[-1] for r in response], "mean": [r.mean() for r in response],
            "min": [r.min() for r in response]}[pooling]
    assert got.tolist() == pytest.approx([w.item() for w in want], abs=1e-6)
    # the rows can tell: the same pooling over every position (prompt and padding too) gives other scores
    whole = {"last": values[:, -1], "mean": values.mean(1), "min": values.amin(1)}[pooling]
    assert (whole - got).abs().max().item() > 1e-3


@pytest.mark.parametrize("pooling", ["mean", "min"])
def test_the_token_logprob_term_adds_the_models_own_log_probability_of_each_response_token(rows, pooling):
    model, ids, mask = rows
    torch.manual_seed(1)
    scorer = ScalarHead(model, pooling=pooling, logprob_weight=0.7)
    with torch.no_grad():
        got = scorer(ids, response_mask=mask)
        head_values = scorer(ids)  # (2, 16): the head alone at every position
        logps = torch.log_softmax(model(ids).logits.float(), -1)  # (2, 16, V): position t predicts t + 1
    want = []
    for row, (start, end) in enumerate([(12, 16), (3, 6)]):
        token_logps = torch.stack([logps[row, t - 1, ids[row, t]] for t in range(start, end)])
        per_token = head_values[row, start:end] + 0.7 * token_logps
        want.append(per_token.mean() if pooling == "mean" else per_token.min())
    assert got.tolist() == pytest.approx([w.item() for w in want], abs=1e-5)
    assert (got - ScalarHead(model, scorer.head, pooling)(ids, response_mask=mask)).abs().min().item() > 1e-3


def test_the_token_logprob_term_needs_a_pooling_over_the_response(rows):
    with pytest.raises(AlignkitError, match="pooling mean or min"):
        ScalarHead(rows[0], pooling="last", logprob_weight=1.0)


def test_an_unknown_pooling_is_refused(rows):
    with pytest.raises(AlignkitError, match="reward pooling 'max'"):
        ScalarHead(rows[0], pooling="max")


def _saved(where, pooling, weight):
    """A reward model's marker and head file as save_scalar_model writes them (no weights: not needed here)."""
    import json

    from safetensors.torch import save_file

    from alignkit.models.heads import HEAD_FILE, MARKER

    where.mkdir()
    tensors = {"weight": torch.zeros(1, 4), "bias": torch.zeros(1)}
    if weight is not None:
        tensors["logprob_weight"] = torch.tensor([weight])
    save_file(tensors, str(where / HEAD_FILE))
    (where / MARKER).write_text(json.dumps({"kind": "reward", "hidden_size": 4, "pooling": pooling,
                                            "token_logprob": weight is not None}))
    return str(where)


@pytest.mark.parametrize("saved, config, want", [
    (None, {}, ("last", None)),  # a plain language model: TRL's reward model
    (None, {"token_logprob": True}, ("mean", 1.0)),
    (("mean", 0.8), {}, ("mean", 0.8)),  # trained further: pooling and the learned weight go on
    (("mean", 0.8), {"pooling": "last"}, ("last", None)),  # last-token scoring has no room for the term
    (("mean", 0.8), {"token_logprob": False}, ("mean", None)),
    (("last", None), {"token_logprob": True}, ("mean", 1.0)),  # the term on a last-token model pools by mean
    (("last", None), {"token_logprob": True, "pooling": "min"}, ("min", 1.0)),
])
def test_a_reward_models_pooling_and_term_come_from_the_config_else_the_model_it_starts_from(
        tmp_path, saved, config, want):
    from alignkit.config import RMLossConfig
    from alignkit.models.heads import saved_scorer
    from alignkit.train.setup import _reward_pooling

    path = _saved(tmp_path / "rm", *saved) if saved else str(tmp_path / "plain")
    pooling, weight = _reward_pooling(RMLossConfig(**config), saved_scorer(path))
    assert (pooling, weight if weight is None else round(weight, 6)) == want


def test_the_token_logprob_term_is_refused_for_a_model_that_caps_or_scales_its_logits(rows):
    model = rows[0]
    for key, value in (("final_logit_softcapping", 30.0), ("logit_scale", 0.5)):
        setattr(model.config, key, value)
        try:
            with pytest.raises(AlignkitError, match="soft-cap or scale their logits"):
                ScalarHead(model, pooling="mean", logprob_weight=1.0)
            ScalarHead(model, pooling="mean")  # the head alone reads hidden states: fine
        finally:
            setattr(model.config, key, None)
