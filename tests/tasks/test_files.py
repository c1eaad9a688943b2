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


# -- TRL prompt datasets ----------------------------------------------------------------------------------------

def _trl_items(tmp_path, rows, **cfg):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    task = make_task(TaskConfig(file=str(path), **cfg))
    return task, task.items()


def test_trl_format_is_detected_from_the_first_row(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    task, items = _trl_items(tmp_path, [{"prompt": messages, "solution": "4", "level": 1},
                                        {"prompt": messages, "solution": "5", "level": 2}])
    assert task.format == "trl"
    assert items[0].messages() == messages and items[0].question == "2+2?" and items[0].answer is None
    assert items[0].meta["columns"] == {"solution": "4", "level": 1} and items[1].meta["columns"]["level"] == 2
    # A row with a question field is read as before, even when it also has a prompt field.
    task, items = _trl_items(tmp_path, [{"question": "1+1?", "prompt": "x", "answer": "2"}])
    assert task.format == "qa" and items[0].messages() == [{"role": "user", "content": "1+1?"}]
    # format: trl reads it as a prompt dataset anyway.
    task, items = _trl_items(tmp_path, [{"question": "1+1?", "prompt": "x", "answer": "2"}], format="trl")
    assert task.format == "trl" and items[0].question == "x" and items[0].meta["columns"]["question"] == "1+1?"


def test_trl_string_prompt_and_answer_column(tmp_path):
    _, items = _trl_items(tmp_path, [{"prompt": "What is 6 x 7?", "ground_truth": "#### 42", "completion": "42"}],
                          answer_field="ground_truth")
    (item,) = items
    assert item.messages() == [{"role": "user", "content": "What is 6 x 7?"}] and item.conversation is None
    assert item.answer == "42" and item.meta["columns"] == {"ground_truth": "#### 42"}  # TRL skips completion
    assert make_task(TaskConfig(file=str(tmp_path / "p.jsonl"), answer_field="ground_truth")).evaluate(
        item, "Answer: 42")


def test_grading_a_prompt_without_an_answer_is_refused(tmp_path):
    task, items = _trl_items(tmp_path, [{"prompt": "hi"}])
    with pytest.raises(AlignkitError, match=r"p\.jsonl: row 1: field 'answer': missing or empty, so there is no gold"):
        task.evaluate(items[0], "Answer: 1")


@pytest.mark.parametrize("row, message", [
    ({"solution": "1"}, "row 2: field 'prompt': missing or empty"),
    ({"prompt": ""}, "row 2: field 'prompt': missing or empty"),
    ({"prompt": []}, "row 2: field 'prompt': missing or empty"),
    ({"prompt": 7}, "row 2: field 'prompt': expected a string or a list of messages, got int"),
    ({"prompt": [{"role": "user"}]}, r"row 2: field 'prompt\[0\]': a message needs 'role' and 'content'"),
    ({"prompt": [{"role": "robot", "content": "x"}]}, r"row 2: field 'prompt\[0\].role': unknown role 'robot'"),
    ({"prompt": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     r"row 2: field 'prompt\[0\].content': expected a string"),
    ({"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     r"row 2: field 'prompt\[1\].role': the prompt ends with an assistant message"),
    ({"prompt": "a string"}, "row 2: field 'prompt': a string, but row 1's is a list of messages"),
    ({"prompt": [{"role": "user", "content": "x"}], "completions": "y"},
     "row 2: field 'completions': a column named 'completions' would clash"),
])
def test_trl_bad_rows(tmp_path, row, message):
    with pytest.raises(AlignkitError, match=rf"p\.jsonl: {message}"):
        _trl_items(tmp_path, [{"prompt": [{"role": "user", "content": "ok"}]}, row])


def test_format_needs_a_file():
    with pytest.raises(ValueError, match="task.format=trl: applies to a file"):
        TaskConfig(format="trl")
