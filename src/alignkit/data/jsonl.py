"""JSONL that survives crashes. Append-only logs: each record is one write, flushed and fsynced; a torn last line
(the process killed mid-write) is cut off when the file is opened again. Whole files: written to a temporary
file, fsynced, then renamed over the old one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit import AlignkitError


def repair(path: Path) -> list[dict]:
    """The complete records of `path` (none when it does not exist), cutting off a torn last line in place."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return _parse(path, data[:end], "; move the file away to start over")


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file this project wrote (a pairs file, results.jsonl); blank lines skipped."""
    return _parse(path, path.read_bytes(), "")


def count_records(path: Path) -> int:
    """How many records (non-blank lines) a JSONL file has, without parsing them."""
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _parse(path: Path, data: bytes, hint: str) -> list[dict]:
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise AlignkitError(f"{path}: line {number}: not valid JSON (edited by hand?){hint}") from None
    return records


class AppendLog:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append records to a JSONL file in one write, flushed and fsynced (a cache several runs add to)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: Path, records: list[dict]) -> None:
    """The records as a whole new file, atomically: a reader sees the old file or the new one, never a part."""
    from alignkit.data.files import output_file

    output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
