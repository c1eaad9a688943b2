"""Batched sampling from a local causal LM with a KV cache and left padding.

    samples = generate(model, tokenizer, [prompt_ids, ...], n=4, temperature=1.0, top_p=0.95,
                       max_new_tokens=128, seed=0)
    samples[i][j].text, .token_ids, .logps, .finished

Each (prompt, sample) row draws from its own random stream, seeded by (seed, prompt index, sample index),
through the exponential race (argmax of p / E with E ~ Exp(1), which picks token i with probability p_i). So
a row's sample does not depend on which other rows share its batch: a resumed run regenerates exactly what
an uninterrupted one would have. Rows that reach an end-of-turn token leave the batch (and the KV cache), so
the batch shrinks as answers finish.

`logps` are the model's own per-token log-probs (temperature 1, before top-p), which is what a reference or
an old policy would assign to the same tokens. With `score_end`, a sample cut at max_new_tokens also gets
`end_logps`: the log-prob of each end-of-turn token right after its last one (one more forward step for the rows
still going), which is what a trainer that closes the cut answer's turn scores there.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from alignkit.data.chat import chat_prompt_ids  # noqa: F401  (re-exported: prompts for generate)
from alignkit.progress import progress


@dataclass
class Sample:
    text: str  # decoded response, end-of-turn token excluded
    token_ids: list[int]  # generated ids, the end-of-turn token included when one was produced
    logps: list[float] = field(default_factory=list)  # per token of token_ids
    finished: bool = False  # ended with an end-of-turn token (False: hit max_new_tokens)
    weight_version: int = 0  # the policy weights that produced it: syncs made by its rollout backend (rollout.py)
    # score_end, a cut sample only: {end-of-turn id: its log-prob right after token_ids}
    end_logps: dict[int, float] | None = None


def _row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    return (seed * 1_000_003 + prompt_index * 10_007 + sample_index) % (2**63 - 1)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row from (B, V) float32 logits."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix with mass >= top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    noise = torch.stack([torch.empty(probs.shape[1]).exponential_(generator=g) for g in generators])
    return (probs / noise.to(probs.device)).argmax(-1)  # exponential race: P(i) = p_i / sum(p)


def _common_prefix(prompts: list[tuple[int, ...]], min_len: int = 4) -> int:
    """Leading tokens all prompts share, leaving each at least one token of its own; 0 if fewer than min_len."""
    if len(prompts) < 2:
        return 0
    limit, n = min(len(p) for p in prompts) - 1, 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n if n >= min_len else 0


@torch.no_grad()
def _generate_batch(model, rows: list[list[int]], seeds: list[int], pad_id: int, stop_ids: set[int],
                    temperature: float, top_p: float, max_new_tokens: int, score_end: bool = False
                    ) -> list[tuple[list[int], list[float], bool, dict[int, float] | None]]:
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache()
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    # Prefill once per distinct prompt (n samples of a prompt share it), and the prefix every prompt starts
    # with (a system prompt, say) once for all of them.
    keys: dict[tuple[int, ...], int] = {}
    owner = torch.tensor([keys.setdefault(tuple(r), len(keys)) for r in rows], device=device)
    distinct = list(keys)
    common = _common_prefix(distinct)
    if common:
        model(input_ids=torch.tensor([distinct[0][:common]], device=device), use_cache=True, logits_to_keep=1,
              **{cache_arg: cache})
        cache.batch_repeat_interleave(len(distinct))
    width = max(len(r) for r in distinct) - common
    input_ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)
    attention = torch.ones((len(distinct), common + width), dtype=torch.long)
    for i, r in enumerate(distinct):  # left padding: every row's last prompt token sits in the last column
        input_ids[i, width - len(r) + common:] = torch.tensor(r[common:])
        attention[i, common : common + width - len(r) + common] = 0
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, common:]
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **{cache_arg: cache}).logits[:, -1].float()  # (U, V)
    if len(distinct) < len(rows):
        cache.batch_select_indices(owner)
        logits, attention, positions = logits[owner], attention[owner], positions[owner]
    step_pos = positions[:, -1:]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)

    out_ids: list[list[int]] = [[] for _ in rows]
    out_logps: list[list[float]] = [[] for _ in rows]
    finished = [False] * len(rows)
    end_logps: list[dict[int, float] | None] = [None] * len(rows)
    alive = torch.arange(len(rows))  # original row index of each batch row
    for step in range(max_new_tokens + 1):
        if step == max_new_tokens:  # score_end: the end-of-turn tokens after each cut row's last token
            ends = logits.log_softmax(-1)[:, stop]
            for b, i in enumerate(alive.tolist()):
                end_logps[i] = {int(t): float(v) for t, v in zip(stop.tolist(), ends[b])}
            break
        token = _pick(logits, temperature, top_p, [generators[i] for i in alive.tolist()])  # (B,)
        token_logp = logits.log_softmax(-1).gather(1, token[:, None]).squeeze(1)
        done = torch.isin(token, stop)
        for b, i in enumerate(alive.tolist()):
            out_ids[i].append(int(token[b]))
            out_logps[i].append(float(token_logp[b]))
            finished[i] = bool(done[b])
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0 or (step == max_new_tokens - 1 and not score_end):
            break
        if keep.numel() < done.numel():  # finished rows leave the batch and the cache
            cache.batch_select_indices(keep)
            alive, token, attention, step_pos = alive[keep.cpu()], token[keep], attention[keep], step_pos[keep]
        step_pos = step_pos + 1
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=attention, position_ids=step_pos, use_cache=True,
                       logits_to_keep=1, **{cache_arg: cache}).logits[:, -1].float()  # (B, V)
    return [(out_ids[i], out_logps[i], finished[i], end_logps[i]) for i in range(len(rows))]


def generate(model, tokenizer, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 256, seed: int = 0, batch_size: int = 32, stop_ids: set[int] | None = None,
             prompt_keys: list[int] | None = None, score_end: bool = False) -> list[list[Sample]]:
    """n samples for each prompt (token ids, e.g. a rendered chat prompt); temperature 0 is greedy.

    `prompt_keys` (default: the prompts' positions) seed each prompt's streams: give each question a stable key
    and generating a list in pieces, or resuming, gives the same samples as generating it whole.
    """
    from alignkit.data.chat import end_of_turn_ids

    if not prompts:
        return []
    stop_ids = stop_ids if stop_ids is not None else end_of_turn_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    keys = prompt_keys if prompt_keys is not None else list(range(len(prompts)))
    jobs = [(p, j) for p in range(len(prompts)) for j in range(n)]
    jobs.sort(key=lambda job: len(prompts[job[0]]))  # similar lengths share a batch: less padding
    was_training = model.training
    model.eval()
    results: dict[tuple[int, int], Sample] = {}
    try:  # progress per batch (quiet inside another one: an eval's chunks, training's rollouts)
        with progress("generate", total=len(jobs) if len(jobs) > batch_size else 0, unit="samples") as advance:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start:start + batch_size]
                outs = _generate_batch(
                    model, [list(prompts[p]) for p, _ in chunk],
                    [_row_seed(seed, keys[p], j) for p, j in chunk],
                    pad_id, stop_ids, temperature, top_p, max_new_tokens, score_end,
                )
                for (p, j), (ids, logps, fin, ends) in zip(chunk, outs):
                    body = ids[:-1] if fin else ids
                    results[(p, j)] = Sample(tokenizer.decode(body, skip_special_tokens=True), ids, logps, fin,
                                             end_logps=ends)
                advance(len(chunk))
    finally:
        model.train(was_training)
    return [[results[(p, j)] for j in range(n)] for p in range(len(prompts))]
