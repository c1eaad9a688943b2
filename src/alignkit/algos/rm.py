"""Reward model: a causal LM's decoder + a scalar head, scored at the last response token (its end-of-turn
token), trained with the Bradley–Terry loss −log σ(r_w − r_l − margin) on preference pairs.

Logged: loss, accuracy (chosen scored above rejected), margin (mean r_w − r_l), and the same on held-out
pairs. The saved model (`final/`) is the merged causal LM plus `score_head.safetensors`; `alignkit rm score`
scores a preference file with it, and PPO reads rewards (and may start its critic) from it.

Departures: rows too long for max_length are dropped and counted, never truncated, so the scored token is
always the response's own end-of-turn token. TRL additionally offers a reward-centering term; not here.

Run it:
    alignkit rm --config configs/rm/smollm2-arith.yaml
    alignkit rm score --model runs/rm-smollm2-arith/final --data data/arith/heldout.jsonl --out scores.jsonl
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.config import RMConfig, save_resolved
from alignkit.data.collate import PairBatch, collate, load_pairs, split_eval, step_indices
from alignkit.losses.reward import bradley_terry
from alignkit.models.heads import last_positions


class RewardModelling:
    """Bradley–Terry training for `train.loop.train`."""

    def __init__(self, cfg: RMConfig, train_pairs, eval_pairs, pad_id: int, device, rank: int, world: int):
        self.cfg, self.train_pairs, self.eval_pairs = cfg, train_pairs, eval_pairs
        self.pad_id, self.device, self.rank, self.world = pad_id, device, rank, world
        t = cfg.train
        self.steps_per_epoch = len(train_pairs) // t.batch_size
        if self.steps_per_epoch == 0:
            raise AlignkitError(f"{cfg.data.train}: {len(train_pairs)} usable rows, fewer than "
                                f"train.batch_size={t.batch_size}")
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.steps_per_epoch)

    def batches(self, step: int):
        t = self.cfg.train
        idx = step_indices(len(self.train_pairs), t.batch_size, t.seed, step)
        per_rank = t.batch_size // self.world
        mine = idx[self.rank * per_rank : (self.rank + 1) * per_rank]
        for s in range(0, len(mine), t.micro_batch_size):
            yield collate([self.train_pairs[i] for i in mine[s : s + t.micro_batch_size]], self.pad_id)

    def _terms(self, model, batch: PairBatch):
        batch = batch.to(self.device)
        scores = model(batch.input_ids, last_positions(batch.response_mask))  # (2B,): chosen, then rejected
        chosen, rejected = scores[: batch.size], scores[batch.size :]
        losses = bradley_terry(chosen, rejected, self.cfg.loss.margin)
        metrics = {"loss": losses.detach().sum(), "accuracy": (chosen > rejected).float().sum(),
                   "margin": (chosen - rejected).detach().sum(), "count": torch.tensor(float(batch.size)),
                   "tokens": torch.tensor(float(batch.tokens))}
        return losses, metrics

    def loss(self, model, batch: PairBatch):
        losses, metrics = self._terms(model, batch)
        return losses.sum() * self.world / self.cfg.train.batch_size, metrics

    def evaluate(self, model):
        if not self.eval_pairs:
            return {}
        mine = self.eval_pairs[self.rank :: self.world]
        sums: dict[str, torch.Tensor] = {}
        for s in range(0, len(mine), self.cfg.train.eval_batch_size):
            _, m = self._terms(model, collate(mine[s : s + self.cfg.train.eval_batch_size], self.pad_id))
            for k, v in m.items():
                sums[k] = sums.get(k, 0) + v
        sums.pop("tokens")
        return sums


def run(cfg: RMConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from alignkit.models.heads import ScalarHead, save_scalar_model
    from alignkit.models.load import add_lora, disable_dropout, load_model, load_tokenizer
    from alignkit.train.loop import train

    t, d = cfg.train, cfg.data
    accelerator = Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % (t.micro_batch_size * world):
        raise AlignkitError(f"train.batch_size={t.batch_size} is not a multiple of train.micro_batch_size="
                            f"{t.micro_batch_size} x {world} processes")
    set_seed(t.seed)
    run_dir = Path(t.output_dir)
    if accelerator.is_main_process:
        save_resolved(cfg, run_dir)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    pairs = load_pairs(d.train, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.split)
    if d.eval:
        train_pairs, eval_pairs = pairs, load_pairs(d.eval, tokenizer, d.max_length, d.max_prompt_length, d.strict,
                                                    d.split)
    else:
        train_pairs, eval_pairs = split_eval(pairs, d.eval_fraction, t.seed)
    print(f"data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs")
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.allow_pickle)
    disable_dropout(model)
    if cfg.model.lora is not None:
        model = add_lora(model, cfg.model.lora)
    scorer = ScalarHead(model).to(accelerator.device)
    algo = RewardModelling(cfg, train_pairs, eval_pairs, tokenizer.pad_token_id, accelerator.device, rank, world)
    trained, history = train(algo, scorer, t, accelerator, run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_scalar_model(trained, tokenizer, run_dir / "final", cfg.model.lora is None or cfg.model.lora.merge,
                          "reward")
        if history:
            last = history[-1]
            shown = {k: round(v, 4) for k, v in last.items()
                     if k in ("loss", "accuracy", "margin", "eval_loss", "eval_accuracy", "eval_margin")}
            print(f"done: {last['step']} steps; {shown}; reward model in {run_dir / 'final'}")
    accelerator.end_training()
    return run_dir


@torch.no_grad()
def score(model_path: str, data: str, out: str, batch_size: int, max_length: int, max_prompt_length: int,
          split: str) -> dict:
    """Score chosen and rejected of every row of a preference file; write JSONL; return accuracy and margin."""
    from alignkit.algos.logps import write_logps
    from alignkit.models.heads import load_scalar_model
    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    pairs = load_pairs(data, tokenizer, max_length, max_prompt_length, strict=False, split=split)
    scorer = load_scalar_model(model_path).eval()
    results = []
    for s in range(0, len(pairs), batch_size):
        batch = collate(pairs[s : s + batch_size], tokenizer.pad_token_id)
        scores = scorer(batch.input_ids, last_positions(batch.response_mask)).tolist()
        results += [{"row": p.row, "chosen_score": scores[j], "rejected_score": scores[batch.size + j]}
                    for j, p in enumerate(pairs[s : s + batch_size])]
    write_logps(Path(out), results)
    summary = {"rows": len(results),
               "accuracy": sum(r["chosen_score"] > r["rejected_score"] for r in results) / len(results),
               "margin": sum(r["chosen_score"] - r["rejected_score"] for r in results) / len(results)}
    print(json.dumps(summary))
    return summary
