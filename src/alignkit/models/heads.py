"""A causal LM's decoder with a scalar head: reward models score a row at its last response token; a PPO
critic reads a value at every position.

Saved as the (merged) causal LM plus `score_head.safetensors` and a marker file, so one loader serves both
and a PPO value model can start from a trained reward model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from alignkit import AlignkitError
from alignkit.models.logprobs import base_model

MARKER = "alignkit_scalar_head.json"
HEAD_FILE = "score_head.safetensors"


class ScalarHead(nn.Module):
    def __init__(self, model: nn.Module, head: nn.Linear | None = None):
        super().__init__()
        self.model = model
        hidden = base_model(model).config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.head = head.to(next(model.parameters()).dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Scores at `positions` (B,) -> (B,); without positions, a value at every position (B, T).

        input_ids (B, T) are right-padded: causal attention keeps padding out of every real position.
        """
        hidden = base_model(self.model).get_decoder()(input_ids=input_ids).last_hidden_state  # (B, T, H)
        if positions is None:
            return self.head(hidden).squeeze(-1).float()  # (B, T)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.head(hidden[rows, positions]).squeeze(-1).float()  # (B,)


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
        save_file({"weight": head.weight.detach().contiguous().cpu(), "bias": head.bias.detach().contiguous().cpu()},
                  str(tmp / HEAD_FILE))
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "hidden_size": head.in_features}))
        if kind == "reward":  # README.md from the run's saved config.yaml (next to `dest`), when there is one
            from alignkit.model_card import try_write

            try_write(tmp, None, run_dir=dest.parent, method="rm")


def load_scalar_model(path: str, dtype: str = "float32") -> ScalarHead:
    from alignkit.models.load import load_model, resolve

    where = Path(resolve(path))
    if not (where / MARKER).is_file():
        raise AlignkitError(f"model '{path}': not a reward or value model (no {MARKER}; train one with alignkit rm)")
    return ScalarHead(load_model(str(where), dtype), saved_head(where))


def saved_head(path: str | Path) -> nn.Linear | None:
    """The scalar head saved with a reward or value model at `path`; None for any other model. A reward model
    trained further (`alignkit rm` with model.path a reward model, as TRL's AutoModelForSequenceClassification
    keeps its score layer) starts from its own head, not a fresh one."""
    from safetensors.torch import load_file

    where = Path(path)
    if not (where / MARKER).is_file():
        return None
    state = load_file(str(where / HEAD_FILE))
    head = nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head
