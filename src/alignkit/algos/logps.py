"""`alignkit logps`: summed response log-probs of chosen and rejected for every row of a preference file.

    alignkit logps --model smollm2-135m-instruct --data pairs.jsonl --out logps.jsonl

Each output line: {"row", "chosen_logp", "rejected_logp", "chosen_tokens", "rejected_tokens"}, under the
token-boundary contract of DESIGN.md. The file doubles as a reference for `alignkit dpo`
(`reference.logps`), and `alignkit dpo` keeps the same format as its on-disk reference cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.data.chat import TokenizedPair
from alignkit.data.collate import collate

log = logging.getLogger(__name__)


@torch.no_grad()
def compute_logps(seq_logps, pairs: list[TokenizedPair], pad_id: int, batch_size: int, bf16: bool = False,
                  device="cpu", context=contextlib.nullcontext) -> list[dict]:
    """Run `seq_logps` (a SequenceLogps, or a callable like it) over pairs; one result dict per pair."""
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i].prompt_ids) - len(pairs[i].chosen_ids))
    results: list[dict | None] = [None] * len(pairs)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]  # similar lengths together: less padding
        batch = collate([pairs[i] for i in idx], pad_id).to(device)
        with autocast, context():
            logps = seq_logps(batch.input_ids, batch.response_mask).float().cpu()
        b = batch.size
        for j, i in enumerate(idx):
            results[i] = {
                "row": pairs[i].row,
                "chosen_logp": logps[j].item(),
                "rejected_logp": logps[b + j].item(),
                "chosen_tokens": len(pairs[i].chosen_ids),
                "rejected_tokens": len(pairs[i].rejected_ids),
            }
    return results


@torch.no_grad()
def compute_response_logps(seq_logps, rows: list[tuple[tuple[int, ...], tuple[int, ...]]], pad_id: int,
                           batch_size: int, bf16: bool = False, device="cpu",
                           context=contextlib.nullcontext) -> list[float]:
    """Summed response log-prob of each (prompt_ids, response_ids) row."""
    from alignkit.data.collate import pad_rows

    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]) - len(rows[i][1]))
    out = [0.0] * len(rows)
    for s in range(0, len(order), 2 * batch_size):  # single rows: twice as many per batch as pairs
        idx = order[s : s + 2 * batch_size]
        ids, mask = pad_rows([rows[i] for i in idx], pad_id)
        with autocast, context():
            logps = seq_logps(ids.to(device), mask.to(device)).float().cpu()
        for j, i in enumerate(idx):
            out[i] = logps[j].item()
    return out


def write_logps(path: Path, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_logps(path: str, pairs: list[TokenizedPair], data_source: str) -> dict[int, tuple[float, float]]:
    """Reference log-probs for `pairs` from a logps file; rows and token counts must match."""
    p = Path(path)
    if not p.is_file():
        raise AlignkitError(f"{path}: reference log-probs file not found")
    table = {}
    with p.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                table[int(r["row"])] = r
                float(r["chosen_logp"]), float(r["rejected_logp"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise AlignkitError(f"{path}: row {number}: not a logps record ({type(e).__name__}: {e})") from None
    out = {}
    for pair in pairs:
        r = table.get(pair.row)
        if r is None:
            raise AlignkitError(f"{path}: has no row {pair.row} of {data_source}")
        if (r.get("chosen_tokens"), r.get("rejected_tokens")) != (len(pair.chosen_ids), len(pair.rejected_ids)):
            raise AlignkitError(
                f"{path}: row {pair.row}: field 'chosen_tokens': token counts differ from {data_source} "
                "under this tokenizer (computed with another model or settings?)"
            )
        out[pair.row] = (float(r["chosen_logp"]), float(r["rejected_logp"]))
    return out


def model_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().contiguous().cpu()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run(model_path: str, data: str, out: str, batch_size: int, max_length: int, max_prompt_length: int,
        bf16: bool, split: str, trust_remote_code: bool) -> None:
    from alignkit.data.collate import load_pairs
    from alignkit.models.load import bf16_is_fast, load_model, load_tokenizer
    from alignkit.models.logprobs import SequenceLogps

    if bf16 and not bf16_is_fast("cpu"):
        log.warning("--bf16: this processor has no native bf16 (AVX512-BF16/AMX); computing in float32")
        bf16 = False

    tokenizer = load_tokenizer(model_path, trust_remote_code)
    pairs = load_pairs(data, tokenizer, max_length, max_prompt_length, strict=False, split=split)
    model = load_model(model_path, trust_remote_code=trust_remote_code).eval()
    results = compute_logps(SequenceLogps(model), pairs, tokenizer.pad_token_id, batch_size, bf16)
    write_logps(Path(out), results)
    prefers = sum(r["chosen_logp"] > r["rejected_logp"] for r in results)
    prefers_norm = sum(r["chosen_logp"] / r["chosen_tokens"] > r["rejected_logp"] / r["rejected_tokens"] for r in results)
    print(f"wrote {len(results)} rows to {out}; prefers chosen: {prefers}/{len(results)} by summed log-prob, "
          f"{prefers_norm}/{len(results)} per token")
