"""The one training loop: optimizer, schedule, accumulation, clipping, mixed precision, logging, evaluation
and checkpoints. An algorithm supplies only what differs, through `Algorithm`.

Gradient accumulation: an algorithm's `loss` is already normalised by the *global* batch of the optimizer
step (times the world size, because DDP averages gradients over processes), so summing micro-batch
gradients gives exactly the gradient of the global-batch mean.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Iterable, Protocol

import torch

from alignkit.train import checkpoint
from alignkit.train.log import MetricsLog, check_trackers, trackers_of
from alignkit.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class Algorithm(Protocol):
    total_steps: int

    def batches(self, step: int) -> Iterable:
        """This process's micro-batches for optimizer step `step`."""

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss to backpropagate, and metric *sums* over the batch (with 'count' and 'tokens')."""

    def evaluate(self, model) -> dict[str, torch.Tensor]:
        """Metric sums over this process's share of the held-out split (with 'count'), or {}."""

    # Optional: `idle_metrics() -> dict[str, float]`, what a step without a batch still has to report (say, the
    # rewards of a generation round whose groups all had equal rewards).


def reduce_metrics(sums: dict[str, torch.Tensor], accelerator) -> dict[str, float]:
    """Sum over processes, then divide by the summed 'count' (except 'tokens'); names ending in '_max' are
    maxima (over micro-batches and processes), taken as they are."""
    if not sums:
        return {}
    # Metric sums may live on different devices (counts are built on the host): one device before stacking.
    def stack(names):
        return torch.stack([sums[n].detach().float().reshape(()).to(accelerator.device) for n in names])

    names = sorted(n for n in sums if not n.endswith("_max"))
    maxima = sorted(n for n in sums if n.endswith("_max"))
    total = dict(zip(names, accelerator.reduce(stack(names), reduction="sum").tolist())) if names else {}
    count = max(total.pop("count", 1.0), 1.0)
    tokens = total.pop("tokens", None)
    out = {k: v / count for k, v in total.items()}
    if maxima:
        out.update(zip(maxima, accelerator.reduce(stack(maxima), reduction="max").tolist()))
    if tokens is not None:
        out["tokens"] = tokens
    return out


def train(algo: Algorithm, model, run) -> tuple[torch.nn.Module, list[dict]]:
    """Run `algo.total_steps` optimizer steps of `algo` on `model` (a module returning what `algo.loss` needs),
    in `run` (train/setup.Run: its train config, accelerator and directory)."""
    cfg, accelerator, run_dir = run.cfg.train, run.accelerator, run.run_dir
    check_trackers(trackers_of(cfg))  # a tracker library missing: an error before the run directory is touched
    run.begin()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    scheduler = build_scheduler(optimizer, cfg, algo.total_steps)
    ckpt_root = run_dir / "checkpoints"
    start = 0
    found = checkpoint.latest(ckpt_root) if cfg.resume else None
    if found is not None and not run.sharded:
        start = checkpoint.load(found, model, optimizer, scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    if found is not None and run.sharded:  # the shards go into the prepared (sharded) model and optimizer
        start = checkpoint.load_sharded(found, accelerator, scheduler)
    if found is not None:
        log.info("resumed from %s (step %d)", found, start)
    params = [p for p in model.parameters() if p.requires_grad]

    metrics_log = MetricsLog(run_dir, algo.total_steps, start, accelerator.is_main_process, trackers_of(cfg),
                             run.cfg.model_dump(mode="json"))  # the trackers get the resolved config (config.yaml)
    history: list[dict] = []
    try:
        for step in range(start, algo.total_steps):
            t0 = time.perf_counter()
            model.train()
            sums: dict[str, torch.Tensor] = {}
            micro = list(algo.batches(step))
            if accelerator.num_processes > 1:  # all update or none: a process that skipped would leave the
                _check_all_or_none(step, bool(micro), accelerator)  # others waiting in the gradient all-reduce
            if not micro:  # nothing to learn from this step (say, dynamic sampling found no usable group)
                log.info("step %d: no batch to train on; no update", step + 1)
                metrics = {"skipped": 1.0, **(algo.idle_metrics() if hasattr(algo, "idle_metrics") else {}),
                           "learning_rate": scheduler.get_last_lr()[0]}
                with warnings.catch_warnings():  # the schedule follows step numbers, updates or not
                    warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
                    scheduler.step()
                metrics["step_seconds"] = time.perf_counter() - t0
                metrics_log.write(step + 1, metrics)
                history.append({"step": step + 1, **metrics})
                metrics_log.advance(step + 1)
                continue
            nonfinite = torch.zeros((), dtype=torch.bool)
            for i, batch in enumerate(micro):
                sync = i == len(micro) - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    with accelerator.autocast():  # the run's precision, whichever submodules `loss` calls
                        loss, m = algo.loss(model, batch)
                    accelerator.backward(loss)
                nonfinite |= ~torch.isfinite(loss.detach()).cpu()
                for k, v in m.items():
                    v = v.detach()
                    sums[k] = torch.maximum(sums[k], v) if k.endswith("_max") and k in sums else sums.get(k, 0) + v
            if cfg.max_grad_norm is not None:
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            else:
                grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor; its value, the same on every process
                grad_norm = grad_norm.full_tensor()
            _check_finite(step, nonfinite, grad_norm, accelerator)  # before the update: the weights stay finite
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            metrics = reduce_metrics(sums, accelerator)
            elapsed = time.perf_counter() - t0
            metrics["tokens_per_second"] = metrics.pop("tokens", 0.0) / elapsed
            metrics.update(grad_norm=float(grad_norm), learning_rate=lr, step_seconds=elapsed)
            if cfg.eval_every and done % cfg.eval_every == 0 and done != algo.total_steps:
                metrics.update(evaluate(algo, model, accelerator))
            if done == algo.total_steps:
                metrics.update(evaluate(algo, model, accelerator))
            if done % cfg.log_every == 0 or done == algo.total_steps or any(k.startswith("eval_") for k in metrics):
                metrics_log.write(done, metrics)
            history.append({"step": done, **metrics})
            metrics_log.advance(done)
            if cfg.save_every and done % cfg.save_every == 0 and done != algo.total_steps:
                if run.sharded:
                    checkpoint.save_sharded(ckpt_root, done, accelerator, scheduler, cfg.keep_last)
                else:
                    save_checkpoint(ckpt_root, done, model, optimizer, scheduler, cfg, accelerator)
    finally:
        metrics_log.close()
    return accelerator.unwrap_model(model), history


def held_out_sums(rows: list, batch_size: int, rank: int, world: int, metrics_of) -> dict[str, torch.Tensor]:
    """Metric sums over this process's share of held-out `rows`: `metrics_of(chunk)` for each chunk of batch_size."""
    mine = rows[rank::world]
    sums: dict[str, torch.Tensor] = {}
    for s in range(0, len(mine), batch_size):
        for k, v in metrics_of(mine[s : s + batch_size]).items():
            sums[k] = sums.get(k, 0) + v
    return sums


def _check_finite(step: int, nonfinite: torch.Tensor, grad_norm, accelerator) -> None:
    """Stop at a step whose loss or gradient is inf or nan, before the optimizer applies it: no checkpoint and no
    final model is ever written with non-finite weights. Every process decides alike (one reduction)."""
    from alignkit import AlignkitError

    bad = nonfinite.float() + (~torch.isfinite(torch.as_tensor(grad_norm, dtype=torch.float32))).float().cpu()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.to(accelerator.device), reduction="sum").cpu()
    if bad.item() > 0:
        what = "loss" if nonfinite.item() else f"gradient norm ({float(grad_norm)})"
        raise AlignkitError(f"step {step + 1}: the {what} is not finite; stopped before the update, so no weights "
                            f"were changed by it and no final model is written (check the data, the learning rate, "
                            f"train.bf16; the run resumes from its last checkpoint)")


def _check_all_or_none(step: int, has_batch: bool, accelerator) -> None:
    from alignkit import AlignkitError

    have = int(accelerator.reduce(torch.tensor(float(has_batch), device=accelerator.device), reduction="sum"))
    if 0 < have < accelerator.num_processes:
        raise AlignkitError(f"step {step + 1}: {accelerator.num_processes - have} of {accelerator.num_processes} "
                            "processes have no micro-batch while the others do (the algorithm must give every "
                            "process one, a zero-weight one if need be)")


def evaluate(algo: Algorithm, model, accelerator) -> dict[str, float]:
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        sums = algo.evaluate(model)
    if accelerator.num_processes > 1:  # a process with no held-out row still joins the reduction, with zeros
        from accelerate.utils import gather_object

        names = sorted(set().union(*gather_object([sorted(sums)])))
        sums = {n: sums.get(n, torch.zeros(())) for n in names}
    return {f"eval_{k}": v for k, v in reduce_metrics(sums, accelerator).items()}


def save_checkpoint(ckpt_root, step, model, optimizer, scheduler, cfg, accelerator) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoint.save(ckpt_root, step, accelerator.unwrap_model(model), optimizer, scheduler, cfg.keep_last)
    accelerator.wait_for_everyone()


def whole(trained, run, rebuild):
    """The trained module with ordinary tensors, on the main process (None on the others). Unsharded: `trained`
    itself. Sharded: every process must call this; the full state dict is gathered and loaded into `rebuild()`, a
    fresh unsharded copy of the module (LoRA included), which the usual writers then save."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if not run.sharded:
        return trained if accelerator.is_main_process else None
    state = accelerator.get_state_dict(trained)  # a collective: full tensors on the main process
    if not accelerator.is_main_process:
        return None
    fresh = rebuild()
    fresh.load_state_dict(state)
    return fresh


def finish(model, history: list[dict], tokenizer, cfg, run_dir: Path, accelerator, shown: tuple[str, ...]) -> None:
    """Save the final model (a whole one: see `whole`; None on processes other than the main one) into
    run_dir/final and print a one-line summary of the last step."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final(model, tokenizer, cfg, run_dir / "final")
        if history:
            last = history[-1]
            values = {k: round(v, 4) for k, v in last.items() if k in shown}
            print(f"done: {last['step']} steps; {values}; model in {run_dir / 'final'}")
    accelerator.end_training()


def save_final(model, tokenizer, cfg, dest: Path) -> None:
    """The trained model (LoRA merged when cfg.model.lora.merge) and its tokenizer, written atomically."""
    with checkpoint.atomic_dir(dest) as tmp:
        if cfg.model.lora is not None and cfg.model.lora.merge:
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        from alignkit.model_card import try_write

        try_write(tmp, cfg, run_dir=dest.parent)  # README.md: base model, method, data, last metrics, command
