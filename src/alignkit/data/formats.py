"""Read rows from JSONL, JSON, Parquet or a `datasets` dataset saved to disk.

Yields (row_number, record) where row_number is 1-based (the line number for JSONL), so every error can
name the file and the row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from alignkit import AlignkitError
from alignkit.data.files import read_bytes, read_text


def _no_constant(name: str):
    """JSON's non-standard NaN, Infinity and -Infinity are refused: no data value may be non-finite."""
    raise ValueError(f"{name} is not a number JSON allows (no NaN or Infinity in data)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} overflows to infinity (no non-finite number in data)")
    return value


def read_rows(path: str, split: str = "train") -> Iterator[tuple[int, dict]]:
    p = Path(path)
    if not p.exists():
        raise AlignkitError(f"{path}: data file not found")
    if p.is_dir():
        yield from _read_saved_dataset(p, split)
        return
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        for number, raw in enumerate(read_bytes(path).splitlines(), 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise AlignkitError(f"{path}: row {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                    f"{e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=_no_constant, parse_float=_finite)
            except json.JSONDecodeError as e:
                raise AlignkitError(f"{path}: row {number}: malformed JSON ({e.msg}, column {e.colno})") from None
            except ValueError as e:
                raise AlignkitError(f"{path}: row {number}: {e}") from None
            yield number, _as_record(record, path, number)
    elif suffix == ".json":
        try:
            data = json.loads(read_text(path), parse_constant=_no_constant, parse_float=_finite)
        except json.JSONDecodeError as e:
            raise AlignkitError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from None
        except ValueError as e:
            raise AlignkitError(f"{path}: {e}") from None
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
