"""GRPO with alignkit's own sampler against GRPO with a vLLM engine: the same command, config and seed, only
`generation.backend` differs. Runs alternate local, vllm, local, vllm, ...; each is its own process.

    .venv/bin/python benchmarks/grpo_backends.py --steps 4 --repeats 3 --out docs/benchmarks.md
    .venv/bin/python benchmarks/grpo_backends.py --full --out docs/benchmarks.md   # whole runs + held-out accuracy

Per step (from metrics.jsonl): `generation_seconds` (sampling and scoring), `sync_seconds` (weights to the
sampler, checked) and the update (`step_seconds` minus both: forward, backward, optimizer). The engine is one
vLLM server (`make engine`) started here and shared by the vllm runs; each run syncs its weights before its first
round, so a run never sees another's. Needs `.venv-engine`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_vs_trl import machine_info, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "grpo" / "smollm2-addition.yaml"
START, END = "<!-- grpo_backends:start -->", "<!-- grpo_backends:end -->"
FULL_START, FULL_END = "<!-- grpo_backends_full:start -->", "<!-- grpo_backends_full:end -->"


def start_engine(log_dir: Path, lora: bool = False):
    """One vLLM server for SmolLM2-135M-Instruct in float32 (LoRA hot-loading only when `lora`)."""
    from alignkit.generation.engine_process import EngineProcess, free_port, vllm_command
    from alignkit.models.load import resolve

    port = free_port()
    command = vllm_command(resolve("smollm2-135m-instruct"), port, "policy", dtype="float32", max_model_len=1024,
                           lora_rank=16 if lora else None)
    engine = EngineProcess(command, f"http://127.0.0.1:{port}", env={"VLLM_CPU_KVCACHE_SPACE": "2"},
                           log_path=log_dir / "engine.log", startup_timeout=600)
    t0 = time.perf_counter()
    engine.start()
    return engine, time.perf_counter() - t0


def run_grpo(backend: str, url: str, out: Path, extra: list[str], lora_sync: str) -> dict:
    args = [sys.executable, "-m", "alignkit.cli", "grpo", "--config", str(CONFIG), f"train.output_dir={out}",
            "train.save_every=1000", *extra]
    if backend == "vllm":
        args += ["generation.backend=vllm", f"generation.engine_urls=[{url}]", f"generation.lora_sync={lora_sync}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{backend} run failed:\n{proc.stderr[-3000:]}")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for s in steps:
        s["update_seconds"] = s["step_seconds"] - s.get("generation_seconds", 0.0) - s.get("sync_seconds", 0.0)
    return {"backend": backend, "steps": steps, "wall": wall}


def per_run(run: dict, key: str, skip_first: bool = True) -> float:
    values = [s[key] for s in run["steps"][1 if skip_first and len(run["steps"]) > 1 else 0:] if key in s]
    return statistics.median(values) if values else float("nan")


def evaluate(model_dir: Path, out: Path) -> dict:
    args = [sys.executable, "-m", "alignkit.cli", "eval", "accuracy", "--model", str(model_dir), "--task",
            "addition-2d", "--split", "heldout", "--limit", "200", "--max-new-tokens", "72", "--batch-size", "256",
            "--out", str(out)]
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
    return json.loads((out / "summary.json").read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per timing run (the first is not counted)")
    p.add_argument("--repeats", type=int, default=3, help="runs per backend, alternating")
    p.add_argument("--full", action="store_true", help="one whole run per backend, then held-out accuracy")
    p.add_argument("--out", help="markdown file to write or update")
    p.add_argument("--lora-sync", choices=("merged", "adapter"), default="merged",
                   help="how the vllm runs sync their LoRA policy (merged: full weights, no LoRA kernels)")
    a = p.parse_args(argv)
    info = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="grpo-backends-"))
    engine, ready = start_engine(tmp, lora=a.lora_sync == "adapter")
    from alignkit.generation.engine_http import engine_version

    version = engine_version(engine.url)
    runs = []
    try:
        if a.full:
            for backend in ("local", "vllm"):
                run = run_grpo(backend, engine.url, tmp / f"full-{backend}", [], a.lora_sync)
                run["eval"] = evaluate(tmp / f"full-{backend}" / "final", tmp / f"eval-{backend}")
                runs.append(run)
                print(backend, run["wall"], run["eval"]["accuracy"], flush=True)
        else:
            for rep in range(a.repeats):
                for backend in ("local", "vllm"):
                    runs.append(run_grpo(backend, engine.url, tmp / f"{backend}-{rep}", [f"train.max_steps={a.steps}"],
                                         a.lora_sync))
                    print(backend, rep, round(runs[-1]["wall"], 1), flush=True)
    finally:
        engine.stop()
    command = "python benchmarks/grpo_backends.py " + " ".join(argv if argv is not None else sys.argv[1:])
    head = (f"Machine: {info['cpu']}, {info['cores']} cores, native bf16: {info['native_bf16']}, torch "
            f"{info['versions']['torch']}; engine vLLM {version} (`vllm-cpu`, float32, ready in {ready:.0f} s, on every "
            f"core, beside the trainer; LoRA sync `{a.lora_sync}`). Command: `{command}`. Config `configs/grpo/smollm2-addition.yaml` "
            "(SmolLM2-135M-Instruct + LoRA r16, 8 prompts × 8 completions a step, ≤ 56 new tokens, temperature 0.7).")
    if a.full:
        rows = ["| backend | run time | median s/step | median generation s | held-out accuracy | reserved phrasings |",
                "|---|---|---|---|---|---|"]
        for r in runs:
            ev = r["eval"]
            rows.append(f"| {r['backend']} | {r['wall'] / 60:.1f} min | {per_run(r, 'step_seconds'):.1f} | "
                        f"{per_run(r, 'generation_seconds'):.1f} | {ev['accuracy']:.1%} | "
                        f"{ev.get('accuracy_reserved_phrasings', float('nan')):.1%} |")
        section = "\n".join([FULL_START, "## GRPO: local sampler against a vLLM engine, whole runs", "", head, "",
                             *rows, FULL_END])
        start, end = FULL_START, FULL_END
    else:
        keys = ("step_seconds", "generation_seconds", "sync_seconds", "update_seconds")
        med = {b: {k: statistics.median(per_run(r, k) for r in runs if r["backend"] == b) for k in keys}
               for b in ("local", "vllm")}
        rows = ["| backend | s/step | generation s | sync s | update s | runs |", "|---|---|---|---|---|---|"]
        for b in ("local", "vllm"):
            m = med[b]
            rows.append(f"| {b} | {m['step_seconds']:.2f} | {m['generation_seconds']:.2f} | {m['sync_seconds']:.2f} "
                        f"| {m['update_seconds']:.2f} | {sum(r['backend'] == b for r in runs)} |")
        ratio = med["vllm"]["generation_seconds"] / med["local"]["generation_seconds"]
        raw = ["| run | backend | s/step per measured step | generation s |", "|---|---|---|---|"]
        for i, r in enumerate(runs, 1):
            step_s = ", ".join("%.1f" % s["step_seconds"] for s in r["steps"][1:])
            gen_s = ", ".join("%.1f" % s.get("generation_seconds", 0.0) for s in r["steps"][1:])
            raw.append(f"| {i} | {r['backend']} | {step_s} | {gen_s} |")
        section = "\n".join([START, "## GRPO: local sampler against a vLLM engine, time per step", "", head,
                             f"Median over the steps of a run (the first, warm-up, left out), then over "
                             f"{a.repeats} alternating runs per backend. Generation with the engine takes "
                             f"**{ratio:.2f}×** the local sampler's time.", "", *rows, "", *raw, END])
        start, end = START, END
    print(section)
    if a.out:
        write_section(Path(a.out), section, start, end)


if __name__ == "__main__":
    main()
