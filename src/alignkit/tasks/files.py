"""Prompts from a file: JSONL, JSON, Parquet or a saved dataset. Two layouts:

- Questions with known answers (`format: qa`):

      task = FileTask("gsm8k_test.jsonl", question_field="question", answer_field="answer")

  Answers may be GSM8K-style ("...reasoning... #### 42"), boxed ("\\boxed{42}"), a plain number or any text
  `math-verify` can read. A row without the question or answer field is an error naming the file, row and field.

- A TRL prompt dataset (`format: trl`): a `prompt` column holding a string (asked as one user turn) or a list of
  messages ({"role", "content"}, asked as given), and any other columns. Each item keeps every other column in
  `meta["columns"]`, so reward functions receive them as TRL's do. The answer column (`answer_field`) is optional:
  where a row has none, the item's answer is None and the task's own reward refuses to grade it.

`format: auto` (the default) reads a file whose first row has the prompt field and no question field as a TRL
prompt dataset, and any other as questions with answers.
"""

from __future__ import annotations

import itertools
import re

from alignkit import AlignkitError
from alignkit.data.formats import read_rows
from alignkit.tasks.base import Item, Task
from alignkit.tasks.extract import parse_gold


_NOT_FINITE = re.compile(r"[+-]?(nan|inf|infinity|∞|\\infty)")
# Columns a TRL prompt dataset may not have: reward functions receive prompts and completions under these names.
RESERVED = ("prompts", "completions")
# Columns TRL does not pass to reward functions (a prompt-completion dataset's completion); alignkit neither.
SKIPPED = ("completion", "completion_ids")


def _guess_language(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def _empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, list) and not value)


def _text_or_number(value) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


class FileTask(Task):
    def __init__(self, path: str, question_field: str = "question", answer_field: str = "answer",
                 id_field: str | None = None, split: str = "train", format: str = "auto",
                 prompt_field: str = "prompt"):
        if format not in ("auto", "qa", "trl"):
            raise AlignkitError(f"task format '{format}': expected auto, qa or trl")
        self.path, self.split = path, split
        self.fields = (question_field, answer_field, id_field)
        self.prompt_field = prompt_field
        self.format = format  # after items(): the layout the file was read as, qa or trl
        self.name = path

    def items(self, split: str | None = None) -> list[Item]:
        rows = read_rows(self.path, split or self.split)
        first = next(rows, None)
        if first is None:
            raise AlignkitError(f"{self.path}: no rows")
        if self.format == "auto":
            question_field = self.fields[0]
            self.format = "trl" if self.prompt_field in first[1] and question_field not in first[1] else "qa"
        rows = itertools.chain([first], rows)
        return self._trl(rows) if self.format == "trl" else self._qa(rows)

    def _item_id(self, record: dict, number: int, where: str, seen: set) -> str:
        id_field = self.fields[2]
        if not id_field:
            return f"row{number}"
        value = record.get(id_field)
        if _empty(value):
            raise AlignkitError(f"{where}: field '{id_field}': missing or empty")
        if not _text_or_number(value):
            raise AlignkitError(f"{where}: field '{id_field}': expected text or a number, got {type(value).__name__}")
        item_id = str(value)
        if item_id in seen:
            raise AlignkitError(f"{where}: field '{id_field}': duplicate id '{item_id}'")
        seen.add(item_id)
        return item_id

    def _qa(self, rows) -> list[Item]:
        question_field, answer_field, _ = self.fields
        items, seen = [], set()
        for number, record in rows:
            where = f"{self.path}: row {number}"
            fields = {}
            for name in (question_field, answer_field):
                value = record.get(name)
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise AlignkitError(f"{where}: field '{name}': missing or empty")
                if not _text_or_number(value):
                    raise AlignkitError(f"{where}: field '{name}': expected text or a number, got "
                                        f"{type(value).__name__}")
                fields[name] = str(value)
            item_id = self._item_id(record, number, where, seen)
            question, answer = fields[question_field], parse_gold(fields[answer_field])
            if _NOT_FINITE.fullmatch(answer.strip().lower()):
                raise AlignkitError(f"{where}: field '{answer_field}': {answer!r} is not a finite number; a gold answer "
                                    "must be one every grader can match")
            items.append(Item(id=item_id, question=question, answer=answer,
                              language=_guess_language(question),
                              meta={"row": number, "where": where, "field": question_field}))
        return items

    def _trl(self, rows) -> list[Item]:
        from alignkit.data.records import _messages

        _, answer_field, _ = self.fields
        field = self.prompt_field
        items, seen, kind = [], set(), None
        for number, record in rows:
            where = f"{self.path}: row {number}"
            prompt = record.get(field)
            if _empty(prompt):
                raise AlignkitError(f"{where}: field '{field}': missing or empty")
            if isinstance(prompt, str):
                conversation, question = None, prompt
            elif isinstance(prompt, list):
                conversation = tuple(_messages(prompt, where, field))
                if conversation[-1]["role"] == "assistant":
                    raise AlignkitError(f"{where}: field '{field}[{len(conversation) - 1}].role': the prompt ends "
                                        "with an assistant message; the model is asked for a new assistant turn "
                                        "after the prompt (continuing a message is not supported)")
                users = [m["content"] for m in conversation if m["role"] == "user"]
                question = users[-1] if users else conversation[-1]["content"]
            else:
                raise AlignkitError(f"{where}: field '{field}': expected a string or a list of messages, got "
                                    f"{type(prompt).__name__}")
            this = "a list of messages" if conversation is not None else "a string"
            if kind is None:
                kind = (this, number)
            elif kind[0] != this:
                raise AlignkitError(f"{where}: field '{field}': {this}, but row {kind[1]}'s is {kind[0]}; a file's "
                                    "prompts are all strings or all lists of messages")
            columns = {k: v for k, v in record.items() if k != field and k not in SKIPPED}
            for name in RESERVED:
                if name in columns:
                    raise AlignkitError(f"{where}: field '{name}': a column named '{name}' would clash with the "
                                        "reward function argument of that name; rename the column")
            item_id = self._item_id(record, number, where, seen)
            meta = {"row": number, "where": where, "field": field, "format": "trl", "file": self.path,
                    "answer_field": answer_field, "columns": columns}
            answer, value = None, record.get(answer_field)
            if _empty(value):
                meta["no_answer"] = "missing or empty"
            elif not _text_or_number(value):
                meta["no_answer"] = f"expected text or a number, got {type(value).__name__}"
            else:
                answer = parse_gold(str(value))
                if _NOT_FINITE.fullmatch(answer.strip().lower()):
                    answer, meta["no_answer"] = None, f"{answer!r} is not a finite number"
            language = _guess_language(" ".join(m["content"] for m in conversation) if conversation else question)
            items.append(Item(id=item_id, question=question, answer=answer, language=language, meta=meta,
                              conversation=conversation))
        return items
