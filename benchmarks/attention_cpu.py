"""Training step time on the CPU with transformers' attention kernels: sdpa (its default) against eager.

One LoRA DPO-shaped step (r16 on every linear layer, the policy's summed response log-probs of chosen and
rejected, backward, AdamW) on SmolLM2-135M-Instruct, in bf16 autocast where the processor has native bf16
(float32 otherwise), at two lengths: the shipped arithmetic pairs as they are (about 100 tokens a row, the
demo's length), and the same pairs with each response repeated to a few hundred tokens. The kernels alternate
(sdpa, eager, sdpa, eager, ...) so that drift in the machine's speed hits both alike.

Run it (writes or updates the section between the attention_cpu markers of --out):
    .venv/bin/python benchmarks/attention_cpu.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dpo_vs_trl as common  # noqa: E402  (machine info, markdown section)

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- attention_cpu:start -->", "<!-- attention_cpu:end -->"


def _pairs_file(src: Path, repeat: int, dest: Path) -> Path:
    """The pairs of `src` with each response's text repeated `repeat` times (1: as they are)."""
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    for row in rows:
        for side in ("chosen", "rejected"):
            row[side][-1]["content"] = "\n".join([row[side][-1]["content"]] * repeat)
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def _steps(model_path: str, kernel: str, pairs, pad_id: int, bf16: bool, batch: int, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps after one warm-up step."""
    import contextlib

    import torch

    from alignkit.config import LoraConfig
    from alignkit.data.collate import collate
    from alignkit.models.load import add_lora, load_model
    from alignkit.models.logprobs import SequenceLogps

    torch.manual_seed(0)
    model = load_model(model_path)
    model.set_attn_implementation(kernel)
    model = add_lora(model, LoraConfig(r=16, alpha=32))
    module = SequenceLogps(model)
    module.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times = []
    for i in range(steps + 1):
        b = collate(pairs[i * batch:(i + 1) * batch], pad_id)
        start = time.perf_counter()
        with autocast():
            logps = module(b.input_ids, b.response_mask)
        (-logps.sum()).backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(ROOT / "data" / "arith" / "train.jsonl"))
    p.add_argument("--repeats", default="1,4", help="response repetitions: one length per value")
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--steps", type=int, default=4, help="timed steps per measurement (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two kernels")
    p.add_argument("--out", default=None, help="markdown file to write the section into")
    a = p.parse_args(argv)

    from alignkit.data.collate import load_pairs
    from alignkit.models.load import load_tokenizer

    info = common.machine_info()
    bf16 = bool(info["native_bf16"])
    tokenizer = load_tokenizer(a.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in (int(x) for x in a.repeats.split(",")):
            path = _pairs_file(Path(a.data), repeat, Path(tmp) / f"pairs-{repeat}.jsonl")
            pairs = load_pairs(str(path), tokenizer, max_length=4096, max_prompt_length=1024)
            need = a.batch * (a.steps + 1)
            if len(pairs) < need:
                raise SystemExit(f"{a.data}: {len(pairs)} pairs, {need} needed")
            pairs = pairs[:need]
            tokens = statistics.mean(len(x.prompt_ids) + max(len(x.chosen_ids), len(x.rejected_ids)) for x in pairs)
            times = {"sdpa": [], "eager": []}
            for _ in range(a.rounds):
                for kernel in times:
                    times[kernel] += _steps(a.model, kernel, pairs, tokenizer.pad_token_id, bf16, a.batch, a.steps)
                    print(f"repeat {repeat} ({tokens:.0f} tokens/row) {kernel}: "
                          f"{statistics.median(times[kernel]):.2f} s/step", file=sys.stderr, flush=True)
            rows.append((repeat, tokens, {k: statistics.median(v) for k, v in times.items()}))

    lines = [START, "## Attention kernels for training on the CPU: sdpa against eager", "",
             f"`{shlex.join(['.venv/bin/python', 'benchmarks/attention_cpu.py', *(argv or sys.argv[1:])])}`, "
             f"{datetime.date.today().isoformat()}: {info['cpu']}, {info['cores']} cores, native bf16 "
             f"{info['native_bf16']}, torch {info['versions']['torch']}, transformers "
             f"{info['versions']['transformers']}; {'bf16 autocast' if bf16 else 'float32'}.", "",
             f"One LoRA (r16, every linear layer) step of {a.batch} pairs: the policy's summed response log-probs of "
             "chosen and rejected, backward, AdamW; median seconds of "
             f"{a.steps * a.rounds} steps per kernel (kernels alternating). `model.attn_implementation` picks the "
             "kernel for a training run; the demo trains with eager.", "",
             "| rows (mean tokens, prompt + longer response) | sdpa s/step | eager s/step | eager / sdpa |",
             "|---|---|---|---|"]
    for repeat, tokens, med in rows:
        label = "the shipped pairs" if repeat == 1 else f"responses repeated {repeat}×"
        lines.append(f"| {label} ({tokens:.0f}) | {med['sdpa']:.2f} | {med['eager']:.2f} | "
                     f"{med['eager'] / med['sdpa']:.2f} |")
    common.emit_section(lines, a.out, START, END)


if __name__ == "__main__":
    main()
