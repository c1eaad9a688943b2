"""Summed response log-probs without a (batch, seq, vocab) float32 tensor.

The decoder runs once over the concatenated batch; hidden states at response positions are selected
before the lm_head, and the head + log-softmax + gather runs over row chunks. For a plain linear head a
custom autograd function recomputes each chunk's logits in backward, so peak memory holds one chunk of
logits instead of all of them; where the softmax of all selected rows takes at most KEEP_SOFTMAX_BYTES (256 MiB:
a batch of short answers) it is kept from forward instead, which saves the recomputation.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


KEEP_SOFTMAX_BYTES = 256 * 2**20  # the head's softmax kept for backward up to this size, else recomputed


class _LinearLogSoftmaxGather(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[targets], chunked over rows; in backward the softmax kept from forward
    (up to KEEP_SOFTMAX_BYTES), else the logits recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, dtype: torch.dtype):
        # hidden (N, H), weight (V, H), targets (N,) -> (N,) float32
        grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            lse = torch.empty_like(out)
            # Small enough, the softmax is kept for backward instead of recomputing the logits there (the same
            # values: one matmul less per row, about 6% of a short-answer LoRA step on a CPU).
            probs = (torch.empty(h.shape[0], w.shape[0], dtype=torch.float32, device=h.device)
                     if grad and h.shape[0] * w.shape[0] * 4 <= KEEP_SOFTMAX_BYTES else None)
            for s in range(0, h.shape[0], chunk):
                logits = (h[s : s + chunk] @ w.T).float()  # (n, V)
                lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
                out[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1) - lse[s : s + chunk]
                if probs is not None:
                    torch.exp(logits - lse[s : s + chunk, None], out=probs[s : s + chunk])
        ctx.save_for_backward(hidden, weight, targets, lse, *(() if probs is None else (probs,)))
        ctx.chunk, ctx.dtype = chunk, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse, *kept = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(ctx.dtype), weight.to(ctx.dtype)
            for s in range(0, h.shape[0], ctx.chunk):
                e = s + ctx.chunk
                g = grad_out[s:e, None].float()  # (n, 1)
                # d(logit_t − lse)/d logits = onehot(t) − softmax
                if kept:
                    dlogits = kept[0][s:e] * -g
                else:
                    dlogits = torch.exp((h[s:e] @ w.T).float() - lse[s:e, None]).mul_(-g)
                dlogits.scatter_add_(1, targets[s:e, None], g)
                dlogits = dlogits.to(ctx.dtype)
                if want_h:
                    grad_h[s:e] = dlogits @ w
                if want_w:
                    grad_w += (dlogits.T @ h[s:e]).float()
        return grad_h, (grad_w.to(weight.dtype) if want_w else None), None, None, None


def selected_token_logps(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(targets) for hidden rows (N, H) under `head`; (N,) float32."""
    if type(head) is nn.Linear and head.bias is None:
        return _LinearLogSoftmaxGather.apply(hidden, head.weight, targets, chunk, _compute_dtype(hidden))
    parts = []
    for s in range(0, hidden.shape[0], chunk):
        logits = head(hidden[s : s + chunk]).float()
        parts.append(logits.log_softmax(-1).gather(1, targets[s : s + chunk, None]).squeeze(1))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def transforms_logits(config) -> bool:
    """The model soft-caps or scales its logits after the LM head (Gemma 2, Cohere): reading the head directly
    would not give its log-probs."""
    return bool(getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


def base_model(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class SequenceLogps(nn.Module):
    """Wraps a causal LM; forward returns summed response log-probs per sequence.

    This module, not the bare LM, is what Accelerate wraps for DDP/FSDP, so gradient sync sees the whole
    forward.

    Rows that share a prompt (chosen and rejected of a pair, the G samples of a GRPO group) run that prompt
    through the decoder once: a prompt pass over the distinct prompts fills a KV cache, the cache is
    gathered to one entry per row, and a response pass runs the responses on top of it. Gradients flow
    through the cache into the prompt pass, so log-probs and gradients equal the plain forward's (up to
    float rounding); only the duplicated prompt tokens are saved. `share_prompts=False` keeps one plain pass;
    None shares on CPUs only (on a GPU a small model is launch-bound, and two passes cost more than they save).
    """

    def __init__(self, model: nn.Module, chunk: int = 1024, share_prompts: bool | None = True):
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.share_prompts = share_prompts

    def forward(self, input_ids: torch.Tensor, response_mask: torch.Tensor, per_token: bool = False,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Summed response log-probs (B,); with per_token, each response token's log-prob at its own position
        (B, T), 0 elsewhere. input_ids, response_mask: (B, T), right-padded; each row's response is one
        contiguous run. A response token at position 0 has no predictor and counts 0.

        position_ids (B, T), for packed rows: positions restart at 0 where a new sequence starts, and attention
        stays inside each sequence (transformers derives the block-diagonal causal mask from them)."""
        hf = base_model(self.model)
        cfg = hf.config
        if transforms_logits(cfg):
            token_logps, where = self._plain_logits(hf, input_ids, response_mask, position_ids)  # model's own head
        elif (position_ids is None
              and (self.share_prompts if self.share_prompts is not None else input_ids.device.type == "cpu")
              # transformers turns the prompt pass's cache off under gradient checkpointing while training
              and not (_checkpointing(hf) and hf.training)
              and (plan := _shared_prompts(input_ids, response_mask)) is not None):
            token_logps, where = self._shared(hf, input_ids, response_mask, *plan), response_mask
        else:
            token_logps, where = self._plain(hf, input_ids, response_mask, position_ids)
        if per_token:
            out = torch.zeros(where.shape, dtype=torch.float32, device=where.device)
            out[where] = token_logps
            return out
        return _row_sums(token_logps, where)

    def _plain(self, hf, input_ids, response_mask, position_ids=None):
        # With right padding, causal attention never lets a real token see padding, so no attention mask is
        # needed and the fast causal kernel applies.
        targets_mask = response_mask[:, 1:]  # token t is predicted at position t − 1; (B, T−1)
        targets = input_ids[:, 1:][targets_mask]  # (N,)
        hidden = hf.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                  use_cache=False).last_hidden_state  # (B, T, H)
        rows = hidden[:, :-1][targets_mask]  # (N, H): response positions only, before the lm_head
        token_logps = selected_token_logps(rows, hf.get_output_embeddings(), targets, self.chunk)
        return token_logps, _shift_right(targets_mask)

    def _plain_logits(self, hf, input_ids, response_mask, position_ids=None):
        targets_mask = response_mask[:, 1:]
        targets = input_ids[:, 1:][targets_mask]
        logits = hf(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        logits = logits[:, :-1][targets_mask].float()
        return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1), _shift_right(targets_mask)

    def _shared(self, hf, input_ids, response_mask, owner, unique_rows, starts, lengths, common):
        from transformers import DynamicCache

        decoder = hf.get_decoder()
        dev = input_ids.device
        cache = DynamicCache()
        cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        width = int(starts.max())
        u_starts = starts[unique_rows]
        prompt_ids = input_ids[unique_rows, :width]  # (U, P), right-padded
        prompt_valid = torch.arange(width, device=dev)[None, :] < u_starts[:, None]  # (U, P)
        if common:  # the prefix every prompt starts with (a system prompt, say) runs once: (1, C)
            decoder(input_ids=prompt_ids[:1, :common], use_cache=True, **{cache_arg: cache})
            cache.batch_repeat_interleave(len(unique_rows))
        # Prompt pass over the distinct prompts (after the common prefix); right padding needs no mask.
        out = decoder(input_ids=prompt_ids[:, common:], use_cache=True, **{cache_arg: cache})
        cache.batch_select_indices(owner)  # (U, ...) -> (B, ...): one cache entry per row
        # Response pass, right-padded: (B, R). Prompt padding inside the cache is masked out; positions go on
        # from each row's own prompt length.
        resp_width = int(lengths.max())
        offs = torch.arange(resp_width, device=dev)[None, :]
        resp_valid = offs < lengths[:, None]  # (B, R)
        gather = (starts[:, None] + offs).clamp(max=input_ids.shape[1] - 1)
        resp_ids = torch.where(resp_valid, input_ids.gather(1, gather), input_ids.new_zeros(()))
        attention = torch.cat([prompt_valid[owner], torch.ones_like(resp_valid)], dim=1).long()
        hidden = decoder(input_ids=resp_ids, attention_mask=attention, **{cache_arg: cache},
                         position_ids=starts[:, None] + offs, use_cache=False).last_hidden_state  # (B, R, H)
        # Response token j is predicted by the hidden state before it: the prompt's last for j = 0.
        first = out.last_hidden_state[owner, starts - 1 - common]  # (B, H)
        predictors = torch.cat([first[:, None], hidden[:, :-1]], dim=1)  # (B, R, H)
        # Row-major over resp_valid = row-major over response_mask: the same tokens in the same order.
        return selected_token_logps(predictors[resp_valid], hf.get_output_embeddings(), resp_ids[resp_valid],
                                    self.chunk)


def _shared_prompts(input_ids: torch.Tensor, response_mask: torch.Tensor, min_common: int = 4):
    """(owner, unique_rows, starts, lengths, common) when rows share prompts or a prompt prefix, else None.

    owner (B,): index of each row's prompt among the distinct ones; unique_rows (U,): a row holding each;
    common: how many leading tokens all distinct prompts share (at least one token of each prompt is left
    out of it, so every prompt's last hidden state comes from the prompt pass).
    """
    lengths = response_mask.sum(1)
    starts = response_mask.int().argmax(1)
    if bool((starts == 0).any()) or bool((lengths == 0).any()):
        return None  # a row without prompt or response: nothing to share
    pos = torch.arange(response_mask.shape[1], device=response_mask.device)[None, :]
    if not bool((((pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])) == response_mask).all()):
        return None  # a response in several runs (multi-turn SFT): the plain pass handles any mask
    keys: dict[tuple, int] = {}
    owner, unique_rows = [], []
    rows = input_ids.tolist()
    for i, (row, s) in enumerate(zip(rows, starts.tolist())):
        u = keys.setdefault(tuple(row[:s]), len(keys))
        if u == len(unique_rows):
            unique_rows.append(i)
        owner.append(u)
    prompts = list(keys)
    common = 0
    if len(prompts) > 1:
        limit = min(len(p) for p in prompts) - 1
        while common < limit and all(p[common] == prompts[0][common] for p in prompts):
            common += 1
        if common < min_common:
            common = 0
    if len(unique_rows) == len(owner) and not common:
        return None
    dev = input_ids.device
    return (torch.tensor(owner, device=dev), torch.tensor(unique_rows, device=dev), starts, lengths, common)


def _checkpointing(hf) -> bool:
    """Whether activation checkpointing is on (transformers >= 5.x names it is_activation_checkpointing; the older
    is_gradient_checkpointing warns there)."""
    on = getattr(hf, "is_activation_checkpointing", None)
    return bool(on if on is not None else getattr(hf, "is_gradient_checkpointing", False))


def _shift_right(targets_mask: torch.Tensor) -> torch.Tensor:
    """(B, T−1) mask over predicted positions -> (B, T) mask over the tokens themselves."""
    return torch.cat([torch.zeros_like(targets_mask[:, :1]), targets_mask], dim=1)


def _row_sums(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum per row of values laid out at the True positions of mask (B, T), row-major; (B,)."""
    seq = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    sums = torch.zeros(mask.shape[0], dtype=torch.float32, device=mask.device)
    return sums.index_add(0, seq[mask], token_logps)  # (B,)
