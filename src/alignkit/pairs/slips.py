"""Hard preference pairs from a task's solver: `chosen` its worked solution, `rejected` the same solution with one
slip carried through to a wrong answer (tasks/arithmetic.py: `Arithmetic.slip`).

    alignkit pairs slips --task addition-2d --split train --limit 2000 --out runs/slips/train.jsonl

The student's own mistakes (pairs build) are the pairs DPO learns most from; a reward model needs the other kind
too: two answers that read the same and differ in one number, where only checking the arithmetic tells them
apart. A reward model trained on self-correction pairs alone scores the format (docs/rl.md, "A reward model that
checks sums").
"""

from __future__ import annotations

import random
from pathlib import Path

from alignkit import AlignkitError


def slip_pairs(task_cfg, seed: int = 0) -> list[dict]:
    """One pair per question of the task config's split: TRL conversational rows with the question's id, right
    answer and the slipped answer in `metadata`."""
    from alignkit.tasks import make_task, task_items
    from alignkit.tasks.extract import extract_answer

    task = make_task(task_cfg)
    rng = random.Random(f"slips:{seed}")
    rows = []
    for item in task_items(task, task_cfg):
        rejected = task.slip(item, rng)
        if rejected is None:
            raise AlignkitError(f"task {task.name}: it has no slips to make pairs from (built-in arithmetic tasks do)")
        rows.append({
            "prompt": item.messages(),
            "chosen": [{"role": "assistant", "content": task.solve(item)}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "metadata": {"task": task.name, "id": item.id, "answer": item.answer,
                         "rejected_answer": extract_answer(rejected), "language": item.language},
        })
    return rows


def write(task_cfg, out: str, seed: int = 0) -> int:
    from alignkit.data.jsonl import write_jsonl

    rows = slip_pairs(task_cfg, seed)
    write_jsonl(Path(out), rows)
    return len(rows)
