"""Read rows from JSONL, JSON, Parquet or a `datasets` dataset saved to disk.

Yields (row_number, record) where row_number is 1-based (the line number for JSONL), so every error can
name the file and the row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from alignkit import AlignkitError


def read_rows(path: str, split: str = "train") -> Iterator[tuple[int, dict]]:
    p = Path(path)
    if not p.exists():
        raise AlignkitError(f"{path}: data file not found")
    if p.is_dir():
        yield from _read_saved_dataset(p, split)
        return
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        with p.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise AlignkitError(f"{path}: row {number}: malformed JSON ({e.msg}, column {e.colno})") from None
                yield number, _as_record(record, path, number)
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise AlignkitError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get(split), list):
            data = data[split]
        if not isinstance(data, list):
            raise AlignkitError(f"{path}: expected a JSON list of rows (or an object with a '{split}' list)")
        for number, record in enumerate(data, 1):
            yield number, _as_record(record, path, number)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises several types for bad files
            raise AlignkitError(f"{path}: cannot read Parquet ({e})") from None
        for number, record in enumerate(table.to_pylist(), 1):
            yield number, record
    else:
        raise AlignkitError(f"{path}: unknown data format '{suffix}' (use .jsonl, .json, .parquet or a dataset dir)")


def _as_record(record, path, number) -> dict:
    if not isinstance(record, dict):
        raise AlignkitError(f"{path}: row {number}: expected a JSON object, got {type(record).__name__}")
    return record


def _read_saved_dataset(p: Path, split: str) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError:
        raise AlignkitError(f"{p}: directory is not a dataset saved with save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise AlignkitError(f"{p}: no split '{split}' (has {', '.join(ds)})")
        ds = ds[split]
    for number, record in enumerate(ds, 1):
        yield number, record
