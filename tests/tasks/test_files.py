"""Question files: GSM8K, boxed and plain answers; bad rows name the file, row and field."""

import pytest

from alignkit import AlignkitError
from alignkit.config import TaskConfig
from alignkit.tasks import make_task, task_items
from conftest import write_jsonl


def test_formats(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
         "answer": "In May she sold 48/2 = 24 clips.\n#### 72"},
        {"question": "What is 1/2 + 1/4?", "answer": "\\boxed{\\frac{3}{4}}"},
        {"question": "一共多少个？", "answer": 1234},
    ])
    task = make_task(TaskConfig(file=str(path)))
    items = task_items(task, TaskConfig(file=str(path)))
    assert [i.answer for i in items] == ["72", "\\frac{3}{4}", "1234"]
    assert [i.language for i in items] == ["en", "en", "zh"]
    assert task.evaluate(items[0], "48 + 24 = 72 clips. Answer: 72")
    assert not task.evaluate(items[0], "The answer is 27, not 72.")
    assert task.evaluate(items[1], "1/2 + 1/4 = 3/4, so the answer is \\boxed{0.75}")
    assert task.evaluate(items[2], "答案：1,234")


def test_parquet_and_limit(tmp_path):
    import pandas as pd

    pd.DataFrame({"q": ["1+1?", "2+2?", "3+3?"], "a": ["2", "4", "6"]}).to_parquet(tmp_path / "q.parquet")
    cfg = TaskConfig(file=str(tmp_path / "q.parquet"), question_field="q", answer_field="a", limit=2)
    assert [i.answer for i in task_items(make_task(cfg), cfg)] == ["2", "4"]


@pytest.mark.parametrize("row, field", [
    ({"answer": "1"}, "question"), ({"question": "q", "answer": ""}, "answer"),
    ({"question": ["a list"], "answer": "1"}, "question"),
])
def test_bad_rows(tmp_path, row, field):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "ok", "answer": "1"}, row])
    with pytest.raises(AlignkitError, match=rf"q\.jsonl: row 2: field '{field}'"):
        make_task(TaskConfig(file=str(path))).items()
