"""AdamW (torch's, or bitsandbytes' 8-bit) and the learning-rate schedule (linear warm-up, then cosine, linear or
constant)."""

import math

import torch


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.optim == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            from alignkit import AlignkitError

            raise AlignkitError("train.optim=adamw_8bit needs bitsandbytes (pip install 'alignkit[quant]')") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    # The fused kernel on CUDA (one launch per step instead of a dozen per parameter group) and on the CPU (one pass
    # over each parameter's memory instead of one per operation: 0.11 s against 0.56 s a step for 148 M float32
    # parameters on a 2-core CPU, docs/benchmarks.md).
    fused = True if params and all(p.device.type in ("cuda", "cpu") for p in params) else None
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                             fused=fused)


def lr_lambda(total_steps: int, warmup: int, kind: str):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # cosine

    return factor


def build_scheduler(optimizer, cfg, total_steps: int):
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, cfg.scheduler))
