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

Departures: the critic is its own model (a decoder + scalar head, LoRA by default when the policy uses
LoRA), started from the reward model when one is given (as OpenRLHF does), else from the policy's weights.
`entropy` is logged as the mean negative log-prob of the sampled tokens (a Monte Carlo estimate).

Run it:
    alignkit ppo --config configs/ppo/smollm2-arith.yaml
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.config import PPOConfig, save_resolved
from alignkit.data.collate import pad_rows, stream_indices
from alignkit.losses.advantages import gae
from alignkit.losses.kl import AdaptiveKLController, FixedKLController, k1, kl_shaped_rewards
from alignkit.losses.policy import clipped_policy_loss
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
    stats: dict[str, float]


class PPO:
    def __init__(self, cfg: PPOConfig, items, prompt_ids, rewards, actor_critic: ActorCritic, tokenizer, reference,
                 device, say=print):
        self.cfg, self.items, self.prompt_ids, self.rewards = cfg, items, prompt_ids, rewards
        self.ac, self.tokenizer, self.reference, self.device, self.say = actor_critic, tokenizer, reference, device, say
        p, t = cfg.ppo, cfg.train
        self.minibatches = p.rollout_prompts // t.batch_size
        self.steps_per_rollout = p.epochs * self.minibatches
        rollouts = math.ceil(t.epochs * len(items) / p.rollout_prompts)
        self.total_steps = t.max_steps or rollouts * self.steps_per_rollout
        self.kl_ctl = (AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.adaptive_kl
                       else FixedKLController(p.kl_coef))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.rollout: Rollout | None = None
        self.rollout_index = -1

    def _prompts(self, rollout_index: int) -> list[int]:
        per = self.cfg.ppo.rollout_prompts
        return stream_indices(rollout_index * per, per, len(self.items), self.cfg.train.seed)

    def _per_rows(self, fn, input_ids, mask=None) -> torch.Tensor:
        mb = self.cfg.train.micro_batch_size
        parts = []
        for s in range(0, len(input_ids), mb):
            ids = input_ids[s : s + mb].to(self.device)
            parts.append(fn(ids) if mask is None else fn(ids, mask[s : s + mb].to(self.device)))
        return torch.cat(parts).cpu()

    @torch.no_grad()
    def _collect(self, rollout_index: int) -> Rollout:
        from alignkit.generation.sample import generate
        from alignkit.models.logprobs import base_model

        p, gen = self.cfg.ppo, self.cfg.generation
        chosen = self._prompts(rollout_index)
        was = self.ac.training
        self.ac.eval()
        samples = [g[0] for g in generate(
            base_model(self.ac.policy.model), self.tokenizer, [self.prompt_ids[i] for i in chosen], n=1,
            temperature=gen.temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens,
            seed=self.cfg.train.seed * 1_000_003 + rollout_index, batch_size=gen.batch_size, prompt_keys=chosen)]
        sequences = [(self.prompt_ids[i], s.token_ids) for i, s in zip(chosen, samples)]
        scores, parts = self.rewards([self.items[i] for i in chosen], [s.text for s in samples], sequences,
                                     self.pad_id)
        scores = torch.tensor(scores, dtype=torch.float32)
        finished = torch.tensor([s.finished for s in samples])
        if p.missing_eos_penalty is not None:
            scores = no_eos_penalty(scores, finished, p.missing_eos_penalty)
        input_ids, mask = pad_rows(sequences, self.pad_id)
        logps = self._per_rows(lambda i, m: self.ac.policy(i, m, per_token=True), input_ids, mask)
        ref = self._per_rows(self.reference, input_ids, mask)
        values = self._per_rows(self.ac.values, input_ids) * mask
        self.ac.train(was)
        rewards = kl_shaped_rewards(scores, logps, ref, mask, self.kl_ctl.value)  # (N, T)
        advantages, returns = gae(rewards, values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = whiten(advantages, mask)
        kl_per_seq = (k1(logps, ref) * mask).sum(1)  # (N,)
        lengths = mask.sum(1).float()
        var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        explained = 1 - masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask) / var_returns
        stats = {"score": float(scores.mean()), "score_std": float(scores.std()) if len(scores) > 1 else 0.0,
                 "kl": float(kl_per_seq.mean()), "kl_coef": self.kl_ctl.value,
                 "response_length": float(lengths.mean()), "unfinished_fraction": float((~finished).float().mean()),
                 "entropy": float(-(logps * mask).sum() / mask.sum()),
                 "explained_variance": float(explained) if float(var_returns) > 0 else 0.0, **parts}
        self.kl_ctl.update(stats["kl"], len(chosen))
        return Rollout(input_ids, mask, logps, values, advantages, returns, stats)

    # -- the loop's protocol --------------------------------------------------------------------------
    def batches(self, step: int):
        t = self.cfg.train
        rollout_index, k = divmod(step, self.steps_per_rollout)
        if rollout_index != self.rollout_index:
            self.rollout, self.rollout_index = self._collect(rollout_index), rollout_index
        epoch, m = divmod(k, self.minibatches)
        order = list(range(len(self.rollout.input_ids)))
        random.Random(t.seed * 7919 + rollout_index * 31 + epoch).shuffle(order)
        rows = order[m * t.batch_size : (m + 1) * t.batch_size]
        self.step_tokens = int(self.rollout.mask[rows].sum())
        self.step_rows = len(rows)
        for s in range(0, len(rows), t.micro_batch_size):
            yield rows[s : s + t.micro_batch_size]

    def loss(self, model, rows: list[int]):
        p, r = self.cfg.ppo, self.rollout
        idx = torch.tensor(rows)
        ids, mask = r.input_ids[idx].to(self.device), r.mask[idx].to(self.device)
        logps = model.policy(ids, mask, per_token=True)
        values = model.values(ids)
        pg, pg_stats = clipped_policy_loss(logps, r.old_logps[idx].to(self.device), r.advantages[idx].to(self.device),
                                           mask, p.eps)
        vf, vf_stats = clipped_value_loss(values, r.old_values[idx].to(self.device), r.returns[idx].to(self.device),
                                          mask, p.value_clip)
        per_token = pg + p.vf_coef * vf
        loss = (per_token * mask).sum() / self.step_tokens  # token mean over the minibatch
        n = torch.tensor(float(len(rows)))
        whole = self.step_rows  # the loop divides by the step's row count: these are parts of the step's sum
        metrics = {"count": n, "tokens": mask.sum().float(), "loss": loss.detach() * whole,
                   "policy_loss": ((pg * mask).sum() / self.step_tokens).detach() * whole,
                   "value_loss": ((vf * mask).sum() / self.step_tokens).detach() * whole,
                   "clip_fraction": pg_stats["clip_fraction"] * n, "approx_kl": pg_stats["approx_kl"] * n,
                   "value_clip_fraction": vf_stats["clip_fraction"] * n}
        for key, v in r.stats.items():
            metrics[key] = torch.tensor(v) * n
        return loss, metrics

    def evaluate(self, model):
        return {}


def run(cfg: PPOConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from alignkit import AlignkitError
    from alignkit.data.chat import chat_prompt_ids
    from alignkit.models.heads import ScalarHead, load_scalar_model, save_scalar_model
    from alignkit.models.load import add_lora, disable_dropout, load_model, load_tokenizer
    from alignkit.models.logprobs import SequenceLogps
    from alignkit.rewards import Rewards
    from alignkit.tasks import make_task, task_items
    from alignkit.train.loop import finish, train

    t = cfg.train
    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        raise AlignkitError("alignkit ppo runs in one process for now (launch it without accelerate)")
    set_seed(t.seed)
    run_dir = Path(t.output_dir)
    save_resolved(cfg, run_dir)
    task = make_task(cfg.task)
    items = task_items(task, cfg.task)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    rewards = Rewards(cfg.rewards, task, tokenizer, accelerator.device)
    prompt_ids = [chat_prompt_ids(tokenizer, item.messages()) for item in items]
    print(f"data: {len(items)} prompts from {cfg.task.file or cfg.task.name} ({cfg.task.split})")

    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.allow_pickle)
    disable_dropout(model)
    reward_models = [r.model for r in cfg.rewards if r.kind == "model"]
    if cfg.value.init == "reward-model" and reward_models:
        critic = load_scalar_model(reward_models[0], cfg.model.dtype)
        critic_from = reward_models[0]
    else:
        critic = ScalarHead(copy.deepcopy(model))
        critic_from = "the policy's weights"
    disable_dropout(critic.model)
    critic_lora = cfg.value.lora or cfg.model.lora
    if critic_lora is not None:
        critic.model = add_lora(critic.model, critic_lora)
    frozen = None
    if cfg.model.lora is None:
        frozen = SequenceLogps(copy.deepcopy(model), t.logits_chunk, t.share_prompts).eval().requires_grad_(False)
    else:
        model = add_lora(model, cfg.model.lora)
    policy = SequenceLogps(model, t.logits_chunk, t.share_prompts)
    ac = ActorCritic(policy, critic).to(accelerator.device)
    off = model.disable_adapter if cfg.model.lora is not None else contextlib.nullcontext
    source = policy if frozen is None else frozen.to(accelerator.device)

    def reference(input_ids, mask):
        with off():
            return source(input_ids, mask, per_token=True)

    algo = PPO(cfg, items, prompt_ids, rewards, ac, tokenizer, reference, accelerator.device)
    print(f"ppo: {algo.total_steps} steps ({algo.steps_per_rollout} per rollout of {cfg.ppo.rollout_prompts} "
          f"prompts); critic from {critic_from}")
    trained, history = train(algo, ac, t, accelerator, run_dir)
    save_scalar_model(trained.critic, tokenizer, run_dir / "value", True, "value")
    finish(trained.policy.model, history, tokenizer, cfg, run_dir, accelerator, ("score", "kl", "value_loss"))
    return run_dir
