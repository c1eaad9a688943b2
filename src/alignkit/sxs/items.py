"""The side-by-side items file, and which answer an annotator sees on which side.

One row per item (JSONL, JSON or Parquet, read by alignkit.data.formats):

    {"id": "q17", "prompt": "What is 12 + 30?", "model_a": "base", "answer_a": "...",
     "model_b": "dpo", "answer_b": "..."}

`prompt` is a string or a list of chat messages; `id` is optional (default: the row number); `response_a` /
`response_b` are accepted for `answer_a` / `answer_b`, and other keys are ignored. The results.jsonl of
`alignkit eval judge pairwise` works as it is: its `answer_1` / `answer_2` are the answers of the `model_1` /
`model_2` named in the summary.json beside it, and the judge's verdicts stay out of sight.
Sides and order are seeded by (seed, annotator, item id): stable across reloads, different per annotator.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from alignkit import AlignkitError
from alignkit.data.formats import read_rows

ROLES = {"system", "user", "assistant", "tool"}
HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # CJK ideographs (and extension A)
KANA = re.compile("[\u3040-\u30ff]")  # Japanese writes kanji too: kana in a prompt means not Chinese


@dataclass(frozen=True)
class Item:
    id: str
    prompt: list[dict]  # chat messages; a string prompt becomes one user message
    model_a: str
    answer_a: str
    model_b: str
    answer_b: str

    @property
    def digest(self) -> str:
        """Fingerprint of the content, stored with each label so a changed items file is noticed on export."""
        text = json.dumps([self.prompt, self.model_a, self.answer_a, self.model_b, self.answer_b], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _text(record: dict, where: str, *names: str) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise AlignkitError(f"{where}: field '{name}': expected a string")
            return value
    raise AlignkitError(f"{where}: field '{names[0]}': missing")


def _prompt(value, where: str) -> list[dict]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise AlignkitError(f"{where}: field 'prompt': expected a non-empty string or a list of messages "
                        f"with a role ({', '.join(sorted(ROLES))}) and string content")


def _judge_models(path: str) -> dict:
    """model_1 / model_2 from the summary.json beside a pairwise judge's results.jsonl, if there is one."""
    summary = Path(path).parent / "summary.json"
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in ("model_1", "model_2") if isinstance(data, dict) and isinstance(data.get(k), str)}


def load_items(path: str) -> dict[str, Item]:
    """Items by id, in file order. Every row is validated; errors name the file, the row and the field."""
    items: dict[str, Item] = {}
    judge_models = None
    for number, record in read_rows(path):
        where = f"{path}: row {number}"
        if "answer_1" in record and "model_a" not in record:  # a pairwise judge's row
            judge_models = _judge_models(path) if judge_models is None else judge_models
            record = {**judge_models, **record}
        raw_id = record.get("id", number)
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == "":
            raise AlignkitError(f"{where}: field 'id': expected a non-empty string or an integer")
        item = Item(str(raw_id), _prompt(record.get("prompt"), where),
                    _text(record, where, "model_a", "model_1"),
                    _text(record, where, "answer_a", "response_a", "answer_1"),
                    _text(record, where, "model_b", "model_2"),
                    _text(record, where, "answer_b", "response_b", "answer_2"))
        if item.id in items:
            raise AlignkitError(f"{where}: field 'id': {item.id!r} is used by an earlier row")
        for field in ("model_a", "model_b"):
            if not getattr(item, field).strip():
                raise AlignkitError(f"{where}: field '{field}': empty model name")
        if item.model_a == item.model_b:
            raise AlignkitError(f"{where}: field 'model_b': the same model as 'model_a' (compare two models)")
        items[item.id] = item
    if not items:
        raise AlignkitError(f"{path}: no items")
    return items


def _hash(*parts) -> bytes:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()


def a_on_left(seed: int, annotator: str, item_id: str) -> bool:
    """Whether model_a's answer is shown on the left (as "A") to this annotator."""
    return _hash(seed, "side", annotator, item_id)[0] < 128


def annotator_order(seed: int, annotator: str, item_ids) -> list[str]:
    """The order this annotator sees the items in: a seeded shuffle, so annotators don't all start together."""
    return sorted(item_ids, key=lambda item_id: _hash(seed, "order", annotator, item_id))


def is_chinese(text: str) -> bool:
    return bool(HAN.search(text)) and not KANA.search(text)


def mostly_chinese(items: dict[str, Item]) -> bool:
    """Whether most prompts are Chinese: then the labelling page speaks Chinese (`sxs serve --lang auto`)."""
    chinese = sum(is_chinese(" ".join(m["content"] for m in item.prompt)) for item in items.values())
    return chinese * 2 > len(items)
