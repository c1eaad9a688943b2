"""Reward model: a causal LM's decoder + a scalar head, scored at the last response token (its end-of-turn
token) or pooled over the response tokens (`loss.pooling`, `loss.token_logprob`: models/heads.py), trained with
the Bradley–Terry loss −log σ(r_w − r_l − margin) on preference pairs.

Logged: loss, accuracy (chosen scored above rejected), margin (mean r_w − r_l), and the same on held-out
pairs. The saved model (`final/`) is the merged causal LM plus `score_head.safetensors`; `alignkit rm score`
scores a preference file with it, and PPO reads rewards (and may start its critic) from it.

Departures: rows too long for max_length are dropped and counted, never truncated, so the scored tokens are
always the whole response, its own end-of-turn token last. TRL additionally offers a reward-centering term; not here.

Run it:
    alignkit rm --config configs/rm/smollm2-arith.yaml
    alignkit rm score --model runs/rm-smollm2-arith/final --data data/arith/heldout.jsonl --out scores.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignkit.config import RMConfig
from alignkit.data.collate import PairBatch, collate, load_pairs, micro_batches
from alignkit.losses.reward import bradley_terry
from alignkit.train.loop import held_out_sums


class RewardModelling:
    """Bradley–Terry training for `train.loop.train`."""

    def __init__(self, cfg: RMConfig, train_pairs, eval_pairs, pad_id: int, total_steps: int, run):
        self.cfg, self.train_pairs, self.eval_pairs = cfg, train_pairs, eval_pairs
        self.pad_id, self.total_steps = pad_id, total_steps
        self.device, self.rank, self.world = run.device, run.rank, run.world

    def batches(self, step: int):
        for pairs in micro_batches(self.train_pairs, self.cfg.train, step, self.rank, self.world):
            yield collate(pairs, self.pad_id)

    def _terms(self, model, batch: PairBatch):
        batch = batch.to(self.device)
        scores = model(batch.input_ids, response_mask=batch.response_mask)  # (2B,): chosen, then rejected
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
        sums = held_out_sums(self.eval_pairs, self.cfg.train.eval_batch_size, self.rank, self.world,
                             lambda chunk: self._terms(model, collate(chunk, self.pad_id))[1])
        sums.pop("tokens", None)
        return sums


def run(cfg: RMConfig) -> Path:
    from alignkit.data.collate import split_eval, total_steps
    from alignkit.models.heads import save_scalar_model
    from alignkit.models.load import load_tokenizer
    from alignkit.train.loop import train, whole
    from alignkit.train.setup import fresh_module, load_policy, start_run

    run = start_run(cfg, unit=(cfg.train.micro_batch_size, "train.micro_batch_size"))
    cfg, t, d = run.cfg, run.cfg.train, run.cfg.data
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    pairs = load_pairs(d.train, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.split)
    if d.eval:
        train_pairs, eval_pairs = pairs, load_pairs(d.eval, tokenizer, d.max_length, d.max_prompt_length, d.strict,
                                                    d.eval_split)
    else:
        train_pairs, eval_pairs = split_eval(pairs, d.eval_fraction, t.seed)
    print(f"data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs")
    steps = total_steps(len(train_pairs), t, d.train)
    policy = load_policy(cfg, run, head="scalar")
    algo = RewardModelling(cfg, train_pairs, eval_pairs, tokenizer.pad_token_id, steps, run)
    trained, history = train(algo, policy.module, run)
    final = whole(trained, run, lambda: fresh_module(cfg, "scalar"))
    if run.accelerator.is_main_process:
        save_scalar_model(final, tokenizer, run.run_dir / "final", cfg.model.lora is None or cfg.model.lora.merge,
                          "reward")
        if history:
            last = history[-1]
            shown = {k: round(v, 4) for k, v in last.items()
                     if k in ("loss", "accuracy", "margin", "eval_loss", "eval_accuracy", "eval_margin")}
            print(f"done: {last['step']} steps; {shown}; reward model in {run.run_dir / 'final'}")
    run.accelerator.end_training()
    return run.run_dir


@torch.no_grad()
def score(model_path: str, data: str, out: str, batch_size: int, max_length: int, max_prompt_length: int,
          split: str) -> dict:
    """Score chosen and rejected of every row of a preference file; write JSONL; return accuracy and margin."""
    from alignkit.data.jsonl import write_jsonl
    from alignkit.models.heads import load_scalar_model
    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    pairs = load_pairs(data, tokenizer, max_length, max_prompt_length, strict=False, split=split)
    scorer = load_scalar_model(model_path).eval()
    results = []
    for s in range(0, len(pairs), batch_size):
        batch = collate(pairs[s : s + batch_size], tokenizer.pad_token_id)
        scores = scorer(batch.input_ids, response_mask=batch.response_mask).tolist()
        results += [{"row": p.row, "chosen_score": scores[j], "rejected_score": scores[batch.size + j]}
                    for j, p in enumerate(pairs[s : s + batch_size])]
    write_jsonl(Path(out), results)
    summary = {"rows": len(results),
               "accuracy": sum(r["chosen_score"] > r["rejected_score"] for r in results) / len(results),
               "margin": sum(r["chosen_score"] - r["rejected_score"] for r in results) / len(results)}
    print(json.dumps(summary))
    return summary
