"""PPO with a reward model (or task rewards), a value model and a KL penalty to the reference (RLHF).

Each rollout: `ppo.rollout_prompts` prompts, one completion each (batched KV-cache sampling). Then, under
no_grad: old log-probs (policy), reference log-probs, values (critic), and scores (reward model at the last
token, task reward or user functions, weighted; `missing_eos_penalty` added to responses that hit the length
limit). Per-token rewards are the KL penalty −β·(log π − log π_ref) at every response token plus the score
at the last (Ziegler et al. 2019, Eq. 2); β is fixed or adaptive. GAE(γ, λ) under the response mask gives
advantages (whitened) and returns. Then `ppo.epochs` passes over the rollout in minibatches of
`train.batch_size`, one optimizer step each, minimising

    clipped policy loss (ε)  +  vf_coef · clipped value loss

both as token means over the minibatch. V_t is read from the hidden state before token t, like the logits
that predict it.

Without a critic (`ppo.advantage`, `losses/advantages.py`), each prompt gets `ppo.samples_per_prompt` completions
and the advantages come from the same per-token rewards: `reinforce++` takes their returns normalised over every
token of the rollout (Hu 2025); `reinforce++-baseline` first subtracts the mean score of the prompt's samples;
`rloo` subtracts the mean score of the prompt's other samples (Ahmadian et al. 2024) and is not normalised
further, as in OpenRLHF. No value model is loaded, and the loss is the clipped policy loss alone.

Rollouts come from the rollout backend (`generation.backend`: the local sampler, or vLLM engines), given the
policy's weights before each rollout; the sampler–trainer mismatch |log π_old − log π_sampler| is logged per
rollout, and `generation.tis_cap` weights the policy loss by min(π_old / π_sampler, C) (truncated importance
sampling, as in GRPO).

Departures: the critic is its own model (a decoder + scalar head, LoRA by default when the policy uses
LoRA), started from the reward model when one is given (as OpenRLHF does), else from the policy's weights.
`entropy` is logged as the mean negative log-prob of the sampled tokens (a Monte Carlo estimate).

Run it:
    alignkit ppo --config configs/ppo/smollm2-arith.yaml
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.config import PPOConfig
from alignkit.data.collate import pad_rows, stream_indices
from alignkit.losses.advantages import batch_normalize, discounted_returns, gae, group_advantages, rloo
from alignkit.losses.kl import AdaptiveKLController, FixedKLController, k1, kl_shaped_rewards
from alignkit.losses.policy import clipped_policy_loss, truncated_is_weights
from alignkit.losses.reduce import masked_mean, whiten
from alignkit.losses.shaping import no_eos_penalty
from alignkit.losses.value import clipped_value_loss


class ActorCritic(nn.Module):
    """The two trained modules, so the one training loop optimizes both."""

    def __init__(self, policy: nn.Module, critic: nn.Module):
        super().__init__()
        self.policy, self.critic = policy, critic

    def values(self, input_ids: torch.Tensor) -> torch.Tensor:
        """V_t for every token t, from the hidden state at t − 1 (B, T); position 0 gets 0."""
        v = self.critic(input_ids)  # (B, T): a value per position
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (N, T)
    mask: torch.Tensor  # (N, T) response tokens
    old_logps: torch.Tensor  # (N, T)
    old_values: torch.Tensor  # (N, T)
    advantages: torch.Tensor  # (N, T)
    returns: torch.Tensor  # (N, T)
    sampler_logps: torch.Tensor  # (N, T) the sampler's own log-probs of the response tokens
    stats: dict[str, float]


@dataclass
class PPOBatch:
    """Rows of one micro-batch, with what its loss needs of the whole minibatch (the optimizer step)."""

    input_ids: torch.Tensor  # (b, T)
    mask: torch.Tensor  # (b, T)
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    sampler_logps: torch.Tensor
    step_rows: int  # sequences of the minibatch
    step_tokens: int  # their response tokens: the token-mean normaliser
    stats: dict[str, float]  # the rollout's


class PPO:
    def __init__(self, cfg: PPOConfig, items, prompt_ids, rewards, actor_critic: ActorCritic, tokenizer, reference,
                 run, backend=None):
        self.cfg, self.items, self.prompt_ids, self.rewards = cfg, items, prompt_ids, rewards
        self.ac, self.tokenizer, self.reference, self.run = actor_critic, tokenizer, reference, run
        self.backend = backend  # a generation.rollout backend
        p, t = cfg.ppo, cfg.train
        self.minibatches = p.rollout_prompts * p.samples_per_prompt // t.batch_size
        self.steps_per_rollout = p.epochs * self.minibatches
        rollouts = math.ceil(t.epochs * len(items) / p.rollout_prompts)
        self.total_steps = t.max_steps or rollouts * self.steps_per_rollout
        self.kl_ctl = (AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.adaptive_kl
                       else FixedKLController(p.kl_coef))
        self.pad_id = tokenizer.pad_token_id
        self.rollout: Rollout | None = None  # the current rollout, reused by its epochs × minibatches steps
        self.rollout_index = -1

    def _per_rows(self, fn, input_ids, mask=None) -> torch.Tensor:
        mb, device = self.cfg.train.micro_batch_size, self.run.device
        parts = []
        for s in range(0, len(input_ids), mb):
            ids = input_ids[s : s + mb].to(device)
            with self.run.autocast():
                parts.append((fn(ids) if mask is None else fn(ids, mask[s : s + mb].to(device))).float())
        return torch.cat(parts).cpu()

    def _sample(self, rollout_index: int, chosen: list[int]):
        """The policy's current weights to the sampler, then one completion per prompt; an engine failure names
        the step."""
        from alignkit import AlignkitError

        gen = self.cfg.generation
        try:
            report = self.backend.sync(self.ac.policy.model)
            with self.run.autocast():
                samples = self.backend.generate([self.prompt_ids[i] for i in chosen], n=self.cfg.ppo.samples_per_prompt,
                                                temperature=gen.temperature,
                                                top_p=gen.top_p, max_new_tokens=gen.max_new_tokens, prompt_keys=chosen,
                                                seed=self.cfg.train.seed * 1_000_003 + rollout_index)
        except AlignkitError as e:
            raise AlignkitError(f"step {rollout_index * self.steps_per_rollout + 1}: {e}; rerun the same command to "
                                "resume from the last checkpoint") from None
        synced = {"weight_version": float(report.version), "sync_seconds": report.seconds}
        if report.probe_max_abs_diff is not None:
            synced["sync_probe_max_diff"] = report.probe_max_abs_diff
        return [s for group in samples for s in group], synced  # a prompt's samples are consecutive

    @torch.no_grad()
    def _collect(self, rollout_index: int) -> Rollout:
        p = self.cfg.ppo
        chosen = stream_indices(rollout_index * p.rollout_prompts, p.rollout_prompts, len(self.items),
                                self.cfg.train.seed)
        was = self.ac.training
        self.ac.eval()
        samples, synced = self._sample(rollout_index, chosen)
        chosen = [i for i in chosen for _ in range(p.samples_per_prompt)]  # one entry per completion
        sequences = [(self.prompt_ids[i], s.token_ids) for i, s in zip(chosen, samples)]
        scores, parts = self.rewards([self.items[i] for i in chosen], [s.text for s in samples], sequences,
                                     self.pad_id)
        scores = torch.tensor(scores, dtype=torch.float32)
        finished = torch.tensor([s.finished for s in samples])
        if p.missing_eos_penalty is not None:
            scores = no_eos_penalty(scores, finished, p.missing_eos_penalty)
        input_ids, mask = pad_rows(sequences, self.pad_id)
        logps = self._per_rows(lambda i, m: self.ac.policy(i, m, per_token=True), input_ids, mask)
        ref = self.reference.per_token(input_ids, mask).cpu()
        values = self._per_rows(self.ac.values, input_ids) * mask if self.ac.critic is not None \
            else torch.zeros(mask.shape)
        self.ac.train(was)
        sampler = torch.zeros(mask.shape)  # (N, T)
        sampler[mask] = torch.tensor([lp for s in samples for lp in s.logps])
        mismatch = ((logps - sampler) * mask).abs()  # |log π_old − log π_sampler| per response token
        advantages, returns = self._advantages(scores, logps, ref, values, mask)
        kl_per_seq = (k1(logps, ref) * mask).sum(1)  # (N,)
        lengths = mask.sum(1).float()
        stats = {"score": float(scores.mean()), "score_std": float(scores.std()) if len(scores) > 1 else 0.0,
                 "kl": float(kl_per_seq.mean()), "kl_coef": self.kl_ctl.value,
                 "response_length": float(lengths.mean()), "unfinished_fraction": float((~finished).float().mean()),
                 "entropy": float(-(logps * mask).sum() / mask.sum()),
                 "sampler/logp_diff_mean": float(mismatch.sum() / mask.sum()),
                 "sampler/logp_diff_max": float(mismatch.max()), **synced, **parts}
        if self.ac.critic is not None:  # how much of the returns' variance the critic's values explain
            var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
            residual = returns - values
            explained = 1 - masked_mean((residual - masked_mean(residual, mask)) ** 2, mask) / var_returns
            stats["explained_variance"] = float(explained) if float(var_returns) > 0 else 0.0
        self.kl_ctl.update(stats["kl"], len(chosen))
        if self.cfg.generation.log_rollouts:
            self._log(rollout_index, chosen, samples, scores, advantages, values, mask)
        return Rollout(input_ids, mask, logps, values, advantages, returns, sampler, stats)

    def _advantages(self, scores, logps, ref, values, mask):
        """(advantages, returns), each (N, T), by `ppo.advantage`. Every estimator starts from the same per-token
        rewards: −β·(log π − log π_ref) at each token plus the score at the last (for rloo and the baseline, the
        score minus its prompt's baseline, as OpenRLHF does)."""
        p = self.cfg.ppo
        if p.advantage == "rloo":
            scores = rloo(scores, p.samples_per_prompt)
        elif p.advantage == "reinforce++-baseline":
            scores = group_advantages(scores, p.samples_per_prompt, scale=False)
        rewards = kl_shaped_rewards(scores, logps, ref, mask, self.kl_ctl.value)  # (N, T)
        if p.advantage == "gae":
            advantages, returns = gae(rewards, values, mask, p.gamma, p.lam)
            return (whiten(advantages, mask) if p.whiten_advantages else advantages), returns
        returns = discounted_returns(rewards, mask, p.gamma)
        if p.advantage == "rloo":  # its baseline is its normalisation
            return returns, returns
        return batch_normalize(returns, mask), returns  # REINFORCE++: over every token of the rollout

    def _log(self, rollout_index: int, chosen, samples, scores, advantages, values, mask) -> None:
        """rollouts.jsonl: each completion with its score, per-token values and advantages (one write per rollout)."""
        rows = [{"step": rollout_index * self.steps_per_rollout + 1, "item": i, "prompt_ids": list(self.prompt_ids[i]),
                 "completion_ids": s.token_ids, "completion": s.text, "reward": float(score),
                 "advantages": a[m].tolist(), **({"values": v[m].tolist()} if self.ac.critic is not None else {})}
                for i, s, score, a, v, m in zip(chosen, samples, scores, advantages, values, mask)]
        with open(Path(self.cfg.train.output_dir) / "rollouts.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    # -- the loop's protocol --------------------------------------------------------------------------------
    def batches(self, step: int):
        t = self.cfg.train
        rollout_index, k = divmod(step, self.steps_per_rollout)
        if rollout_index != self.rollout_index:
            self.rollout, self.rollout_index = self._collect(rollout_index), rollout_index
        r = self.rollout
        epoch, m = divmod(k, self.minibatches)
        order = list(range(len(r.input_ids)))
        random.Random(t.seed * 7919 + rollout_index * 31 + epoch).shuffle(order)
        rows = order[m * t.batch_size : (m + 1) * t.batch_size]
        step_tokens = int(r.mask[rows].sum())
        for s in range(0, len(rows), t.micro_batch_size):
            idx = torch.tensor(rows[s : s + t.micro_batch_size])
            yield PPOBatch(r.input_ids[idx], r.mask[idx], r.old_logps[idx], r.old_values[idx], r.advantages[idx],
                           r.returns[idx], r.sampler_logps[idx], len(rows), step_tokens, r.stats)

    def loss(self, model, b: PPOBatch):
        p, device = self.cfg.ppo, self.run.device
        ids, mask = b.input_ids.to(device), b.mask.to(device)
        logps = model.policy(ids, mask, per_token=True)
        pg, pg_stats = clipped_policy_loss(logps, b.old_logps.to(device), b.advantages.to(device), mask, p.eps)
        if self.cfg.generation.tis_cap is not None:  # truncated importance sampling (losses/policy.py)
            pg = pg * truncated_is_weights(torch.where(mask, (b.old_logps - b.sampler_logps).to(device), 0.0),
                                           self.cfg.generation.tis_cap)
        per_token = pg
        if model.critic is not None:
            values = model.values(ids)
            vf, vf_stats = clipped_value_loss(values, b.old_values.to(device), b.returns.to(device), mask,
                                              p.value_clip)
            per_token = pg + p.vf_coef * vf
        loss = (per_token * mask).sum() / b.step_tokens  # token mean over the minibatch
        n = torch.tensor(float(len(ids)))
        whole = b.step_rows  # the loop divides by the step's row count: these are parts of the step's sum
        metrics = {"count": n, "tokens": mask.sum().float(), "loss": loss.detach() * whole,
                   "policy_loss": ((pg * mask).sum() / b.step_tokens).detach() * whole,
                   "clip_fraction": pg_stats["clip_fraction"] * n, "approx_kl": pg_stats["approx_kl"] * n}
        if model.critic is not None:
            metrics["value_loss"] = ((vf * mask).sum() / b.step_tokens).detach() * whole
            metrics["value_clip_fraction"] = vf_stats["clip_fraction"] * n
        for key, v in b.stats.items():
            metrics[key] = torch.tensor(v) * n
        return loss, metrics

    def evaluate(self, model):
        return {}


def run(cfg: PPOConfig) -> Path:
    from alignkit.models import reference as ref
    from alignkit.models.heads import ScalarHead, load_scalar_model, save_scalar_model
    from alignkit.models.load import add_lora, disable_dropout
    from alignkit.train.loop import finish, train
    from alignkit.train.setup import load_policy, load_task, open_sampler, start_run

    run = start_run(cfg, max_processes=1)
    cfg, t = run.cfg, run.cfg.train
    items, prompt_ids, rewards, tokenizer = load_task(cfg, run)

    reward_models = [r.model for r in cfg.rewards if r.kind == "model"]
    with_critic = cfg.ppo.advantage == "gae"
    from_reward_model = with_critic and cfg.value.init == "reward-model" and bool(reward_models)
    mode = "adapter" if cfg.model.lora is not None else "copy"
    snapshot, initial = ref.Snapshot(mode), {}

    def keep(model):  # before LoRA: the reference's frozen copy, and the critic's start when not a reward model
        snapshot(model)
        if with_critic and not from_reward_model:
            initial["critic"] = copy.deepcopy(model)

    policy = load_policy(cfg, run, before_adapter=keep)
    reference = ref.model_reference(mode, snapshot, policy, run, t.micro_batch_size)
    if not with_critic:
        critic, critic_from = None, None
    elif from_reward_model:
        critic, critic_from = load_scalar_model(reward_models[0], cfg.model.dtype), reward_models[0]
    else:
        critic, critic_from = ScalarHead(initial["critic"]), "the policy's weights"
    if critic is not None:
        critic.logprob_weight = None  # a value reads the head alone; a reward model's token log-prob term is its own
        disable_dropout(critic.model)
        critic_lora = cfg.value.lora or cfg.model.lora
        if critic_lora is not None:
            critic.model = add_lora(critic.model, critic_lora)
    ac = ActorCritic(policy.module, critic).to(run.device)
    backend = open_sampler(cfg, run, tokenizer, policy)
    try:
        algo = PPO(cfg, items, prompt_ids, rewards, ac, tokenizer, reference, run, backend)
        print(f"ppo: {algo.total_steps} steps ({algo.steps_per_rollout} per rollout of {cfg.ppo.rollout_prompts} "
              f"prompts x {cfg.ppo.samples_per_prompt}); "
              + (f"critic from {critic_from}" if critic is not None else f"advantages: {cfg.ppo.advantage}, no critic")
              + f"; sampler: {backend.name}")
        trained, history = train(algo, ac, run)
    finally:
        backend.close()
    if trained.critic is not None:
        save_scalar_model(trained.critic, tokenizer, run.run_dir / "value", True, "value")
    finish(trained.policy.model, history, tokenizer, cfg, run.run_dir, run.accelerator,
           ("score", "kl", "value_loss") if trained.critic is not None else ("score", "kl", "policy_loss"))
    return run.run_dir
