"""The reference policy: one module for every method that needs one (DPO, KTO, GRPO, PPO, `pairs build`, `logps`).

Modes:
- `copy`: a frozen copy of the initial policy (TRL's default for full fine-tuning);
- `adapter`: the LoRA policy with its adapter disabled (no second copy in memory);
- `cached`: the initial policy's log-probs, computed once before training and kept on disk, keyed by the
  initial weights, the precision and the exact token ids (DPO, KTO: nothing of the reference stays in memory);
- `precomputed`: read from an `alignkit logps` file (DPO);
- `none`: the method needs no reference (SimPO; GRPO with β = 0).

A reference answers `pairs(batch) -> (chosen, rejected)` summed log-probs (B,) each, for preference batches,
`sequences(batch) -> (N,)` for single completions (KTO), or `per_token(input_ids, mask) -> (N, T)` for RL
rollouts. The one log-prob loop over a list of rows, `sequence_logps`, serves the cache, `alignkit logps` and the
pair builder's student records.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from alignkit import AlignkitError
from alignkit.data.chat import TokenizedPair
from alignkit.data.collate import PairBatch, pad_rows
from alignkit.data.jsonl import append_jsonl
from alignkit.progress import progress


# --- the log-prob loop ---------------------------------------------------------------------------------------

@torch.no_grad()
def sequence_logps(seq_logps, rows: list[tuple], pad_id: int, batch_rows: int, autocast=contextlib.nullcontext,
                   device="cpu", context=contextlib.nullcontext, group: int = 1, advance=None) -> list[float]:
    """Summed response log-prob of each (prompt_ids, response_ids) row under `seq_logps` (a SequenceLogps).

    Rows go in groups of `group` consecutive rows that stay in one batch (chosen and rejected of a pair share
    their prompt's pass); groups are batched longest first, so similar lengths share a batch. `advance(n)`, when
    given, is told the rows of each batch done (a progress display)."""
    groups = [list(range(s, min(s + group, len(rows)))) for s in range(0, len(rows), group)]
    groups.sort(key=lambda g: -max(len(rows[i][0]) + len(rows[i][1]) for i in g))
    per_batch = max(1, batch_rows // group)
    out = [0.0] * len(rows)
    for s in range(0, len(groups), per_batch):
        idx = [i for g in groups[s : s + per_batch] for i in g]
        ids, mask = pad_rows([rows[i] for i in idx], pad_id)
        with autocast(), context():
            logps = seq_logps(ids.to(device), mask.to(device)).float().cpu()
        for j, i in enumerate(idx):
            out[i] = logps[j].item()
        if advance is not None:
            advance(len(idx))
    return out


def pair_logps(seq_logps, pairs: list[TokenizedPair], pad_id: int, batch_size: int, autocast=contextlib.nullcontext,
               device="cpu", context=contextlib.nullcontext, advance=None) -> list[dict]:
    """One `alignkit logps` record per pair: row, chosen_logp, rejected_logp and their token counts."""
    rows = [r for p in pairs for r in ((p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids))]
    logps = sequence_logps(seq_logps, rows, pad_id, 2 * batch_size, autocast, device, context, group=2,
                           advance=advance)
    return [{"row": p.row, "chosen_logp": logps[2 * k], "rejected_logp": logps[2 * k + 1],
             "chosen_tokens": len(p.chosen_ids), "rejected_tokens": len(p.rejected_ids)} for k, p in enumerate(pairs)]


def bf16_autocast(device="cpu"):
    """A factory for bf16 autocast contexts on `device`'s kind."""
    return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().contiguous().cpu()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --- references ----------------------------------------------------------------------------------------------

class ModelReference:
    """Log-probs from a forward pass: a frozen copy, or the policy with its adapter off. No gradients."""

    def __init__(self, seq_logps, context=contextlib.nullcontext, autocast=contextlib.nullcontext,
                 micro_batch_size: int = 8):
        self.seq_logps, self.context, self.autocast, self.micro_batch_size = seq_logps, context, autocast, micro_batch_size

    @torch.no_grad()
    def per_token(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, T) per-token log-probs at response positions, in micro-batches, on input_ids' device."""
        device = next(self.seq_logps.parameters()).device
        was = self.seq_logps.training
        self.seq_logps.eval()
        try:
            parts = []
            for s in range(0, len(input_ids), self.micro_batch_size):
                with self.context(), self.autocast():
                    parts.append(self.seq_logps(input_ids[s : s + self.micro_batch_size].to(device),
                                                mask[s : s + self.micro_batch_size].to(device), per_token=True).float())
        finally:
            self.seq_logps.train(was)
        return torch.cat(parts).to(input_ids.device)

    @torch.no_grad()
    def pairs(self, batch: PairBatch):
        logps = self.sequences(batch)
        return logps[: batch.size], logps[batch.size :]

    @torch.no_grad()
    def sequences(self, batch) -> torch.Tensor:
        """Summed response log-probs (N,) of a batch's rows (`input_ids`, `response_mask`: (N, T))."""
        with self.context(), self.autocast():
            return self.seq_logps(batch.input_ids, batch.response_mask).float()


class TableReference:
    """Reference log-probs looked up by row: (chosen, rejected) each (B,)."""

    def __init__(self, table: dict[int, tuple[float, float]]):
        self.table = table

    def pairs(self, batch: PairBatch):
        values = torch.tensor([self.table[r] for r in batch.rows], dtype=torch.float32, device=batch.input_ids.device)
        return values[:, 0], values[:, 1]


class SequenceTable:
    """Reference log-probs of single sequences (KTO's completions and mismatched pairs), looked up by each row's
    exact (prompt ids, response ids): `sequences(batch) -> (N,)`."""

    def __init__(self, table: dict[tuple, float]):
        self.table = table

    def sequences(self, batch) -> torch.Tensor:
        return torch.tensor([self.table[k] for k in batch.keys], dtype=torch.float32, device=batch.input_ids.device)


class NoReference:
    def pairs(self, batch: PairBatch):
        zeros = torch.zeros(batch.size, device=batch.input_ids.device)
        return zeros, zeros


class Snapshot:
    """What a reference needs of the initial policy before an adapter goes on (`load_policy(before_adapter=)`):
    a frozen copy (`copy`) or the weights' fingerprint (`cached`)."""

    def __init__(self, mode: str):
        self.mode, self.frozen, self.fingerprint = mode, None, ""

    def __call__(self, model: nn.Module) -> None:
        if self.mode == "copy":
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
        elif self.mode == "cached":
            self.fingerprint = model_fingerprint(model)


def model_reference(mode: str, snapshot: Snapshot, policy, run, micro_batch_size: int) -> ModelReference:
    """The `copy` or `adapter` reference of a run's policy (`train.setup.Policy`)."""
    from alignkit.models.logprobs import SequenceLogps

    if mode == "adapter":
        if not policy.lora:
            raise AlignkitError("reference.mode: adapter needs model.lora (there is no adapter to turn off)")
        return ModelReference(policy.module, policy.adapter_off, run.autocast, micro_batch_size)
    t = run.cfg.train
    frozen = SequenceLogps(snapshot.frozen, t.logits_chunk, t.share_prompts).to(run.device)
    return ModelReference(frozen, autocast=run.autocast, micro_batch_size=micro_batch_size)


# --- the on-disk cache and logps files -----------------------------------------------------------------------

def pair_key(pair: TokenizedPair) -> str:
    return hashlib.sha256(repr((pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)).encode()).hexdigest()[:24]


def cached_tables(cfg, fingerprint: str, policy, needed: dict[str, list[TokenizedPair]], pad_id: int, run
                  ) -> dict[str, TableReference]:
    """Reference log-probs of the initial policy for the pairs a run visits, from the on-disk cache.

    One append-only JSONL file per (initial weights, precision); each line is keyed by a hash of the pair's
    exact token ids, so the data, the chat template and the tokenisation settings are all part of the key.
    Missing pairs are computed once (by the main process) and appended.
    """
    from alignkit.models.load import cache_root

    t = cfg.train
    cache_dir = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else cache_root() / "ref-logps"
    path = cache_dir / f"{hashlib.sha256(f'{fingerprint}|bf16={t.bf16}|v1'.encode()).hexdigest()[:32]}.jsonl"
    known = read_cache(path)
    wanted = {pair_key(p): p for pairs in needed.values() for p in pairs}
    missing = [p for k, p in wanted.items() if k not in known]
    if missing and run.accelerator.is_main_process:
        # A rejected response sampled from this very model at temperature 1 (a pairs file's student answer)
        # comes with its log-prob: only its chosen half needs a forward pass.
        dtype = "torch.bfloat16" if t.bf16 else "torch.float32"
        usable = [p.rejected_hint is not None and p.rejected_hint[:3] == (fingerprint, dtype, p.rejected_ids)
                  for p in missing]
        hinted = [p for p, ok in zip(missing, usable) if ok]
        full = [p for p, ok in zip(missing, usable) if not ok]
        print(f"reference log-probs: computing {len(missing)} of {len(wanted)} pairs"
              + (f" ({len(hinted)} rejected from the sampler's record)" if hinted else "") + f" (cache {path})")
        policy.module.eval()
        args = (pad_id, t.eval_batch_size, run.autocast, run.device, policy.adapter_off)
        with progress("reference log-probs", total=2 * len(full) + len(hinted), unit="rows") as advance:
            results = pair_logps(policy.module, full, *args, advance=advance)
            chosen = sequence_logps(policy.module, [(p.prompt_ids, p.chosen_ids) for p in hinted], pad_id,
                                    2 * t.eval_batch_size, *args[2:], advance=advance)
        results += [{"chosen_logp": c, "rejected_logp": p.rejected_hint[3]} for p, c in zip(hinted, chosen)]
        append_jsonl(path, [{"key": pair_key(pair), "chosen_logp": r["chosen_logp"],
                             "rejected_logp": r["rejected_logp"]} for pair, r in zip(full + hinted, results)])
    elif not missing:
        print(f"reference log-probs: reused cache {path} for all {len(wanted)} pairs")
    run.accelerator.wait_for_everyone()
    if missing:  # the main process appended them
        known = read_cache(path)
    return {split: TableReference({p.row: known[pair_key(p)] for p in pairs}) for split, pairs in needed.items()}


def sequence_key(prompt_ids, response_ids) -> str:
    return hashlib.sha256(repr(("seq", tuple(prompt_ids), tuple(response_ids))).encode()).hexdigest()[:24]


def cached_sequences(cfg, fingerprint: str, policy, needed: list[tuple], pad_id: int, run) -> SequenceTable:
    """Reference log-probs of the initial policy for single (prompt ids, response ids) sequences, from the on-disk
    cache: as `cached_tables`, in a file of its own next to the pairs' (one line {"key", "logp"} per sequence)."""
    from alignkit.models.load import cache_root

    t = cfg.train
    cache_dir = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else cache_root() / "ref-logps"
    path = cache_dir / f"{hashlib.sha256(f'{fingerprint}|bf16={t.bf16}|v1'.encode()).hexdigest()[:32]}-seq.jsonl"
    known = _read_sequences(path)
    wanted = {sequence_key(*k): k for k in needed}
    missing = [(h, k) for h, k in wanted.items() if h not in known]
    if missing and run.accelerator.is_main_process:
        print(f"reference log-probs: computing {len(missing)} of {len(wanted)} sequences (cache {path})")
        policy.module.eval()
        with progress("reference log-probs", total=len(missing), unit="rows") as advance:
            logps = sequence_logps(policy.module, [k for _, k in missing], pad_id, t.eval_batch_size, run.autocast,
                                   run.device, policy.adapter_off, advance=advance)
        append_jsonl(path, [{"key": h, "logp": logp} for (h, _), logp in zip(missing, logps)])
    elif not missing:
        print(f"reference log-probs: reused cache {path} for all {len(wanted)} sequences")
    run.accelerator.wait_for_everyone()
    if missing:  # the main process appended them
        known = _read_sequences(path)
    return SequenceTable({k: known[h] for h, k in wanted.items()})


def _read_sequences(path: Path) -> dict[str, float]:
    known = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                known[r["key"]] = float(r["logp"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line torn by a killed run
    return known


def read_cache(path: Path) -> dict[str, tuple[float, float]]:
    """A pair cache file's (chosen, rejected) reference log-probs by pair key; torn or foreign lines skipped."""
    known = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                known[r["key"]] = (float(r["chosen_logp"]), float(r["rejected_logp"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line torn by a killed run
    return known


def read_logps(path: str, pairs: list[TokenizedPair], data_source: str) -> TableReference:
    """Reference log-probs for `pairs` from an `alignkit logps` file; rows and token counts must match."""
    from alignkit.data.files import read_text

    table = {}
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            table[int(r["row"])] = r
            values = float(r["chosen_logp"]), float(r["rejected_logp"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise AlignkitError(f"{path}: row {number}: not a logps record ({type(e).__name__}: {e})") from None
        if not all(math.isfinite(v) and v <= 0 for v in values):
            raise AlignkitError(f"{path}: row {number}: field 'chosen_logp'/'rejected_logp': {values} is not a "
                                "log-probability (finite and at most 0)")
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
    return TableReference(out)
