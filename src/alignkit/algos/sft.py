"""Supervised fine-tuning with the loss on assistant tokens only.

Rows are conversations (`messages`: every assistant turn is trained) or `prompt` + `completion` (only the
completion is trained); the prompt, the other roles and the template's own tokens are masked
(`data/chat.py: TokenizeSFT`, the token-boundary contract applied turn by turn). The loss is the mean
negative log-likelihood over every trained token of the optimizer step, so long and short rows weigh by
their tokens and gradient accumulation gives the same gradient as one big batch.

Departures from TRL: rows longer than `max_length` are dropped and counted (or fail with `strict`), never
truncated, so a trained turn always ends with its end-of-turn token. Rows are right-padded, and rows sharing
a prefix (a system prompt) run it once (`train.share_prompts`); with `data.packing`, each micro-batch's rows
are instead packed end to end (first-fit decreasing into rows of at most `max_length` tokens), positions
restarting at each row and attention kept inside it, so no compute goes to padding and the loss is unchanged.

Run it:
    alignkit sft --config configs/sft/smollm2-addition.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.config import SFTConfig
from alignkit.data.collate import micro_batches, pad, split_eval, step_indices
from alignkit.train.loop import held_out_sums

log = logging.getLogger(__name__)


def solver_rows(task_cfg):
    """(number, row) for each question of a built-in task: the question, and the task's own worked solution as the
    completion (the demonstrations an SFT warm start before RL learns from)."""
    from alignkit.tasks import make_task, task_items

    task = make_task(task_cfg)
    for number, item in enumerate(task_items(task, task_cfg), 1):
        solution = task.solve(item)
        if solution is None:
            raise AlignkitError(f"data.task: {task.name} has no solver to write demonstrations; give data.train")
        yield number, {"prompt": item.messages(), "completion": [{"role": "assistant", "content": solution}]}


def load_rows(path: str, tokenizer, max_length: int, strict: bool, split: str,
              records=None) -> list[tuple[list[int], list[bool]]]:
    """Tokenized (ids, trained-token mask) rows of the file at `path`, or of `records` ((number, row) pairs, with
    `path` naming their source in messages)."""
    from alignkit.data.chat import TokenizeSFT
    from alignkit.data.formats import read_rows

    tokenize = TokenizeSFT(tokenizer)
    rows, dropped = [], 0
    for number, record in records if records is not None else read_rows(path, split):
        if not isinstance(record, dict):
            raise AlignkitError(f"{path}: row {number}: expected an object")
        ids, mask = tokenize(record, path, number)
        if len(ids) > max_length:
            if strict:
                raise AlignkitError(f"{path}: row {number}: field 'messages': {len(ids)} tokens exceed "
                                    f"max_length={max_length}")
            dropped += 1
            continue
        rows.append((ids, mask))
    if dropped:
        log.warning("%s: dropped %d of %d rows longer than max_length=%d", path, dropped, dropped + len(rows),
                    max_length)
    if not rows:
        raise AlignkitError(f"{path}: no usable rows")
    return rows


def _pack(rows, pad_id: int, max_length: int):
    """Pack rows end to end, first-fit decreasing, into bins of at most max_length tokens.

    Returns input_ids, mask and position_ids, each (P, L) with L the longest bin; positions restart at 0 at
    each row's first token, which is never trained (it has no predictor inside its own row).
    """
    bins: list[list[tuple[list[int], list[bool]]]] = []
    for ids, m in sorted(rows, key=lambda r: -len(r[0])):
        for b in bins:
            if sum(len(x) for x, _ in b) + len(ids) <= max_length:
                b.append((ids, m))
                break
        else:
            bins.append([(ids, m)])
    packed = [([t for ids, _ in b for t in ids], [v and j > 0 for _, m in b for j, v in enumerate(m)],
               [j for ids, _ in b for j in range(len(ids))]) for b in bins]
    input_ids, mask = pad([(ids, m) for ids, m, _ in packed], pad_id)
    width = input_ids.shape[1]
    # Padding after the last row continues its positions: causal attention keeps it out of real tokens.
    position_ids = torch.stack([torch.cat([torch.tensor(pos), torch.arange(pos[-1] + 1, pos[-1] + 1 + width - len(pos))])
                                for _, _, pos in packed])
    return input_ids, mask, position_ids


@dataclass
class SFTBatch:
    input_ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) bool: trained tokens
    position_ids: torch.Tensor | None  # (B, T) for packed rows (positions restart per row), else None
    step_tokens: int  # trained tokens of the whole optimizer step, every process and micro-batch


class SFT:
    """SFT for `train.loop.train`: token-mean NLL over the step's trained tokens."""

    def __init__(self, cfg: SFTConfig, train_rows, eval_rows, pad_id: int, total_steps: int, run):
        self.cfg, self.train_rows, self.eval_rows = cfg, train_rows, eval_rows
        self.pad_id, self.total_steps = pad_id, total_steps
        self.device, self.rank, self.world = run.device, run.rank, run.world

    def batches(self, step: int):
        t = self.cfg.train
        # Every trained token of the step counts once, whichever process and micro-batch holds it.
        step_tokens = sum(sum(self.train_rows[i][1][1:]) for i in step_indices(len(self.train_rows), t.batch_size,
                                                                                t.seed, step))
        for part in micro_batches(self.train_rows, t, step, self.rank, self.world):
            if self.cfg.data.packing:
                yield SFTBatch(*_pack(part, self.pad_id, self.cfg.data.max_length), step_tokens)
            else:
                yield SFTBatch(*pad(part, self.pad_id), None, step_tokens)

    def _nll(self, model, batch: SFTBatch):
        input_ids, mask = batch.input_ids.to(self.device), batch.mask.to(self.device)
        position_ids = batch.position_ids.to(self.device) if batch.position_ids is not None else None
        logps = model(input_ids, mask, per_token=True, position_ids=position_ids)  # (B, T), 0 off trained tokens
        mask = mask.clone()
        mask[:, 0] = False  # the first token has no predictor
        return -(logps * mask).sum(), mask

    def loss(self, model, batch: SFTBatch):
        nll, mask = self._nll(model, batch)
        metrics = {"loss": nll.detach(), "count": mask.sum().float(),
                   "tokens": (batch.input_ids != self.pad_id).sum().float()}
        return nll * self.world / batch.step_tokens, metrics

    def evaluate(self, model):
        def sums(chunk):
            nll, mask = self._nll(model, SFTBatch(*pad(chunk, self.pad_id), None, 0))
            return {"loss": nll, "count": mask.sum()}

        return held_out_sums(self.eval_rows, self.cfg.train.eval_batch_size, self.rank, self.world, sums)


def run(cfg: SFTConfig) -> Path:
    from alignkit.data.collate import total_steps
    from alignkit.models.load import load_tokenizer
    from alignkit.train.loop import finish, train, whole
    from alignkit.train.setup import fresh_module, load_policy, start_run

    if cfg.data.train is None and cfg.data.task is None:
        raise AlignkitError("data: give train (a file of rows) or task (a built-in task whose solver writes them)")
    run = start_run(cfg, unit=(cfg.train.micro_batch_size, "train.micro_batch_size"))
    cfg, t, d = run.cfg, run.cfg.train, run.cfg.data
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    source = d.train or f"task {d.task.name or d.task.file}"
    rows = load_rows(source, tokenizer, d.max_length, d.strict, d.split,
                     None if d.train else solver_rows(d.task))
    if d.eval:
        train_rows, eval_rows = rows, load_rows(d.eval, tokenizer, d.max_length, d.strict, d.eval_split)
    else:
        train_rows, eval_rows = split_eval(rows, d.eval_fraction, t.seed)
    print(f"data: {len(train_rows)} training rows, {len(eval_rows)} held-out rows")
    steps = total_steps(len(train_rows), t, source)
    policy = load_policy(cfg, run)
    algo = SFT(cfg, train_rows, eval_rows, tokenizer.pad_token_id, steps, run)
    trained, history = train(algo, policy.module, run)
    final = whole(trained, run, lambda: fresh_module(cfg))
    finish(None if final is None else final.model, history, tokenizer, cfg, run.run_dir, run.accelerator,
           ("loss", "eval_loss"))
    return run.run_dir
