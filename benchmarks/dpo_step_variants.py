"""One full fine-tuning DPO step on the CPU, done five ways: what each changes in time and in the log-probs.

The step is alignkit's (SequenceLogps with shared prompts and the chunked lm_head, sigmoid loss against reference
log-probs computed before training, as with reference.mode=cached; grad-norm clip; fused AdamW), on 4 pairs of the
arithmetic data. The ways:

- `autocast-sdpa`: alignkit's default: float32 weights, bf16 autocast (float32 where the CPU has no native bf16),
  transformers' default attention kernel (sdpa);
- `autocast-eager`: the same with `model.attn_implementation: eager`;
- `bf16-weights`: the weights themselves in bf16 (no autocast casts), float32 master copies in the optimizer,
  gradients cast up and weights cast down around each step (bf16 machines only);
- `compiled-layers`: `torch.compile(dynamic=True)` on every decoder layer, dynamo's default recompile limit (the
  reference pass and the first training step compile, from a cold compile cache, and are reported apart; past the
  limit the layers run uncompiled, which the log-prob columns show);
- `compiled-eager`: the same with eager attention.

Each way runs in its own process, the ways alternate for --rounds rounds, and each reports the median of its
steps after two warm-up steps, how far its summed response log-probs of the first batch move from the default's
(in the no-grad reference pass and in the first training forward), and its first loss against ln 2 (the policy is
the reference at the first step, so the loss is ln 2 when the training forward agrees with the no-grad pass).

Run it (writes or updates the section between the dpo_step_variants markers of --out):
    .venv/bin/python benchmarks/dpo_step_variants.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dpo_vs_trl as common  # noqa: E402  (machine info, matmul peak, markdown section)

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- dpo_step_variants:start -->", "<!-- dpo_step_variants:end -->"
WAYS = ("autocast-sdpa", "autocast-eager", "bf16-weights", "compiled-layers", "compiled-eager")


def worker(a) -> None:
    """One way, one process: prints a JSON line with its first-batch log-probs and step seconds."""
    import contextlib

    import torch

    from alignkit.data.collate import collate, load_pairs
    from alignkit.losses.preference import LOSSES
    from alignkit.models.load import disable_dropout, load_model, load_tokenizer
    from alignkit.models.logprobs import SequenceLogps

    torch.manual_seed(0)
    tokenizer = load_tokenizer(a.model)
    model = load_model(a.model)
    model.set_attn_implementation("eager" if a.way.endswith("-eager") else "sdpa")
    disable_dropout(model)
    pairs = load_pairs(a.data, tokenizer, 192, 96)
    batches = [collate(pairs[i * a.batch:(i + 1) * a.batch], tokenizer.pad_token_id) for i in range(a.steps + 2)]
    master = None
    if a.way == "bf16-weights":
        master = [p.detach().clone().float() for p in model.parameters()]
        model.to(torch.bfloat16)
        autocast = contextlib.nullcontext
    else:
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext
    if a.way.startswith("compiled-"):
        # Dynamo's default recompile limit (8) stays: each layer's graph guards on its own index into the KV cache
        # the shared-prompt pass hands it and on grad mode, so past 8 graphs the layers run uncompiled. With the
        # limit raised to 1024, compiling had not finished after 15 minutes (135 recompilations).
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    optimizer = torch.optim.AdamW(master or list(model.parameters()), lr=5e-7, fused=True)
    seq = SequenceLogps(model)
    loss_fn = LOSSES["sigmoid"]
    start = time.perf_counter()
    with torch.no_grad(), autocast():
        refs = [seq(b.input_ids, b.response_mask) for b in batches]
    ref_s = time.perf_counter() - start
    model.train()
    times, losses_seen, train_logps = [], [], None
    for i, (b, ref) in enumerate(zip(batches, refs)):
        start = time.perf_counter()
        with autocast():
            logps = seq(b.input_ids, b.response_mask)
        if i == 0:
            train_logps = logps.detach().float().tolist()
        n = b.size
        losses, _, _ = loss_fn(logps[:n], logps[n:], ref[:n], ref[n:], beta=0.1, label_smoothing=0.0)
        losses.mean().backward()
        if master is not None:
            for m, p in zip(master, model.parameters()):
                m.grad, p.grad = p.grad.float(), None
        torch.nn.utils.clip_grad_norm_(master or model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if master is not None:
            with torch.no_grad():
                torch._foreach_copy_(list(model.parameters()), master)
        seconds = time.perf_counter() - start
        if i == 0:
            first_s = seconds  # compiled-layers: the first training step compiles forward and backward
        times.append(seconds)
        losses_seen.append(float(losses.mean()))
    print(json.dumps({"way": a.way, "logps": refs[0].float().tolist(), "train_logps": train_logps,
                      "steps": times[2:], "ref_s": ref_s, "first_s": first_s, "losses": losses_seen}), flush=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(ROOT / "data" / "arith" / "train.jsonl"))
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--steps", type=int, default=4, help="timed steps per run, after two warm-up steps")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the ways")
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--out", default=None, help="markdown file to write the section into")
    p.add_argument("--way", help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.way:
        return worker(a)

    info = common.machine_info()
    bf16 = bool(info["native_bf16"])
    ways = [w for w in a.ways.split(",") if w in WAYS and (bf16 or w != "bf16-weights")]
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    peak = common.matmul_peak("bf16" if bf16 else "fp32")
    runs: dict[str, list[dict]] = {w: [] for w in ways}
    for r in range(a.rounds):
        for way in ways:
            cmd = [sys.executable, __file__, "--way", way, "--model", a.model, "--data", a.data,
                   "--batch", str(a.batch), "--steps", str(a.steps), *(["--bf16"] if bf16 else [])]
            with tempfile.TemporaryDirectory() as cache:  # a cold compile cache for every run
                done = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
            if done.returncode != 0:
                sys.exit(f"{way} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            rec = json.loads(done.stdout.strip().splitlines()[-1])
            runs[way].append(rec)
            print(f"round {r + 1} {way}: {statistics.median(rec['steps']):.2f} s/step", file=sys.stderr, flush=True)
    base = runs[ways[0]][0]
    base_first = statistics.median(r["first_s"] for r in runs[ways[0]])
    base_ref = statistics.median(r["ref_s"] for r in runs[ways[0]])
    base_med = statistics.median(s for rec in runs[ways[0]] for s in rec["steps"])
    cmd = shlex.join([".venv/bin/python", "benchmarks/dpo_step_variants.py", *argv])
    L = [START, "## One DPO step on the CPU, five ways", "", f"`{cmd}`, {started}: {info['cpu']}, {info['cores']} "
         f"cores, native bf16 {info['native_bf16']}, torch {info['versions']['torch']}, transformers "
         f"{info['versions']['transformers']}; measured {'bf16' if bf16 else 'fp32'} matmul peak "
         f"{peak['gflops']:.0f} GFLOP/s; load average at the end {os.getloadavg()[0]:.2f}.", "",
         f"Full fine-tuning of `{a.model}`, {a.batch} pairs a step, reference log-probs computed before training; "
         f"median of {a.steps} steps a run (after two warm-up steps), {a.rounds} runs a way, the ways alternating. "
         "The ways are described in the script's docstring.", "",
         f"Log-prob columns: the largest difference, over the {2 * a.batch} sequences of the first batch, between this "
         "way's summed response log-probs and the default's, in the no-grad pass that makes the reference log-probs "
         "and in the first training forward (before any update). At the first step the policy is the reference, so "
         "the sigmoid loss is ln 2 exactly when a way's training forward agrees with its own no-grad pass.", "",
         "| way | s/step (median) | runs' medians | against the default | log-prob change, no-grad pass | "
         "log-prob change, training pass | first loss − ln 2 | other cost |", "|---|---|---|---|---|---|---|---|"]
    for way in ways:
        steps = [s for rec in runs[way] for s in rec["steps"]]
        med = statistics.median(steps)
        rec0 = runs[way][0]
        diff = max(abs(x - y) for x, y in zip(rec0["logps"], base["logps"]))
        diff_train = max(abs(x - y) for x, y in zip(rec0["train_logps"], base["train_logps"]))
        other = "—"
        if way.startswith("compiled-"):
            first = statistics.median(r["first_s"] for r in runs[way])
            ref = statistics.median(r["ref_s"] for r in runs[way])
            other = (f"compiling: reference pass {ref:.0f} s against {base_ref:.0f}, first training step {first:.0f} s "
                     f"against {base_first:.0f}")
        elif way == "bf16-weights":
            other = "float32 master copies: 4 extra bytes a parameter"
        per_run = ", ".join(f"{statistics.median(r['steps']):.2f}" for r in runs[way])
        L.append(f"| {way} | {med:.2f} | {per_run} | {med / base_med:.2f}× | {diff:.4f} | {diff_train:.4f} | "
                 f"{rec0['losses'][0] - math.log(2):+.5f} | {other} |")
    common.emit_section(L, a.out, START, END)


if __name__ == "__main__":
    main()
