"""Direct Preference Optimization and its variants (IPO, hinge, robust/cDPO, SimPO, + an NLL term on chosen).

A trainable policy and a frozen reference learn from (prompt, chosen, rejected) triples; a response's
log-prob is the sum over its own tokens (DESIGN.md's token-boundary contract). The loss is
Eq. 7 of Rafailov et al. 2023, −log σ(β·[(log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))]),
or one of its variants (`losses/preference.py`).

Departures from the paper and from TRL:
- By default the reference is not kept in memory: its log-probs are computed once, before training, by
  the initial policy and cached on disk, keyed by the model weights, the exact token ids and the
  precision. A rerun reuses them. `reference.mode: copy` keeps a frozen copy instead (TRL's default);
  `adapter` uses the LoRA model with its adapter disabled; `precomputed` reads an `alignkit logps` file.
- Rows too long for `max_length` / `max_prompt_length` are dropped (and counted), never truncated, so a
  response always ends with its end-of-turn token.
- The RPO term (`loss.rpo_alpha`) is each pair's mean token NLL of chosen, averaged over pairs.

Run it:
    alignkit dpo --config configs/dpo/smollm2-arith.yaml [train.max_steps=20 ...]
    accelerate launch --num_processes 2 -m alignkit.cli dpo --config ...   # DDP / FSDP / DeepSpeed
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.algos.logps import compute_logps, compute_response_logps, model_fingerprint, read_logps
from alignkit.config import DPOConfig, save_resolved
from alignkit.data.chat import TokenizedPair
from alignkit.data.collate import PairBatch, collate, load_pairs, split_eval, step_indices
from alignkit.losses.preference import LOSSES, NEEDS_REFERENCE, nll
from alignkit.models.load import add_lora, bf16_is_fast, cache_root, disable_dropout, load_model, load_tokenizer
from alignkit.models.logprobs import SequenceLogps
from alignkit.train.loop import finish, train

log = logging.getLogger(__name__)


class DPO:
    """The DPO algorithm for `train.loop.train`: which pairs each step sees, and the loss on them."""

    def __init__(self, cfg: DPOConfig, train_pairs, eval_pairs, pad_id: int, device, rank: int, world: int):
        self.cfg, self.train_pairs, self.eval_pairs = cfg, train_pairs, eval_pairs
        self.pad_id, self.device, self.rank, self.world = pad_id, device, rank, world
        self.reference: dict = {}  # split -> callable(batch) -> (rc, rr); set once the visited pairs are known
        t = cfg.train
        self.steps_per_epoch = len(train_pairs) // t.batch_size
        if self.steps_per_epoch == 0:
            raise AlignkitError(
                f"{cfg.data.train}: {len(train_pairs)} usable rows, fewer than train.batch_size={t.batch_size}"
            )
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.steps_per_epoch)
        self.loss_fn = LOSSES[cfg.loss.type]

    def _step_indices(self, step: int) -> list[int]:
        t = self.cfg.train
        return step_indices(len(self.train_pairs), t.batch_size, t.seed, step)

    def visited(self) -> list[int]:
        """Indices of the training pairs this run will see (all processes), in first-visit order."""
        if self.total_steps > self.steps_per_epoch:  # later epochs reshuffle: any pair may come up
            return list(range(len(self.train_pairs)))
        seen = {}
        for step in range(self.total_steps):
            seen.update(dict.fromkeys(self._step_indices(step)))
        return list(seen)

    def batches(self, step: int):
        t = self.cfg.train
        step_idx = self._step_indices(step)
        per_rank = t.batch_size // self.world
        mine = step_idx[self.rank * per_rank : (self.rank + 1) * per_rank]
        for s in range(0, len(mine), t.micro_batch_size):
            yield collate([self.train_pairs[i] for i in mine[s : s + t.micro_batch_size]], self.pad_id)

    def _terms(self, model, batch: PairBatch, reference):
        batch = batch.to(self.device)
        b = batch.size
        logps = model(batch.input_ids, batch.response_mask)  # (2B,): chosen then rejected
        pc, pr = logps[:b], logps[b:]
        rc, rr = reference(batch)
        L = self.cfg.loss
        losses, chosen_rewards, rejected_rewards = self.loss_fn(
            pc, pr, rc, rr, beta=L.beta, label_smoothing=L.label_smoothing, gamma=L.simpo_gamma,
            chosen_tokens=batch.chosen_tokens, rejected_tokens=batch.rejected_tokens,
        )
        metrics = {
            "rewards/chosen": chosen_rewards.sum(),
            "rewards/rejected": rejected_rewards.sum(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
            "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
            "logps/chosen": pc.detach().sum(),
            "logps/rejected": pr.detach().sum(),
            "count": torch.tensor(float(b)),
            "tokens": torch.tensor(float(batch.tokens)),
        }
        if L.rpo_alpha:
            nll_loss = nll(pc, batch.chosen_tokens)
            losses = losses + L.rpo_alpha * nll_loss
            metrics["nll_loss"] = nll_loss.detach().sum()
        metrics["loss"] = losses.detach().sum()
        return losses, metrics

    def loss(self, model, batch: PairBatch):
        losses, metrics = self._terms(model, batch, self.reference["train"])
        # The mean over the global batch; × world because DDP averages gradients over processes.
        return losses.sum() * self.world / self.cfg.train.batch_size, metrics

    def evaluate(self, model):
        if not self.eval_pairs:
            return {}
        mine = self.eval_pairs[self.rank :: self.world]
        sums: dict[str, torch.Tensor] = {}
        for s in range(0, len(mine), self.cfg.train.eval_batch_size):
            batch = collate(mine[s : s + self.cfg.train.eval_batch_size], self.pad_id)
            _, m = self._terms(model, batch, self.reference["eval"])
            for k, v in m.items():
                sums[k] = sums.get(k, 0) + v
        sums.pop("tokens")
        return sums


class TableReference:
    """Reference log-probs looked up by row: (rc, rr) each (B,)."""

    def __init__(self, table: dict[int, tuple[float, float]]):
        self.table = table

    def __call__(self, batch: PairBatch):
        values = torch.tensor([self.table[r] for r in batch.rows], dtype=torch.float32, device=batch.input_ids.device)
        return values[:, 0], values[:, 1]


class ModelReference:
    """Reference log-probs from a forward pass each step (a frozen copy, or the policy with its adapter off)."""

    def __init__(self, seq_logps, context=contextlib.nullcontext, autocast=contextlib.nullcontext):
        self.seq_logps, self.context, self.autocast = seq_logps, context, autocast

    @torch.no_grad()
    def __call__(self, batch: PairBatch):
        with self.context(), self.autocast():
            logps = self.seq_logps(batch.input_ids, batch.response_mask).float()
        return logps[: batch.size], logps[batch.size :]


def no_reference(batch: PairBatch):
    zeros = torch.zeros(batch.size, device=batch.input_ids.device)
    return zeros, zeros


def _reference_mode(cfg: DPOConfig) -> str:
    if not NEEDS_REFERENCE[cfg.loss.type]:
        return "none"
    mode = cfg.reference.mode
    if mode != "auto":
        return mode
    if cfg.reference.logps:
        return "precomputed"
    if cfg.reference.cache:
        return "cached"
    return "adapter" if cfg.model.lora is not None else "copy"


def pair_key(pair: TokenizedPair) -> str:
    return hashlib.sha256(repr((pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)).encode()).hexdigest()[:24]


def _cached_tables(cfg, weights: str, seq_logps, needed: dict, pad_id, accelerator, adapter_off) -> dict:
    """Reference log-probs of the initial policy for the pairs a run visits, from the on-disk cache.

    One append-only JSONL file per (initial weights, precision); each line is keyed by a hash of the pair's
    exact token ids, so the data, the chat template and the tokenisation settings are all part of the key.
    Missing pairs are computed once and appended.
    """
    cache_dir = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else cache_root() / "ref-logps"
    path = cache_dir / f"{hashlib.sha256(f'{weights}|bf16={cfg.train.bf16}|v1'.encode()).hexdigest()[:32]}.jsonl"
    known = _read_cache(path)
    wanted = {pair_key(p): p for pairs in needed.values() for p in pairs}
    missing = [p for k, p in wanted.items() if k not in known]
    if missing and accelerator.is_main_process:
        # A rejected response sampled from this very model at temperature 1 (a pairs file's student answer)
        # comes with its log-prob: only its chosen half needs a forward pass.
        dtype = "torch.bfloat16" if cfg.train.bf16 else "torch.float32"
        usable = [p.rejected_hint is not None and p.rejected_hint[:3] == (weights, dtype, p.rejected_ids)
                  for p in missing]
        hinted = [p for p, ok in zip(missing, usable) if ok]
        full = [p for p, ok in zip(missing, usable) if not ok]
        print(f"reference log-probs: computing {len(missing)} of {len(wanted)} pairs"
              + (f" ({len(hinted)} rejected from the sampler's record)" if hinted else "") + f" (cache {path})")
        results = compute_logps(seq_logps, full, pad_id, cfg.train.eval_batch_size, cfg.train.bf16,
                                accelerator.device, adapter_off)
        chosen = compute_response_logps(seq_logps, [(p.prompt_ids, p.chosen_ids) for p in hinted], pad_id,
                                        cfg.train.eval_batch_size, cfg.train.bf16, accelerator.device, adapter_off)
        results += [{"chosen_logp": c, "rejected_logp": p.rejected_hint[3]} for p, c in zip(hinted, chosen)]
        missing = full + hinted
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for pair, r in zip(missing, results):
                f.write(json.dumps({"key": pair_key(pair), **{k: v for k, v in r.items() if k != "row"}}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    elif not missing:
        print(f"reference log-probs: reused cache {path} for all {len(wanted)} pairs")
    accelerator.wait_for_everyone()
    if missing:  # the main process appended them
        known = _read_cache(path)
    return {split: {p.row: known[pair_key(p)] for p in pairs} for split, pairs in needed.items()}


def _read_cache(path: Path) -> dict[str, tuple[float, float]]:
    known = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                known[r["key"]] = (float(r["chosen_logp"]), float(r["rejected_logp"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line torn by a killed run
    return known


def run(cfg: DPOConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.bf16 and not bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu"):
        log.warning("train.bf16: this processor has no native bf16 (AVX512-BF16/AMX); computing in float32")
        cfg = cfg.model_copy(update={"train": t.model_copy(update={"bf16": False})})
        t = cfg.train
    accelerator = Accelerator(mixed_precision="bf16" if t.bf16 else "no")
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % (t.micro_batch_size * world):
        raise AlignkitError(
            f"train.batch_size={t.batch_size} is not a multiple of train.micro_batch_size={t.micro_batch_size} "
            f"x {world} processes"
        )
    set_seed(t.seed)
    run_dir = Path(t.output_dir)
    if accelerator.is_main_process:
        save_resolved(cfg, run_dir)

    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    d = cfg.data
    pairs = load_pairs(d.train, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.split)
    if d.eval:
        train_pairs = pairs
        eval_pairs = load_pairs(d.eval, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.split)
    else:
        train_pairs, eval_pairs = split_eval(pairs, d.eval_fraction, t.seed)
    eval_source = d.eval or d.train
    print(f"data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs")

    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.allow_pickle)
    disable_dropout(model)
    mode = _reference_mode(cfg)
    weights = model_fingerprint(model) if mode == "cached" else ""  # the initial policy, before any adapter
    if cfg.model.lora is not None:
        model = add_lora(model, cfg.model.lora)
    policy = SequenceLogps(model, t.logits_chunk, t.share_prompts).to(accelerator.device)
    adapter_off = model.disable_adapter if cfg.model.lora is not None else contextlib.nullcontext
    autocast = accelerator.autocast if t.bf16 else contextlib.nullcontext

    algo = DPO(cfg, train_pairs, eval_pairs, tokenizer.pad_token_id, accelerator.device, rank, world)
    if mode == "none":
        reference = {"train": no_reference, "eval": no_reference}
    elif mode == "precomputed":
        if d.eval and not cfg.reference.eval_logps:
            raise AlignkitError("reference.eval_logps: needed with reference.logps when data.eval is a separate file")
        eval_table = read_logps(cfg.reference.eval_logps or cfg.reference.logps, eval_pairs, eval_source)
        reference = {"train": TableReference(read_logps(cfg.reference.logps, train_pairs, d.train)),
                     "eval": TableReference(eval_table)}
    elif mode == "cached":
        policy.eval()
        visited = [train_pairs[i] for i in algo.visited()]
        tables = _cached_tables(cfg, weights, policy, {"train": visited, "eval": eval_pairs},
                                tokenizer.pad_token_id, accelerator, adapter_off)
        reference = {k: TableReference(v) for k, v in tables.items()}
    elif mode == "adapter":
        raw = policy  # the unwrapped module; no gradients flow through the reference pass
        reference = dict.fromkeys(("train", "eval"), ModelReference(raw, adapter_off, autocast))
    else:  # copy
        frozen = SequenceLogps(copy.deepcopy(model), t.logits_chunk, t.share_prompts).eval().requires_grad_(False)
        reference = dict.fromkeys(("train", "eval"), ModelReference(frozen, autocast=autocast))
    print(f"reference: {mode}")

    algo.reference = reference
    trained, history = train(algo, policy, t, accelerator, run_dir)
    finish(trained.model, history, tokenizer, cfg, run_dir, accelerator,
           ("loss", "rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies",
            "eval_rewards/margins"))
    return run_dir
