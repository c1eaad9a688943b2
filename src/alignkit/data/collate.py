"""Load, validate and tokenize a preference file; pad pairs into one concatenated batch. The same for unpaired
rows (KTO): load, unpair a preference file, pad single completions."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, replace

import torch

from alignkit import AlignkitError
from alignkit.data.chat import TokenizedPair, Tokenize
from alignkit.data.formats import read_rows
from alignkit.data.records import parse_row, parse_unpaired_row

log = logging.getLogger(__name__)


def load_pairs(
    path: str, tokenizer, max_length: int, max_prompt_length: int, strict: bool = False, split: str = "train"
) -> list[TokenizedPair]:
    """Every row is validated before any is used; rows too long to fit are dropped and counted (or fail)."""
    tokenize = Tokenize(tokenizer)
    pairs, dropped = [], 0
    for number, record in read_rows(path, split):
        pair = tokenize(parse_row(record, path, number), path)
        hint = _sampler_hint(record)
        if hint is not None:
            pair = replace(pair, rejected_hint=hint)
        longest = len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))
        if len(pair.prompt_ids) > max_prompt_length or longest > max_length:
            if strict:
                raise AlignkitError(
                    f"{path}: row {number}: field 'prompt': {len(pair.prompt_ids)} prompt tokens and {longest} in "
                    f"all exceed max_prompt_length={max_prompt_length} or max_length={max_length}"
                )
            dropped += 1
            continue
        pairs.append(pair)
    if dropped:
        log.warning("%s: dropped %d of %d rows longer than max_length=%d / max_prompt_length=%d",
                    path, dropped, dropped + len(pairs), max_length, max_prompt_length)
    if not pairs:
        raise AlignkitError(f"{path}: no usable rows")
    return pairs


def _sampler_hint(record) -> tuple | None:
    """metadata.student_logps of a pairs file, if well formed (otherwise ignored: it is only a shortcut)."""
    meta = record.get("metadata") if isinstance(record, dict) else None
    hint = meta.get("student_logps") if isinstance(meta, dict) else None
    try:
        return (str(hint["model"]), str(hint["dtype"]), tuple(int(t) for t in hint["token_ids"]), float(hint["logp"]))
    except (TypeError, KeyError, ValueError):
        return None


@dataclass
class PairBatch:
    rows: list[int]
    input_ids: torch.Tensor  # (2B, T): B chosen sequences, then B rejected, right-padded
    response_mask: torch.Tensor  # (2B, T) bool: True at response tokens
    chosen_tokens: torch.Tensor  # (B,) float
    rejected_tokens: torch.Tensor  # (B,) float
    tokens: int  # real (non-pad) tokens in input_ids

    def to(self, device) -> "PairBatch":
        return PairBatch(self.rows, self.input_ids.to(device), self.response_mask.to(device),
                         self.chosen_tokens.to(device), self.rejected_tokens.to(device), self.tokens)

    @property
    def size(self) -> int:
        return len(self.rows)


def collate(pairs: list[TokenizedPair], pad_id: int) -> PairBatch:
    """B pairs -> one (2B, T) batch: the B chosen sequences, then the B rejected ones."""
    input_ids, mask = pad_rows([(p.prompt_ids, p.chosen_ids) for p in pairs]
                               + [(p.prompt_ids, p.rejected_ids) for p in pairs], pad_id)
    return PairBatch(
        rows=[p.row for p in pairs],
        input_ids=input_ids,
        response_mask=mask,
        chosen_tokens=torch.tensor([float(len(p.chosen_ids)) for p in pairs]),
        rejected_tokens=torch.tensor([float(len(p.rejected_ids)) for p in pairs]),
        tokens=sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
    )


def pad(rows: list[tuple[list[int], list[bool]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, trained mask) rows -> right-padded input_ids (N, T) and mask (N, T) bool: the one padding."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ids, m) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, : len(m)] = torch.tensor(list(m), dtype=torch.bool)
    return input_ids, mask


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, response) token lists -> right-padded input_ids (N, T) and response mask (N, T)."""
    return pad([(list(p) + list(r), [False] * len(p) + [True] * len(r)) for p, r in rows], pad_id)


def total_steps(n: int, train, source: str) -> int:
    """Optimizer steps of a run over n rows: train.max_steps, or train.epochs of n // train.batch_size steps."""
    per_epoch = n // train.batch_size
    if per_epoch == 0:
        raise AlignkitError(f"{source}: {n} usable rows, fewer than train.batch_size={train.batch_size}")
    return train.max_steps or math.ceil(train.epochs * per_epoch)


def visited(n: int, batch_size: int, seed: int, steps: int) -> list[int]:
    """Indices of the rows `steps` optimizer steps visit (all processes), in first-visit order."""
    if steps > n // batch_size:  # later epochs reshuffle: any row may come up
        return list(range(n))
    seen: dict[int, None] = {}
    for step in range(steps):
        seen.update(dict.fromkeys(step_indices(n, batch_size, seed, step)))
    return list(seen)


def micro_batches(rows: list, train, step: int, rank: int, world: int):
    """This process's micro-batches (lists of rows) of optimizer step `step`: its contiguous share of the step's
    `train.batch_size` rows, in slices of `train.micro_batch_size`."""
    per_rank = train.batch_size // world
    chosen = step_indices(len(rows), train.batch_size, train.seed, step)[rank * per_rank : (rank + 1) * per_rank]
    for s in range(0, len(chosen), train.micro_batch_size):
        yield [rows[i] for i in chosen[s : s + train.micro_batch_size]]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The indices 0..n−1 in the order training visits them in `epoch`: the same on every process and on
    resume, and reshuffled each epoch."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def step_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The items of optimizer step `step` when every epoch walks `epoch_order` in slices of `batch_size`
    (the last n % batch_size of an epoch's order are left out)."""
    epoch, k = divmod(step, n // batch_size)
    return epoch_order(n, seed, epoch)[k * batch_size : (k + 1) * batch_size]


def stream_indices(start: int, count: int, n: int, seed: int) -> list[int]:
    """Draws start .. start+count−1 of an endless stream that visits 0..n−1 once per epoch, in `epoch_order`."""
    orders: dict[int, list[int]] = {}
    out = []
    for c in range(start, start + count):
        epoch, k = divmod(c, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append(orders[epoch][k])
    return out


def split_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a seeded `fraction` of rows (at least one when fraction > 0): (train rows, held-out rows)."""
    if not fraction:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, int(round(len(rows) * fraction)))])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


# --- unpaired rows (KTO) ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Completion:
    """One tokenized (prompt, completion) with its label: True desirable, False undesirable."""

    row: int  # the source file's row (a preference row gives two completions with the same row)
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    label: bool

    @property
    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.prompt_ids, self.completion_ids


def load_completions(path: str, tokenizer, max_length: int, max_prompt_length: int, strict: bool = False,
                     split: str = "train") -> list[Completion]:
    """Unpaired rows {"prompt", "completion", "label"}; a preference row ({"prompt", "chosen", "rejected"}, or
    chosen/rejected alone) is unpaired as TRL's `unpair_preference_dataset` does: chosen a desirable completion,
    rejected an undesirable one. The token boundaries are the preference rows' (`chat.Tokenize.responses`).
    Completions too long to fit are dropped and counted (or fail, with `strict`)."""
    tokenize = Tokenize(tokenizer)
    items, dropped = [], 0
    for number, record in read_rows(path, split):
        if "completion" in record or "label" in record or not ("chosen" in record or "rejected" in record):
            row = parse_unpaired_row(record, path, number)
            prompt_ids, out = tokenize.responses(row.prompt, {"completion": row.completion}, f"{path}: row {number}")
            found = [(prompt_ids, out["completion"], row.label)]
        else:
            pair = tokenize(parse_row(record, path, number), path)
            found = [(pair.prompt_ids, pair.chosen_ids, True), (pair.prompt_ids, pair.rejected_ids, False)]
        for prompt_ids, completion_ids, label in found:
            if len(prompt_ids) > max_prompt_length or len(prompt_ids) + len(completion_ids) > max_length:
                if strict:
                    raise AlignkitError(
                        f"{path}: row {number}: field 'completion': {len(prompt_ids)} prompt tokens and "
                        f"{len(prompt_ids) + len(completion_ids)} in all exceed max_prompt_length={max_prompt_length} "
                        f"or max_length={max_length}")
                dropped += 1
                continue
            items.append(Completion(number, tuple(prompt_ids), tuple(completion_ids), label))
    if dropped:
        log.warning("%s: dropped %d of %d completions longer than max_length=%d / max_prompt_length=%d",
                    path, dropped, dropped + len(items), max_length, max_prompt_length)
    if not items:
        raise AlignkitError(f"{path}: no usable rows")
    return items


def mismatched(items: list[Completion]) -> list[Completion]:
    """The mismatched pairs (x, y') of KTO's KL estimate, as TRL builds its KL dataset (completions shifted by one
    in the batch): each prompt with the completion of the item before it (the first with the last's), or, when
    that item has the same prompt (the two halves of an unpaired preference row), of the nearest one before it
    with another prompt."""
    out = []
    for i, item in enumerate(items):
        j = next((j for j in range(i - 1, i - len(items), -1) if items[j].prompt_ids != item.prompt_ids), i - 1)
        out.append(replace(item, completion_ids=items[j].completion_ids))
    return out


@dataclass
class CompletionBatch:
    keys: list[tuple[tuple[int, ...], tuple[int, ...]]]  # each row's (prompt ids, completion ids)
    input_ids: torch.Tensor  # (N, T) right-padded
    response_mask: torch.Tensor  # (N, T) bool: True at completion tokens
    desirable: torch.Tensor  # (N,) bool
    tokens: int  # real (non-pad) tokens in input_ids

    def to(self, device) -> "CompletionBatch":
        return CompletionBatch(self.keys, self.input_ids.to(device), self.response_mask.to(device),
                               self.desirable.to(device), self.tokens)

    @property
    def size(self) -> int:
        return len(self.keys)


def collate_completions(items: list[Completion], pad_id: int) -> CompletionBatch:
    """N completions -> one right-padded (N, T) batch."""
    input_ids, mask = pad_rows([(c.prompt_ids, c.completion_ids) for c in items], pad_id)
    return CompletionBatch([c.key for c in items], input_ids, mask, torch.tensor([c.label for c in items]),
                           sum(len(c.prompt_ids) + len(c.completion_ids) for c in items))
