"""KTO: Kahneman-Tversky Optimization on unpaired data (Ethayarajh et al. 2024).

A trainable policy and a frozen reference learn from completions labelled desirable or undesirable, one at a
time: no pairs needed. With r = log πθ(y|x) − log πref(y|x) (summed over the completion's tokens, DESIGN.md's
token-boundary contract) and the reference point z0, a detached estimate of KL(πθ ‖ πref), a desirable
completion's loss is λ_D(1 − σ(β(r − z0))) and an undesirable one's λ_U(1 − σ(β(z0 − r))) (`losses/kto.py`).
`loss.type: apo_zero_unpaired` is the same with z0 = 0 (TRL's unpaired APO-zero).

Rows: {"prompt", "completion", "label": true/false}, strings or messages, as TRL's unpaired preference format;
a preference file (prompt, chosen, rejected) is unpaired on loading, as TRL's KTOTrainer does: each pair gives a
desirable completion (chosen) and an undesirable one (rejected).

z0: each optimizer step's completions, in order, pair every prompt with the completion of the row before it
(the first with the last's; past rows with the same prompt: TRL's KL dataset, completions shifted by one);
z0 = max(0, the mean over those mismatched pairs of log πθ(y'|x) − log πref(y'|x)), from a no-grad pass before the
step's micro-batches run.

Departures from the paper and from TRL:
- z0 is one value per optimizer step: the mean over the whole global batch, summed over every process
  (`Run.sum_over_processes`). The paper and TRL estimate it per micro-batch (TRL then averages it over the
  processes), so there each micro-batch of an accumulated step has a z0 of its own; here the run is the same
  for any micro-batch size and number of processes (tested). `train.batch_size` must be at least 2.
- A step may hold only one kind of completion: its loss is then over that kind alone, and the other kind's
  `rewards/…` and `logps/…` are left out of that step's metrics (as TRL does). The whole training set with one
  kind only, or λ_D·n_D / (λ_U·n_U) outside [1, 4/3] (the paper's recommended range), is warned about at start.
- The reference is alignkit's: by default its log-probs are computed once by the initial policy and cached on
  disk (the mismatched pairs too: they are fixed by the seeded batch order), keyed by the weights, the exact
  token ids and the precision; `reference.mode: copy` keeps a frozen copy (TRL's default), `adapter` uses the
  LoRA model with its adapter disabled. DPO's `precomputed` (an `alignkit logps` file of pairs) does not apply.
- Completions too long for `max_length` / `max_prompt_length` are dropped (and counted), never truncated.
- The batch order is the seeded shuffle of every alignkit command (TRL's KTOTrainer reads its data in order).

Run it:
    alignkit kto --config configs/kto/smollm2-arith.yaml [train.max_steps=20 ...]
    accelerate launch --num_processes 2 -m alignkit.cli kto --config ...   # DDP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from alignkit.config import KTOConfig
from alignkit.data.collate import Completion, CompletionBatch, collate_completions, mismatched, step_indices
from alignkit.losses.kto import kto, reference_point
from alignkit.train.loop import held_out_sums

log = logging.getLogger(__name__)


@dataclass
class KTOBatch:
    """One micro-batch and what its loss needs of the whole optimizer step (or of the whole held-out set)."""

    completions: CompletionBatch
    reference_point: float  # z0 of the step (0 for apo_zero_unpaired)
    count: int  # completions in the step, all processes
    desirable: int  # of which desirable


class KTO:
    """The KTO algorithm for `train.loop.train`: which completions each step sees, and the loss on them.

    reference: {"train": ..., "eval": ...}, each answering `sequences(batch) -> (N,)` (models/reference.py).
    policy: the trained module (SequenceLogps), for the no-grad pass over the mismatched pairs.
    """

    def __init__(self, cfg: KTOConfig, train_items: list[Completion], eval_items: list[Completion], reference: dict,
                 policy, pad_id: int, total_steps: int, run):
        self.cfg, self.train_items, self.eval_items, self.reference = cfg, train_items, eval_items, reference
        self.policy, self.pad_id, self.total_steps, self.run = policy, pad_id, total_steps, run
        self.device, self.rank, self.world = run.device, run.rank, run.world

    def batches(self, step: int):
        t = self.cfg.train
        items = [self.train_items[i] for i in step_indices(len(self.train_items), t.batch_size, t.seed, step)]
        per_rank = t.batch_size // self.world
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        z0 = self._reference_point(self.policy, mismatched(items)[mine], self.reference["train"], len(items))
        desirable = sum(c.label for c in items)
        for s in range(mine.start, mine.stop, t.micro_batch_size):
            yield KTOBatch(collate_completions(items[s : s + t.micro_batch_size], self.pad_id), z0, len(items),
                           desirable)

    def _reference_point(self, model, pairs: list[Completion], reference, count: int) -> float:
        """z0 over `count` mismatched pairs, of which this process holds `pairs` (every process calls this)."""
        if self.cfg.loss.type != "kto":
            return 0.0
        total = 0.0
        size = self.cfg.train.eval_batch_size
        for s in range(0, len(pairs), size):
            batch = collate_completions(pairs[s : s + size], self.pad_id).to(self.device)
            with torch.no_grad(), self.run.autocast():
                policy_logps = model(batch.input_ids, batch.response_mask).float()  # (n,)
            total += (policy_logps - reference.sequences(batch)).sum().item()
        total = self.run.sum_over_processes([total])[0]
        return float(reference_point(torch.tensor(total, dtype=torch.float64), count))

    def _terms(self, model, b: KTOBatch, reference):
        batch = b.completions.to(self.device)
        policy_logps = model(batch.input_ids, batch.response_mask)  # (N,)
        reference_logps = reference.sequences(batch)  # (N,)
        L = self.cfg.loss
        losses, rewards = kto(policy_logps, reference_logps, batch.desirable,
                              torch.tensor(b.reference_point, device=self.device), beta=L.beta,
                              desirable_weight=L.desirable_weight, undesirable_weight=L.undesirable_weight)
        n = batch.size
        metrics = {"loss": losses.detach().sum(), "count": torch.tensor(float(n)),
                   "tokens": torch.tensor(float(batch.tokens))}
        if L.type == "kto":
            metrics["kl"] = torch.tensor(b.reference_point * n)
        # The loop divides every metric sum by the step's count; a kind's mean (TRL's rewards/chosen: over the
        # desirable completions) is its sum scaled by count / (that kind's count in the step).
        logps = policy_logps.detach()
        for name, mask, of_kind in (("chosen", batch.desirable, b.desirable),
                                    ("rejected", ~batch.desirable, b.count - b.desirable)):
            metrics[f"count/{name}"] = mask.sum().float() * b.count
            if of_kind:
                metrics[f"rewards/{name}"] = rewards[mask].sum() * b.count / of_kind
                metrics[f"logps/{name}"] = logps[mask].sum() * b.count / of_kind
        if 0 < b.desirable < b.count:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses, metrics

    def loss(self, model, batch: KTOBatch):
        losses, metrics = self._terms(model, batch, self.reference["train"])
        # The mean over the global batch; × world because DDP averages gradients over processes.
        return losses.sum() * self.world / self.cfg.train.batch_size, metrics

    def evaluate(self, model):
        """Held-out metrics; z0 over the whole held-out set (each prompt with the previous row's completion)."""
        items = self.eval_items
        if not items:
            return {}
        z0 = self._reference_point(model, mismatched(items)[self.rank :: self.world], self.reference["eval"],
                                   len(items))
        desirable = sum(c.label for c in items)
        sums = held_out_sums(items, self.cfg.train.eval_batch_size, self.rank, self.world, lambda chunk: self._terms(
            model, KTOBatch(collate_completions(chunk, self.pad_id), z0, len(items), desirable),
            self.reference["eval"])[1])
        sums.pop("tokens", None)
        return sums


def reference_mode(cfg: KTOConfig) -> str:
    mode = cfg.reference.mode
    if mode != "auto":
        return mode
    if cfg.reference.cache:
        return "cached"
    return "adapter" if cfg.model.lora is not None else "copy"


def check_balance(items: list[Completion], cfg: KTOConfig) -> None:
    """Warn about training data with one kind of completion only, or weights outside the paper's range for the
    data's balance: λ_D·n_D / (λ_U·n_U) in [1, 4/3] (TRL gives the same advice)."""
    desirable = sum(c.label for c in items)
    undesirable = len(items) - desirable
    L = cfg.loss
    if not desirable or not undesirable:
        log.warning("%s: all %d training completions are %s; KTO learns from one kind alone only against z0 "
                    "(loss.type kto)", cfg.data.train, len(items), "desirable" if desirable else "undesirable")
        return
    ratio = L.desirable_weight * desirable / (L.undesirable_weight * undesirable)
    if not 1 <= ratio <= 4 / 3:
        log.warning("%d desirable and %d undesirable completions with loss.desirable_weight=%g and "
                    "loss.undesirable_weight=%g: λ_D·n_D / (λ_U·n_U) = %.2f, outside [1, 4/3]; for example "
                    "loss.desirable_weight in [%.2f, %.2f] with this undesirable_weight", desirable, undesirable,
                    L.desirable_weight, L.undesirable_weight, ratio, L.undesirable_weight * undesirable / desirable,
                    4 / 3 * L.undesirable_weight * undesirable / desirable)


def needed_sequences(cfg: KTOConfig, train_items: list[Completion], eval_items: list[Completion], steps: int
                     ) -> list[tuple]:
    """Every (prompt ids, completion ids) a run's reference is asked about: each step's completions and mismatched
    pairs, then the held-out rows and theirs. Fixed by the seeded batch order, so a cache can hold them."""
    t = cfg.train
    kl = cfg.loss.type == "kto"
    keys: dict[tuple, None] = {}
    for step in range(steps):
        items = [train_items[i] for i in step_indices(len(train_items), t.batch_size, t.seed, step)]
        keys.update(dict.fromkeys(c.key for c in items + (mismatched(items) if kl else [])))
    keys.update(dict.fromkeys(c.key for c in eval_items + (mismatched(eval_items) if kl and eval_items else [])))
    return list(keys)


def run(cfg: KTOConfig):
    from alignkit.data.collate import load_completions, split_eval, total_steps
    from alignkit.models import reference as ref
    from alignkit.models.load import load_tokenizer
    from alignkit.train.loop import finish, train, whole
    from alignkit.train.setup import fresh_module, load_policy, start_run

    run = start_run(cfg, unit=(cfg.train.micro_batch_size, "train.micro_batch_size"))
    cfg, t, d = run.cfg, run.cfg.train, run.cfg.data
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    items = load_completions(d.train, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.split)
    if d.eval:
        train_items = items
        eval_items = load_completions(d.eval, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.eval_split)
    else:  # held out by source row: a pair's two completions stay on the same side
        held = set(split_eval(sorted({c.row for c in items}), d.eval_fraction, t.seed)[1])
        train_items = [c for c in items if c.row not in held]
        eval_items = [c for c in items if c.row in held]
    desirable = sum(c.label for c in train_items)
    print(f"data: {len(train_items)} training completions ({desirable} desirable, {len(train_items) - desirable} "
          f"undesirable), {len(eval_items)} held-out")
    check_balance(train_items, cfg)
    steps = total_steps(len(train_items), t, d.train)

    mode = reference_mode(cfg)
    snapshot = ref.Snapshot(mode)
    policy = load_policy(cfg, run, before_adapter=snapshot)
    pad_id = tokenizer.pad_token_id
    if mode == "cached":
        table = ref.cached_sequences(cfg, snapshot.fingerprint, policy,
                                     needed_sequences(cfg, train_items, eval_items, steps), pad_id, run)
        reference = {"train": table, "eval": table}
    else:  # copy or adapter: a forward pass each step
        reference = dict.fromkeys(("train", "eval"), ref.model_reference(mode, snapshot, policy, run,
                                                                         t.eval_batch_size))
    print(f"reference: {mode}")

    algo = KTO(cfg, train_items, eval_items, reference, policy.module, pad_id, steps, run)
    trained, history = train(algo, policy.module, run)
    final = whole(trained, run, lambda: fresh_module(cfg))
    finish(None if final is None else final.model, history, tokenizer, cfg, run.run_dir, run.accelerator,
           ("loss", "kl", "rewards/margins", "eval_loss", "eval_kl", "eval_rewards/margins"))
    return run.run_dir
