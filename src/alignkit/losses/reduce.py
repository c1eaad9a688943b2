"""Masked reductions and the one place where a per-token loss becomes a scalar.

`mask` is a (B, T) boolean (or 0/1) tensor marking valid response tokens. Masked positions are selected
away with `torch.where`, never multiplied by zero, so NaN or inf in padding cannot leak into a result.

GRPO, Dr. GRPO and DAPO differ mostly in `aggregate`'s mode (as in verl's `agg_loss`):
GRPO averages tokens within each sequence then over sequences ("seq-mean-token-mean"), DAPO averages
over all tokens of the batch ("token-mean"), Dr. GRPO sums tokens and divides by a constant
("seq-mean-token-sum" with `max_len`).
"""

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x over positions where mask is true (all positions if dim is None, else along dim)."""
    masked = torch.where(mask.bool(), x, 0.0)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m / Σ m. Where no position is valid the result is 0, not NaN."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all valid positions; unbiased (Bessel's n/(n−1)) by default, as in TRL and OpenRLHF.

    Raises ValueError when fewer than two positions are valid (one position when unbiased=False).
    """
    count = int(mask.bool().sum())
    if count < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} valid positions, got {count}")
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)  # biased: Σ (x − μ)² / n
    return var * count / (count - 1) if unbiased else var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Advantage whitening over all valid tokens of the batch: (x − μ) / sqrt(σ² + eps), σ² unbiased.

    x and mask are (B, T); so is the result, 0 at masked positions. With shift_mean=False the mean is added
    back (scale only), as in TRL's `masked_whiten`.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def token_mean(
    loss: torch.Tensor, mask: torch.Tensor, global_tokens: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Σ over all valid tokens / number of valid tokens (DAPO's token-level loss, Yu et al. 2025, §3.3).

    Under gradient accumulation pass `global_tokens`, the valid-token count of the whole optimizer step,
    so that the micro-batch losses sum to the token mean of the step rather than a mean of means.
    """
    if global_tokens is None:
        return masked_mean(loss, mask)
    if not isinstance(global_tokens, torch.Tensor) and global_tokens <= 0:
        raise ValueError(f"global_tokens must be positive, got {global_tokens}")
    return masked_sum(loss, mask) / global_tokens


def _seq_mean(per_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    has_tokens = mask.bool().any(-1)  # (B,): a row with no valid token is not a sequence
    return masked_mean(per_seq, has_tokens)


def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens within each sequence, then mean over sequences (GRPO, Eq. 3 of Shao et al. 2024)."""
    return _seq_mean(masked_mean(loss, mask, dim=-1), mask)  # (B,) -> ()


def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Sum over tokens within each sequence (divided by the constant `max_len` if given), then mean over sequences.

    With max_len this is Dr. GRPO's normalisation (Liu et al. 2025), which removes GRPO's length bias.
    """
    per_seq = masked_sum(loss, mask, dim=-1)  # (B,)
    if max_len is not None:
        if max_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        per_seq = per_seq / max_len
    return _seq_mean(per_seq, mask)


AGGREGATIONS = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
}


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    global_tokens: float | torch.Tensor | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) under mask to a scalar with one of the AGGREGATIONS modes.

    Sequence modes average over rows that hold at least one valid token. `global_tokens` belongs to
    "token-mean" only and `max_len` to "seq-mean-token-sum" only; passing either to another mode is an error.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes: {', '.join(AGGREGATIONS)}")
    if global_tokens is not None and mode != "token-mean":
        raise ValueError(f"global_tokens applies to mode 'token-mean' only, not {mode!r}")
    if max_len is not None and mode != "seq-mean-token-sum":
        raise ValueError(f"max_len applies to mode 'seq-mean-token-sum' only, not {mode!r}")
    options = {"global_tokens": global_tokens} if global_tokens is not None else {}
    if max_len is not None:
        options["max_len"] = max_len
    return AGGREGATIONS[mode](loss, mask, **options)
