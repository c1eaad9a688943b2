"""Where every training command starts: start a run, then load the policy it trains.

    run = start_run(cfg, unit=(cfg.train.micro_batch_size, "train.micro_batch_size"))
    policy = load_policy(cfg, run)          # model, dropout off, LoRA, the log-prob wrapper on run.device
    ... build the algorithm, then train.loop.train(algo, policy.module, run)

`start_run` owns what must mean the same in every command: threads, the compute precision (`train.bf16` is bf16
autocast wherever the hardware computes bf16 natively, float32 with a warning elsewhere), the batch-size checks
against the number of processes, the seed, the run directory and its resolved config.

A run directory holds one run. A rerun into it continues that run only when its resolved config is the same
(apart from `config.MAY_CHANGE`: max_steps, logging, engine addresses...); otherwise it stops before writing
anything, naming the keys. `train.overwrite=true` replaces the old run, once training is about to start.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from alignkit import AlignkitError
from alignkit.config import changed_keys, save_resolved
from alignkit.models.load import add_lora, bf16_is_fast, disable_dropout, load_model

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: Any  # the resolved config the run uses (train.bf16 off where the hardware has no native bf16)
    accelerator: Any
    run_dir: Path

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def sharded(self) -> bool:
        """Parameters sharded over the processes (FSDP, DeepSpeed): checkpoints and the final model are
        written through Accelerate's state API, every process taking part."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """The run's compute precision for passes outside the prepared model (sampling, reference, rollouts)."""
        return self.accelerator.autocast() if self.cfg.train.bf16 else contextlib.nullcontext()

    def begin(self) -> None:
        """Training is about to start (every input read, the model loaded): an overwrite clears the old run's
        outputs now, and the run directory gets this run's resolved config. Nothing is written earlier, so a
        command that fails before this point leaves a finished run as it was."""
        if self.accelerator.is_main_process:
            if self.cfg.train.overwrite:
                _clear_run(self.run_dir)
            save_resolved(self.cfg, self.run_dir)
        self.accelerator.wait_for_everyone()

    def sum_over_processes(self, values: list[float]) -> list[float]:
        """Element-wise sums over every process (the values themselves in a single process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()


def start_run(cfg, unit: tuple[int, str] | None = None, max_processes: int | None = None,
              shardable: bool = True) -> Run:
    """The accelerator (with the configured precision), threads, checks, seed, run directory and resolved config.

    unit: (n, key) when train.batch_size must split into n-sized pieces on every process.
    shardable: False for a command that cannot train sharded weights (FSDP, DeepSpeed) yet.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.bf16 and not bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu"):
        log.warning("train.bf16: this processor has no native bf16 (AVX512-BF16/AMX); computing in float32")
        cfg = cfg.model_copy(update={"train": t.model_copy(update={"bf16": False})})
        t = cfg.train
    # Launched as several processes (torchrun, accelerate launch) on a machine without a GPU: Accelerate sees the
    # processes only when told to run on the CPU; otherwise each would train alone on the whole batch.
    on_cpus = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # Each run in a process (a pipeline's stages, a notebook) sets its own precision; the processes stay as they are.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="bf16" if t.bf16 else "no", cpu=on_cpus)
    if on_cpus and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        _fsdp_on_cpus(accelerator)
    if on_cpus and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # Accelerate skips DeepSpeed for CPU processes; without that, the run would silently be plain DDP.
        raise AlignkitError("DeepSpeed does not run on CPU processes through Accelerate (it needs GPUs); on CPUs use "
                            "configs/accelerate/fsdp2.yaml to shard, or launch without a config for DDP")
    world = accelerator.num_processes
    run = Run(cfg, accelerator, Path(t.output_dir))
    if run.sharded and not shardable:
        raise AlignkitError("this command does not train sharded weights yet (its rollouts need the whole policy on "
                            "every process): launch it without an FSDP or DeepSpeed config, as DDP over processes")
    if max_processes is not None and world > max_processes:
        raise AlignkitError(f"this command runs in at most {max_processes} process(es); launch it without "
                            f"accelerate/torchrun (got {world})")
    if unit is not None and t.batch_size % (unit[0] * world):
        raise AlignkitError(f"train.batch_size={t.batch_size} is not a multiple of {unit[1]}={unit[0]} "
                            f"x {world} processes")
    set_seed(t.seed)
    _check_run_dir(cfg, run.run_dir)
    if accelerator.is_main_process:
        print(f"run: {run.run_dir}, {world} process(es) on {accelerator.device.type}"
              f"{' (FSDP2: parameters sharded)' if run.sharded else ''}, "
              f"{'bf16 autocast' if t.bf16 else 'float32'} compute")
    return run


def _fsdp_on_cpus(accelerator) -> None:
    """An FSDP launch config on CPU processes. Accelerate maps CPU processes to plain data parallelism and drops
    the FSDP plugin (its FSDP path is written for accelerators), but FSDP2's fully_shard runs on CPU tensors over
    gloo as it does on GPUs: put the plugin the launch config describes back, so `prepare` shards the model and
    `save_state` / `get_state_dict` handle the shards."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the ACCELERATE_FSDP_* variables `accelerate launch` sets
    if plugin.fsdp_version != 2:
        raise AlignkitError("FSDP on CPU processes needs fsdp_version: 2 in the accelerate config "
                            "(configs/accelerate/fsdp2.yaml)")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


# What a training run writes into its directory (and an overwrite removes); engines.json and engine.log describe
# the engines of the latest invocation and are rewritten by each.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "value", "tensorboard", "rollouts.jsonl")


def _check_run_dir(cfg, run_dir: Path) -> None:
    """Stop unless `run_dir` is new, holds this same run (to resume), or is to be overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise AlignkitError(f"train.output_dir={run_dir}: is a file, not a directory")
    held = [n for n in RUN_OUTPUTS if (run_dir / n).exists()]
    if not held or cfg.train.overwrite:
        return
    ways = f"use another train.output_dir, or set train.overwrite=true to replace the run in {run_dir}"
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise AlignkitError(f"{run_dir}: holds a run ({', '.join(held)}) without its config.yaml; {ways}")
    import yaml

    try:
        before = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise AlignkitError(f"{saved}: unreadable ({type(e).__name__}); {ways}") from None
    if not isinstance(before, dict):
        raise AlignkitError(f"{saved}: not a saved config (expected a mapping); {ways}")
    changed = changed_keys(before, cfg)
    if changed:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise AlignkitError(f"{run_dir}: holds a run with another config ({shown}{more}); {ways}")
    if not cfg.train.resume:
        raise AlignkitError(f"{run_dir}: holds a run and train.resume is false; {ways}")


def _clear_run(run_dir: Path) -> None:
    import shutil

    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@dataclass
class Policy:
    model: nn.Module  # the transformers model (a peft model when LoRA is on)
    module: nn.Module  # what the loop trains: SequenceLogps(model), or ScalarHead(model) for a reward model

    @property
    def lora(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def adapter_off(self):
        """The initial policy, for a LoRA run: its adapter disabled (a no-op without one)."""
        return self.model.disable_adapter() if self.lora else contextlib.nullcontext()


def load_policy(cfg, run: Run, head: str = "logps", before_adapter: Callable[[nn.Module], None] | None = None
                ) -> Policy:
    """The model with dropout off and LoRA when configured, wrapped for the loop and moved to the run's device.

    before_adapter(model) sees the plain initial model before LoRA goes on (the reference takes its frozen
    copy or its fingerprint there)."""
    model, module = _build(cfg, head, before_adapter)
    return Policy(model, module.to(run.device))


def fresh_module(cfg, head: str = "logps") -> nn.Module:
    """A new copy of what load_policy builds, on the CPU: the container a sharded run's gathered weights are
    loaded into before the final model is written (train/loop.whole)."""
    return _build(cfg, head, None)[1]


def _build(cfg, head: str, before_adapter) -> tuple[nn.Module, nn.Module]:
    from alignkit.models.heads import ScalarHead, saved_scorer
    from alignkit.models.logprobs import SequenceLogps

    m, t = cfg.model, cfg.train
    if m.load_in_4bit:
        from alignkit.models.quant import load_4bit

        model = load_4bit(m.path, m.bnb_4bit_quant_type, torch.bfloat16 if t.bf16 else torch.float32,
                          m.trust_remote_code, t.gradient_checkpointing)
    else:
        model = load_model(m.path, m.dtype, m.trust_remote_code, m.allow_pickle)
    if m.attn_implementation is not None:
        model.set_attn_implementation(m.attn_implementation)
    disable_dropout(model)
    if before_adapter is not None:
        before_adapter(model)
    if t.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) and under autocast; the cache is useless while training
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if m.lora is not None:
        model = add_lora(model, m.lora)
    if head == "scalar":  # a reward model trained further keeps its head, and its pooling unless told otherwise
        saved = saved_scorer(m.path)
        module = ScalarHead(model, saved and saved.head, *_reward_pooling(cfg.loss, saved), t.logits_chunk)
    else:
        module = SequenceLogps(model, t.logits_chunk, t.share_prompts)
    return model, module


def _reward_pooling(loss, scorer) -> tuple[str, float | None]:
    """A reward model's pooling and token log-prob weight: as the config says, else as the reward model it
    starts from was saved (`scorer`, models/heads.SavedScorer; its learned weight kept), else last pooling
    without the term (TRL's reward model)."""
    saved, saved_pool = (scorer.logprob_weight, scorer.pooling) if scorer else (None, None)
    if loss.token_logprob is not None:
        term = loss.token_logprob
    else:  # a saved term goes on, unless the config asks for last-token scoring, which has no room for it
        term = saved is not None and loss.pooling != "last"
    weight = (saved if saved is not None else 1.0) if term else None
    if saved_pool == "last" and term:  # the term on a last-token reward model: it pools over the response
        saved_pool = None
    pooling = loss.pooling or saved_pool or ("mean" if term else "last")
    return pooling, weight


def load_task(cfg, run):
    """An RL command's prompts: (items, their rendered chat prompts as token ids, the rewards, the tokenizer).
    A conversational prompt (a TRL prompt file's messages) is rendered as given; control text in any of its
    messages is refused naming the file, row and field (`prompt[i].content`)."""
    from alignkit.data.chat import chat_prompt_ids, task_prompt_ids
    from alignkit.models.load import load_tokenizer
    from alignkit.rewards import Rewards
    from alignkit.tasks import make_task, task_items

    task = make_task(cfg.task)
    items = task_items(task, cfg.task)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    rewards = Rewards(cfg.rewards, task, tokenizer, run.device, items=items)  # checked against the items first
    prompt_ids = [chat_prompt_ids(tokenizer, item.messages(), item.meta["where"], item.meta["field"])
                  if item.conversation is not None else task_prompt_ids(tokenizer, item) for item in items]
    kind = ""
    if items and items[0].meta.get("format") == "trl":
        kind = ", TRL format, " + ("conversational" if items[0].conversation is not None else "standard")
    print(f"data: {len(items)} prompts from {cfg.task.file or cfg.task.name} ({cfg.task.split}{kind})")
    return items, prompt_ids, rewards, tokenizer


def open_sampler(cfg, run: Run, tokenizer, policy: Policy):
    """The rollout backend of an RL command (`generation.backend`): the local sampler on the policy itself, or
    vLLM engines; the engines' versions are recorded in the run directory."""
    from alignkit.generation.rollout import from_config
    from alignkit.models.logprobs import base_model

    gen = cfg.generation
    if gen.engine_command and run.world > 1:
        raise AlignkitError("generation.engine_command starts one engine per process; with several processes start "
                            "the engines yourself and give generation.engine_urls")
    return from_config(gen, tokenizer, base_model(policy.model), cfg.model.path,
                       run.run_dir if run.accelerator.is_main_process else None)


def sync_sampler(backend, model: nn.Module, run: Run) -> dict[str, float]:
    """Make an RL command's sampler serve the policy's current weights before a generation round (the first round
    too: a resumed run, or an engine that served something else), checked. The main process pushes; the others
    adopt its report, so all raise alike. Returns what to log: weight_version, sync_seconds, sync_probe_max_diff."""
    report = error = None
    if run.rank == 0:
        try:
            report = backend.sync(model)
        except AlignkitError as e:
            error = str(e)
    if run.world > 1:
        from accelerate.utils import broadcast_object_list

        box = [(report, error)]
        broadcast_object_list(box, from_process=0)
        report, error = box[0]
        if error is None and run.rank:
            backend.adopt(report)
    if error is not None:
        raise AlignkitError(error)
    out = {"weight_version": float(report.version), "sync_seconds": report.seconds}
    if report.probe_max_abs_diff is not None:
        out["sync_probe_max_diff"] = report.probe_max_abs_diff
    return out
