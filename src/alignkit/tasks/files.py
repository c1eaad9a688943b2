"""Questions with known answers from a file: JSONL, JSON, Parquet or a saved dataset.

    task = FileTask("gsm8k_test.jsonl", question_field="question", answer_field="answer")

Answers may be GSM8K-style ("...reasoning... #### 42"), boxed ("\\boxed{42}"), a plain number or any text
`math-verify` can read. A row without the question or answer field is an error naming the file, row and field.
"""

from __future__ import annotations

import re

from alignkit import AlignkitError
from alignkit.data.formats import read_rows
from alignkit.tasks.base import Item, Task
from alignkit.tasks.extract import parse_gold


_NOT_FINITE = re.compile(r"[+-]?(nan|inf|infinity|∞|\\infty)")


def _guess_language(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


class FileTask(Task):
    def __init__(self, path: str, question_field: str = "question", answer_field: str = "answer",
                 id_field: str | None = None, split: str = "train"):
        self.path, self.split = path, split
        self.fields = (question_field, answer_field, id_field)
        self.name = path

    def items(self, split: str | None = None) -> list[Item]:
        question_field, answer_field, id_field = self.fields
        items, seen = [], set()
        for number, record in read_rows(self.path, split or self.split):
            where = f"{self.path}: row {number}"
            fields = {}
            for name in (question_field, answer_field) + ((id_field,) if id_field else ()):
                value = record.get(name)
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise AlignkitError(f"{where}: field '{name}': missing or empty")
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise AlignkitError(f"{where}: field '{name}': expected text or a number, got "
                                        f"{type(value).__name__}")
                fields[name] = str(value)
            item_id = fields[id_field] if id_field else f"row{number}"
            if item_id in seen:
                raise AlignkitError(f"{where}: field '{id_field}': duplicate id '{item_id}'")
            seen.add(item_id)
            question, answer = fields[question_field], parse_gold(fields[answer_field])
            if _NOT_FINITE.fullmatch(answer.strip().lower()):
                raise AlignkitError(f"{where}: field '{answer_field}': {answer!r} is not a finite number; a gold answer "
                                    "must be one every grader can match")
            items.append(Item(id=item_id, question=question, answer=answer,
                              language=_guess_language(question),
                              meta={"row": number, "where": where, "field": question_field}))
        if not items:
            raise AlignkitError(f"{self.path}: no rows")
        return items
