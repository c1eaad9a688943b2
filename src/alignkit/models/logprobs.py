"""Summed response log-probs without a (batch, seq, vocab) float32 tensor.

The decoder runs once over the concatenated batch; hidden states at response positions are selected
before the lm_head, and the head + log-softmax + gather runs over row chunks. For a plain linear head a
custom autograd function recomputes each chunk's logits in backward, so peak memory holds one chunk of
logits instead of all of them.
"""

from __future__ import annotations

import torch
from torch import nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class _LinearLogSoftmaxGather(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[targets], chunked over rows; logits recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, dtype: torch.dtype):
        # hidden (N, H), weight (V, H), targets (N,) -> (N,) float32
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            lse = torch.empty_like(out)
            for s in range(0, h.shape[0], chunk):
                logits = (h[s : s + chunk] @ w.T).float()  # (n, V)
                lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
                out[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1) - lse[s : s + chunk]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(ctx.dtype), weight.to(ctx.dtype)
            for s in range(0, h.shape[0], ctx.chunk):
                e = s + ctx.chunk
                logits = (h[s:e] @ w.T).float()
                g = grad_out[s:e, None].float()  # (n, 1)
                # d(logit_t − lse)/d logits = onehot(t) − softmax
                dlogits = torch.exp(logits - lse[s:e, None]).mul_(-g)
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


def base_model(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class SequenceLogps(nn.Module):
    """Wraps a causal LM; forward returns summed response log-probs per sequence.

    This module, not the bare LM, is what Accelerate wraps for DDP/FSDP, so gradient sync sees the whole
    forward.
    """

    def __init__(self, model: nn.Module, chunk: int = 1024):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, response_mask: (B, T), right-padded. With right padding, causal attention never lets a
        # real token see padding, so no attention mask is needed and the fast causal kernel applies.
        hf = base_model(self.model)
        cfg = hf.config
        targets_mask = response_mask[:, 1:]  # token t is predicted at position t − 1; (B, T−1)
        targets = input_ids[:, 1:][targets_mask]  # (N,)
        if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
            logits = hf(input_ids=input_ids).logits[:, :-1][targets_mask].float()  # model-specific head
            token_logps = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        else:
            hidden = hf.get_decoder()(input_ids=input_ids).last_hidden_state  # (B, T, H)
            rows = hidden[:, :-1][targets_mask]  # (N, H): response positions only, before the lm_head
            token_logps = selected_token_logps(rows, hf.get_output_embeddings(), targets, self.chunk)
        seq = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(targets_mask)
        sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
        return sums.index_add(0, seq[targets_mask], token_logps)  # (B,)
