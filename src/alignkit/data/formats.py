"""Read rows from JSONL, JSON, Parquet, a `datasets` dataset saved to disk, or a Hugging Face hub dataset id.

Yields (row_number, record) where row_number is 1-based (the line number for JSONL), so every error can
name the file and the row.
"""

from __future__ import annotations

import json
import os
import re
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
        if is_hub_id(path):
            yield from _read_hub_dataset(path, split)
            return
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


# --- Hugging Face hub ids (datasets here; models/load.py uses the same helpers) -------------------------------

_DATA_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zip", ".yaml", ".yml"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(path: str) -> bool:
    """`org/name` names a hub dataset: not a path that exists, one slash, no data-file suffix."""
    return (_HUB_ID.fullmatch(path) is not None and Path(path).suffix.lower() not in _DATA_SUFFIXES
            and not Path(path).exists())


def hub_offline() -> str | None:
    """The variable that puts the Hugging Face hub offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), or None."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return "HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else None


def hub_unreachable(repo_id: str, repo_type: str) -> str | None:
    """Why the hub cannot be asked about `repo_id` now ("the hub is offline (HF_HUB_OFFLINE=1)", "could not reach
    the hub at URL (reason)"), or None when it answered, whatever the answer (not found, gated and private repos
    are for the libraries to report). One request with a short timeout and no retries: with no network the
    libraries retry each file for minutes before they look in their cache."""
    offline = hub_offline()
    if offline:
        return f"the hub is offline ({offline}=1)"
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    ask = api.model_info if repo_type == "model" else api.dataset_info
    try:
        ask(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int) and status >= 500:
            return f"could not reach the hub at {constants.ENDPOINT} (HTTP {status})"
    except Exception as e:  # no network, DNS, refused, timeout, proxy, TLS: each library names its own
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return f"could not reach the hub at {constants.ENDPOINT} ({type(e).__name__}{': ' + first if first else ''})"
    return None


def hub_failure(e: BaseException) -> str:
    """One line for a failed hub load: not found, gated, or the library's own first line."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain, c = [], e
    while c is not None and len(chain) < 12:
        chain.append(c)
        c = c.__cause__ or c.__context__
    if any(isinstance(c, GatedRepoError) for c in chain):
        return "a gated repository on the Hugging Face hub: ask for access on its page, then log in (hf auth login)"
    if any(isinstance(c, RepositoryNotFoundError) for c in chain) or type(e).__name__ == "DatasetNotFoundError":
        return "not found on the Hugging Face hub (a private repository needs hf auth login, or HF_TOKEN)"
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_hub_dataset(repo_id: str, split: str) -> Iterator[tuple[int, dict]]:
    """`datasets.load_dataset(repo_id, split=split)`: downloaded when online, the cached copy when cached and the
    hub is offline or out of reach, a one-line error when neither."""
    import contextlib
    from unittest import mock

    import datasets

    why = hub_unreachable(repo_id, "dataset")
    # Out of reach: straight to datasets' own offline path (its cache), not after its minutes of retries.
    offline = mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True) if why else contextlib.nullcontext()
    try:
        with offline:
            ds = datasets.load_dataset(repo_id, split=split)
    except ConnectionError:
        raise AlignkitError(f"dataset '{repo_id}': not in the local Hugging Face cache (nor a local file) and "
                            f"{why or 'could not reach the hub'}") from None
    except Exception as e:  # not found, gated, an unknown split, several configs and none named
        raise AlignkitError(f"dataset '{repo_id}': {hub_failure(e)}") from None
    if isinstance(ds, datasets.DatasetDict):  # split=None is never passed, but a loader may still give a dict
        if split not in ds:
            raise AlignkitError(f"dataset '{repo_id}': no split '{split}' (has {', '.join(ds)})")
        ds = ds[split]
    for number, record in enumerate(ds, 1):
        yield number, record
