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

import torch

from alignkit import AlignkitError
from alignkit.config import DPOConfig
from alignkit.data.collate import PairBatch, collate, micro_batches
from alignkit.losses.preference import LOSSES, NEEDS_REFERENCE, nll
from alignkit.train.loop import held_out_sums


class DPO:
    """The DPO algorithm for `train.loop.train`: which pairs each step sees, and the loss on them.

    reference: {"train": ..., "eval": ...}, each answering `pairs(batch) -> (chosen, rejected)` (models/reference.py).
    """

    def __init__(self, cfg: DPOConfig, train_pairs, eval_pairs, reference: dict, pad_id: int, total_steps: int, run):
        self.cfg, self.train_pairs, self.eval_pairs, self.reference = cfg, train_pairs, eval_pairs, reference
        self.pad_id, self.total_steps = pad_id, total_steps
        self.device, self.rank, self.world = run.device, run.rank, run.world
        self.loss_fn = LOSSES[cfg.loss.type]

    def batches(self, step: int):
        for pairs in micro_batches(self.train_pairs, self.cfg.train, step, self.rank, self.world):
            yield collate(pairs, self.pad_id)

    def _terms(self, model, batch: PairBatch, reference):
        batch = batch.to(self.device)
        b = batch.size
        logps = model(batch.input_ids, batch.response_mask)  # (2B,): chosen then rejected
        pc, pr = logps[:b], logps[b:]
        rc, rr = reference.pairs(batch)
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
        sums = held_out_sums(self.eval_pairs, self.cfg.train.eval_batch_size, self.rank, self.world,
                             lambda chunk: self._terms(model, collate(chunk, self.pad_id), self.reference["eval"])[1])
        sums.pop("tokens", None)
        return sums


def reference_mode(cfg: DPOConfig) -> str:
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
