"""Verifiable tasks: items with a known answer, graded by `task.evaluate(item, text)`; `task.reward` reuses it.
A TRL prompt file (tasks/files.py) may give prompts without answers: those items are for reward functions only."""

from __future__ import annotations

import re

from alignkit import AlignkitError
from alignkit.tasks.base import ANSWER_LINE, Item, Task, no_answer

BUILTIN = re.compile(r"(addition|subtraction|multiplication)-(\d)d")
OPS = {"addition": "add", "subtraction": "sub", "multiplication": "mul"}


def make_task(cfg) -> Task:
    """A task from a TaskConfig: a built-in name such as 'addition-2d', or a file of questions."""
    if cfg.file:
        from alignkit.tasks.files import FileTask

        return FileTask(cfg.file, cfg.question_field, cfg.answer_field, cfg.id_field, cfg.split,
                        getattr(cfg, "format", "auto"), getattr(cfg, "prompt_field", "prompt"))
    m = BUILTIN.fullmatch(cfg.name or "")
    if not m:
        raise AlignkitError(f"task '{cfg.name}': unknown (built-in: addition-Nd, subtraction-Nd, multiplication-Nd, "
                            f"N = 1..6; or give a file)")
    from alignkit.tasks.arithmetic import Arithmetic

    offset = getattr(cfg, "offset", 0)
    size = {cfg.split: offset + cfg.limit} if cfg.limit else None
    return Arithmetic(OPS[m.group(1)], int(m.group(2)), tuple(cfg.languages), size=size, seed=cfg.seed)


def task_items(task: Task, cfg) -> list[Item]:
    """The task's items of `cfg.split`: `cfg.limit` of them after the first `cfg.offset`. A built-in task draws
    items in a fixed order, so (offset 0, limit 200) and (offset 200, limit 200) never share a question."""
    offset = getattr(cfg, "offset", 0)
    items = task.items(cfg.split)[offset:]
    if cfg.limit and len(items) < cfg.limit and offset:
        raise AlignkitError(f"task {task.name}: offset {offset} leaves {len(items)} {cfg.split} items, "
                            f"{cfg.limit} were asked for")
    return items[: cfg.limit] if cfg.limit else items


def grading_problem(items: list[Item]) -> str | None:
    """Why the task's own grading cannot score these items (a prompt file without gold answers), or None."""
    missing = [i for i in items if i.answer is None]
    if not missing:
        return None
    meta = missing[0].meta
    field = meta.get("answer_field", "answer")
    if not any(field in i.meta.get("columns", {}) for i in items):
        columns = sorted({name for i in items for name in i.meta.get("columns", {})})
        return (f"{meta.get('file', 'the task')}: no row has the answer field '{field}' "
                f"(its columns: {', '.join([meta.get('field', 'prompt'), *columns])})")
    return no_answer(missing[0])


__all__ = ["ANSWER_LINE", "Item", "Task", "grading_problem", "make_task", "task_items"]
