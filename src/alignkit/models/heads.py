"""A causal LM's decoder with a scalar head: reward models score a row's response, a PPO critic reads a value
at every position.

A reward model's score pools the head's per-token values over the response tokens (`pooling`):
- `last`: the value at the last response token (its end-of-turn token), as TRL's and OpenRLHF's reward models.
- `mean`: the mean over the response tokens. Two answers that share a prefix share its values exactly (causal
  attention), so Bradley–Terry's difference is made where they part: the head learns which token went wrong
  (a digit slip) where it happens, instead of carrying that to the last token.
- `min`: the lowest value over the response tokens: an answer is as good as its worst token.

With `logprob_weight` (a learned scalar a, `loss.token_logprob` in `alignkit rm`), each response token's value
also counts the model's own log-probability of that token: value_t = head(h_t) + a · log p(y_t | y_<t, x), read
from the same forward (the LM head on the previous position). A model that can do the task gives a slipped digit
a low log-probability; the head alone has to learn to see the slip from the token after it.

Saved as the (merged) causal LM plus `score_head.safetensors` and a marker file, so one loader serves both
and a PPO value model can start from a trained reward model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit import AlignkitError
from alignkit.models.logprobs import base_model, selected_token_logps, transforms_logits

MARKER = "alignkit_scalar_head.json"
HEAD_FILE = "score_head.safetensors"
POOLINGS = ("last", "mean", "min")


class ScalarHead(nn.Module):
    def __init__(self, model: nn.Module, head: nn.Linear | None = None, pooling: str = "last",
                 logprob_weight: float | None = None, logits_chunk: int = 1024):
        super().__init__()
        if pooling not in POOLINGS:
            raise AlignkitError(f"reward pooling '{pooling}': use one of {', '.join(POOLINGS)}")
        if logprob_weight is not None and pooling == "last":
            raise AlignkitError("a reward model with the token log-prob term pools over the response: "
                                "pooling mean or min, not last")
        cfg = base_model(model).config
        if logprob_weight is not None and transforms_logits(cfg):
            raise AlignkitError(f"the token log-prob term reads the LM head directly; {cfg.model_type} models "
                                "soft-cap or scale their logits after it: train this reward model without "
                                "loss.token_logprob")
        self.model, self.pooling, self.logits_chunk = model, pooling, logits_chunk  # chunk: train.logits_chunk
        hidden = cfg.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.head = head.to(next(model.parameters()).dtype)
        self.logprob_weight = None if logprob_weight is None else nn.Parameter(
            torch.tensor([float(logprob_weight)], dtype=self.head.weight.dtype))  # one dtype for FSDP's groups

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A value at every position (B, T); with `positions` (B,), the values there (B,); with `response_mask`
        (B, T), True on response tokens, a reward model's score of each row (B,): the values pooled over the
        response tokens as `pooling` says. (One forward for all three, so DDP and FSDP see every call.)

        input_ids (B, T) are right-padded: causal attention keeps padding out of every real position.
        """
        if response_mask is not None and self.pooling == "last":
            positions = last_positions(response_mask)
        hidden = base_model(self.model).get_decoder()(input_ids=input_ids).last_hidden_state  # (B, T, H)
        if positions is not None:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            return self.head(hidden[rows, positions]).squeeze(-1).float()  # (B,)
        values = self.head(hidden).squeeze(-1).float()  # (B, T)
        if response_mask is None:
            return values
        if self.logprob_weight is not None:
            values = values + self.logprob_weight * self._token_logps(hidden, input_ids, response_mask)
        if self.pooling == "mean":
            return (values * response_mask).sum(1) / response_mask.sum(1).clamp(min=1)
        return values.masked_fill(~response_mask, float("inf")).amin(1)

    def _token_logps(self, hidden, input_ids, response_mask) -> torch.Tensor:
        """log p(y_t | y_<t) at every response position (B, T), zero elsewhere: the LM head on the position
        before, over response positions only (the vocabulary-wide logits of a whole batch are never held)."""
        after = response_mask[:, 1:]  # position t + 1 is a response token: read the LM head at t
        picked = selected_token_logps(hidden[:, :-1][after], base_model(self.model).get_output_embeddings(),
                                      input_ids[:, 1:][after], self.logits_chunk)  # (N,), in chunks of rows
        out = torch.zeros(input_ids.shape, dtype=picked.dtype, device=picked.device)
        out[:, 1:][after] = picked  # a response token at position 0 has no context: the mask never has one there
        return out


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True in each row of mask (B, T) -> (B,)."""
    pos = torch.arange(mask.shape[1], device=mask.device)[None, :]
    return torch.where(mask, pos, -1).max(1).values


def save_scalar_model(module: ScalarHead, tokenizer, dest: Path, merge: bool, kind: str) -> None:
    from safetensors.torch import save_file

    from alignkit.train.checkpoint import atomic_dir

    model = module.model
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        head = module.head
        tensors = {"weight": head.weight.detach().contiguous().cpu(), "bias": head.bias.detach().contiguous().cpu()}
        if module.logprob_weight is not None:
            tensors["logprob_weight"] = module.logprob_weight.detach().float().cpu()
        save_file(tensors, str(tmp / HEAD_FILE))
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "hidden_size": head.in_features,
                                              "pooling": module.pooling,
                                              "token_logprob": module.logprob_weight is not None}))
        if kind == "reward":  # README.md from the run's saved config.yaml (next to `dest`), when there is one
            from alignkit.model_card import try_write

            try_write(tmp, None, run_dir=dest.parent, method="rm")


def load_scalar_model(path: str, dtype: str = "float32") -> ScalarHead:
    from alignkit.models.load import load_model, resolve

    where = Path(resolve(path))
    if not (where / MARKER).is_file():
        raise AlignkitError(f"model '{path}': not a reward or value model (no {MARKER}; train one with alignkit rm)")
    saved = saved_scorer(where)
    return ScalarHead(load_model(str(where), dtype), saved.head, saved.pooling, saved.logprob_weight)


@dataclass(frozen=True)
class SavedScorer:
    """What a reward or value model saved beside its LM: the scalar head, how it pools per-token values (`last`
    for one saved before pooling was a choice), and the learned weight of its token log-prob term (None
    without one)."""

    head: nn.Linear
    pooling: str
    logprob_weight: float | None


def saved_scorer(path: str | Path) -> SavedScorer | None:
    """The scorer saved with a reward or value model at `path`; None for any other model. A reward model trained
    further (`alignkit rm` with model.path a reward model, as TRL's AutoModelForSequenceClassification keeps its
    score layer) starts from its own head, pooling and weight, not fresh ones."""
    from safetensors.torch import load_file

    where = Path(path)
    if not (where / MARKER).is_file():
        return None
    state = load_file(str(where / HEAD_FILE))
    weight = state.pop("logprob_weight", None)
    head = nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    pooling = json.loads((where / MARKER).read_text()).get("pooling", "last")
    return SavedScorer(head, pooling, None if weight is None else weight.item())
