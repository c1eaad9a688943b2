"""GRPO and DAPO: reinforcement learning from verifiable rewards, without a critic.

Each generation round samples G completions for each of B prompts (one batched KV-cache pass), scores them
(task reward, user functions, weighted), and turns rewards into advantages within each group:
A = (r − mean_group) / std_group (Shao et al. 2024, §4.1.2; `scale_rewards: false` drops the std, as Dr. GRPO).
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

Run it:
    alignkit grpo --config configs/grpo/smollm2-addition.yaml
    alignkit dapo --config configs/grpo/smollm2-addition.yaml      # = preset: dapo
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.config import GRPOConfig, save_resolved
from alignkit.data.collate import pad_rows, stream_indices
from alignkit.losses.advantages import group_advantages
from alignkit.losses.kl import k3
from alignkit.losses.policy import clipped_policy_loss
from alignkit.losses.reduce import aggregate
from alignkit.losses.shaping import overlong_penalty

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """Completions of one generation round, padded: rows are prompt + completion, right-padded."""

    input_ids: torch.Tensor  # (N, T)
    response_mask: torch.Tensor  # (N, T) bool
    advantages: torch.Tensor  # (N,)
    old_logps: torch.Tensor | None  # (N, T) per token, None when on-policy
    ref_logps: torch.Tensor | None  # (N, T) per token, None when β = 0
    stats: dict[str, float]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class GRPO:
    """The GRPO / DAPO algorithm for `train.loop.train`."""

    def __init__(self, cfg: GRPOConfig, items, prompt_ids, rewards, policy, tokenizer, reference, device,
                 rank: int = 0, world: int = 1, say=print):
        self.cfg, self.items, self.prompt_ids, self.rewards = cfg, items, prompt_ids, rewards
        self.policy, self.tokenizer, self.reference = policy, tokenizer, reference
        self.device, self.rank, self.world, self.say = device, rank, world, say
        g, t = cfg.grpo, cfg.train
        self.prompts_per_step = t.batch_size // g.group_size
        rounds = math.ceil(t.epochs * len(items) / self.prompts_per_step)
        self.total_steps = t.max_steps or rounds * g.iterations
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.rollout: Rollout | None = None
        self.rollout_round = -1
        self.cursor = 0  # prompts drawn so far (dynamic sampling draws extra ones)
        self.step_tokens = 0

    # -- prompts --------------------------------------------------------------------------------------
    def _next_prompts(self, n: int) -> list[int]:
        out = stream_indices(self.cursor, n, len(self.items), self.cfg.train.seed)
        self.cursor += n
        return out

    # -- one generation round -------------------------------------------------------------------------
    @torch.no_grad()
    def _generate_round(self, round_index: int) -> Rollout:
        from alignkit.generation.sample import generate
        from alignkit.models.logprobs import base_model

        g, gen = self.cfg.grpo, self.cfg.generation
        G, want = g.group_size, self.prompts_per_step
        kept: list[tuple[int, list, list[float]]] = []  # (item index, samples, rewards)
        dropped = rounds = 0
        reward_parts: dict[str, list[float]] = {}
        all_rewards, lengths, unfinished = [], [], 0
        self.cursor = max(self.cursor, round_index * want)
        while len(kept) < want and rounds < (g.max_generation_rounds if g.dynamic_sampling else 1):
            rounds += 1
            chosen = self._next_prompts(want - len(kept))
            samples = generate(base_model(self.policy.model), self.tokenizer, [self.prompt_ids[i] for i in chosen],
                               n=G, temperature=gen.temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens,
                               seed=self.cfg.train.seed * 1_000_003 + round_index * 101 + rounds,  # fresh noise
                               batch_size=gen.batch_size, prompt_keys=chosen)
            flat_items = [self.items[i] for i in chosen for _ in range(G)]
            flat = [s for group in samples for s in group]
            sequences = [(self.prompt_ids[i], s.token_ids) for i, group in zip(chosen, samples) for s in group]
            scores, means = self.rewards(flat_items, [s.text for s in flat], sequences, self.pad_id)
            for k, v in means.items():
                reward_parts.setdefault(k, []).append(v)
            if g.overlong_buffer:
                shaped = overlong_penalty(torch.tensor([float(len(s.token_ids)) for s in flat]), gen.max_new_tokens,
                                          g.overlong_buffer, g.overlong_penalty)
                scores = [r + float(p) for r, p in zip(scores, shaped)]
            all_rewards += scores
            lengths += [len(s.token_ids) for s in flat]
            unfinished += sum(not s.finished for s in flat)
            for j, i in enumerate(chosen):
                group_scores = scores[j * G : (j + 1) * G]
                if g.dynamic_sampling and max(group_scores) == min(group_scores):
                    dropped += 1
                    continue
                kept.append((i, samples[j], group_scores))
        if g.dynamic_sampling:
            line = (f"dynamic sampling, step {round_index * g.iterations + 1}: kept {len(kept)}/{want} groups, "
                    f"dropped {dropped} with equal rewards, {rounds} generation round(s) ({rounds - 1} refill(s))")
            if len(kept) < want:
                line += (f"; max_generation_rounds={g.max_generation_rounds} reached, training on {len(kept)} groups"
                         if kept else "; no group has differing rewards: this step makes no update")
            self.say(line)
        stats = {
            "reward": sum(all_rewards) / len(all_rewards),
            "reward_std": float(torch.tensor(all_rewards).std()) if len(all_rewards) > 1 else 0.0,
            "completion_length": sum(lengths) / len(lengths),
            "unfinished_fraction": unfinished / len(lengths),
            "groups_dropped": float(dropped),
            "generation_rounds": float(rounds),
            **{k: sum(v) / len(v) for k, v in reward_parts.items()},
        }
        if not kept:
            return Rollout(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0),
                           None, None, stats)
        rows = [(list(self.prompt_ids[i]), s.token_ids) for i, group, _ in kept for s in group]
        input_ids, mask = pad_rows(rows, self.pad_id)
        advantages = group_advantages(torch.tensor([r for *_, rs in kept for r in rs]), G, scale=g.scale_rewards)
        old = self._per_token(self.policy, input_ids, mask) if g.iterations > 1 else None
        ref = self.reference(input_ids, mask) if self.reference is not None else None
        return Rollout(input_ids, mask, advantages, old, ref, stats)

    def _per_token(self, fn, input_ids, mask) -> torch.Tensor:
        mb = self.cfg.train.micro_batch_size
        was = self.policy.training
        self.policy.eval()
        out = torch.cat([fn(input_ids[s : s + mb].to(self.device), mask[s : s + mb].to(self.device), per_token=True)
                         for s in range(0, len(input_ids), mb)])
        self.policy.train(was)
        return out

    # -- the loop's protocol --------------------------------------------------------------------------
    def batches(self, step: int):
        g, t = self.cfg.grpo, self.cfg.train
        round_index = step // g.iterations
        if self.rollout_round != round_index:
            self.rollout, self.rollout_round = self._generate_round(round_index), round_index
        r = self.rollout
        # The loss is normalised over every completion of the round (and every token, for token-mean). Rows
        # with zero advantage and no KL term add nothing to it or to the gradient, so they are not run.
        useful = [i for i in range(len(r)) if r.ref_logps is not None or float(r.advantages[i]) != 0.0]
        mine = useful[self.rank :: self.world]  # this process's share
        self.step_rows = len(r)
        self.step_tokens = int(r.response_mask.sum())
        self.trained_rows = len(useful)
        for s in range(0, len(mine), t.micro_batch_size):
            yield mine[s : s + t.micro_batch_size]

    def loss(self, model, rows: list[int]):
        g, r = self.cfg.grpo, self.rollout
        idx = torch.tensor(rows)
        ids, mask = r.input_ids[idx].to(self.device), r.response_mask[idx].to(self.device)
        logps = model(ids, mask, per_token=True)  # (b, T)
        old = r.old_logps[idx].to(self.device) if r.old_logps is not None else logps.detach()
        adv = r.advantages[idx].to(self.device)
        per_token, stats = clipped_policy_loss(logps, old, adv, mask, g.eps_low, g.eps_high)
        kl = None
        if r.ref_logps is not None:
            kl = torch.where(mask, k3(logps, r.ref_logps[idx].to(self.device)), 0.0)
            per_token = per_token + g.beta * kl
        b = len(rows)
        if g.aggregation == "token-mean":  # over every response token of the optimizer step
            loss = aggregate(per_token, mask, "token-mean", global_tokens=self.step_tokens)
        else:  # sequence means, over every sequence of the step
            loss = aggregate(per_token, mask, g.aggregation) * b / self.step_rows
        loss = loss * self.world  # DDP averages gradients over processes
        n = torch.tensor(float(b))
        metrics = {"count": n, "tokens": mask.sum().float(), "loss": loss.detach() * self.trained_rows / self.world,
                   **{k: v * n for k, v in stats.items()}}
        if kl is not None:
            metrics["kl"] = (kl.sum(1) / mask.sum(1).clamp(min=1)).sum().detach()
        for k, v in r.stats.items():
            metrics[k] = torch.tensor(v) * n
        return loss, metrics

    def evaluate(self, model):
        return {}

    def idle_metrics(self) -> dict[str, float]:
        """A step without an update still reports its generation round (rewards, lengths, dropped groups)."""
        return dict(self.rollout.stats) if self.rollout is not None else {}


def run(cfg: GRPOConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from alignkit.data.chat import chat_prompt_ids
    from alignkit.models.load import add_lora, disable_dropout, load_model, load_tokenizer
    from alignkit.models.logprobs import SequenceLogps
    from alignkit.rewards import Rewards
    from alignkit.tasks import make_task, task_items
    from alignkit.train.loop import finish, train

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.bf16:
        log.warning("train.bf16 is not used by grpo yet; computing in float32")
    accelerator = Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(t.seed)
    run_dir = Path(t.output_dir)
    if accelerator.is_main_process:
        save_resolved(cfg, run_dir)

    task = make_task(cfg.task)
    items = task_items(task, cfg.task)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    rewards = Rewards(cfg.rewards, task, tokenizer, accelerator.device)
    prompt_ids = [chat_prompt_ids(tokenizer, item.messages()) for item in items]
    print(f"data: {len(items)} prompts from {cfg.task.file or cfg.task.name} ({cfg.task.split})")

    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.allow_pickle)
    disable_dropout(model)
    g = cfg.grpo
    frozen = None
    if g.beta > 0 and cfg.model.lora is None:
        frozen = SequenceLogps(copy.deepcopy(model), t.logits_chunk, t.share_prompts).eval().requires_grad_(False)
    if cfg.model.lora is not None:
        model = add_lora(model, cfg.model.lora)
    policy = SequenceLogps(model, t.logits_chunk, t.share_prompts).to(accelerator.device)
    reference = None
    if g.beta > 0:
        off = model.disable_adapter if cfg.model.lora is not None else contextlib.nullcontext
        source = policy if frozen is None else frozen.to(accelerator.device)

        def reference(input_ids, mask):
            with off():
                return algo._per_token(source, input_ids, mask)

    algo = GRPO(cfg, items, prompt_ids, rewards, policy, tokenizer, reference, accelerator.device, rank, world)
    ref_kind = "none (beta = 0)" if reference is None else "adapter off" if frozen is None else "frozen copy"
    print(f"{cfg.preset}: {algo.total_steps} steps of {algo.prompts_per_step} prompts x {g.group_size} completions; "
          f"reference: {ref_kind}")
    trained, history = train(algo, policy, t, accelerator, run_dir)
    finish(trained.model, history, tokenizer, cfg, run_dir, accelerator, ("reward", "kl", "completion_length"))
    return run_dir
