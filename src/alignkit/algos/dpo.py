"""Direct Preference Optimization and its variants: every loss of TRL's `DPOTrainer` `loss_type` (IPO, hinge,
robust/cDPO, EXO, NCA, BCO, SPPO, AOT, APO, DiscoPOP, length-normalised DPO, SFT), weighted mixes of them (MPO),
f-divergence DPO, SimPO, ORPO and CPO, + an NLL term on chosen.

A trainable policy and (for the reference-based losses) a frozen reference learn from (prompt, chosen, rejected)
triples; a response's log-prob is the sum over its own tokens (DESIGN.md's token-boundary contract). The loss is
Eq. 7 of Rafailov et al. 2023, −log σ(β·[(log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))]),
or one of its variants (`losses/preference.py`), or a weighted sum of several (`loss.type: [...]`, `loss.weights`).

Departures from the paper and from TRL:
- By default the reference is not kept in memory: its log-probs are computed once, before training, by
  the initial policy and cached on disk, keyed by the model weights, the exact token ids and the
  precision. A rerun reuses them. `reference.mode: copy` keeps a frozen copy instead (TRL's default);
  `adapter` uses the LoRA model with its adapter disabled; `precomputed` reads an `alignkit logps` file.
  simpo, orpo, cpo and sft need no reference, and none is loaded.
- Rows too long for `max_length` / `max_prompt_length` are dropped (and counted), never truncated, so a
  response always ends with its end-of-turn token.
- The RPO term (`loss.rpo_alpha`), `sft`, and ORPO's and CPO's NLL terms are each pair's mean token NLL of
  chosen's response, averaged over pairs (TRL: one token mean over the batch, with the prompt for ORPO).
- bco_pair's δ (the running mean of the rewards) moves once per optimizer step, with all the step's pairs over
  all processes, and stays fixed within a step and in evaluation (TRL ≤ 0.28 moved it every micro-batch and in
  evaluation; TRL 1.x sets δ = 0, `loss.bco_running_mean: false`). It is kept beside the checkpoints, so a
  resumed run goes on with the δ it had.
- aot and aot_unpaired sort over each micro-batch (TRL: each device's batch).

Run it:
    alignkit dpo --config configs/dpo/smollm2-arith.yaml [train.max_steps=20 loss.type=orpo ...]
    accelerate launch --num_processes 2 -m alignkit.cli dpo --config ...   # DDP / FSDP / DeepSpeed
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.config import DPOConfig, LossConfig
from alignkit.data.collate import PairBatch, collate, micro_batches
from alignkit.losses.preference import LOSSES, NEEDS_REFERENCE, nll
from alignkit.train.loop import held_out_sums


class RewardMean:
    """bco_pair's δ: the mean of every reward (β·log-ratio of chosen and of rejected) of the optimizer steps done.

    `begin(step)` is called by every process at the start of each step: it folds the step before in (summed over
    processes) or, on the first call of a resumed run, reads the sums back: each process appends one line
    {step, sum, count} per micro-batch to its own file in `directory`, so every step before a checkpoint is on disk."""

    def __init__(self, directory: Path | None, rank: int, reduce):
        self.file = None if directory is None else directory / f"bco-rewards-rank{rank}.jsonl"
        self.reduce = reduce  # (2,) tensor -> its sum over processes
        self.total = torch.zeros(2, dtype=torch.float64)  # (reward sum, count) of the steps done, all processes
        self.pending = torch.zeros(2, dtype=torch.float64)  # this process, this step
        self.step: int | None = None

    @property
    def delta(self) -> float:
        return float(self.total[0] / self.total[1]) if self.total[1] else 0.0

    def begin(self, step: int) -> None:
        if self.step is None and step > 0:
            self._restore(step)
        elif self.step is not None:
            self.total += self.reduce(self.pending.clone())
        elif self.file is not None:
            self.file.unlink(missing_ok=True)  # a fresh run
        self.pending.zero_()
        self.step = step

    def add(self, rewards: torch.Tensor) -> None:
        s, n = float(rewards.double().sum()), rewards.numel()
        self.pending += torch.tensor([s, n], dtype=torch.float64)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("a") as f:
                f.write(json.dumps({"step": self.step, "sum": s, "count": n}) + "\n")

    def _restore(self, step: int) -> None:
        files = [] if self.file is None else sorted(self.file.parent.glob("bco-rewards-rank*.jsonl"))
        lines = [json.loads(x) for p in files for x in p.read_text().splitlines() if x.strip()]
        kept = [r for r in lines if r["step"] < step]
        if not kept:
            print(f"bco_pair: no record of the rewards before step {step + 1}; δ starts again from 0")
        self.total = torch.tensor([sum(r["sum"] for r in kept), sum(r["count"] for r in kept)], dtype=torch.float64)
        if self.file is not None and self.file.exists():  # drop what the interrupted run did after the checkpoint
            mine = [x for x in self.file.read_text().splitlines() if x.strip() and json.loads(x)["step"] < step]
            tmp = self.file.with_name(self.file.name + f".tmp-{os.getpid()}")
            tmp.write_text("".join(x + "\n" for x in mine))
            os.replace(tmp, self.file)


class PairLoss:
    """`loss` config -> per-pair losses and metric sums: the one place the preference losses are called.

    Each entry of `loss.type` is called with exactly the keyword arguments its function names; the per-pair
    total is Σ weight · loss (+ rpo_alpha · NLL of chosen). Rewards for the metrics come from the first entry."""

    def __init__(self, cfg: LossConfig, reward_mean: RewardMean | None = None):
        self.cfg = cfg
        self.parts = [(name, weight, LOSSES[name], [p.name for p in inspect.signature(LOSSES[name]).parameters.values()
                                                    if p.kind is p.KEYWORD_ONLY])
                      for name, weight in zip(cfg.types, cfg.weights or [1.0] * len(cfg.types))]
        self.reward_mean = reward_mean

    def __call__(self, pc, pr, rc, rr, chosen_tokens, rejected_tokens, train: bool):
        L = self.cfg
        delta = self.reward_mean.delta if self.reward_mean is not None else 0.0
        given = {"beta": L.beta, "label_smoothing": L.label_smoothing, "gamma": L.simpo_gamma,
                 "f_divergence": L.f_divergence, "f_alpha": L.f_alpha, "length_normalized": L.ipo_length_normalized,
                 "tau": L.discopop_tau, "delta": delta, "variant": L.cpo_variant, "nll_weight": L.cpo_alpha,
                 "chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens}
        losses, metrics = 0.0, {}
        for i, (name, weight, fn, wanted) in enumerate(self.parts):
            part, chosen_rewards, rejected_rewards = fn(pc, pr, rc, rr, **{k: given[k] for k in wanted})
            losses = losses + weight * part
            if len(self.parts) > 1:
                metrics[f"loss/{name}"] = part.detach().sum()
            if i == 0:
                first = chosen_rewards, rejected_rewards
            if name == "bco_pair" and self.reward_mean is not None:
                metrics["bco_delta"] = torch.tensor(delta * pc.shape[0])
                if train:
                    self.reward_mean.add(torch.cat([chosen_rewards, rejected_rewards]))
        chosen_rewards, rejected_rewards = first
        metrics.update({
            "rewards/chosen": chosen_rewards.sum(),
            "rewards/rejected": rejected_rewards.sum(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
            "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
            "logps/chosen": pc.detach().sum(),
            "logps/rejected": pr.detach().sum(),
        })
        if L.rpo_alpha or {"orpo", "cpo", "sft"} & set(L.types):
            nll_loss = nll(pc, chosen_tokens)
            if L.rpo_alpha:
                losses = losses + L.rpo_alpha * nll_loss
            metrics["nll_loss"] = nll_loss.detach().sum()
        metrics["loss"] = losses.detach().sum()
        return losses, metrics


class DPO:
    """The DPO algorithm for `train.loop.train`: which pairs each step sees, and the loss on them.

    reference: {"train": ..., "eval": ...}, each answering `pairs(batch) -> (chosen, rejected)` (models/reference.py).
    """

    def __init__(self, cfg: DPOConfig, train_pairs, eval_pairs, reference: dict, pad_id: int, total_steps: int, run):
        self.cfg, self.train_pairs, self.eval_pairs, self.reference = cfg, train_pairs, eval_pairs, reference
        self.pad_id, self.total_steps = pad_id, total_steps
        self.device, self.rank, self.world = run.device, run.rank, run.world
        self.reward_mean = None
        if "bco_pair" in cfg.loss.types and cfg.loss.bco_running_mean:
            self.reward_mean = RewardMean(run.run_dir / "checkpoints" if cfg.train.save_every else None, run.rank,
                                          lambda t: run.accelerator.reduce(t.to(run.device), "sum").cpu())
        self.loss_fn = PairLoss(cfg.loss, self.reward_mean)

    def batches(self, step: int):
        if self.reward_mean is not None:
            self.reward_mean.begin(step)
        for pairs in micro_batches(self.train_pairs, self.cfg.train, step, self.rank, self.world):
            yield collate(pairs, self.pad_id)

    def _terms(self, model, batch: PairBatch, reference, train: bool):
        batch = batch.to(self.device)
        b = batch.size
        logps = model(batch.input_ids, batch.response_mask)  # (2B,): chosen then rejected
        rc, rr = reference.pairs(batch)
        losses, metrics = self.loss_fn(logps[:b], logps[b:], rc, rr, batch.chosen_tokens, batch.rejected_tokens,
                                       train)
        metrics.update(count=torch.tensor(float(b)), tokens=torch.tensor(float(batch.tokens)))
        return losses, metrics

    def loss(self, model, batch: PairBatch):
        losses, metrics = self._terms(model, batch, self.reference["train"], train=True)
        # The mean over the global batch; × world because DDP averages gradients over processes.
        return losses.sum() * self.world / self.cfg.train.batch_size, metrics

    def evaluate(self, model):
        sums = held_out_sums(self.eval_pairs, self.cfg.train.eval_batch_size, self.rank, self.world,
                             lambda chunk: self._terms(model, collate(chunk, self.pad_id), self.reference["eval"],
                                                       train=False)[1])
        sums.pop("tokens", None)
        return sums


def reference_mode(cfg: DPOConfig) -> str:
    if not any(NEEDS_REFERENCE[name] for name in cfg.loss.types):
        return "none"
    mode = cfg.reference.mode
    if mode != "auto":
        return mode
    if cfg.reference.logps:
        return "precomputed"
    if cfg.reference.cache:
        return "cached"
    return "adapter" if cfg.model.lora is not None else "copy"


def run(cfg: DPOConfig):
    from alignkit.data.collate import load_pairs, split_eval, total_steps, visited
    from alignkit.models import reference as ref
    from alignkit.models.load import load_tokenizer
    from alignkit.train.loop import finish, train, whole
    from alignkit.train.setup import fresh_module, load_policy, start_run

    run = start_run(cfg, unit=(cfg.train.micro_batch_size, "train.micro_batch_size"))
    cfg, t, d = run.cfg, run.cfg.train, run.cfg.data
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    pairs = load_pairs(d.train, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.split)
    if d.eval:
        train_pairs = pairs
        eval_pairs = load_pairs(d.eval, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.eval_split)
    else:
        train_pairs, eval_pairs = split_eval(pairs, d.eval_fraction, t.seed)
    print(f"data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs")
    steps = total_steps(len(train_pairs), t, d.train)

    mode = reference_mode(cfg)
    snapshot = ref.Snapshot(mode)
    policy = load_policy(cfg, run, before_adapter=snapshot)
    pad_id = tokenizer.pad_token_id
    if mode == "none":
        reference = dict.fromkeys(("train", "eval"), ref.NoReference())
    elif mode == "precomputed":
        if d.eval and not cfg.reference.eval_logps:
            raise AlignkitError("reference.eval_logps: needed with reference.logps when data.eval is a separate file")
        reference = {"train": ref.read_logps(cfg.reference.logps, train_pairs, d.train),
                     "eval": ref.read_logps(cfg.reference.eval_logps or cfg.reference.logps, eval_pairs,
                                            d.eval or d.train)}
    elif mode == "cached":
        seen = [train_pairs[i] for i in visited(len(train_pairs), t.batch_size, t.seed, steps)]
        reference = ref.cached_tables(cfg, snapshot.fingerprint, policy, {"train": seen, "eval": eval_pairs},
                                      pad_id, run)
    else:  # copy or adapter: a forward pass each step
        reference = dict.fromkeys(("train", "eval"), ref.model_reference(mode, snapshot, policy, run,
                                                                         t.eval_batch_size))
    print(f"reference: {mode}")

    algo = DPO(cfg, train_pairs, eval_pairs, reference, pad_id, steps, run)
    trained, history = train(algo, policy.module, run)
    final = whole(trained, run, lambda: fresh_module(cfg))
    finish(None if final is None else final.model, history, tokenizer, cfg, run.run_dir, run.accelerator,
           ("loss", "rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies",
            "eval_rewards/margins"))
    return run.run_dir
