"""Speed and memory of `alignkit grpo` against TRL's GRPOTrainer: same model, prompts, group size, generation
length, temperature, batch and steps.

Each single run is its own subprocess (`--worker trl|alignkit`), so its peak RSS is its own; the worker prints one
JSON line last on stdout (per-step seconds, tokens and phase times, ru_maxrss). Runs alternate TRL, alignkit, TRL,
alignkit, ... so slow drift of the machine hits both. A run over `--timeout` seconds is killed and reported as such.

A step is one optimizer step: sampling G completions for each of the step's prompts, scoring them with the task's
reward (1 for a right answer, 0 otherwise; alignkit's own checker in both tools), group-relative advantages, and
one policy update on them (μ = 1, on-policy: no old-policy pass, β = 0: no reference model).

Modes: `lora` (r=16, alpha=32, all-linear, in both tools) and `full` (full fine-tuning).

Run it (writes or updates the section between the grpo_vs_trl markers of --out):
    .venv/bin/python benchmarks/grpo_vs_trl.py --out docs/benchmarks.md
    .venv/bin/python benchmarks/grpo_vs_trl.py --model /tmp/tiny --steps 2 --repeats 1 --modes lora --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dpo_vs_trl as common  # noqa: E402  (shared helpers: machine info, matmul peak, parameters, RSS, markdown)

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
BASE_CONFIG = REPO / "configs" / "grpo" / "smollm2-addition.yaml"
RESULT_MARK = "GRPO_VS_TRL_RESULT "
START, END = "<!-- grpo_vs_trl:start -->", "<!-- grpo_vs_trl:end -->"
TOOLS = ("trl", "alignkit")
MODES = ("lora", "full")
LORA_R, LORA_ALPHA = 16, 32
EPS = 0.2  # PPO clip (irrelevant at μ = 1: the ratio is exactly 1)
# Model FLOPs of one step, in units of N (parameters) per token. Generation: 2N per token (prompt prefill and each
# sampled token). Update, per token (prompt + completion) of the sequences the update runs through the model:
UPDATE_FLOPS = {
    "full": (6, "6N: forward 2N + backward 4N (input and weight gradients)"),
    "lora": (4, "4N: forward 2N + input-gradient backward 2N through the frozen weights; adapter FLOPs ignored"),
}
GEN_FLOPS = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF directory or .gguf (alignkit resolve)")
    p.add_argument("--task", default="addition-2d", help="alignkit built-in task (train split) giving prompts+reward")
    p.add_argument("--steps", type=int, default=4, help="measured optimizer steps per run")
    p.add_argument("--warmup-steps", type=int, default=1, help="unmeasured optimizer steps before them")
    p.add_argument("--prompts-per-step", type=int, default=4, help="prompts per optimizer step (B)")
    p.add_argument("--group-size", type=int, default=4, help="completions per prompt (G); B*G per step")
    p.add_argument("--max-new-tokens", type=int, default=48, help="completion length limit")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-7, help="learning rate, constant, both tools")
    p.add_argument("--repeats", type=int, default=3, help="runs per tool per mode")
    p.add_argument("--modes", default="lora,full", help="comma list of lora, full")
    p.add_argument("--timeout", type=float, default=900, help="seconds per single run before it is killed")
    p.add_argument("--out", help="markdown file to write or update (default: print only)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the per-run directories (logs, metrics)")
    # Worker-only arguments (set by the parent).
    p.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.mode_list = [x.strip() for x in a.modes.split(",") if x.strip()]
    for x in a.mode_list:
        if x not in MODES:
            p.error(f"--modes: unknown mode '{x}' (choose from {', '.join(MODES)})")
    if min(a.steps, a.repeats, a.prompts_per_step, a.max_new_tokens) < 1 or a.warmup_steps < 0:
        p.error("--steps, --repeats, --prompts-per-step, --max-new-tokens must be >= 1, --warmup-steps >= 0")
    if a.group_size < 2:
        p.error("--group-size must be >= 2 (group-relative advantages need a group)")
    if not (a.temperature > 0 and 0 < a.top_p <= 1):
        p.error("--temperature must be > 0 and --top-p in (0, 1]")
    return a


def alignkit_overrides(model_dir, a, mode, out_dir) -> list[str]:
    """Every setting that matters, on top of configs/grpo/smollm2-addition.yaml."""
    n = a.prompts_per_step * a.group_size
    o = [
        "preset=grpo", f"model.path={model_dir}", "model.dtype=float32",
        f"task.name={a.task}", "task.file=null", "task.split=train", "task.limit=null", "task.seed=0",
        f"grpo.group_size={a.group_size}", "grpo.beta=0", f"grpo.eps_low={EPS}", "grpo.eps_high=null",
        "grpo.iterations=1", "grpo.scale_rewards=true", "grpo.aggregation=seq-mean-token-mean",
        "grpo.dynamic_sampling=false", "grpo.overlong_buffer=0",
        f"generation.temperature={a.temperature!r}", f"generation.top_p={a.top_p!r}",
        f"generation.max_new_tokens={a.max_new_tokens}", f"generation.batch_size={n}",
        f"train.output_dir={out_dir}", "train.resume=false", "train.seed=0",
        f"train.batch_size={n}", f"train.micro_batch_size={n}", f"train.max_steps={a.warmup_steps + a.steps}",
        f"train.lr={a.lr:.6e}", "train.scheduler=constant", "train.warmup_steps=0", "train.warmup_ratio=0",
        "train.weight_decay=0", "train.max_grad_norm=1.0", "train.bf16=false",
        "train.log_every=1", "train.eval_every=null", "train.save_every=null", "train.tensorboard=false",
    ]
    if mode == "full":
        o += ["model.lora=null"]
    else:
        o += [f"model.lora.r={LORA_R}", f"model.lora.alpha={LORA_ALPHA}", "model.lora.dropout=0",
              "model.lora.target_modules=all-linear"]
    return o


def alignkit_config(model_dir, a, mode, out_dir):
    from alignkit.config import GRPOConfig, load_config

    return load_config(GRPOConfig, str(BASE_CONFIG), alignkit_overrides(model_dir, a, mode, out_dir))


def _finish(result: dict) -> None:
    import resource

    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)


def _new_step() -> dict:
    return {"sampling_s": 0.0, "rollout_s": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "completions": 0,
            "unfinished": 0, "reward": None, "trained_rows": None, "trained_tokens": None, "no_update": False,
            "items": []}


# ---------------------------------------------------------------------------------------------- workers


def trl_worker(a) -> None:
    t_start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.tasks import make_task, task_items

    t_imported = time.perf_counter()
    run_dir = Path(a.run_dir)
    rows = [json.loads(line) for line in Path(a.rows_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    # alignkit's prompts in alignkit's order, each once; TRL's RepeatSampler repeats each G times, unshuffled.
    dataset = Dataset.from_list(rows)
    ak = alignkit_config(a.model, a, a.mode, run_dir / "unused")
    task = make_task(ak.task)
    items = task_items(task, ak.task)

    def task_reward(prompts, completions, item, **kwargs):
        """alignkit's task reward (Task.reward: 1.0 for a right final answer, else 0.0) on the decoded text."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        seen = current["rec"]["items"]
        seen += [i for k, i in enumerate(item) if k == 0 or item[k - 1] != i]  # the step's prompts, in order
        return [task.reward(items[i], text) for i, text in zip(item, texts)]

    tokenizer = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, local_files_only=True)
    peft_config = None
    if a.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    # GRPOConfig turns activation (gradient) checkpointing on by default; alignkit has none, so it is off here for
    # a like-for-like step. transformers 5 renamed the field; the old name is a deprecated alias.
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    n = a.prompts_per_step * a.group_size
    cfg = GRPOConfig(
        output_dir=str(run_dir / "trl-out"),
        **{checkpointing: False},
        per_device_train_batch_size=n,  # completions per step
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=a.group_size,
        num_iterations=1,
        max_completion_length=a.max_new_tokens,
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        use_vllm=False,
        beta=0.0,
        epsilon=EPS,
        loss_type="grpo",  # per-sequence token mean, then mean over the step's sequences = seq-mean-token-mean
        scale_rewards="group",
        mask_truncated_completions=False,
        max_steps=a.warmup_steps + a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_dropout=True,
        shuffle_dataset=False,
        train_sampling_strategy="sequential",
        seed=0,
        data_seed=0,
    )
    steps: list[dict] = []
    current = {"rec": _new_step()}

    class Trainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):  # sampling, rewards, advantages (the rollout)
            t0 = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                current["rec"]["rollout_s"] += time.perf_counter() - t0

        def _generate_single_turn(self, *args, **kwargs):  # model.generate itself
            t0 = time.perf_counter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                current["rec"]["sampling_s"] += time.perf_counter() - t0

        def _generate(self, prompts):
            out = super()._generate(prompts)
            prompt_ids, completion_ids = out[0], out[1]
            rec = current["rec"]
            rec["prompt_tokens"] += sum(len(p) for p in prompt_ids)
            rec["completion_tokens"] += sum(len(c) for c in completion_ids)
            rec["completions"] += len(completion_ids)
            rec["unfinished"] += sum(1 for c in completion_ids if not c or c[-1] not in self.eos_token_ids)
            return out

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0 = self.last_end = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_end = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            current["rec"] = _new_step()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            rec = current["rec"]
            rec.update(seconds=now - self.t0, interval_seconds=now - self.last_end,
                       tokens=rec["prompt_tokens"] + rec["completion_tokens"],
                       trained_rows=rec["completions"],  # TRL runs every completion through the update
                       trained_tokens=rec["prompt_tokens"] + rec["completion_tokens"])
            steps.append(rec)
            self.last_end = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and steps and "reward" in logs:
                steps[-1]["reward"] = logs["reward"]
                steps[-1]["logged_mean_length"] = logs.get("completions/mean_length")
                steps[-1]["logged_step_time"] = logs.get("step_time")

    t0 = time.perf_counter()
    trainer = Trainer(model=model, reward_funcs=[task_reward], args=cfg, train_dataset=dataset,
                      processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.save_model(str(run_dir / "trl-final"))  # alignkit always saves its final model; so does this run
    t_save = time.perf_counter() - t0
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    _finish({
        "tool": "trl",
        "steps": steps,
        "phases": {"imports_s": t_imported - t_start, "trainer_init_s": t_init, "train_s": t_train,
                   "save_s": t_save, "total_s": time.perf_counter() - t_start},
        "settings": {"optim": str(getattr(cfg.optim, "value", cfg.optim)),
                     "activation_checkpointing": bool(getattr(cfg, checkpointing)),
                     "model_checkpointing": bool(getattr(unwrapped, "is_activation_checkpointing", None)
                                                 if hasattr(unwrapped, "is_activation_checkpointing")
                                                 else getattr(unwrapped, "is_gradient_checkpointing", False)),
                     "beta": trainer.beta, "loss_type": trainer.loss_type, "eos_token_ids": trainer.eos_token_ids,
                     "rows": len(rows), "torch_threads": torch.get_num_threads()},
    })


def alignkit_worker(a) -> None:
    t_start = time.perf_counter()
    import torch
    import yaml

    import alignkit.generation.sample as sample_module
    import alignkit.train.loop as loop_module
    from alignkit import cli
    from alignkit.algos import grpo as grpo_module

    t_imported = time.perf_counter()
    run_dir = Path(a.run_dir)
    out_dir = run_dir / "alignkit-out"
    rounds: list[dict] = []  # one per generation round (= per step here: μ = 1, no dynamic sampling)
    marks = {"train_end": None}

    # Timing wrappers around alignkit's own functions (nothing else changes). GRPO imports `generate` and the loop's
    # `train` inside the functions that use them, so patching the module attributes reaches those calls.
    generate = sample_module.generate

    def timed_generate(model, tokenizer, prompts, n=1, **kwargs):
        t0 = time.perf_counter()
        out = generate(model, tokenizer, prompts, n=n, **kwargs)
        rec = rounds[-1]
        rec["sampling_s"] += time.perf_counter() - t0
        rec["prompt_tokens"] += sum(len(p) for p in prompts) * n
        rec["completion_tokens"] += sum(len(s.token_ids) for group in out for s in group)
        rec["completions"] += sum(len(group) for group in out)
        rec["unfinished"] += sum(not s.finished for group in out for s in group)
        rec["items"] += list(kwargs.get("prompt_keys") or [])  # GRPO passes the task item indices
        return out

    generate_round = grpo_module.GRPO._round

    def timed_round(self, round_index):
        rounds.append(_new_step())
        t0 = time.perf_counter()
        out = generate_round(self, round_index)
        rounds[-1]["rollout_s"] = time.perf_counter() - t0
        rounds[-1]["reward"] = out.stats.get("reward")
        return out

    batches = grpo_module.GRPO.batches

    def timed_batches(self, step):
        t0 = time.perf_counter()
        micro = list(batches(self, step))  # the loop takes list(...) of it too: the same work, in the same place
        rec = rounds[-1]
        trained = [b for b in micro if b.weight]  # a zero-weight stand-in row trains nothing
        # right-padded rows: last response position + 1
        rec["trained_tokens"] = sum(int((b.response_mask.long().cumsum(1).argmax(1) + 1).sum()) for b in trained)
        rec.update(step=step + 1, t_begin=t0, batches_s=time.perf_counter() - t0,
                   trained_rows=sum(len(b.input_ids) for b in trained))
        yield from micro

    train = loop_module.train

    def timed_train(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        finally:
            marks["train_end"] = time.perf_counter()

    sample_module.generate = timed_generate
    grpo_module.GRPO._round = timed_round
    grpo_module.GRPO.batches = timed_batches
    loop_module.train = timed_train
    argv = ["grpo", "--config", str(BASE_CONFIG), *alignkit_overrides(a.model, a, a.mode, out_dir)]
    t0 = time.perf_counter()
    try:
        cli.main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"alignkit grpo exited with status {e.code}") from None
    t_run = time.perf_counter() - t0
    metrics = {m["step"]: m for m in (json.loads(line) for line in
                                      (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip())}
    steps = []
    for i, rec in enumerate(rounds):
        m = metrics.get(rec.get("step"), {})
        nxt = rounds[i + 1]["t_begin"] if i + 1 < len(rounds) else marks["train_end"]
        rec["no_update"] = bool(m.get("skipped"))  # every group's rewards equal: alignkit skips the update
        # step_seconds: the loop's own timer (generation round, forward/backward, clip, optimizer). A step with
        # no update has none; it did only the generation round, timed here around batches().
        rec["seconds"] = m["step_seconds"] if "step_seconds" in m else rec["batches_s"]
        rec["interval_seconds"] = nxt - rec["t_begin"]
        rec["tokens"] = rec["prompt_tokens"] + rec["completion_tokens"]
        rec["logged_mean_length"] = m.get("completion_length")
        steps.append(rec)
    resolved = yaml.safe_load((out_dir / "config.yaml").read_text())
    _finish({
        "tool": "alignkit",
        "steps": steps,
        "phases": {"imports_s": t_imported - t_start, "cli_run_s": t_run, "total_s": time.perf_counter() - t_start},
        "settings": {"optim": "torch.optim.AdamW (fused)", "activation_checkpointing": False,
                     "torch_threads": torch.get_num_threads(), "aggregation": resolved["grpo"]["aggregation"],
                     "beta": resolved["grpo"]["beta"]},
    })


# ---------------------------------------------------------------------------------------------- parent


def plan_prompts(model_dir, a, tmp_root: Path) -> dict:
    """alignkit's prompts for the run, in its order (same config as the workers); the rows TRL will read."""
    from transformers import AutoTokenizer

    from alignkit.algos.grpo import GRPO
    from alignkit.data.chat import chat_prompt_ids, end_of_turn_ids
    from alignkit.models.load import load_tokenizer
    from alignkit.tasks import make_task, task_items

    cfg = alignkit_config(model_dir, a, "full", tmp_root / "plan")
    task = make_task(cfg.task)
    items = task_items(task, cfg.task)
    tokenizer = load_tokenizer(cfg.model.path)
    algo = GRPO(cfg, items, None, None, None, tokenizer, None, None, None)  # only its prompt stream is used
    want = algo.prompts_per_step
    order = []
    for step in range(a.warmup_steps + a.steps):  # as GRPO._round draws them (μ = 1: round = step)
        algo.cursor = max(algo.cursor, step * want)
        order += algo._draw(want)
    # The prompt tokens each tool feeds the model: alignkit renders the template then tokenizes without special
    # tokens; TRL tokenizes inside apply_chat_template. They should agree; the plan says if they do not.
    trl_tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ak_ids = [chat_prompt_ids(tokenizer, items[i].messages()) for i in order]
    trl_ids = [list(trl_tok.apply_chat_template([items[i].messages()], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"][0]) for i in order]
    path = tmp_root / "trl-rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": items[i].messages(), "item": i}) + "\n" for i in order),
                    encoding="utf-8")
    per_step = lambda ids: [sum(len(x) for x in ids[s * want:(s + 1) * want]) * a.group_size  # noqa: E731
                            for s in range(a.warmup_steps + a.steps)]
    return {"rows_file": path, "task_items": len(items), "order": order,
            "questions": [items[i].question for i in order],
            "prompt_tokens_alignkit": per_step(ak_ids), "prompt_tokens_trl": per_step(trl_ids),
            "same_prompt_ids": ak_ids == trl_ids, "alignkit_stop_ids": sorted(end_of_turn_ids(tokenizer))}


def run_one(tool, mode, a, model_dir, plan, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, str(SCRIPT), "--worker", tool, "--mode", mode, "--model", str(model_dir),
           "--task", a.task, "--steps", str(a.steps), "--warmup-steps", str(a.warmup_steps),
           "--prompts-per-step", str(a.prompts_per_step), "--group-size", str(a.group_size),
           "--max-new-tokens", str(a.max_new_tokens), "--temperature", repr(a.temperature), "--top-p", repr(a.top_p),
           "--lr", repr(a.lr), "--run-dir", str(run_dir), "--rows-file", str(plan["rows_file"])]
    record, result = common.run_worker(cmd, run_dir, a.timeout, RESULT_MARK)
    record.update(tool=tool, mode=mode)
    if result is None:
        return record
    return summarize_run(record, result, a, plan)


def summarize_run(record: dict, result: dict, a, plan) -> dict:
    """A worker's result as the per-run numbers of the tables (measured steps only)."""
    measured = result["steps"][a.warmup_steps:]
    if len(measured) < 1:
        record["status"] = f"failed: only {len(result['steps'])} steps recorded"
        return record
    seconds = [s["seconds"] for s in measured]
    B = a.prompts_per_step
    prompts_match = [s.get("items") == plan["order"][k * B:(k + 1) * B] for k, s in enumerate(result["steps"])]
    total_s = sum(seconds)
    med = lambda key: statistics.median([s[key] for s in measured])  # noqa: E731
    completions = sum(s["completions"] for s in measured)
    record.update(
        status="ok",
        result=result,
        step_s=statistics.median(seconds),
        interval_s=med("interval_seconds"),
        sampling_s=med("sampling_s"),
        rollout_s=med("rollout_s"),
        update_s=_median_or_none([s["seconds"] - s["rollout_s"] for s in measured if not s["no_update"]]),
        tokens_per_step=med("tokens"),
        completion_tokens_per_step=med("completion_tokens"),
        prompt_tokens_per_step=med("prompt_tokens"),
        mean_completion_len=sum(s["completion_tokens"] for s in measured) / max(completions, 1),
        unfinished_frac=sum(s["unfinished"] for s in measured) / max(completions, 1),
        trained_rows_per_step=statistics.mean(s["trained_rows"] for s in measured),
        no_update_steps=sum(bool(s["no_update"]) for s in measured),
        reward=_mean([s["reward"] for s in measured]),
        tokens_per_s=sum(s["tokens"] for s in measured) / total_s,
        completion_tokens_per_s=sum(s["completion_tokens"] for s in measured) / total_s,
        rss_gb=result["maxrss_kb"] * 1024 / 1e9,
        measured_steps=len(measured),
        prompts_match=all(prompts_match) and len(prompts_match) == a.warmup_steps + a.steps,
    )
    return record


def step_flops(s: dict, mode: str, n_params: int) -> float:
    """Model FLOPs of one step (see UPDATE_FLOPS): generation over every sampled sequence, the update over the
    sequences the tool runs through it."""
    return n_params * (GEN_FLOPS * s["tokens"] + UPDATE_FLOPS[mode][0] * s["trained_tokens"])


def _median_or_none(values):
    return statistics.median(values) if values else None


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(records, a, peak_flops, params) -> dict:
    out = {}
    for mode in a.mode_list:
        row = {}
        for tool in TOOLS:
            runs = [r for r in records if (r["tool"], r["mode"]) == (tool, mode)]
            ok = [r for r in runs if r["status"] == "ok"]
            failures = [r["status"] for r in runs if r["status"] != "ok" and not r["status"].startswith("skipped")]
            s = {"ok": len(ok), "runs": len(runs), "status": "ok" if ok else (failures[0] if failures else "not run")}
            if ok:
                for r in ok:
                    measured = r["result"]["steps"][a.warmup_steps:]
                    flops = sum(step_flops(x, mode, params["total"]) for x in measured)
                    r["mfu"] = flops / sum(x["seconds"] for x in measured) / peak_flops
                keys = ("step_s", "interval_s", "sampling_s", "rollout_s", "update_s", "rss_gb", "tokens_per_s",
                        "completion_tokens_per_s", "tokens_per_step", "completion_tokens_per_step",
                        "prompt_tokens_per_step", "mean_completion_len", "unfinished_frac", "trained_rows_per_step",
                        "reward", "mfu", "wall_s")
                s.update({k: common._median(ok, k) for k in keys})
                s["no_update_steps"] = sum(r["no_update_steps"] for r in ok)
                s["measured_steps"] = sum(r["measured_steps"] for r in ok)
                s["step_range"] = (min(r["step_s"] for r in ok), max(r["step_s"] for r in ok))
            row[tool] = s
        out[mode] = row
    return out


def render(a, argv, info, peak, params, plan, records, summary, model_dir, started) -> str:
    cell = common._cell
    cmd = shlex.join([os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd()))
                      else sys.executable, os.path.relpath(SCRIPT, Path.cwd()), *argv])
    v = info["versions"]
    n = a.prompts_per_step * a.group_size
    trl_settings = next((r["result"]["settings"] for r in records if r["tool"] == "trl" and r["status"] == "ok"), {})
    L = [START, "## GRPO: alignkit vs TRL", "",
         "Generated by (from the repository root):", "", "```", cmd, "```", "",
         f"on {started} ({len(records)} runs, {sum(r['wall_s'] for r in records) / 60:.1f} min).", "",
         "**Machine.** " + f"{info['cpu']}, {info['cores']} logical cores "
         f"(torch uses {info['torch_threads']} threads); "
         f"Python {info['python']}, torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, "
         f"peft {v['peft']}, accelerate {v['accelerate']}, datasets {v['datasets']}. Load average (1/5/15 min) at "
         f"start {'/'.join(f'{x:.2f}' for x in info['load_start'])}, at end "
         f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}: other work on the machine shows up in every number below.",
         "",
         f"**Measured matmul peak** (best of k n×n matmuls, torch, all threads): fp32 {peak['gflops']:.1f} GFLOP/s "
         f"(n={peak['n']}, k={peak['reps']}).", "",
         f"**Setup.** Model `{a.model}` (`{model_dir}`), N = {params['total'] / 1e6:.2f} M parameters "
         f"(all parameters, embedding of {params['embedding'] / 1e6:.2f} M included"
         f"{', tied with the lm_head and counted once' if params['tied'] else ''}), weights and compute float32, CPU. "
         f"Task `{a.task}` (alignkit built-in, train split, {plan['task_items']} questions): per step "
         f"{a.prompts_per_step} prompts × G={a.group_size} completions = {n} completions, sampled at temperature "
         f"{a.temperature:g}, top-p {a.top_p:g}, no top-k, at most {a.max_new_tokens} new tokens; reward 1 for a right "
         "final answer, 0 otherwise, by alignkit's own checker (`Task.reward`, called from TRL's reward function "
         "too); advantages (r − mean_group) / std_group; one policy update per generation (μ = 1, on-policy: no "
         f"old-policy pass), β = 0 (no reference model, no KL), clip ε = {EPS}; lr {a.lr:g} constant, no warm-up, "
         f"grad-norm clip 1.0, weight decay 0, dropout off, seed 0. {a.warmup_steps} warm-up step(s) dropped, "
         f"{a.steps} measured; {a.repeats} repeat(s) per tool, each run a separate process; runs alternate TRL, "
         "alignkit, TRL, alignkit, ...; a tool that times out is not rerun for the remaining repeats of that mode.", "",
         "- Same prompts, same order: the parent draws the run's prompts with alignkit's own code (its epoch "
         "shuffle of the task, seed 0, as `GRPO._round` takes them) and gives TRL exactly those, as a "
         "conversational `prompt` column read in order (`shuffle_dataset=False`; TRL's RepeatSampler repeats each "
         "prompt G times). Both render the model's chat template with the generation prompt; prompt token ids "
         + ("are identical in the two tools" if plan["same_prompt_ids"] else "**differ** between the tools (see "
            "the prompt tokens per step below)") + ". Each run's prompts per step, as the tool itself saw them "
         "(alignkit's sampler's prompt keys, TRL's reward-function rows), "
         + ("match the plan in every run." if all(r.get("prompts_match") for r in records if r["status"] == "ok")
            else "**do not match the plan** in runs "
            + ", ".join(f"#{i}" for i, r in enumerate(records, 1) if r["status"] == "ok" and not r["prompts_match"])
            + "."),
         "- Sampling is random and each tool draws its own noise, so completions, their lengths and rewards differ "
         "between the tools (and between TRL runs): completion tokens per step and mean completion length are "
         "shown for each. Both stop a completion at an end-of-turn token (TRL: the eos ids of the generation config "
         f"and tokenizer, {trl_settings.get('eos_token_ids', '—')}; alignkit: eos plus the known end-of-turn tokens "
         f"of the vocabulary, {plan['alignkit_stop_ids']}) or at the length limit; truncated completions are "
         "trained on in both.",
         "- Loss: alignkit `grpo.aggregation=seq-mean-token-mean` (mean over each completion's tokens, then over "
         "all completions of the step) = TRL `loss_type=\"grpo\"`; reward scaling per group (TRL "
         "`scale_rewards=\"group\"`). Remaining differences: the std's epsilon (alignkit 1e-6, TRL 1e-4); "
         "alignkit does not run completions whose advantage is 0 (every completion of a group whose rewards are "
         "all equal) through the update, since with β = 0 they add nothing to the loss or gradient (they still "
         "count in its normaliser), and makes no optimizer step at all when every group is like that; TRL runs "
         "all completions through forward and backward and always steps the optimizer. TRL also computes the "
         "per-token entropy in the update's forward (for logging). Rows trained per step and steps without an "
         "update are in the second table.",
         "- Generation: TRL calls `model.generate` (transformers, KV cache, one batch of all "
         f"{n} rows, each prompt prefilled once per completion, finished rows stay in the batch until all are "
         "done); alignkit's own sampler (KV cache, one batch, each distinct prompt prefilled once, finished rows "
         "leave the batch). The update: TRL one forward/backward over the padded batch (completions right-padded, "
         "prompts left-padded); alignkit one forward/backward over the rows it trains on (lm_head on the "
         "completion positions only, a shared prompt run once per group).",
         f"- Modes: **lora** = peft LoRA r={LORA_R}, alpha={LORA_ALPHA}, dropout 0, `all-linear`, in both tools; "
         "**full** = full fine-tuning. TRL settings: activation (gradient) checkpointing off (GRPOConfig defaults "
         f"to on; alignkit has none), its default optimizer (`{trl_settings.get('optim', 'adamw_torch_fused')}`), "
         "`use_cpu=True`, no vLLM, no continuous batching, `dataloader_num_workers=0`; its final model saved at the "
         "end like alignkit's (LoRA: TRL saves the adapter, alignkit merges it; whole-run time only). alignkit: "
         "`torch.optim.AdamW` (fused).",
         "- s/step: median over the measured steps of a run, then median over runs (range over runs in the raw "
         "table). TRL: `on_step_begin` → `on_step_end` of a TrainerCallback. In TRL 1.16 generation runs inside "
         "`training_step` (`_prepare_inputs` → `_generate_and_score_completions`), so this interval holds the "
         "whole step: tokenizing the prompts, generation, decoding, rewards, advantages, forward, backward, clip, "
         "optimizer, scheduler; outside it are only the fetch of the step's raw prompt rows from the dataloader "
         "(before) and TRL's logging (after). alignkit: `step_seconds` of `metrics.jsonl`, the loop's timer from "
         "the start of the step to after the optimizer step and metric reduction: the generation round (done in "
         "`GRPO.batches`: sampling, decoding, rewards, advantages), forward, backward, clip, optimizer; outside "
         "it only the metrics-file/console write. A step where alignkit makes no update has no `step_seconds`; "
         "its time is the generation round (timed around `GRPO.batches`). *Step-to-step* (raw table): the "
         "interval between consecutive steps' starts (TRL: `on_step_end` to `on_step_end`), logging included.",
         "- Sampling s: the model's sampling call alone (TRL `_generate_single_turn`, alignkit "
         "`generation.sample.generate`); rollout s: sampling plus decoding, rewards and advantages (TRL "
         "`_generate_and_score_completions`, alignkit `GRPO._round`); update s = s/step − rollout s, "
         "over the steps with an update. "
         "Peak RSS: the worker's own `ru_maxrss` at exit (the whole process). Whole run: the worker process's wall "
         "time (imports, loading, training, saving the final model).",
         "- tokens/s: prompt + completion tokens of all the step's sequences (each completion counted with its "
         "prompt; completion tokens include the end-of-turn token), each tool's own count, over the measured "
         "steps' summed seconds. MFU = model FLOPs of the measured steps / their seconds / the fp32 peak, with "
         f"FLOPs = {GEN_FLOPS}N per token of every sampled sequence (prompt prefill and each generated token, "
         "whatever the tool actually re-uses) + U·N per token (prompt + completion) of each sequence the update "
         "runs through the model (TRL: all; alignkit: those with a non-zero advantage), U by mode: "
         + "; ".join(f"{m} U={UPDATE_FLOPS[m][0]} ({UPDATE_FLOPS[m][1]})" for m in a.mode_list)
         + ". Attention-score FLOPs and padding are ignored.", ""]
    L += ["| mode | TRL s/step | alignkit s/step | alignkit/TRL time | TRL peak RSS GB | alignkit peak RSS GB | "
          "alignkit/TRL RSS | TRL tokens/s | alignkit tokens/s | TRL MFU | alignkit MFU |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    skipped = False
    for mode, row in summary.items():
        t, k = row["trl"], row["alignkit"]
        ratio = lambda key: (f"{k[key] / t[key]:.2f}" if t.get(key) and k.get(key) else "—")  # noqa: E731
        mark = f" ‡ ({k['no_update_steps']}/{k['measured_steps']})" if k.get("no_update_steps") else ""
        skipped |= bool(mark)
        L.append(f"| {mode} | {cell(t, 'step_s', '.2f', True)} | {cell(k, 'step_s', '.2f', True)}{mark} | "
                 f"{ratio('step_s')} | {cell(t, 'rss_gb', '.2f')} | {cell(k, 'rss_gb', '.2f')} | {ratio('rss_gb')} | "
                 f"{cell(t, 'tokens_per_s', '.0f')} | {cell(k, 'tokens_per_s', '.0f')} | "
                 f"{cell(t, 'mfu', '.2%')} | {cell(k, 'mfu', '.2%')} |")
    if skipped:
        L += ["", "‡ (k/n): k of the n measured alignkit steps made no update: every group's rewards were equal, so "
              "with β = 0 there is no gradient and alignkit skips the forward, backward and optimizer step; such a "
              "step is its generation round only, while TRL's step still runs the update on all completions. The "
              "ratio then mixes two kinds of step: compare *sampling s* and *update s* (over steps with an update) "
              "below."]
    L += ["", "| mode | tool | completion tokens/step | mean completion length | truncated | prompt tokens/step | "
          "sampling s | rollout s | update s | rows trained/step | steps without update | mean reward | "
          "whole run s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, row in summary.items():
        for tool in TOOLS:
            s = row[tool]
            no_update = f"{s['no_update_steps']}/{s['measured_steps']}" if s["status"] == "ok" else "—"
            L.append(f"| {mode} | {tool} | {cell(s, 'completion_tokens_per_step', '.0f', True)} | "
                     f"{cell(s, 'mean_completion_len', '.1f')} | {cell(s, 'unfinished_frac', '.0%')} | "
                     f"{cell(s, 'prompt_tokens_per_step', '.0f')} | {cell(s, 'sampling_s', '.2f')} | "
                     f"{cell(s, 'rollout_s', '.2f')} | {cell(s, 'update_s', '.2f')} | "
                     f"{cell(s, 'trained_rows_per_step', '.1f')} | {no_update} | {cell(s, 'reward', '.2f')} | "
                     f"{cell(s, 'wall_s', '.1f')} |")
    L += ["", "Medians over runs of per-run values (per-step medians; mean completion length, truncated share, rows "
          "trained and mean reward: per-run means over the measured steps). Update s: s/step − rollout s, over the "
          "steps that made an update (— if none did). Truncated: completions that hit the "
          f"{a.max_new_tokens}-token limit.", "",
          "<details><summary>Raw per-run numbers</summary>", "",
          "| # | mode | tool | status | s/step (median) | measured step seconds | step-to-step s (median) | "
          "completion tokens per step | rows trained per step | peak RSS GB | whole run s |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(records, 1):
        if r["status"] == "ok":
            steps = r["result"]["steps"][a.warmup_steps:]
            secs = ", ".join(format(s["seconds"], ".2f") + ("*" if s["no_update"] else "") for s in steps)
            L.append(f"| {i} | {r['mode']} | {r['tool']} | ok | {r['step_s']:.2f} | {secs} | "
                     f"{r['interval_s']:.2f} | {', '.join(str(s['completion_tokens']) for s in steps)} | "
                     f"{', '.join(str(s['trained_rows']) for s in steps)} | {r['rss_gb']:.2f} | "
                     f"{r['wall_s']:.1f} |")
        else:
            hwm = f"≥ {r['polled_hwm_kb'] * 1024 / 1e9:.2f} (polled)" if r.get("polled_hwm_kb") else "—"
            wall = f"{r['wall_s']:.1f}" if r.get("rc") is not None or r["status"].startswith("timed out") else "—"
            L.append(f"| {i} | {r['mode']} | {r['tool']} | {r['status']} | — | — | — | — | — | {hwm} | "
                     f"{wall} |")
    L += ["", "\\* a step where alignkit made no update (every group's rewards equal).", "",
          f"Prompt tokens per step (all {n} sequences; the first {a.warmup_steps} step(s) warm-up): alignkit "
          f"{', '.join(map(str, plan['prompt_tokens_alignkit']))}; TRL "
          f"{', '.join(map(str, plan['prompt_tokens_trl']))}. Questions, in order: "
          + "; ".join(plan["questions"][: a.prompts_per_step * (a.warmup_steps + a.steps)]) + ".", "",
          "</details>", END]
    return "\n".join(L) + "\n"


def parent(a, argv) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from alignkit.models.load import resolve

    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    model_dir = Path(resolve(a.model)).resolve()
    tmp_root = Path(tempfile.mkdtemp(prefix="grpo_vs_trl-"))
    try:
        info = common.machine_info()
        log(f"machine: {info['cpu']}, {info['cores']} cores")
        peak = common.matmul_peak("fp32")
        log(f"matmul peak fp32: {peak['gflops']:.1f} GFLOP/s (n={peak['n']})")
        params = common.count_params(model_dir)
        plan = plan_prompts(model_dir, a, tmp_root)
        log(f"model {model_dir}: {params['total'] / 1e6:.2f} M params; prompt tokens/step "
            f"{plan['prompt_tokens_alignkit']} (TRL {plan['prompt_tokens_trl']})")
        if not plan["same_prompt_ids"]:
            log("warning: the two tools tokenize the prompts differently")
        records, n = [], 0
        for mode in a.mode_list:
            given_up = set()
            for rep in range(a.repeats):
                for tool in TOOLS:  # A B A B ...
                    n += 1
                    if tool in given_up:
                        records.append({"tool": tool, "mode": mode, "wall_s": 0.0, "rc": None,
                                        "status": "skipped (timed out in an earlier repeat)"})
                        continue
                    log(f"[{n}] {mode} repeat {rep + 1}/{a.repeats}: {tool} ...")
                    r = run_one(tool, mode, a, model_dir, plan, tmp_root / f"{n:03d}-{mode}-{tool}")
                    records.append(r)
                    if r["status"].startswith("timed out"):
                        given_up.add(tool)
                    extra = (f" {r['step_s']:.2f} s/step (sampling {r['sampling_s']:.2f}), {r['rss_gb']:.2f} GB, "
                             f"{r['completion_tokens_per_step']:.0f} completion tokens/step, "
                             f"{r['tokens_per_s']:.0f} tokens/s" if r["status"] == "ok" else "")
                    log(f"[{n}]   {r['status']}{extra} (wall {r['wall_s']:.1f} s)")
                    if r["status"] == "ok" and not r["prompts_match"]:
                        log(f"[{n}]   warning: this run's prompts per step differ from the plan")
                    if not a.keep_tmp:
                        for sub in ("alignkit-out", "trl-out", "trl-final", "hf-datasets"):
                            shutil.rmtree(Path(r.get("run_dir", tmp_root / "none")) / sub, ignore_errors=True)
        summary = summarize(records, a, peak["gflops"] * 1e9, params)
        section = render(a, argv, info, peak, params, plan, records, summary, model_dir, started)
        print(section)
        if a.out:
            common.write_section(Path(a.out), section, START, END)
            log(f"wrote {a.out}")
    finally:
        if a.keep_tmp:
            log(f"run directories kept in {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)


def log(msg: str) -> None:
    print(f"[grpo_vs_trl] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.worker:
        if not (a.mode and a.run_dir and a.rows_file):
            sys.exit("error: --worker needs --mode, --run-dir and --rows-file")
        (trl_worker if a.worker == "trl" else alignkit_worker)(a)
    else:
        parent(a, argv)


if __name__ == "__main__":
    main()
