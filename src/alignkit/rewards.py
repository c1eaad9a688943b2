"""Rewards for RL: a task's own reward, a reward model trained by `alignkit rm`, or a user function given as
`path/to/file.py:name`; several, weighted.

A reward model scores the exact token ids the policy generated (prompt + completion, end-of-turn included),
at the last one, so it must share the policy's tokenizer (checked when it loads).

A user function is called as TRL calls one, once per batch, with keywords only:

    name(prompts=[...], completions=[...], completion_ids=[...], answer=[...], id=[...], meta=[...], **columns)

- `prompts` / `completions`: for a TRL prompt file with conversational prompts, each prompt is its list of
  messages and each completion `[{"role": "assistant", "content": text}]`; otherwise plain strings (the
  question, the completion text).
- `columns`: every other column of a TRL prompt file (tasks/files.py), by its name; a column named like one of
  alignkit's fields (`answer`, `id`, `meta`) replaces it. `answer` is otherwise the gold answer (None where the
  file has none), `id` the item's id, `meta` its metadata; `completion_ids` the completion's token ids.
- Every field is a list with one entry per completion.
- A function that takes `**kwargs` gets them all; one that does not gets only the fields it names (its signature
  is read), and a parameter without a default that no field fills is refused before training starts.

It returns one float per completion, or None for a completion it does not score (TRL: "not applicable"). A None
counts 0 in the weighted total, as TRL's nansum does, and is left out of that reward's logged mean; the fraction
of Nones is logged as `rewards/<name>/none_fraction`. A failure inside the function stops the run with one line
naming the function, the exception and the line of the user's file it came from; with `ALIGNKIT_DEBUG=1` the
exception is raised as it is, traceback included.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import os
import traceback
from pathlib import Path

from alignkit import AlignkitError

log = logging.getLogger(__name__)

# What alignkit passes to every reward function besides a TRL prompt file's columns.
FIELDS = ("prompts", "completions", "completion_ids", "answer", "id", "meta")


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


def debugging() -> bool:
    """ALIGNKIT_DEBUG set (and not 0): a user function's exception is raised as it is, with its traceback."""
    return os.environ.get("ALIGNKIT_DEBUG", "") not in ("", "0")


class UserFunction:
    """A reward function and what its signature accepts: every field (it takes **kwargs) or the ones it names."""

    def __init__(self, spec: str, fn):
        self.spec, self.fn = spec, fn
        self.file = spec.rpartition(":")[0]
        self.warned = False  # the first None it returns is told once
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # no signature to read (a builtin): pass everything
            params = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self.positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
        self.names = {p.name for p in params if p.kind in named}
        self.required = [p.name for p in params
                         if p.kind in (*named, inspect.Parameter.POSITIONAL_ONLY) and p.default is p.empty]

    def check(self, available) -> None:
        """Refuse a parameter without a default that no field will fill."""
        missing = [n for n in self.required if n not in available]
        if missing:
            raise AlignkitError(f"reward function '{self.spec}': parameter '{missing[0]}' is neither a column of the "
                                f"prompts nor a field alignkit passes (it passes: {', '.join(sorted(available))}); "
                                "give it a default or take **kwargs")

    def __call__(self, fields: dict) -> list:
        args = [fields[n] for n in self.positional if n in fields]
        kwargs = {k: v for k, v in fields.items()
                  if k not in self.positional and (self.takes_all or k in self.names)}
        try:
            return self.fn(*args, **kwargs)
        except Exception as e:
            if debugging():
                raise
            raise AlignkitError(f"reward function '{self.spec}' failed: {type(e).__name__}: {e}{self._where(e)} "
                                "(ALIGNKIT_DEBUG=1 shows the traceback)") from None

    def _where(self, error: Exception) -> str:
        """' (at file.py:12)': the last line of the user's file the exception passed through, if any."""
        try:
            mine = Path(self.file).resolve()
            frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == mine]
        except (OSError, ValueError):
            return ""
        return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _columns(items) -> list[str]:
    """The columns of a TRL prompt file's items (their union, in first-seen order)."""
    seen: dict[str, None] = {}
    for item in items:
        seen.update(dict.fromkeys(item.meta.get("columns", {})))
    return list(seen)


class Rewards:
    """Weighted sum of the configured rewards for a batch of completions.

    items: the prompts the rewards will score; given, the configuration is checked against them before any
    reward model loads (a task reward needs gold answers; a function's parameters must be fields it gets)."""

    def __init__(self, configs, task, tokenizer=None, device="cpu", batch_size: int = 16, items=None):
        self.parts = []
        self.device, self.batch_size = device, batch_size
        self.task = task
        self.columns = _columns(items) if items is not None else None
        functions = {c.function: UserFunction(c.function, load_function(c.function))
                     for c in configs if c.kind == "function"}
        if items is not None:
            self._check(configs, items, functions)
        for c in configs:
            if c.kind == "task":
                self.parts.append((c.weight, "task", None))
            elif c.kind == "model":
                self.parts.append((c.weight, "model", self._load_model(c.model, tokenizer)))
            else:
                self.parts.append((c.weight, c.function, functions[c.function]))

    def _check(self, configs, items, functions) -> None:
        from alignkit.tasks import grading_problem

        if any(c.kind == "task" for c in configs):
            problem = grading_problem(items)
            if problem:
                raise AlignkitError(f"rewards: kind 'task' cannot grade {problem}; set task.answer_field to the "
                                    "column holding the gold answers, or score with a reward function "
                                    "(kind: function, function: path/to/file.py:name)")
        available = set(FIELDS) | set(self.columns)
        for fn in functions.values():
            fn.check(available)

    @property
    def names(self) -> list[str]:
        """The metric names `__call__` reports: each reward's mean, and for each function its fraction of Nones."""
        out = []
        for _, name, fn in self.parts:
            out.append(f"rewards/{name}")
            if isinstance(fn, UserFunction):
                out.append(f"rewards/{name}/none_fraction")
        return out

    def _load_model(self, path: str, tokenizer):
        from alignkit.models.heads import load_scalar_model
        from alignkit.models.load import load_tokenizer

        if tokenizer is not None and load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
            raise AlignkitError(f"reward model '{path}': its tokenizer differs from the policy's")
        return load_scalar_model(path).to(self.device).eval().requires_grad_(False)

    def _model_scores(self, scorer, sequences, pad_id: int) -> list[float]:
        import torch

        from alignkit.data.collate import pad_rows

        out = []
        with torch.no_grad():
            for s in range(0, len(sequences), self.batch_size):
                ids, mask = pad_rows(sequences[s : s + self.batch_size], pad_id)
                out += scorer(ids.to(self.device), response_mask=mask.to(self.device)).tolist()
        return out

    def fields(self, items, completions: list[str], sequences=None) -> dict:
        """What a reward function may receive for this batch (fresh lists: a function may change its own)."""
        conversational = bool(items) and items[0].conversation is not None
        out = {
            "prompts": [i.messages() for i in items] if conversational else [i.question for i in items],
            "completions": ([[{"role": "assistant", "content": t}] for t in completions] if conversational
                            else list(completions)),
            "answer": [i.answer for i in items], "id": [i.id for i in items], "meta": [i.meta for i in items],
        }
        if sequences is not None:
            out["completion_ids"] = [list(c) for _, c in sequences]
        for name in self.columns if self.columns is not None else _columns(items):
            out[name] = [i.meta.get("columns", {}).get(name) for i in items]
        return out

    def _call(self, fn: UserFunction, items, completions, sequences) -> list[float | None]:
        out = fn(self.fields(items, completions, sequences))
        what = f"reward function '{fn.spec}'"
        try:
            out = list(out)
        except TypeError:
            raise AlignkitError(f"{what}: returned {type(out).__name__}, not a list of one float per completion") \
                from None
        if len(out) != len(completions):
            raise AlignkitError(f"{what}: returned {len(out)} values for {len(completions)} completions")
        values = []
        for v in out:
            if v is None:
                values.append(None)
                continue
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise AlignkitError(f"{what}: returned {v!r} ({type(v).__name__}), not a number or None") from None
            if not math.isfinite(x):
                raise AlignkitError(f"{what}: returned {x}, not a finite number (return None for a completion "
                                    "it does not score)")
            values.append(x)
        none = values.count(None)
        if none and not fn.warned:
            fn.warned = True
            log.warning("%s returned None for %d of %d completions: a None counts 0 in the total reward (as TRL's "
                        "nansum) and is left out of rewards/%s; rewards/%s/none_fraction logs how often",
                        what, none, len(values), fn.spec, fn.spec)
        return values

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
                values = self._call(fn, items, completions, sequences)
                means[f"rewards/{name}/none_fraction"] = values.count(None) / max(len(values), 1)
            scored = [v for v in values if v is not None]
            totals = [t if v is None else t + weight * v for t, v in zip(totals, values)]
            means[f"rewards/{name}"] = sum(scored) / max(len(scored), 1)
        return totals, means
