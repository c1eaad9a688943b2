"""Where the time of one alignkit DPO step goes: torch.profiler over a full fine-tuning step on the CPU.

The step is the benchmark's (4 pairs of the arithmetic data, max length 192, reference log-probs computed before
the step as with reference.mode=cached): policy forward, backward, grad-norm clip, AdamW (fused, as in training).
Operator self-times are grouped into matrix products, attention, the lm_head's log-softmax, element-wise work and
the optimizer, and the matrix products' achieved GFLOP/s is set against the machine's measured peak.

Run it (writes or updates the section between the profile_dpo markers of --out; `--precision bf16`, bf16 autocast
over float32 weights as `train.bf16`, writes its own section, and only on a CPU with native bf16):
    .venv/bin/python benchmarks/profile_dpo.py --out docs/benchmarks.md
    .venv/bin/python benchmarks/profile_dpo.py --precision bf16 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dpo_vs_trl as common  # noqa: E402  (matmul peak, machine info, markdown section)

START, END = "<!-- profile_dpo:start -->", "<!-- profile_dpo:end -->"
# per --precision: the section's markers, its title's suffix, and how the step's precision is described
SECTIONS = {"fp32": (START, END, "", "fp32"),
            "bf16": ("<!-- profile_dpo_bf16:start -->", "<!-- profile_dpo_bf16:end -->", ", bf16",
                     "bf16 autocast over float32 weights")}
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
GROUPS = [  # (label, predicate on the operator name); the first that matches wins
    ("matrix products (linear layers, lm_head chunks)", lambda n: n in MATMUL),
    ("attention (scaled_dot_product_attention and its backward)", lambda n: "scaled_dot_product" in n or "flash" in n),
    ("log-softmax / logsumexp / exp of the lm_head chunks", lambda n: any(k in n for k in ("logsumexp", "log_softmax",
                                                                                         "aten::exp"))),
    ("element-wise arithmetic (RMSNorm, SiLU, rotary, residual adds; AdamW's per-parameter mul/div/sqrt/add)",
     lambda n: any(n == f"aten::{k}" or n == f"aten::{k}_" for k in (
         "mul", "div", "add", "sub", "sqrt", "rsqrt", "pow", "mean", "neg", "fill", "addcmul", "addcdiv", "lerp",
         "silu", "silu_backward", "sum", "cos", "sin", "zero", "clamp", "sigmoid", "maximum")) or "foreach" in n),
    ("copies, casts, indexing, cat (aten::copy_, index, cat, ...)", lambda n: any(
        k in n for k in ("copy", "index", "cat", "gather", "scatter", "to", "clone", "contiguous", "select", "slice",
                         "masked", "nonzero", "where"))),
]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default="data/arith/train.jsonl")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast over float32 weights, as train.bf16 (needs native bf16 on this CPU)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from alignkit.data.collate import collate, load_pairs
    from alignkit.losses.preference import LOSSES
    from alignkit.models.load import disable_dropout, load_model, load_tokenizer
    from alignkit.models.logprobs import SequenceLogps

    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    info = common.machine_info()
    if a.precision == "bf16" and not info["native_bf16"]:
        print("profile_dpo: this CPU has no native bf16 (emulated bf16 would profile the emulation); nothing written")
        return
    peak = common.matmul_peak(a.precision)
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.precision == "bf16"
                else contextlib.nullcontext)
    tokenizer = load_tokenizer(a.model)
    model = load_model(a.model)
    disable_dropout(model)
    pairs = load_pairs(a.data, tokenizer, a.max_length, a.max_length // 2)
    seq = SequenceLogps(model)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=5e-7, fused=True)
    loss_fn = LOSSES["sigmoid"]

    def step(batch, ref):
        with record_function("forward"), autocast():
            logps = seq(batch.input_ids, batch.response_mask)
            b = batch.size
            losses, _, _ = loss_fn(logps[:b], logps[b:], ref[:b], ref[b:], beta=0.1, label_smoothing=0.0)
            loss = losses.mean()
        with record_function("backward"):
            loss.backward()
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    batches = [collate(pairs[i * a.batch_size:(i + 1) * a.batch_size], tokenizer.pad_token_id) for i in range(2)]
    refs = []
    with torch.no_grad():
        for batch in batches:
            with autocast():
                refs.append(seq(batch.input_ids, batch.response_mask))
    model.train()
    step(batches[0], refs[0])  # warm-up: allocator, optimizer state
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        t0 = time.perf_counter()
        step(batches[1], refs[1])
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    regions = {e.key: e.cpu_time_total / 1e6 for e in events if e.key in ("forward", "backward", "clip", "optimizer")}
    ops = [e for e in events if e.key.startswith("aten::") or "foreach" in e.key]
    total_self = sum(e.self_cpu_time_total for e in ops) / 1e6
    grouped = {label: 0.0 for label, _ in GROUPS}
    grouped["everything else"] = 0.0
    for e in ops:
        label = next((lab for lab, match in GROUPS if match(e.key)), "everything else")
        grouped[label] += e.self_cpu_time_total / 1e6
    mm = [e for e in ops if e.key in MATMUL]
    mm_flops = sum(e.flops for e in mm if e.flops)
    mm_time = sum(e.self_cpu_time_total for e in mm) / 1e6
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:12]
    tokens = batches[1].tokens

    cmd = shlex.join([os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd()))
                      else sys.executable, os.path.relpath(__file__, Path.cwd()), *argv])
    start, end, title, precision = SECTIONS[a.precision]
    L = [start, f"## Where an alignkit DPO step's time goes (CPU profile{title})", "", "Generated by:", "", "```", cmd,
         "```", "", f"on {started}: {info['cpu']}, {info['cores']} logical cores, torch {info['versions']['torch']}; "
         f"measured {a.precision} matmul peak {peak['gflops']:.1f} GFLOP/s. One full fine-tuning step of `{a.model}` "
         f"in {precision} on {a.batch_size} pairs ({tokens} real tokens), reference log-probs precomputed (as "
         f"`reference.mode: cached`), after one warm-up step; wall time {wall:.2f} s under the profiler.", "",
         "| region | seconds | share |", "|---|---|---|"]
    for name in ("forward", "backward", "clip", "optimizer"):
        if name in regions:
            L.append(f"| {name} | {regions[name]:.2f} | {regions[name] / wall:.0%} |")
    L += ["", "| operators, by kind (self time) | seconds | share of operator time |", "|---|---|---|"]
    for label, secs in sorted(grouped.items(), key=lambda kv: -kv[1]):
        L.append(f"| {label} | {secs:.2f} | {secs / total_self:.0%} |")
    L += ["", f"The matrix products did {mm_flops / 1e9:.0f} GFLOP in {mm_time:.2f} s: "
          f"**{mm_flops / 1e9 / max(mm_time, 1e-9):.0f} GFLOP/s, {mm_flops / 1e9 / max(mm_time, 1e-9) / peak['gflops']:.0%} "
          "of the measured peak**.", "", "| top operators | calls | self seconds |", "|---|---|---|"]
    L += [f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.2f} |" for e in top]
    common.emit_section(L, a.out, start, end)


if __name__ == "__main__":
    main()
