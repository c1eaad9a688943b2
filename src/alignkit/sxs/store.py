"""The labels database: one SQLite file in WAL mode, one row per (annotator, item).

    sqlite3 labels.sqlite "select annotator, pair_id, choice, winner, left_model from labels"

A second label by the same annotator on the same item replaces the first (last wins), so a mis-click can be
corrected. An annotator can also undo their latest label: the row moves to `undone_labels` (kept for the
record; export reads only `labels`), and the item is unlabelled again. Each request opens its own connection;
writes are serialised by a lock (and SQLite's busy timeout covers other processes, such as an export running
while the server is up).
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from alignkit import AlignkitError

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    annotator   TEXT NOT NULL,
    pair_id     TEXT NOT NULL,
    pair_digest TEXT NOT NULL,  -- fingerprint of the item's prompt, models and answers when it was labelled
    model_a     TEXT NOT NULL,
    model_b     TEXT NOT NULL,
    left_model  TEXT NOT NULL,  -- the model whose answer was shown on the left, as "A"
    right_model TEXT NOT NULL,  -- ... on the right, as "B"
    choice      TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),  -- a/b: model_a/model_b better
    winner      TEXT,           -- the better model's name; NULL for tie and both_bad
    comment     TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,  -- UTC, ISO 8601
    PRIMARY KEY (annotator, pair_id)
);
CREATE TABLE IF NOT EXISTS undone_labels (  -- labels taken back with undo: the same columns, plus when
    annotator   TEXT NOT NULL,
    pair_id     TEXT NOT NULL,
    pair_digest TEXT NOT NULL,
    model_a     TEXT NOT NULL,
    model_b     TEXT NOT NULL,
    left_model  TEXT NOT NULL,
    right_model TEXT NOT NULL,
    choice      TEXT NOT NULL,
    winner      TEXT,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    undone_at   TEXT NOT NULL   -- UTC, ISO 8601
)
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LabelStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self.lock = threading.Lock()
        try:
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise AlignkitError(f"{path}: cannot open the labels database ({e})") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def save(self, row: dict) -> bool:
        """Insert or replace this annotator's label of this item; True if it replaced one."""
        row = {**row, "created_at": _now()}
        columns = ", ".join(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in ("annotator", "pair_id"))
        with self.lock:
            conn = self._connect()
            try:
                with conn:  # one transaction
                    replaced = conn.execute("SELECT 1 FROM labels WHERE annotator = ? AND pair_id = ?",
                                            (row["annotator"], row["pair_id"])).fetchone() is not None
                    conn.execute(f"INSERT INTO labels ({columns}) VALUES ({', '.join('?' * len(row))}) "
                                 f"ON CONFLICT (annotator, pair_id) DO UPDATE SET {updates}", tuple(row.values()))
            finally:
                conn.close()
        return replaced

    def undo(self, annotator: str, pair_id: str) -> dict | None:
        """Take back this annotator's label of this item if it is their latest one: the row moves to
        undone_labels and is returned. None (nothing changes) if the annotator's latest label is of another
        item or there is none: a page that is out of date (a second tab, a double press) cannot undo a label
        its annotator is not looking at."""
        with self.lock:
            conn = self._connect()
            try:
                with conn:  # one transaction: check, copy, delete
                    latest = conn.execute("SELECT * FROM labels WHERE annotator = ? ORDER BY created_at DESC, "
                                          "rowid DESC LIMIT 1", (annotator,)).fetchone()
                    if latest is None or latest["pair_id"] != pair_id:
                        return None
                    row = dict(latest)
                    columns = ", ".join([*row, "undone_at"])
                    conn.execute(f"INSERT INTO undone_labels ({columns}) VALUES ({', '.join('?' * (len(row) + 1))})",
                                 (*row.values(), _now()))
                    conn.execute("DELETE FROM labels WHERE annotator = ? AND pair_id = ?", (annotator, pair_id))
            finally:
                conn.close()
        return row

    def undone(self) -> int:
        """How many labels were taken back with undo."""
        conn = self._connect()
        try:
            return conn.execute("SELECT COUNT(*) FROM undone_labels").fetchone()[0]
        finally:
            conn.close()

    def labelled(self, annotator: str) -> set[str]:
        conn = self._connect()
        try:
            return {r[0] for r in conn.execute("SELECT pair_id FROM labels WHERE annotator = ?", (annotator,))}
        finally:
            conn.close()

    def all(self) -> list[dict]:
        conn = self._connect()
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM labels ORDER BY created_at, annotator, pair_id")]
        finally:
            conn.close()
