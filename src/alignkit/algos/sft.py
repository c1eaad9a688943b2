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
import math
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.config import SFTConfig, save_resolved
from alignkit.data.collate import split_eval, step_indices

log = logging.getLogger(__name__)


def load_rows(path: str, tokenizer, max_length: int, strict: bool, split: str) -> list[tuple[list[int], list[bool]]]:
    from alignkit.data.chat import TokenizeSFT
    from alignkit.data.formats import read_rows

    tokenize = TokenizeSFT(tokenizer)
    rows, dropped = [], 0
    for number, record in read_rows(path, split):
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


def _pad(rows, pad_id: int):
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ids, m) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(m)] = torch.tensor(m)
    return input_ids, mask


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
    width = max(len(ids) for ids, _, _ in packed)
    input_ids = torch.full((len(packed), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(packed), width), dtype=torch.bool)
    # Padding after the last row continues its positions: causal attention keeps it out of real tokens.
    position_ids = torch.zeros((len(packed), width), dtype=torch.long)
    for i, (ids, m, pos) in enumerate(packed):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(m)] = torch.tensor(m)
        position_ids[i] = torch.cat([torch.tensor(pos), torch.arange(pos[-1] + 1, pos[-1] + 1 + width - len(pos))])
    return input_ids, mask, position_ids


class SFT:
    """SFT for `train.loop.train`: token-mean NLL over the step's trained tokens."""

    def __init__(self, cfg: SFTConfig, train_rows, eval_rows, pad_id: int, device, rank: int, world: int):
        self.cfg, self.train_rows, self.eval_rows = cfg, train_rows, eval_rows
        self.pad_id, self.device, self.rank, self.world = pad_id, device, rank, world
        t = cfg.train
        self.steps_per_epoch = len(train_rows) // t.batch_size
        if self.steps_per_epoch == 0:
            raise AlignkitError(f"{cfg.data.train}: {len(train_rows)} usable rows, fewer than "
                                f"train.batch_size={t.batch_size}")
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.steps_per_epoch)
        self.step_tokens = 1

    def batches(self, step: int):
        t = self.cfg.train
        chosen = [self.train_rows[i] for i in step_indices(len(self.train_rows), t.batch_size, t.seed, step)]
        # Every trained token of the step counts once, whichever process and micro-batch holds it.
        self.step_tokens = sum(sum(m[1:]) for _, m in chosen)
        per_rank = t.batch_size // self.world
        mine = chosen[self.rank * per_rank : (self.rank + 1) * per_rank]
        for s in range(0, len(mine), t.micro_batch_size):
            part = mine[s : s + t.micro_batch_size]
            if self.cfg.data.packing:
                yield _pack(part, self.pad_id, self.cfg.data.max_length)
            else:
                yield _pad(part, self.pad_id)

    def _nll(self, model, batch):
        input_ids, mask, *packed = (x.to(self.device) for x in batch)
        position_ids = packed[0] if packed else None  # packed rows: positions restart per row
        logps = model(input_ids, mask, per_token=True, position_ids=position_ids)  # (B, T), 0 off trained tokens
        mask = mask.clone()
        mask[:, 0] = False  # the first token has no predictor
        return -(logps * mask).sum(), mask

    def loss(self, model, batch):
        nll, mask = self._nll(model, batch)
        tokens = mask.sum()
        metrics = {"loss": nll.detach(), "count": tokens.float(), "tokens": (batch[0] != self.pad_id).sum().float()}
        return nll * self.world / self.step_tokens, metrics

    def evaluate(self, model):
        if not self.eval_rows:
            return {}
        mine = self.eval_rows[self.rank :: self.world]
        total, count = torch.zeros(()), torch.zeros(())
        for s in range(0, len(mine), self.cfg.train.eval_batch_size):
            nll, mask = self._nll(model, _pad(mine[s : s + self.cfg.train.eval_batch_size], self.pad_id))
            total, count = total + nll.cpu(), count + mask.sum().cpu()
        return {"loss": total, "count": count}


def run(cfg: SFTConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from alignkit.models.load import add_lora, disable_dropout, load_model, load_tokenizer
    from alignkit.models.logprobs import SequenceLogps
    from alignkit.train.loop import finish, train

    t, d = cfg.train, cfg.data
    if t.threads:
        torch.set_num_threads(t.threads)
    accelerator = Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % (t.micro_batch_size * world):
        raise AlignkitError(f"train.batch_size={t.batch_size} is not a multiple of train.micro_batch_size="
                            f"{t.micro_batch_size} x {world} processes")
    set_seed(t.seed)
    run_dir = Path(t.output_dir)
    if accelerator.is_main_process:
        save_resolved(cfg, run_dir)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    rows = load_rows(d.train, tokenizer, d.max_length, d.strict, d.split)
    if d.eval:
        train_rows, eval_rows = rows, load_rows(d.eval, tokenizer, d.max_length, d.strict, d.split)
    else:
        train_rows, eval_rows = split_eval(rows, d.eval_fraction, t.seed)
    print(f"data: {len(train_rows)} training rows, {len(eval_rows)} held-out rows")
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.allow_pickle)
    disable_dropout(model)
    if cfg.model.lora is not None:
        model = add_lora(model, cfg.model.lora)
    policy = SequenceLogps(model, t.logits_chunk, t.share_prompts).to(accelerator.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    algo = SFT(cfg, train_rows, eval_rows, pad_id, accelerator.device, rank, world)
    trained, history = train(algo, policy, t, accelerator, run_dir)
    finish(trained.model, history, tokenizer, cfg, run_dir, accelerator, ("loss", "eval_loss"))
    return run_dir
