"""Rewards for RL: a task's own reward, or a user function given as `path/to/file.py:name`; several, weighted.

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

    def __init__(self, configs, task):
        self.parts = []
        for c in configs:
            if c.kind == "task":
                self.parts.append((c.weight, "task", None))
            else:
                self.parts.append((c.weight, c.function, load_function(c.function)))
        self.task = task

    def __call__(self, items, completions: list[str]) -> tuple[list[float], dict[str, float]]:
        """One total per completion, and each reward's mean (for logging)."""
        totals = [0.0] * len(completions)
        means = {}
        for weight, name, fn in self.parts:
            if fn is None:
                values = [self.task.reward(item, text) for item, text in zip(items, completions)]
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
