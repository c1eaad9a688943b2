"""Online DPO: each step, DPO on fresh pairs that the current policy samples and a ranker orders.

Each optimizer step takes the next `train.batch_size` prompts of the task and samples `online.samples_per_prompt`
(k ≥ 2) completions of each from the *current* policy, through the rollout backend GRPO uses (alignkit's sampler
or vLLM engines, given the policy's weights before each step). A ranker scores them:
- `rewards:`, as GRPO takes them: `kind: task` (the task's verifier), `kind: model` (a reward model trained by
  `alignkit rm`), `kind: function` (a TRL-style reward function), weighted and summed; `online.missing_eos_penalty`
  is added to the score of a completion that never ended its turn;
- or `judge:`, a pairwise judge behind an OpenAI-compatible endpoint (see `JudgeRanker`).
The best and the worst scored completion of each prompt make its pair (prompt, chosen, rejected). A prompt whose
completions all score alike carries no preference and gives no pair (counted: `pairs_skipped`). The policy then
takes one step on the step's pairs against a frozen reference, the initial policy (the LoRA model with its adapter
disabled, or a frozen copy):

    loss = mean over pairs of −log σ(β·[(log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))])

(Eq. 7 of Rafailov et al. 2023), or any other `loss.type` of `losses/preference.py` or weighted mix of them, with
`loss.rpo_alpha`'s NLL term on chosen: `alignkit dpo`'s own `PairLoss` computes it. A completion's log-prob is the
sum over its own tokens, the sampled token ids as they are (the end-of-turn token included when the sampler stopped
on one): no text is tokenized again.

Departures from the paper (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback") and from
TRL's OnlineDPOTrainer:
- k ≥ 2 samples, best against worst; the paper and TRL sample 2.
- Ties are skipped; TRL makes the first of two equal completions the chosen one.
- `missing_eos_penalty` is added (normally negative), as PPO's is; TRL subtracts a positive one (its 1.0 is −1.0).
- The judge sees each comparison in both orders; when they disagree it is a tie.
- A step without any pair makes no update: its line in metrics.jsonl has `skipped: 1` and its samples' figures,
  and the learning-rate schedule moves on as if it had updated (it follows step numbers).
- On resume, the resumed step's prompts are sampled again by the restored policy, with the same seeds.

Several processes: each samples and ranks its own share of the step's prompts; the loss is the mean over the pairs
of every process (their number is summed), and a process left without a pair joins the gradient all-reduce with a
zero-weight stand-in pair.

Run it:
    alignkit online-dpo --config configs/online-dpo/smollm2-addition.yaml
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.algos.dpo import PairLoss, RewardMean
from alignkit.config import OnlineDPOConfig
from alignkit.data.chat import TokenizedPair
from alignkit.data.collate import PairBatch, collate, stream_indices
from alignkit.losses.preference import NEEDS_REFERENCE
from alignkit.losses.shaping import no_eos_penalty


def best_and_worst(scores: list[float]) -> tuple[int, int] | None:
    """(index of the best, index of the worst) of one prompt's completion scores, the first one on a tie at either
    end; None when every score is the same (no preference to learn from)."""
    best, worst = max(scores), min(scores)
    if best == worst:
        return None
    return scores.index(best), scores.index(worst)


_PLACEHOLDER = re.compile(r"\{(question|answer_a|answer_b)\}")


class JudgeRanker:
    """Scores completions with a pairwise judge (`judge:`), with `alignkit eval judge pairwise`'s template, parser
    and rule: every two completions of a prompt are compared in both orders, A/B then B/A, which cancels the judge's
    position bias; a comparison is won only when both orders agree, and anything else (a disagreement, "[[C]]", a
    verdict still unreadable after `judge.retries` re-asks) is a tie. A completion's score is its wins minus its
    losses: with k = 2, +1 and −1, or 0 and 0 (no pair). A completion holding chat-control text is never shown to
    the judge: it loses to every completion holding none.

    items: the task's prompts, checked here for the judge's control text (refused naming file, row and field)."""

    names = ("judge/comparisons", "judge/ties", "judge/unparseable")  # the counts __call__ returns

    def __init__(self, cfg, items):
        from alignkit.eval.judges import EndpointJudge

        self.cfg = cfg
        self.judge = EndpointJudge(cfg.url, cfg.model, cfg.api_key_env, cfg.concurrency, cfg.max_tokens)
        for item in items:
            self.judge.control.check(item.question if item.conversation is None else list(item.conversation),
                                     item.meta.get("where", f"task item {item.id}"), item.meta.get("field", "question"))

    @staticmethod
    def _question(item) -> str:
        if item.conversation is None:
            return item.question
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in item.conversation)

    def __call__(self, items, groups: list[list[str]]) -> tuple[list[float], dict[str, float]]:
        """One score per completion (the groups' completions in order) and the comparisons' counts."""
        from alignkit.eval.judge import load_template, outcome, parse_verdict
        from alignkit.eval.judges import ask, unreadable

        scores = [[0.0] * len(texts) for texts in groups]
        asked, conversations = [], []  # (group, i, j) per comparison; two conversations each, i shown first, then j
        for g, (item, texts) in enumerate(zip(items, groups)):
            system, template = load_template("pairwise", None, item.language)
            bad = [self.judge.control.find(t) is not None for t in texts]
            for i in range(len(texts)):
                for j in range(i + 1, len(texts)):
                    if bad[i] or bad[j]:
                        if bad[i] != bad[j]:  # the clean one wins, unseen by the judge
                            scores[g][j if bad[i] else i] += 1
                            scores[g][i if bad[i] else j] -= 1
                        continue
                    asked.append((g, i, j))
                    for a, b in ((i, j), (j, i)):
                        values = {"question": self._question(item), "answer_a": texts[a], "answer_b": texts[b]}
                        user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)  # one pass: answers stay as is
                        conversations.append([{"role": "system", "content": system}, {"role": "user", "content": user}])
        replies = ask(self.judge, conversations, parse_verdict, self.cfg.retries) if conversations else []
        ties = unread = 0
        for n, (g, i, j) in enumerate(asked):
            result = outcome(replies[2 * n][1], replies[2 * n + 1][1])  # i's result: win, loss, tie, unparseable
            if result in ("win", "loss"):
                winner, loser = (i, j) if result == "win" else (j, i)
                scores[g][winner] += 1
                scores[g][loser] -= 1
            ties += result == "tie"
            unread += result == "unparseable"
        if asked and unread == len(asked):
            raise unreadable(self.judge, f"none of the {len(asked)} comparisons got a readable verdict in both orders",
                             [text for text, _, _ in replies], self.cfg.retries)
        return [s for group in scores for s in group], {"judge/comparisons": float(len(asked)),
                                                         "judge/ties": float(ties), "judge/unparseable": float(unread)}


@dataclass
class OnlineBatch:
    """One micro-batch of pairs, and what its loss needs of the whole step."""

    pairs: PairBatch  # input_ids (2b, T): the b chosen completions, then the b rejected ones
    ref_chosen: torch.Tensor  # (b,) the reference's summed log-probs of chosen
    ref_rejected: torch.Tensor  # (b,) and of rejected
    weight: float  # 1, or 0 for a stand-in pair on a process with none to train
    step_pairs: int  # pairs of the step, all processes: the loss's normaliser
    stats: dict[str, float]  # the step's samples: rewards, lengths, pairs (all processes)


class OnlineDPO:
    """Online DPO for `train.loop.train`.

    rewards: an `alignkit.rewards.Rewards` (the ranker unless `judge` is given); judge: a `JudgeRanker` or None;
    policy: `train.setup.Policy`; reference: answers `pairs(PairBatch) -> (chosen, rejected)` summed log-probs
    (`models/reference.py`); backend: a `generation.rollout` backend."""

    def __init__(self, cfg: OnlineDPOConfig, items, prompt_ids, rewards, judge, policy, tokenizer, reference, run,
                 backend):
        self.cfg, self.items, self.prompt_ids, self.rewards, self.judge = cfg, items, prompt_ids, rewards, judge
        self.policy, self.reference, self.run, self.backend = policy, reference, run, backend
        t = cfg.train
        self.total_steps = t.max_steps or math.ceil(t.epochs * len(items) / t.batch_size)
        self.pad_id = tokenizer.pad_token_id
        self.reward_mean = None  # bco_pair's δ, kept as `alignkit dpo` keeps it
        if "bco_pair" in cfg.loss.types and cfg.loss.bco_running_mean:
            self.reward_mean = RewardMean(run.run_dir / "checkpoints" if t.save_every else None, run.rank,
                                          lambda x: run.accelerator.reduce(x.to(run.device), "sum").cpu())
        self.loss_fn = PairLoss(cfg.loss, self.reward_mean)  # DPO's: every loss.type, weights, the RPO term
        scores = list(judge.names) if judge is not None else ["reward", "reward_sq", *rewards.names]
        self.sum_names = [*scores, "completions", "length", "unfinished", "pairs", "pairs_skipped", "score_margin"]
        self.last_stats: dict[str, float] = {}  # the latest step's figures, for a step without an update

    # -- one step's pairs: sample, rank, pair, reference log-probs ------------------------------------------
    @torch.no_grad()
    def _sample(self, mine: list[int], step: int):
        gen = self.cfg.generation
        with self.run.autocast():  # the local sampler computes in the run's precision
            return self.backend.generate([self.prompt_ids[i] for i in mine], n=self.cfg.online.samples_per_prompt,
                                         temperature=gen.temperature, top_p=gen.top_p,
                                         max_new_tokens=gen.max_new_tokens, prompt_keys=mine,
                                         seed=self.cfg.train.seed * 1_000_003 + step)

    def _score(self, mine: list[int], samples) -> tuple[list[float], dict[str, float]]:
        """One score per completion, by the judge or the rewards (+ the missing-eos penalty), and sums to log."""
        if self.judge is not None:
            return self.judge([self.items[i] for i in mine], [[s.text for s in group] for group in samples])
        k = self.cfg.online.samples_per_prompt
        flat = [s for group in samples for s in group]
        sequences = [(self.prompt_ids[i], s.token_ids) for i, group in zip(mine, samples) for s in group]
        scores, means = self.rewards([self.items[i] for i in mine for _ in range(k)], [s.text for s in flat],
                                     sequences, self.pad_id)
        penalty = self.cfg.online.missing_eos_penalty
        if penalty is not None:
            scores = no_eos_penalty(torch.tensor(scores, dtype=torch.float64),
                                    torch.tensor([s.finished for s in flat]), penalty).tolist()
        sums = {name: v * len(flat) for name, v in means.items()}
        return scores, {**sums, "reward": sum(scores), "reward_sq": sum(x * x for x in scores)}

    def _pairs(self, step: int):
        """This process's pairs of step `step` (0-based), the step's figures summed over processes, and the log rows."""
        from alignkit.train.setup import sync_sampler

        cfg, run, k = self.cfg, self.run, self.cfg.online.samples_per_prompt
        chosen = stream_indices(step * cfg.train.batch_size, cfg.train.batch_size, len(self.items), cfg.train.seed)
        mine = chosen[run.rank :: run.world]
        try:
            synced = sync_sampler(self.backend, self.policy.model, run)
        except AlignkitError as e:
            raise AlignkitError(f"step {step + 1}: {e}; rerun the same command to resume from the last checkpoint") \
                from None
        started = time.perf_counter()
        sums = dict.fromkeys(self.sum_names, 0.0)
        pairs: list[TokenizedPair] = []
        logged: list[dict] = []
        error = None
        try:
            samples = self._sample(mine, step)
            scores, parts = self._score(mine, samples)
            for j, i in enumerate(mine):
                group = scores[j * k : (j + 1) * k]
                picked = best_and_worst(group)
                if picked is not None:
                    w, l = picked
                    pairs.append(TokenizedPair(len(pairs), tuple(self.prompt_ids[i]), tuple(samples[j][w].token_ids),
                                               tuple(samples[j][l].token_ids)))
                    sums["score_margin"] += group[w] - group[l]
                roles = {picked[0]: "chosen", picked[1]: "rejected"} if picked else {}
                logged += [{"step": step + 1, "rank": run.rank, "item": i, "prompt_ids": list(self.prompt_ids[i]),
                            "completion_ids": s.token_ids, "completion": s.text, "finished": s.finished,
                            "score": group[n], "pair": roles.get(n)} for n, s in enumerate(samples[j])]
            flat = [s for group in samples for s in group]
            sums.update(parts)
            sums.update(completions=len(flat), length=sum(len(s.token_ids) for s in flat),
                        unfinished=sum(not s.finished for s in flat), pairs=len(pairs),
                        pairs_skipped=len(mine) - len(pairs))
        except AlignkitError as e:  # every process learns of it in the sum below, so none waits forever
            error = str(e)
        *values, failed = run.sum_over_processes([sums[n] for n in self.sum_names] + [error is not None])
        if failed:
            raise AlignkitError(f"step {step + 1}: {error or f'{int(failed)} other process(es) failed'}; rerun the "
                                "same command to resume from the last checkpoint")
        total = dict(zip(self.sum_names, values))
        stats = {**self._stats(total), **synced, "generation_seconds": time.perf_counter() - started}
        return pairs, stats, logged

    def _stats(self, total: dict[str, float]) -> dict[str, float]:
        n, pairs = max(total["completions"], 1.0), total["pairs"]
        out = {"pairs": pairs, "pairs_skipped": total["pairs_skipped"], "completion_length": total["length"] / n,
               "unfinished_fraction": total["unfinished"] / n}
        if pairs:
            out["score_margin"] = total["score_margin"] / pairs  # chosen's score − rejected's, per pair
        if self.judge is not None:
            asked = max(total["judge/comparisons"], 1.0)
            out["judge/ties"] = total["judge/ties"] / asked  # of the comparisons sent: undecided, or no verdict
            out["judge/unparseable"] = total["judge/unparseable"] / asked
        else:
            var = (total["reward_sq"] - total["reward"] ** 2 / n) / (n - 1) if n > 1 else 0.0
            out.update(reward=total["reward"] / n, reward_std=math.sqrt(max(var, 0.0)),
                       **{k: v / n for k, v in total.items() if k.startswith("rewards/")})
        return out

    def _log(self, rows: list[dict]) -> None:
        """rollouts.jsonl: every completion of the step, its score and its part in a pair (one write)."""
        with open(Path(self.cfg.train.output_dir) / "rollouts.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    # -- the loop's protocol --------------------------------------------------------------------------------
    def batches(self, step: int):
        if self.reward_mean is not None:
            self.reward_mean.begin(step)
        pairs, stats, logged = self._pairs(step)
        self.last_stats = stats
        if self.cfg.generation.log_rollouts:
            self._log(logged)
        step_pairs = int(stats["pairs"])
        if step_pairs == 0:  # no prompt of any process had a preference: every process skips the update
            if self.run.accelerator.is_main_process:
                print(f"online-dpo, step {step + 1}: the samples of all {self.cfg.train.batch_size} prompts scored "
                      "alike; no pair: this step makes no update")
            return
        if not pairs:  # others train: join their all-reduce with a pair that weighs nothing
            stand_in = TokenizedPair(0, (self.pad_id,), (self.pad_id,), (self.pad_id,))
            yield OnlineBatch(collate([stand_in], self.pad_id), torch.zeros(1), torch.zeros(1), 0.0, step_pairs, stats)
            return
        mb = self.cfg.train.micro_batch_size
        for s in range(0, len(pairs), mb):
            batch = collate(pairs[s : s + mb], self.pad_id)
            ref_chosen, ref_rejected = self.reference.pairs(batch.to(self.run.device))  # (b,) each, no grad
            yield OnlineBatch(batch, ref_chosen.float().cpu(), ref_rejected.float().cpu(), 1.0, step_pairs, stats)

    def loss(self, model, b: OnlineBatch):
        device, w = self.run.device, b.weight
        batch = b.pairs.to(device)
        n = batch.size
        logps = model(batch.input_ids, batch.response_mask)  # (2b,): chosen, then rejected
        losses, sums = self.loss_fn(logps[:n], logps[n:], b.ref_chosen.to(device), b.ref_rejected.to(device),
                                    batch.chosen_tokens, batch.rejected_tokens, train=w > 0)  # (b,), metric sums
        count = torch.tensor(float(n) * w)
        metrics = {**{k: v * w for k, v in sums.items()}, "count": count, "tokens": torch.tensor(batch.tokens * w)}
        for k, v in b.stats.items():
            metrics[k] = torch.tensor(v) * count
        # The mean over the step's pairs, all processes; × world because DDP averages gradients over processes.
        return losses.sum() * self.run.world * w / b.step_pairs, metrics

    def evaluate(self, model):
        return {}

    def idle_metrics(self) -> dict[str, float]:
        """A step without a pair still reports its samples (rewards, lengths, skipped prompts)."""
        return dict(self.last_stats)


def run(cfg: OnlineDPOConfig) -> Path:
    from alignkit.models import reference as ref
    from alignkit.train.loop import finish, train, whole
    from alignkit.train.setup import fresh_module, load_policy, load_task, open_sampler, start_run

    run = start_run(cfg, shardable=False)
    cfg, t = run.cfg, run.cfg.train
    if t.batch_size % run.world:
        raise AlignkitError(f"train.batch_size={t.batch_size} (prompts per step) does not divide among {run.world} "
                            "processes")
    items, prompt_ids, rewards, tokenizer = load_task(cfg, run)
    judge = JudgeRanker(cfg.judge, items) if cfg.judge is not None else None

    needed = any(NEEDS_REFERENCE[name] for name in cfg.loss.types)
    mode = "none" if not needed else "adapter" if cfg.model.lora is not None else "copy"
    snapshot = ref.Snapshot(mode)
    policy = load_policy(cfg, run, before_adapter=snapshot)
    reference = ref.model_reference(mode, snapshot, policy, run, t.micro_batch_size) if mode != "none" \
        else ref.NoReference()
    backend = open_sampler(cfg, run, tokenizer, policy)
    try:
        algo = OnlineDPO(cfg, items, prompt_ids, rewards, judge, policy, tokenizer, reference, run, backend)
        ranker = f"judge {judge.judge.name}" if judge is not None else \
            "rewards " + ", ".join(r.function or r.model or r.kind for r in cfg.rewards)
        kind = {"none": f"none ({', '.join(cfg.loss.types)})", "adapter": "adapter off", "copy": "frozen copy"}[mode]
        print(f"online-dpo: {algo.total_steps} steps of {t.batch_size} prompts x {cfg.online.samples_per_prompt} "
              f"samples (best vs worst); ranker: {ranker}; reference: {kind}; sampler: {backend.name}")
        trained, history = train(algo, policy.module, run)
    finally:
        backend.close()
    final = whole(trained, run, lambda: fresh_module(cfg))
    finish(None if final is None else final.model, history, tokenizer, cfg, run.run_dir, run.accelerator,
           ("reward", "pairs", "loss", "rewards/accuracies", "rewards/margins"))
    return run.run_dir
