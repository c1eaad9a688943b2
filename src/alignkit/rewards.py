"""Rewards for RL: a task's own reward, a reward model trained by `alignkit rm`, or a user function given as
`path/to/file.py:name`; several, weighted.

A reward model scores the exact token ids the policy generated (prompt + completion, end-of-turn included),
at the last one, so it must share the policy's tokenizer (checked when it loads).

A user function is called once per batch as `name(prompts=[...], completions=[...], **fields)`, where fields
are the items' other columns (`answer`, `id`, and a built-in task's `meta`), one entry per completion, and
returns one float per completion.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from alignkit import AlignkitError


def load_function(spec: str):
    """The callable named by 'path/to/file.py:name'; AlignkitError naming what is wrong."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise AlignkitError(f"reward function '{spec}': expected path/to/file.py:name")
    file = Path(path)
    if not file.is_file():
        raise AlignkitError(f"reward function '{spec}': file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"alignkit_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: show what failed in it, no traceback
        raise AlignkitError(f"reward function '{spec}': importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AlignkitError(f"reward function '{spec}': {path} defines no function '{name}'")
    return fn


class Rewards:
    """Weighted sum of the configured rewards for a batch of completions."""

    def __init__(self, configs, task, tokenizer=None, device="cpu", batch_size: int = 16):
        self.parts = []
        self.device, self.batch_size = device, batch_size
        for c in configs:
            if c.kind == "task":
                self.parts.append((c.weight, "task", None))
            elif c.kind == "model":
                self.parts.append((c.weight, "model", self._load_model(c.model, tokenizer)))
            else:
                self.parts.append((c.weight, c.function, load_function(c.function)))
        self.task = task

    @property
    def names(self) -> list[str]:
        """The metric name of each reward, as `__call__` reports their means."""
        return [f"rewards/{name}" for _, name, _ in self.parts]

    def _load_model(self, path: str, tokenizer):
        from alignkit.models.heads import load_scalar_model
        from alignkit.models.load import load_tokenizer

        if tokenizer is not None and load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
            raise AlignkitError(f"reward model '{path}': its tokenizer differs from the policy's")
        return load_scalar_model(path).to(self.device).eval().requires_grad_(False)

    def _model_scores(self, scorer, sequences, pad_id: int) -> list[float]:
        import torch

        from alignkit.data.collate import pad_rows
        from alignkit.models.heads import last_positions

        out = []
        with torch.no_grad():
            for s in range(0, len(sequences), self.batch_size):
                ids, mask = pad_rows(sequences[s : s + self.batch_size], pad_id)
                out += scorer(ids.to(self.device), last_positions(mask.to(self.device))).tolist()
        return out

    def __call__(self, items, completions: list[str], sequences=None, pad_id: int = 0):
        """One total per completion, and each reward's mean (for logging). `sequences`: (prompt ids, completion
        ids) per completion, needed by a reward model."""
        totals = [0.0] * len(completions)
        means = {}
        for weight, name, fn in self.parts:
            if fn is None:
                values = [self.task.reward(item, text) for item, text in zip(items, completions)]
            elif name == "model":
                values = self._model_scores(fn, sequences, pad_id)
            else:
                fields = {"answer": [i.answer for i in items], "id": [i.id for i in items],
                          "meta": [i.meta for i in items]}
                try:
                    values = [float(v) for v in fn(prompts=[i.question for i in items], completions=completions,
                                                   **fields)]
                except Exception as e:
                    raise AlignkitError(f"reward function '{name}' failed: {type(e).__name__}: {e}") from None
                if len(values) != len(completions) or not all(math.isfinite(v) for v in values):
                    raise AlignkitError(f"reward function '{name}': returned {len(values)} values for "
                                        f"{len(completions)} completions, or a value that is not a finite number")
            totals = [t + weight * v for t, v in zip(totals, values)]
            means[f"rewards/{name}"] = sum(values) / max(len(values), 1)
        return totals, means
