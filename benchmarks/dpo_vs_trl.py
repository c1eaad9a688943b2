"""Speed and memory of `alignkit dpo` against TRL's DPOTrainer: same model, data, batch, lengths and steps.

Each single run is its own subprocess (`--worker trl|alignkit`), so its peak RSS is its own; the worker prints one
JSON line last on stdout (per-step seconds and tokens, ru_maxrss, precompute and phase times). Runs alternate
TRL, alignkit, TRL, alignkit, ... so slow drift of the machine hits both. A run over `--timeout` seconds is killed
and reported as such (TRL in bf16 on a CPU without native bf16 is the expected case: there bf16 is emulated).

Modes: `full` (full fine-tuning, separate frozen reference model in memory), `refcache` (full fine-tuning, the
reference log-probs computed once before training: TRL's precompute_ref_log_probs, alignkit's reference.mode=cached)
and `lora` (r=16, alpha=32, all-linear, reference = the model with its adapter disabled, in both tools).

Run it (writes or updates the section between the dpo_vs_trl markers of --out):
    .venv/bin/python benchmarks/dpo_vs_trl.py --out docs/benchmarks.md
    .venv/bin/python benchmarks/dpo_vs_trl.py --model /tmp/tiny --steps 2 --repeats 1 --precisions fp32 --modes full

On a GPU (`--device cuda`) the section is a separate one (dpo_vs_trl_cuda markers) and the tables add peak GPU memory
(torch.cuda.max_memory_allocated). `--random-init` needs only the model's config and tokenizer: the weights are drawn
at random (seed 0) once and both tools load them; step time does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
BASE_CONFIG = REPO / "configs" / "dpo" / "smollm2-arith.yaml"
RESULT_MARK = "DPO_VS_TRL_RESULT "

def markers(device: str, section: str = "") -> tuple[str, str]:
    name = "dpo_vs_trl" + ("" if device == "cpu" else f"_{device}") + (f"_{section}" if section else "")
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


TOOLS = ("trl", "alignkit")
MODES = ("full", "refcache", "lora")
PRECISIONS = ("fp32", "bf16")
LORA_R, LORA_ALPHA = 16, 32
BETA = 0.1
# Model FLOPs per real token of one optimizer step, in units of N (parameters), by mode. fwd = 2N, bwd = 4N.
FLOPS_PER_TOKEN = {
    "full": (8, "6N policy fwd+bwd + 2N reference fwd"),
    "refcache": (6, "6N policy fwd+bwd (reference precomputed outside the step)"),
    "lora": (6, "2N policy fwd + 2N input-gradient bwd through frozen weights + 2N reference fwd (adapter off); "
                "adapter FLOPs ignored"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF directory or .gguf (alignkit resolve)")
    p.add_argument("--data", default="data/arith/train.jsonl", help="preference rows (conversational)")
    p.add_argument("--steps", type=int, default=4, help="measured optimizer steps per run")
    p.add_argument("--warmup-steps", type=int, default=1, help="unmeasured optimizer steps before them")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step (no accumulation)")
    p.add_argument("--max-length", type=int, default=192, help="prompt + response tokens")
    p.add_argument("--lr", type=float, default=5e-7, help="learning rate, both tools")
    p.add_argument("--repeats", type=int, default=3, help="runs per tool per precision/mode")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--modes", default="full", help="comma list of full, refcache, lora")
    p.add_argument("--timeout", type=float, default=900, help="seconds per single run before it is killed")
    p.add_argument("--out", help="markdown file to write or update (default: print only)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the per-run directories (logs, metrics)")
    p.add_argument("--section", default="", help="a name that keeps this run's section apart in --out "
                   "(say, bf16): [a-z0-9_]")
    p.add_argument("--tools", default="trl,alignkit", help="comma list: which tools to run (default both)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    p.add_argument("--random-init", action="store_true",
                   help="weights drawn at random from the model's config (seed 0) instead of loaded")
    p.add_argument("--alignkit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra alignkit config override (repeatable), after the benchmark's own")
    p.add_argument("--trl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TRL DPOConfig field (repeatable; the value read as YAML), e.g. "
                        "gradient_checkpointing=true or optim=adamw_bnb_8bit")
    # Worker-only arguments (set by the parent).
    p.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device == "auto":
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.precision_list = [x.strip() for x in a.precisions.split(",") if x.strip()]
    a.mode_list = [x.strip() for x in a.modes.split(",") if x.strip()]
    a.tool_list = [x for x in TOOLS if x in {t.strip() for t in a.tools.split(",")}]
    if not re.fullmatch(r"[a-z0-9_]*", a.section):
        p.error("--section: letters a-z, digits and _ only")
    if not a.tool_list:
        p.error(f"--tools: choose from {', '.join(TOOLS)}")
    for x in a.precision_list:
        if x not in PRECISIONS:
            p.error(f"--precisions: unknown precision '{x}' (choose from {', '.join(PRECISIONS)})")
    for x in a.mode_list:
        if x not in MODES:
            p.error(f"--modes: unknown mode '{x}' (choose from {', '.join(MODES)})")
    if min(a.steps, a.batch_size, a.repeats, a.max_length) < 1 or a.warmup_steps < 0 or a.max_length < 2:
        p.error("--steps, --batch-size, --repeats must be >= 1, --max-length >= 2, --warmup-steps >= 0")
    return a


def alignkit_overrides(model_dir, data, a, precision, mode, out_dir, cache_dir) -> list[str]:
    """Every setting that matters, on top of configs/dpo/smollm2-arith.yaml."""
    o = [
        f"model.path={model_dir}", "model.dtype=float32",
        f"data.train={data}", "data.eval=null", "data.eval_fraction=0", "data.strict=false",
        f"data.max_length={a.max_length}", f"data.max_prompt_length={a.max_length // 2}",
        "loss.type=sigmoid", f"loss.beta={BETA}", "loss.label_smoothing=0", "loss.rpo_alpha=0",
        f"train.output_dir={out_dir}", "train.resume=false", "train.seed=0",
        f"train.batch_size={a.batch_size}", f"train.micro_batch_size={a.batch_size}",
        f"train.eval_batch_size={a.batch_size}", f"train.max_steps={a.warmup_steps + a.steps}",
        f"train.lr={a.lr:.6e}", "train.scheduler=linear", "train.warmup_steps=0", "train.warmup_ratio=0",
        "train.weight_decay=0", "train.max_grad_norm=1.0", f"train.bf16={'true' if precision == 'bf16' else 'false'}",
        "train.log_every=1", "train.eval_every=null", "train.save_every=null", "train.tensorboard=false",
    ]
    if mode == "full":
        o += ["model.lora=null", "reference.mode=copy"]
    elif mode == "refcache":
        o += ["model.lora=null", "reference.mode=cached", f"reference.cache_dir={cache_dir}"]
    else:
        o += [f"model.lora.r={LORA_R}", f"model.lora.alpha={LORA_ALPHA}", "model.lora.dropout=0",
              "model.lora.target_modules=all-linear", "reference.mode=adapter"]
    return o + list(a.alignkit_set)


def _finish(result: dict) -> None:
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- workers


def trl_worker(a) -> None:
    t_start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    t_imported = time.perf_counter()
    run_dir = Path(a.run_dir)
    rows = [json.loads(line) for line in Path(a.rows_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list(rows)  # alignkit's batches, in alignkit's order; read with a sequential sampler
    tokenizer = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def load():
        return AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, local_files_only=True)

    model = load()
    ref_model = load() if a.mode == "full" else None  # refcache: TRL precomputes with the initial policy
    peft_config = None
    if a.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    # TRL turns activation (gradient) checkpointing on by default; alignkit's is off by default, so it is off here
    # for a like-for-like step unless --trl-set turns it on. transformers 5 renamed the field (the old name is a
    # deprecated alias).
    names = {f.name for f in dataclasses.fields(DPOConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.trl_set)}
    if "gradient_checkpointing" in extra:  # the field's name in this TRL
        extra[checkpointing] = extra.pop("gradient_checkpointing")
    cfg = DPOConfig(
        output_dir=str(run_dir / "trl-out"),
        **{checkpointing: False, **extra},
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1,
        max_length=a.max_length,
        max_steps=a.warmup_steps + a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=BETA,
        loss_type=["sigmoid"],
        bf16=a.precision == "bf16",
        use_cpu=a.device == "cpu",
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        precompute_ref_log_probs=a.mode == "refcache",
        precompute_ref_batch_size=a.batch_size,
        disable_dropout=True,
        train_sampling_strategy="sequential",
        include_num_input_tokens_seen="non_padding",
        seed=0,
        data_seed=0,
    )
    phases = {"precompute_s": None}

    class Trainer(DPOTrainer):
        def _precompute_ref_logps(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                phases["precompute_s"] = (phases["precompute_s"] or 0.0) + time.perf_counter() - t0

    def sync():  # CUDA runs ahead of the host: a step ends when its kernels have
        if a.device == "cuda":
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps, self.t0, self.tokens0, self.last_end = [], None, 0, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_end = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            now = time.perf_counter()
            self.steps.append({"seconds": now - self.t0, "interval_seconds": now - self.last_end,
                               "tokens": int(state.num_input_tokens_seen - self.tokens0)})
            self.last_end = now

    timer = StepTimer()
    t0 = time.perf_counter()
    trainer = Trainer(model=model, ref_model=ref_model, args=cfg, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=[timer])
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.save_model(str(run_dir / "trl-final"))  # alignkit always saves its final model; so does this run
    t_save = time.perf_counter() - t0
    _finish({
        "tool": "trl",
        "steps": timer.steps,
        "computed_bf16": bool(cfg.bf16),
        "precompute_s": phases["precompute_s"],
        "phases": {"imports_s": t_imported - t_start, "trainer_init_s": t_init, "train_s": t_train,
                   "save_s": t_save, "total_s": time.perf_counter() - t_start},
        "settings": {"optim": str(getattr(cfg.optim, "value", cfg.optim)),
                     "activation_checkpointing": getattr(cfg, checkpointing), "rows": len(rows),
                     "torch_threads": torch.get_num_threads()},
    })


def alignkit_worker(a) -> None:
    t_start = time.perf_counter()
    import torch
    import yaml

    from alignkit import cli
    from alignkit.models import reference as reference_module

    t_imported = time.perf_counter()
    run_dir = Path(a.run_dir)
    out_dir, cache_dir = run_dir / "alignkit-out", run_dir / "ref-cache"
    phases = {"precompute_s": None}
    cached_tables = reference_module.cached_tables

    def timed_cached_tables(*args, **kwargs):  # reference.mode=cached: the reference pass before training
        t0 = time.perf_counter()
        try:
            return cached_tables(*args, **kwargs)
        finally:
            phases["precompute_s"] = (phases["precompute_s"] or 0.0) + time.perf_counter() - t0

    reference_module.cached_tables = timed_cached_tables
    argv = ["dpo", "--config", str(BASE_CONFIG),
            *alignkit_overrides(a.model, a.data, a, a.precision, a.mode, out_dir, cache_dir)]
    t0 = time.perf_counter()
    try:
        cli.main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"alignkit dpo exited with status {e.code}") from None
    t_run = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [{"seconds": m["step_seconds"], "tokens": int(round(m["tokens_per_second"] * m["step_seconds"]))}
             for m in metrics if "step_seconds" in m]
    resolved = yaml.safe_load((out_dir / "config.yaml").read_text())
    _finish({
        "tool": "alignkit",
        "steps": steps,
        "computed_bf16": bool(resolved["train"]["bf16"]),  # alignkit falls back to fp32 without native bf16
        "precompute_s": phases["precompute_s"],
        "phases": {"imports_s": t_imported - t_start, "cli_run_s": t_run, "total_s": time.perf_counter() - t_start},
        "settings": {"optim": "torch.optim.AdamW (fused)", "activation_checkpointing": False,
                     "torch_threads": torch.get_num_threads(), "reference": resolved["reference"]["mode"]},
    })


# ---------------------------------------------------------------------------------------------- parent


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"torch": torch.__version__}
    for name in ("transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a version string is informative only
            versions[name] = "not installed"
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        native_bf16 = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "versions": versions,
            "native_bf16": native_bf16, "python": platform.python_version(), "load_start": os.getloadavg(),
            "gpu": gpu, "cuda": torch.version.cuda}


def matmul_peak(dtype_name: str, budget_s: float = 1.5, max_n: int = 2048, device: str = "cpu") -> dict:
    """Best-of-k GFLOP/s of n x n matmuls; n grows up to `max_n` while one matmul takes < 0.15 s.

    On CUDA, fp32 means true fp32 (torch's default: TF32 off for matmuls), and n goes up to 8192."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    cuda = device == "cuda"
    max_n = 8192 if cuda else max_n

    def timed():
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x @ y
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    n = 256
    while True:
        x, y = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
        timed()  # first call: kernel selection
        if timed() >= 0.15 or n >= max_n:
            break
        n *= 2
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < 3 or time.perf_counter() < t_end:
        times.append(timed())
    return {"n": n, "reps": len(times), "gflops": 2 * n**3 / min(times) / 1e9}


def count_params(model_dir) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    return {"total": total, "embedding": embedding, "tied": bool(tied)}


def plan_batches(model_dir, data, a, tmp_root: Path) -> dict:
    """alignkit's batches for the run (same config as the workers); the rows TRL will read, in that order."""
    from alignkit.algos.dpo import DPO
    from alignkit.config import DPOConfig, load_config
    from alignkit.data.collate import load_pairs, split_eval
    from alignkit.data.formats import read_rows
    from alignkit.models.load import load_tokenizer

    cfg = load_config(DPOConfig, str(BASE_CONFIG),
                      alignkit_overrides(model_dir, data, a, "fp32", "full", tmp_root / "plan", tmp_root / "plan"))
    tokenizer = load_tokenizer(cfg.model.path)
    d = cfg.data
    pairs = load_pairs(d.train, tokenizer, d.max_length, d.max_prompt_length, d.strict, d.split)
    train_pairs, _ = split_eval(pairs, d.eval_fraction, cfg.train.seed)
    one_process = types.SimpleNamespace(device="cpu", rank=0, world=1)
    algo = DPO(cfg, train_pairs, [], {}, tokenizer.pad_token_id, 0, one_process)  # only its batches are used
    records = dict(read_rows(d.train, d.split))
    rows, tokens = [], []
    for step in range(a.warmup_steps + a.steps):
        batch_rows, step_tokens = [], 0
        for batch in algo.batches(step):
            batch_rows += batch.rows
            step_tokens += batch.tokens
        rows += batch_rows
        tokens.append(step_tokens)
    keep = ("prompt", "chosen", "rejected")
    path = tmp_root / "trl-rows.jsonl"
    path.write_text("".join(json.dumps({k: records[r][k] for k in keep}) + "\n" for r in rows), encoding="utf-8")
    return {"rows_file": path, "usable_pairs": len(train_pairs), "file_rows": len(records),
            "tokens_per_step": tokens}


def random_weights(model_dir: Path, dest: Path) -> Path:
    """A copy of model_dir's config and tokenizer with weights drawn at random (seed 0), saved once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(dest, safe_serialization=True)
    for f in model_dir.iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json",
                                                                           "generation_config.json")):
            shutil.copy(f, dest / f.name)
    return dest


def _vmhwm_kb(pid: int) -> int:
    try:
        m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def run_worker(cmd: list[str], run_dir: Path, timeout: float, mark: str, env: dict | None = None):
    """Run one worker process in its own session; (record, result): the result is the JSON after `mark` on its
    last such stdout line, or None with record["status"] saying why (timed out, failed). The record has the wall
    time, exit status and the polled peak RSS (VmHWM)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
               HF_DATASETS_CACHE=str(run_dir / "hf-datasets"), **(env or {}))
    out_path, err_path = run_dir / "stdout.txt", run_dir / "stderr.txt"
    hwm, timed_out = 0, False
    t0 = time.perf_counter()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env, start_new_session=True)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    hwm = max(hwm, _vmhwm_kb(proc.pid))
                if time.perf_counter() - t0 > timeout:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: it and anything it started
                    rc = proc.wait()
                    break
        except BaseException:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
    record = {"wall_s": time.perf_counter() - t0, "rc": rc, "polled_hwm_kb": hwm, "run_dir": str(run_dir)}
    if timed_out:
        record["status"] = f"timed out after {timeout:g} s"
        return record, None
    result = None
    for line in reversed(out_path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith(mark):
            result = json.loads(line[len(mark):])
            break
    if rc != 0 or result is None:
        tail = [ln for ln in err_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        record["status"] = f"failed (exit {rc}): {tail[-1][:160] if tail else 'no stderr'}"
        return record, None
    return record, result


def run_one(tool, precision, mode, a, model_dir, data, rows_file, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, str(SCRIPT), "--worker", tool, "--precision", precision, "--mode", mode,
           "--model", str(model_dir), "--data", str(data), "--steps", str(a.steps),
           "--warmup-steps", str(a.warmup_steps), "--batch-size", str(a.batch_size),
           "--max-length", str(a.max_length), "--lr", repr(a.lr), "--run-dir", str(run_dir),
           "--rows-file", str(rows_file), "--device", a.device]
    for kv in a.alignkit_set:
        cmd += ["--alignkit-set", kv]
    for kv in a.trl_set:
        cmd += ["--trl-set", kv]
    env = {"CUDA_VISIBLE_DEVICES": ""} if a.device == "cpu" else {}  # a CPU run on a GPU machine stays on the CPU
    record, result = run_worker(cmd, run_dir, a.timeout, RESULT_MARK, env)
    record.update(tool=tool, precision=precision, mode=mode)
    if result is None:
        return record
    measured = result["steps"][a.warmup_steps:]
    if len(measured) < 1:
        record["status"] = f"failed: only {len(result['steps'])} steps recorded"
        return record
    seconds = [s["seconds"] for s in measured]
    record.update(
        status="ok",
        result=result,
        step_s=statistics.median(seconds),
        tokens_per_step=statistics.median([s["tokens"] for s in measured]),
        tokens_per_s=sum(s["tokens"] for s in measured) / sum(seconds),
        rss_gb=result["maxrss_kb"] * 1024 / 1e9,
        gpu_gb=result["gpu_peak_bytes"] / 1e9 if result.get("gpu_peak_bytes") is not None else None,
        precompute_s=result["precompute_s"],
    )
    return record


def _fmt(x, spec=".3f", none="—"):
    return none if x is None else format(x, spec)


def _median(records, key):
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(records, a, peaks, params) -> dict:
    out = {}
    for precision in a.precision_list:
        for mode in a.mode_list:
            row = {}
            for tool in TOOLS:
                runs = [r for r in records if (r["tool"], r["precision"], r["mode"]) == (tool, precision, mode)]
                ok = [r for r in runs if r["status"] == "ok"]
                failures = [r["status"] for r in runs if r["status"] != "ok" and not r["status"].startswith("skipped")]
                s = {"ok": len(ok), "runs": len(runs),
                     "status": "ok" if ok else (failures[0] if failures else "not run")}
                if ok:
                    computed_bf16 = any(r["result"]["computed_bf16"] for r in ok)
                    peak = peaks["bf16" if computed_bf16 else "fp32"]["gflops"] * 1e9
                    flops_per_token = FLOPS_PER_TOKEN[mode][0] * params["total"]
                    for r in ok:
                        r["mfu"] = flops_per_token * r["tokens_per_s"] / peak
                    s.update(step_s=_median(ok, "step_s"), rss_gb=_median(ok, "rss_gb"), gpu_gb=_median(ok, "gpu_gb"),
                             tokens_per_s=_median(ok, "tokens_per_s"), tokens_per_step=_median(ok, "tokens_per_step"),
                             mfu=_median(ok, "mfu"), precompute_s=_median(ok, "precompute_s"),
                             wall_s=_median(ok, "wall_s"), computed_bf16=computed_bf16,
                             step_range=(min(r["step_s"] for r in ok), max(r["step_s"] for r in ok)))
                row[tool] = s
            out[(precision, mode)] = row
    return out


def _cell(s, key, spec, show_status=False):
    """A summary number, or (in the s/step column) why there is none: timed out, failed."""
    if s.get(key) is None:
        return s["status"] if show_status and s["status"] != "ok" else "—"
    return format(s[key], spec)


def render(a, argv, info, peaks, params, plan, records, summary, model_dir, started) -> str:
    cmd = shlex.join([os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd()))
                      else sys.executable, os.path.relpath(SCRIPT, Path.cwd()), *argv])
    v = info["versions"]
    start, end = markers(a.device, a.section)
    cuda = a.device == "cuda"
    if cuda:
        machine = (f"{info['gpu']} (CUDA {info['cuda']}), host {info['cpu']}, {info['cores']} logical cores; ")
        title = f"## DPO: alignkit vs TRL on {info['gpu']}"
    else:
        machine = (f"{info['cpu']}, {info['cores']} logical cores (torch uses {info['torch_threads']} threads); "
                   f"native bf16 (AVX512-BF16/AMX, `torch.ops.mkldnn._is_mkldnn_bf16_supported()`): "
                   f"{'yes' if info['native_bf16'] else 'no' if info['native_bf16'] is not None else 'unknown'}; ")
        title = "## DPO: alignkit vs TRL"
    weights = ("weights drawn at random from the model's config (seed 0), float32, the same file for both tools "
               "(`--random-init`: the step does the same work whatever the values)" if a.random_init
               else "weights float32")
    L = [start, title, "",
         "Generated by (from the repository root):", "", "```", cmd, "```", "",
         f"on {started} ({len(records)} runs, {sum(r['wall_s'] for r in records) / 60:.1f} min).", "",
         "**Machine.** " + machine + f"Python {info['python']}, torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, "
         f"peft {v['peft']}, accelerate {v['accelerate']}, datasets {v['datasets']}. Load average (1/5/15 min) at "
         f"start {'/'.join(f'{x:.2f}' for x in info['load_start'])}, at end "
         f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}: other work on the machine shows up in every number below.",
         "",
         f"**Measured matmul peak** (best of k n×n matmuls, torch, {'on the GPU' if cuda else 'all threads'}): "
         + "; ".join(f"{p}: {peaks[p]['gflops']:.1f} GFLOP/s (n={peaks[p]['n']}, k={peaks[p]['reps']})" for p in peaks)
         + ".", "",
         f"**Setup.** Model `{a.model}` (`{model_dir}`), N = {params['total'] / 1e6:.2f} M parameters "
         f"(all parameters, embedding of {params['embedding'] / 1e6:.2f} M included"
         f"{', tied with the lm_head and counted once' if params['tied'] else ''}), {weights}. "
         f"Data `{a.data}`: {plan['usable_pairs']} of {plan['file_rows']} rows fit max_length={a.max_length} / "
         f"max_prompt_length={a.max_length // 2} in alignkit. {a.batch_size} pairs per optimizer step, no gradient "
         f"accumulation, {a.warmup_steps} warm-up step(s) dropped, {a.steps} measured; sigmoid loss, β={BETA}, "
         f"lr {a.lr:g} (linear, no warm-up), grad-norm clip 1.0, dropout off, seed 0. {a.repeats} repeat(s) per tool, "
         "each run a separate process; runs alternate TRL, alignkit, TRL, alignkit, ...; a tool that times out is "
         "not rerun for the remaining repeats of that precision/mode."
         + (f" Extra alignkit settings: `{' '.join(a.alignkit_set)}`." if a.alignkit_set else "")
         + (f" Extra TRL settings: `{' '.join(a.trl_set)}`." if a.trl_set else ""), "",
         "- Same pairs, same order: TRL reads exactly alignkit's batches (alignkit's shuffle of the usable rows, "
         "seed 0), in order, through `train_sampling_strategy=\"sequential\"`. Token counts can still differ by a "
         "token or so per sequence: TRL's completion is whatever the chat template renders after the prompt "
         "(here including the newline after `<|im_end|>`), alignkit's stops at the end-of-turn token.",
         "- Modes: **full** = full fine-tuning with a separate frozen reference model in memory (TRL `ref_model=` "
         "a second `from_pretrained`; alignkit `reference.mode=copy`). **refcache** = full fine-tuning, reference "
         "log-probs computed once by the initial policy before training (TRL `precompute_ref_log_probs=True`; "
         "alignkit `reference.mode=cached`, a fresh cache directory per run); the precompute is timed separately "
         f"and is not in s/step. **lora** = peft LoRA r={LORA_R}, alpha={LORA_ALPHA}, `all-linear`, reference = "
         "the same model with its adapter disabled (TRL's default with `peft_config`; alignkit "
         "`reference.mode=adapter`).",
         "- bf16 means bf16 autocast over float32 weights in both tools. alignkit computes in float32 instead, with a "
         "warning, where the processor has no native bf16; TRL does not (bf16 is then emulated, ~50x slower than "
         "fp32 matmuls). The *computes in* column says what each run really did.",
         "- TRL settings: activation (gradient) checkpointing off unless the extra settings say otherwise (TRL "
         "defaults to on; alignkit's `train.gradient_checkpointing` defaults to off), its default "
         f"optimizer (`{_trl_setting(records, 'optim')}`), `use_cpu={not cuda}`, `dataloader_num_workers=0`. alignkit: "
         "`torch.optim.AdamW` (fused).",
         "- s/step: median over the measured steps of a run, then median over runs (range over runs in the raw "
         "table). TRL: `on_step_begin` → `on_step_end` of a TrainerCallback (forward, backward, clip, optimizer; "
         "its batch is collated just before `on_step_begin` and is not in it; the raw JSON also has end-to-end "
         "intervals). alignkit: `step_seconds` of `metrics.jsonl` (batch collation, forward, backward, clip, "
         "optimizer). Peak RSS: the worker's own `ru_maxrss` at exit (the whole process: imports, data, models, "
         "optimizer state). Whole run: the worker process's wall time (imports, loading, tokenisation, reference "
         "precompute, training, saving the final model)."
         + (" On the GPU both timers synchronise the device first (alignkit's step ends in a device-to-host copy of "
            "its metrics; TRL's callback calls `torch.cuda.synchronize()`), and peak GPU memory is "
            "`torch.cuda.max_memory_allocated()` of the worker." if cuda else ""),
         "- tokens/s: real (non-pad) tokens of the chosen and rejected sequences of the measured steps (the prompt "
         "counted in both) over their summed seconds; each tool's own count. "
         "MFU = F·N·(tokens/s) / peak, with the peak of the precision the run actually computed in and F per mode: "
         + "; ".join(f"{m} F={FLOPS_PER_TOKEN[m][0]} ({FLOPS_PER_TOKEN[m][1]})" for m in a.mode_list)
         + ". Attention-score FLOPs are ignored; tricks that skip work (alignkit applies the lm_head to response "
         "positions only) raise MFU, as model-FLOPs utilisation intends.", ""]
    L += ["| precision / mode | TRL s/step | alignkit s/step | alignkit/TRL time | TRL peak RSS GB | "
          "alignkit peak RSS GB | alignkit/TRL RSS | TRL tokens/s | alignkit tokens/s | TRL MFU | alignkit MFU |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    if cuda:
        L[-2] = L[-2].replace("| TRL tokens/s", "| TRL peak GPU GB | alignkit peak GPU GB | alignkit/TRL GPU | TRL tokens/s")
        L[-1] += "---|---|---|"
    fallback = False
    for (precision, mode), row in summary.items():
        t, k = row["trl"], row["alignkit"]
        ratio = lambda key: (f"{k[key] / t[key]:.2f}" if t.get(key) and k.get(key) else "—")  # noqa: E731
        mark = {}
        for tool, s in row.items():
            mark[tool] = " †" if precision == "bf16" and s.get("computed_bf16") is False else ""
            fallback |= bool(mark[tool])
        L.append(f"| {precision} / {mode} | {_cell(t, 'step_s', '.3f', True)}{mark['trl']} | "
                 f"{_cell(k, 'step_s', '.3f', True)}{mark['alignkit']} | "
                 f"{ratio('step_s')} | {_cell(t, 'rss_gb', '.2f')} | {_cell(k, 'rss_gb', '.2f')} | {ratio('rss_gb')} | "
                 + (f"{_cell(t, 'gpu_gb', '.2f')} | {_cell(k, 'gpu_gb', '.2f')} | {ratio('gpu_gb')} | " if cuda else "")
                 + f"{_cell(t, 'tokens_per_s', '.0f')} | {_cell(k, 'tokens_per_s', '.0f')} | "
                 f"{_cell(t, 'mfu', '.2%')} | {_cell(k, 'mfu', '.2%')} |")
    if fallback:
        L += ["", "† asked for bf16, computed in fp32 (no native bf16 here); its MFU is against the fp32 peak."]
    L += ["", "| precision / mode | tool | computes in | tokens/step | reference precompute s | whole run s |",
          "|---|---|---|---|---|---|"]
    for (precision, mode), row in summary.items():
        for tool in TOOLS:
            s = row[tool]
            computes = ("bf16" if s["computed_bf16"] else "fp32") if "computed_bf16" in s else "—"
            L.append(f"| {precision} / {mode} | {tool} | {computes} | {_cell(s, 'tokens_per_step', '.0f', True)} | "
                     f"{_fmt(s.get('precompute_s'), '.2f') if s['status'] == 'ok' else '—'} | "
                     f"{_cell(s, 'wall_s', '.1f')} |")
    L += ["", "<details><summary>Raw per-run numbers</summary>", "",
          "| # | precision / mode | tool | status | s/step (median) | measured step seconds | tokens/step | "
          "peak RSS GB | precompute s | whole run s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(records, 1):
        if r["status"] == "ok":
            steps = r["result"]["steps"][a.warmup_steps:]
            L.append(f"| {i} | {r['precision']} / {r['mode']} | {r['tool']} | ok | {r['step_s']:.3f} | "
                     f"{', '.join(format(s['seconds'], '.3f') for s in steps)} | "
                     f"{', '.join(str(s['tokens']) for s in steps)} | {r['rss_gb']:.2f} | "
                     f"{_fmt(r['precompute_s'], '.2f')} | {r['wall_s']:.1f} |")
        else:
            hwm = f"≥ {r['polled_hwm_kb'] * 1024 / 1e9:.2f} (polled)" if r.get("polled_hwm_kb") else "—"
            wall = f"{r['wall_s']:.1f}" if r.get("rc") is not None or r["status"].startswith("timed out") else "—"
            L.append(f"| {i} | {r['precision']} / {r['mode']} | {r['tool']} | {r['status']} | — | — | — | {hwm} | — | "
                     f"{wall} |")
    L += ["", f"alignkit's own tokens per step for these batches (planned): "
          f"{', '.join(str(t) for t in plan['tokens_per_step'])} (the first {a.warmup_steps} are warm-up).", "",
          "</details>", end]
    return "\n".join(L) + "\n"


def _trl_setting(records, key):
    for r in records:
        if r["tool"] == "trl" and r.get("status") == "ok":
            return r["result"]["settings"].get(key)
    return "adamw_torch_fused in transformers 5 with torch >= 2.8"


def emit_section(lines: list[str], out: str | None, start: str, end: str) -> None:
    """Closes `lines` (which open with `start`) with `end`, prints the section, and writes it into `out` if given."""
    section = "\n".join([*lines, end]) + "\n"
    print(section)
    if out:
        write_section(Path(out), section, start, end)


def write_section(path: Path, section: str, start: str, end: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    i, j = text.find(start), text.find(end)
    if i != -1 and j > i:
        text = text[:i] + section.rstrip("\n") + text[j + len(end):]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def parent(a, argv) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from alignkit.models.load import resolve

    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    model_dir = Path(resolve(a.model)).resolve()
    data = Path(a.data).resolve()
    if not data.exists():
        sys.exit(f"error: {a.data}: data file not found")
    tmp_root = Path(tempfile.mkdtemp(prefix="dpo_vs_trl-"))
    try:
        if a.random_init:
            model_dir = random_weights(model_dir, tmp_root / "model")
        info = machine_info()
        log(f"machine: {info['cpu']}, {info['cores']} cores, native bf16: {info['native_bf16']}")
        peaks = {}
        for p in PRECISIONS:  # both, so a bf16 MFU always has its own peak and fp32-fallback runs have theirs
            peaks[p] = matmul_peak(p, device=a.device)
            log(f"matmul peak {p}: {peaks[p]['gflops']:.1f} GFLOP/s (n={peaks[p]['n']})")
        params = count_params(model_dir)
        plan = plan_batches(model_dir, data, a, tmp_root)
        log(f"model {model_dir}: {params['total'] / 1e6:.2f} M params; {plan['usable_pairs']} usable pairs; "
            f"tokens/step {plan['tokens_per_step']}")
        records, n = [], 0
        for precision in a.precision_list:
            for mode in a.mode_list:
                given_up = set()
                for rep in range(a.repeats):
                    for tool in a.tool_list:  # A B A B ...
                        n += 1
                        if tool in given_up:
                            records.append({"tool": tool, "precision": precision, "mode": mode, "wall_s": 0.0,
                                            "rc": None, "status": "skipped (timed out in an earlier repeat)"})
                            continue
                        log(f"[{n}] {precision}/{mode} repeat {rep + 1}/{a.repeats}: {tool} ...")
                        r = run_one(tool, precision, mode, a, model_dir, data, plan["rows_file"],
                                    tmp_root / f"{n:03d}-{precision}-{mode}-{tool}")
                        records.append(r)
                        if r["status"].startswith("timed out"):
                            given_up.add(tool)
                        extra = (f" {r['step_s']:.3f} s/step, {r['rss_gb']:.2f} GB, "
                                 f"{r['tokens_per_s']:.0f} tokens/s" if r["status"] == "ok" else "")
                        log(f"[{n}]   {r['status']}{extra} (wall {r['wall_s']:.1f} s)")
                        if not a.keep_tmp:
                            for sub in ("alignkit-out", "trl-out", "trl-final", "ref-cache", "hf-datasets"):
                                shutil.rmtree(Path(r.get("run_dir", tmp_root / "none")) / sub, ignore_errors=True)
        summary = summarize(records, a, peaks, params)
        section = render(a, argv, info, peaks, params, plan, records, summary, model_dir, started)
        print(section)
        if a.out:
            write_section(Path(a.out), section, *markers(a.device, a.section))
            log(f"wrote {a.out}")
    finally:
        if a.keep_tmp:
            log(f"run directories kept in {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)


def log(msg: str) -> None:
    print(f"[dpo_vs_trl] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.worker:
        if not (a.precision and a.mode and a.run_dir and a.rows_file):
            sys.exit("error: --worker needs --precision, --mode, --run-dir and --rows-file")
        (trl_worker if a.worker == "trl" else alignkit_worker)(a)
    else:
        parent(a, argv)


if __name__ == "__main__":
    main()
