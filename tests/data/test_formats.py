"""The same rows from JSONL, JSON, Parquet and a saved `datasets` dataset; truncation by drop or error."""

import json

import pytest

from alignkit import AlignkitError
from alignkit.data.collate import load_pairs
from conftest import write_jsonl

ROWS = [
    {"prompt": [{"role": "user", "content": f"What is {a} + {a}?"}], "chosen": f"{2 * a}", "rejected": f"{2 * a + 1}"}
    for a in range(5)
]


def _ids(pairs):
    return [(p.row, p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


def test_all_formats_give_the_same_pairs(tmp_path, tokenizer):
    import datasets

    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"train": ROWS}))
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))

    expected = _ids(load_pairs(str(jsonl), tokenizer, 256, 128))
    assert len(expected) == 5
    for path in ("d.json", "wrapped.json", "d.parquet", "saved"):
        assert _ids(load_pairs(str(tmp_path / path), tokenizer, 256, 128)) == expected, path


def test_blank_lines_keep_line_numbers(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert [p.row for p in load_pairs(str(path), tokenizer, 256, 128)] == [1, 3]


def test_too_long_rows_are_dropped_and_counted(tmp_path, tokenizer, caplog):
    rows = ROWS[:2] + [{"prompt": "x " * 300, "chosen": "a", "rejected": "b"},
                       {"prompt": "q", "chosen": "long " * 300, "rejected": "b"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level("WARNING"):
        pairs = load_pairs(str(path), tokenizer, 256, 128)
    assert [p.row for p in pairs] == [1, 2]
    assert "dropped 2 of 4 rows" in caplog.text
    with pytest.raises(AlignkitError, match=r"d.jsonl: row 3: field 'prompt': .* exceed"):
        load_pairs(str(path), tokenizer, 256, 128, strict=True)


def test_unknown_format_and_missing_split(tmp_path, tokenizer):
    import datasets

    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(AlignkitError, match="unknown data format '.csv'"):
        load_pairs(str(tmp_path / "d.csv"), tokenizer, 256, 128)
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(AlignkitError, match="no split 'train' \\(has test\\)"):
        load_pairs(str(tmp_path / "saved"), tokenizer, 256, 128)
