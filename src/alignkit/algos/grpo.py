"""GRPO and DAPO: reinforcement learning from verifiable rewards, without a critic.

Each generation round samples G completions for each of B prompts (one batched KV-cache pass), scores them
(task reward, user functions, weighted), and turns rewards into advantages within each group:
A = (r − mean_group) / std_group (Shao et al. 2024, §4.1.2; `scale_rewards: false` drops the std, as Dr. GRPO).
`grpo.advantage` picks another estimator (`losses/advantages.py`): `rloo`, r minus the mean of the group's other
completions (Ahmadian et al. 2024); `reinforce++`, returns of the KL-shaped token rewards normalised over the whole
batch (Hu 2025); `reinforce++-baseline`, the same after r − mean_group. Those three put β's KL in the reward
(k1 = log π_old − log π_ref) unless `grpo.kl_penalty: loss`.
The policy then takes `iterations` (μ) optimizer steps on those completions with PPO's clipped surrogate and,
with β > 0, a k3 KL penalty to the reference (the initial policy):

    loss_t = −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A) + β·k3_t,   ρ_t = π_θ(y_t) / π_old(y_t)

aggregated over tokens as `grpo.aggregation` says (`losses/reduce.py`).

DAPO (Yu et al. 2025) is this with its four changes, all on by `preset: dapo`:
- clip-higher: ε_high = 0.28 above ε_low = 0.2;
- dynamic sampling: groups whose rewards are all equal carry no signal and are dropped; more prompts are
  sampled until the batch is full, at most `max_generation_rounds` rounds; when the bound is hit the step
  trains on what there is, and a round with no usable group makes no update (both logged);
- token-level loss (token-mean over the whole step);
- overlong reward shaping: a linear penalty inside `overlong_buffer` tokens of `max_new_tokens`;
and no KL term.

Departures from the papers and from TRL:
- With μ = 1 the update is on-policy: old log-probs are the current ones, detached (ρ = 1), so no second
  pass runs. With μ > 1 a no-grad pass records them once per round.
- With β = 0, completions whose advantage is 0 (every one of a group whose rewards are all equal) add
  nothing to the loss or its gradient; they count in its normaliser but are not run through the model.
- The reference is the LoRA model with its adapter disabled, or a frozen copy for full fine-tuning; β = 0
  loads none.
- On resume, the generation round of the resumed step is sampled again by the restored policy.

Sampling goes through a rollout backend (`generation.backend`): alignkit's own sampler on the policy, or vLLM
engines reached over HTTP (docs/engines.md). Before each round the sampler is given the policy's current weights
(LoRA adapter or full weights) and checked (weight version, log-prob probe); a dead or stuck engine is an error
naming the engine and the step, and a rerun resumes from the last checkpoint. Every step logs the
sampler–trainer mismatch, |log π_old − log π_sampler| per token (`sampler/logp_diff_mean`, `_max`). With
`generation.tis_cap: C`, each token's policy loss is weighted by min(π_old / π_sampler, C), truncated importance
sampling (Yao et al. 2025; TRL's `vllm_importance_sampling_correction`), which corrects an inexact sampler.

Several processes: each samples, scores and filters its own share of the round's prompts (groups stay whole
inside one process, so advantages need no communication); the counts that decide refills and the loss's
normalisers (completions, response tokens, trained rows of the step) are summed over processes, so every
process takes the same path: all update, or none. A process left without a useful row still runs one
zero-weight micro-batch, so it joins the gradient all-reduce instead of leaving the others waiting in it.

Run it:
    alignkit grpo --config configs/grpo/smollm2-addition.yaml
    alignkit dapo --config configs/grpo/smollm2-addition.yaml      # = preset: dapo
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.config import GRPOConfig
from alignkit.data.collate import pad_rows, stream_indices
from alignkit.losses.advantages import batch_normalize, discounted_returns, group_advantages, moments, rloo
from alignkit.losses.kl import k1, k3, kl_shaped_rewards
from alignkit.losses.policy import clipped_policy_loss, truncated_is_weights
from alignkit.losses.reduce import aggregate
from alignkit.losses.shaping import overlong_penalty


@dataclass
class GRPOBatch:
    """One micro-batch and what its loss needs of the whole optimizer step."""

    input_ids: torch.Tensor  # (b, T) prompt + completion, right-padded
    response_mask: torch.Tensor  # (b, T) bool
    advantages: torch.Tensor  # (b,)
    old_logps: torch.Tensor | None  # (b, T) per token; None when on-policy (μ = 1)
    ref_logps: torch.Tensor | None  # (b, T) per token; None when β = 0
    sampler_logps: torch.Tensor  # (b, T) the sampler's own log-probs of the tokens (engine or local)
    weight: float  # 1, or 0 for a stand-in row on a process with nothing to train
    step_rows: int  # completions of the round, all processes (sequence-mean normaliser)
    step_tokens: int  # their response tokens (token-mean normaliser)
    trained_rows: int  # rows that go through the model, all processes
    stats: dict[str, float]  # the round's rewards, lengths, dropped groups (all processes)


@dataclass
class Rollout:
    """This process's share of one generation round: the kept groups' completions, padded."""

    input_ids: torch.Tensor  # (N, T)
    response_mask: torch.Tensor  # (N, T) bool
    advantages: torch.Tensor  # (N,)
    old_logps: torch.Tensor | None
    ref_logps: torch.Tensor | None
    sampler_logps: torch.Tensor  # (N, T)
    useful: list[int]  # rows that go through the model: non-zero advantage, or every row when β > 0
    step_rows: int
    step_tokens: int
    trained_rows: int
    stats: dict[str, float]

    def batch(self, rows: list[int]) -> GRPOBatch:
        idx = torch.tensor(rows)
        pick = (lambda x: x[idx] if x is not None else None)
        return GRPOBatch(self.input_ids[idx], self.response_mask[idx], self.advantages[idx], pick(self.old_logps),
                         pick(self.ref_logps), self.sampler_logps[idx], 1.0, self.step_rows, self.step_tokens,
                         self.trained_rows, self.stats)


class GRPO:
    """The GRPO / DAPO algorithm for `train.loop.train`.

    policy: `train.setup.Policy`; reference: a `models.reference.ModelReference` or None (β = 0);
    old_policy: the same over the policy itself, for μ > 1; backend: a `generation.rollout` backend."""

    def __init__(self, cfg: GRPOConfig, items, prompt_ids, rewards, policy, tokenizer, reference, old_policy, run,
                 backend=None):
        self.cfg, self.items, self.prompt_ids, self.rewards = cfg, items, prompt_ids, rewards
        self.policy, self.tokenizer, self.reference, self.old_policy, self.run = (policy, tokenizer, reference,
                                                                                  old_policy, run)
        self.backend = backend
        g, t = cfg.grpo, cfg.train
        self.prompts_per_step = t.batch_size // g.group_size
        rounds = math.ceil(t.epochs * len(items) / self.prompts_per_step)
        self.total_steps = t.max_steps or rounds * g.iterations
        self.pad_id = tokenizer.pad_token_id
        self.rollout: Rollout | None = None  # the current round, reused by its μ optimizer steps
        self.rollout_round = -1
        self.cursor = 0  # prompts drawn so far, all processes (dynamic sampling draws extra ones)
        self.kl_penalty = g.kl_penalty or ("loss" if g.advantage == "grpo" else "reward")

    # -- one generation round: sample, score, filter, advantages --------------------------------------------
    def _draw(self, n: int) -> list[int]:
        """The next n prompts of the run's stream (the same on every process)."""
        out = stream_indices(self.cursor, n, len(self.items), self.cfg.train.seed)
        self.cursor += n
        return out

    @torch.no_grad()
    def _sample(self, chosen: list[int], round_index: int, attempt: int):
        gen = self.cfg.generation
        with self.run.autocast():  # the local sampler computes in the run's precision
            return self.backend.generate([self.prompt_ids[i] for i in chosen], n=self.cfg.grpo.group_size,
                                         temperature=gen.temperature, top_p=gen.top_p,
                                         max_new_tokens=gen.max_new_tokens, prompt_keys=chosen,
                                         seed=self.cfg.train.seed * 1_000_003 + round_index * 101 + attempt)

    def _sync(self) -> dict[str, float]:
        """Make the sampler serve the policy's current weights before a round (`train.setup.sync_sampler`)."""
        from alignkit.train.setup import sync_sampler

        return sync_sampler(self.backend, self.policy.model, self.run)

    def _score(self, chosen: list[int], samples) -> tuple[list[float], dict[str, float]]:
        """One reward per completion (rewards, weighted, plus overlong shaping), and each reward's sum."""
        G, g = self.cfg.grpo.group_size, self.cfg.grpo
        flat = [s for group in samples for s in group]
        sequences = [(self.prompt_ids[i], s.token_ids) for i, group in zip(chosen, samples) for s in group]
        scores, means = self.rewards([self.items[i] for i in chosen for _ in range(G)], [s.text for s in flat],
                                     sequences, self.pad_id)
        if g.overlong_buffer:
            shaped = overlong_penalty(torch.tensor([float(len(s.token_ids)) for s in flat]),
                                      self.cfg.generation.max_new_tokens, g.overlong_buffer, g.overlong_penalty)
            scores = [r + float(p) for r, p in zip(scores, shaped)]
        return scores, {k: v * len(flat) for k, v in means.items()}

    def _filter(self, chosen: list[int], samples, scores: list[float]) -> list[tuple[int, list, list[float]]]:
        """(item, samples, rewards) of each group worth training on: all, or under dynamic sampling only those
        whose rewards differ (equal rewards give zero advantages: no signal)."""
        G = self.cfg.grpo.group_size
        groups = [(i, samples[j], scores[j * G : (j + 1) * G]) for j, i in enumerate(chosen)]
        return [x for x in groups if not self.cfg.grpo.dynamic_sampling or max(x[2]) != min(x[2])]

    def _fill(self, round_index: int):
        """Sample, score and filter this process's share of the round's prompts; under dynamic sampling, draw more
        until the kept groups of all processes fill the step or the bound on rounds is hit."""
        g, run, want = self.cfg.grpo, self.run, self.prompts_per_step
        kept: list[tuple[int, list, list[float]]] = []
        kept_all = dropped_all = attempts = 0
        sums = dict.fromkeys(["reward", "reward_sq", "completions", "length", "unfinished", *self.rewards.names], 0.0)
        self.cursor = max(self.cursor, round_index * want)
        while kept_all < want and attempts < (g.max_generation_rounds if g.dynamic_sampling else 1):
            attempts += 1
            mine = self._draw(want - kept_all)[run.rank :: run.world]
            now, error = [], None
            try:
                if mine:
                    samples = self._sample(mine, round_index, attempts)
                    scores, parts = self._score(mine, samples)
                    flat = [s for group in samples for s in group]
                    for k, v in {**parts, "reward": sum(scores), "reward_sq": sum(x * x for x in scores),
                                 "completions": len(scores), "length": sum(len(s.token_ids) for s in flat),
                                 "unfinished": sum(not s.finished for s in flat)}.items():
                        sums[k] += v
                    now = self._filter(mine, samples, scores)
                    kept += now
            except AlignkitError as e:  # every process learns of it in the sum below, so none waits forever
                error = str(e)
            now_kept, now_dropped, failed = run.sum_over_processes([len(now), len(mine) - len(now), error is not None])
            if failed:
                raise AlignkitError(error or f"{int(failed)} other process(es) failed while generating")
            kept_all, dropped_all = kept_all + int(now_kept), dropped_all + int(now_dropped)
        if g.dynamic_sampling and run.accelerator.is_main_process:
            line = (f"dynamic sampling, step {round_index * g.iterations + 1}: kept {kept_all}/{want} groups, "
                    f"dropped {dropped_all} with equal rewards, {attempts} generation round(s) ({attempts - 1} "
                    "refill(s))")
            if kept_all < want:
                line += (f"; max_generation_rounds={g.max_generation_rounds} reached, training on {kept_all} groups"
                         if kept_all else "; no group has differing rewards: this step makes no update")
            print(line)
        return kept, sums, dropped_all, attempts

    def _round(self, round_index: int) -> Rollout:
        """One generation round: fill, then advantages within each group, the step's normalisers summed over
        processes, and the old-policy and reference log-probs the loss needs."""
        g, run = self.cfg.grpo, self.run
        step = round_index * g.iterations + 1
        try:
            synced = self._sync()
            started = time.perf_counter()
            kept, sums, dropped, attempts = self._fill(round_index)
            synced["generation_seconds"] = time.perf_counter() - started  # sampling and scoring, refills included
        except AlignkitError as e:
            raise AlignkitError(f"step {step}: {e}; rerun the same command to resume from the last checkpoint") \
                from None
        rows = [(list(self.prompt_ids[i]), s.token_ids) for i, group, _ in kept for s in group]
        if rows:
            input_ids, mask = pad_rows(rows, self.pad_id)
        else:
            input_ids, mask = torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool)
        sampler = torch.zeros(mask.shape)  # (N, T): the sampler's log-prob of each response token
        sampler[mask] = torch.tensor([lp for *_, group, _ in kept for s in group for lp in s.logps])
        kl_in_reward = self.kl_penalty == "reward" and g.beta > 0
        ref = self.reference.per_token(input_ids, mask) if self.reference is not None and rows else None
        old = self.old_policy.per_token(input_ids, mask) if (g.iterations > 1 or kl_in_reward) and rows else None
        scores = torch.tensor([r for *_, rs in kept for r in rs], dtype=torch.float32)  # (N,)
        advantages, kl_sum = self._advantages(scores, mask, old, ref, kl_in_reward)
        useful = [i for i in range(len(rows)) if (g.beta > 0 and not kl_in_reward) or bool(advantages[i].any())]
        names = sorted(sums)
        values = run.sum_over_processes([sums[k] for k in names] + [len(rows), float(mask.sum()), len(useful), kl_sum])
        step_rows, step_tokens, trained_rows = (int(v) for v in values[len(names):-1])
        stats = {**self._stats(dict(zip(names, values)), dropped, attempts), **synced}
        if kl_in_reward:  # the KL to the reference, per sequence, of the round's trained completions
            stats["kl"] = values[-1] / max(step_rows, 1)
            ref = None  # in the reward: the loss has no KL term
        if g.iterations == 1:
            old = None  # on-policy: the loss uses the current log-probs, detached
        if self.cfg.generation.log_rollouts:
            self._log(round_index, kept, advantages, mask)
        return Rollout(input_ids, mask, advantages, old, ref, sampler, useful, step_rows, step_tokens, trained_rows,
                       stats)

    def _advantages(self, scores: torch.Tensor, mask: torch.Tensor, old, ref, kl_in_reward: bool):
        """Advantages of the round's completions by `grpo.advantage`: (N,) for grpo and rloo, (N, T) per token for
        the reinforce++ estimators; and the round's summed per-sequence KL to the reference when it is in the
        reward (0.0 otherwise). scores: (N,), G consecutive completions per prompt."""
        g, G = self.cfg.grpo, self.cfg.grpo.group_size
        if not len(scores):
            return torch.zeros(0), 0.0
        kl = torch.where(mask, k1(old, ref), 0.0) if kl_in_reward else torch.zeros(mask.shape)  # (N, T)
        if g.advantage in ("grpo", "rloo"):
            total = scores - g.beta * kl.sum(1) if kl_in_reward else scores  # the KL as a sequence-level reward
            fn = (lambda r: group_advantages(r, G, scale=g.scale_rewards)) if g.advantage == "grpo" \
                else (lambda r: rloo(r, G))
            return fn(total), float(kl.sum())
        if g.advantage == "reinforce++-baseline":
            scores = group_advantages(scores, G, scale=False)  # r − mean_group, then as REINFORCE++
        zero = torch.zeros(mask.shape)
        token_rewards = kl_shaped_rewards(scores, kl, zero, mask, g.beta if kl_in_reward else 0.0)  # (N, T)
        returns = discounted_returns(token_rewards, mask, 1.0)
        totals = self.run.sum_over_processes(list(moments(returns, mask)))  # normalised over the global batch
        return batch_normalize(returns, mask, tuple(totals)), float(kl.sum())

    @staticmethod
    def _stats(totals: dict[str, float], dropped: int, attempts: int) -> dict[str, float]:
        n = max(totals["completions"], 1.0)
        var = (totals["reward_sq"] - totals["reward"] ** 2 / n) / (n - 1) if n > 1 else 0.0
        return {"reward": totals["reward"] / n, "reward_std": math.sqrt(max(var, 0.0)),
                "completion_length": totals["length"] / n, "unfinished_fraction": totals["unfinished"] / n,
                "groups_dropped": float(dropped), "generation_rounds": float(attempts),
                **{k: v / n for k, v in totals.items() if k.startswith("rewards/")}}

    def _log(self, round_index: int, kept, advantages: torch.Tensor, mask: torch.Tensor) -> None:
        """rollouts.jsonl: every kept completion of the round with its reward and advantage (one write)."""
        rows = [{"step": round_index * self.cfg.grpo.iterations + 1, "rank": self.run.rank, "item": i,
                 "prompt_ids": list(self.prompt_ids[i]), "completion_ids": s.token_ids, "completion": s.text,
                 "reward": r} for i, group, rewards in kept for s, r in zip(group, rewards)]
        for j, row in enumerate(rows):
            if advantages.dim() == 1:
                row["advantage"] = float(advantages[j])
            else:  # per token (reinforce++): one value per completion token
                row["advantages"] = advantages[j][mask[j]].tolist()
        with open(Path(self.cfg.train.output_dir) / "rollouts.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    # -- the loop's protocol --------------------------------------------------------------------------------
    def batches(self, step: int):
        round_index = step // self.cfg.grpo.iterations
        if self.rollout_round != round_index:
            self.rollout, self.rollout_round = self._round(round_index), round_index
        r = self.rollout
        if r.trained_rows == 0:
            return  # no row of any process carries signal: every process skips the update
        if not r.useful:  # others train: join their all-reduce with a row that weighs nothing
            ids, mask = pad_rows([([self.pad_id], [self.pad_id])], self.pad_id)
            yield GRPOBatch(ids, mask, torch.zeros(1), None, None, torch.zeros(mask.shape), 0.0, r.step_rows,
                            r.step_tokens, r.trained_rows, r.stats)
            return
        mb = self.cfg.train.micro_batch_size
        for s in range(0, len(r.useful), mb):
            yield r.batch(r.useful[s : s + mb])

    def loss(self, model, b: GRPOBatch):
        g, device = self.cfg.grpo, self.run.device
        ids, mask = b.input_ids.to(device), b.response_mask.to(device)
        logps = model(ids, mask, per_token=True)  # (b, T)
        old = b.old_logps.to(device) if b.old_logps is not None else logps.detach()
        per_token, stats = clipped_policy_loss(logps, old, b.advantages.to(device), mask, g.eps_low, g.eps_high)
        # Sampler–trainer mismatch: log π_old − log π_sampler on the same tokens (0 for an exact sampler).
        mismatch = torch.where(mask, old - b.sampler_logps.to(device), 0.0)  # (b, T)
        if self.cfg.generation.tis_cap is not None:  # truncated importance sampling (see the header)
            per_token = per_token * truncated_is_weights(mismatch, self.cfg.generation.tis_cap)
        kl = None
        if b.ref_logps is not None:
            kl = torch.where(mask, k3(logps, b.ref_logps.to(device)), 0.0)
            per_token = per_token + g.beta * kl
        # The loss is normalised over every completion of the round (and every token, for token-mean). Rows
        # with zero advantage and no KL term add nothing to it or to the gradient, so they are not run.
        if g.aggregation == "token-mean":  # over every response token of the optimizer step
            loss = aggregate(per_token, mask, "token-mean", global_tokens=b.step_tokens)
        else:  # sequence means, over every sequence of the step
            loss = aggregate(per_token, mask, g.aggregation) * len(ids) / b.step_rows
        loss = loss * self.run.world * b.weight  # × world: DDP averages gradients over processes
        n = torch.tensor(float(len(ids)) * b.weight)
        metrics = {"count": n, "tokens": mask.sum().float() * b.weight,
                   "loss": loss.detach() * b.trained_rows / self.run.world, **{k: v * n for k, v in stats.items()}}
        if g.beta > 0 and self.kl_penalty == "loss":  # every process reports the same names, a stand-in row included
            metrics["kl"] = (kl.sum(1) / mask.sum(1).clamp(min=1)).sum().detach() if kl is not None \
                else torch.zeros(())
        metrics["sampler/logp_diff_mean"] = (mismatch.abs().sum(1) / mask.sum(1).clamp(min=1)).sum() * b.weight
        metrics["sampler/logp_diff_max"] = mismatch.abs().max() * b.weight  # "_max": the loop takes the max
        for k, v in b.stats.items():
            metrics[k] = torch.tensor(v) * n
        return loss, metrics

    def evaluate(self, model):
        return {}

    def idle_metrics(self) -> dict[str, float]:
        """A step without an update still reports its generation round (rewards, lengths, dropped groups)."""
        return dict(self.rollout.stats) if self.rollout is not None else {}


def run(cfg: GRPOConfig) -> Path:
    from alignkit.models import reference as ref
    from alignkit.train.loop import finish, train, whole
    from alignkit.train.setup import fresh_module, load_policy, load_task, open_sampler, start_run

    run = start_run(cfg, unit=(cfg.grpo.group_size, "grpo.group_size"), shardable=False)
    cfg, t, g = run.cfg, run.cfg.train, run.cfg.grpo
    items, prompt_ids, rewards, tokenizer = load_task(cfg, run)

    mode = "none" if g.beta == 0 else "adapter" if cfg.model.lora is not None else "copy"
    snapshot = ref.Snapshot(mode)
    policy = load_policy(cfg, run, before_adapter=snapshot)
    reference = ref.model_reference(mode, snapshot, policy, run, t.micro_batch_size) if mode != "none" else None
    old_policy = ref.ModelReference(policy.module, autocast=run.autocast, micro_batch_size=t.micro_batch_size)
    backend = open_sampler(cfg, run, tokenizer, policy)
    try:
        algo = GRPO(cfg, items, prompt_ids, rewards, policy, tokenizer, reference, old_policy, run, backend)
        kind = {"none": "none (beta = 0)", "adapter": "adapter off", "copy": "frozen copy"}[mode]
        print(f"{cfg.preset}: {algo.total_steps} steps of {algo.prompts_per_step} prompts x {g.group_size} "
              f"completions; reference: {kind}; sampler: {backend.name}")
        trained, history = train(algo, policy.module, run)
    finally:
        backend.close()
    final = whole(trained, run, lambda: fresh_module(cfg))
    finish(None if final is None else final.model, history, tokenizer, cfg, run.run_dir, run.accelerator,
           ("reward", "kl", "completion_length"))
    return run.run_dir
