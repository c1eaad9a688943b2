"""`alignkit eval accuracy`: how often a model's final answer is right on a verifiable task.

    alignkit eval accuracy --model runs/demo/dpo/final --task addition-2d --split heldout --limit 100
    alignkit eval accuracy --model M --task gsm8k_test.jsonl --samples 8 --k 1,4,8

Greedy pass@1 always; with `--samples n`, n sampled answers per question give unbiased pass@k and maj@k (the
majority of the first k extracted answers) for each k asked. Writes `results.jsonl` (one line per question) and
`summary.json` to `--out`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from alignkit.eval.metrics import majority, pass_at_k
from alignkit.progress import progress
from alignkit.tasks.extract import equivalent, extract_answer


def evaluate(sampler, tokenizer, task, items, samples: int = 0, ks: tuple[int, ...] = (), temperature: float = 0.7,
             top_p: float = 1.0, max_new_tokens: int = 128, seed: int = 0, chunk: int | None = None):
    """(per-item results, summary); `sampler` is a rollout backend (generation/rollout.py): the local sampler on a
    loaded model, or vLLM engines. `chunk`: questions per sampler call (default below); each call runs until its
    longest answer ends, so one call over every question is fastest, at the cost of the progress line's ETA."""
    from alignkit.data.chat import task_prompt_ids

    started = time.time()
    prompts = [task_prompt_ids(tokenizer, item) for item in items]
    # Questions go in chunks for a progress line with an ETA: the local sampler's batch (128 for engines), a
    # quarter of the questions when that is less (an ETA after the first quarter), a 20th when that is more;
    # prompt_keys seed each question's samples as one call over all of them would.
    batch = getattr(sampler, "batch_size", None) or 128
    per = chunk or max(min(batch, -(-len(prompts) // 4)), -(-len(prompts) // 20), 1)
    greedy, sampled = [], [] if samples else None
    with progress("eval accuracy", total=len(prompts), unit="questions") as advance:
        for s in range(0, len(prompts), per):
            part, keys = prompts[s : s + per], list(range(s, min(s + per, len(prompts))))
            greedy += sampler.generate(part, n=1, temperature=0, max_new_tokens=max_new_tokens, prompt_keys=keys)
            if samples:
                sampled += sampler.generate(part, n=samples, temperature=temperature, top_p=top_p,
                                            max_new_tokens=max_new_tokens, seed=seed, prompt_keys=keys)
            advance(len(part))
    results = []
    for i, item in enumerate(items):
        text = greedy[i][0].text
        row = {"id": item.id, "question": item.question, "answer": item.answer, "response": text,
               "extracted": extract_answer(text), "correct": task.evaluate(item, text),
               "finished": greedy[i][0].finished, "tokens": len(greedy[i][0].token_ids)}
        if item.meta.get("reserved") is not None:
            row["reserved_phrasing"] = item.meta["reserved"]
        if item.meta.get("phrasing") is not None:
            row["phrasing"] = f"{item.language}/{item.meta['phrasing']}"
        if item.language:
            row["language"] = item.language
        if sampled:
            texts = [s.text for s in sampled[i]]
            row["samples"] = [{"extracted": extract_answer(t), "correct": task.evaluate(item, t)} for t in texts]
        results.append(row)
    n = len(results)
    summary = {"task": task.name, "items": n, "accuracy": sum(r["correct"] for r in results) / n,
               "unfinished": sum(not r["finished"] for r in results),
               "mean_tokens": round(sum(r["tokens"] for r in results) / n, 1)}
    reserved = [r for r in results if r.get("reserved_phrasing")]
    if reserved:
        summary["accuracy_reserved_phrasings"] = sum(r["correct"] for r in reserved) / len(reserved)
        summary["items_reserved_phrasings"] = len(reserved)
    for key in ("language", "phrasing"):  # accuracy per language and per phrasing template, where the task has them
        groups: dict[str, list[bool]] = {}
        for r in results:
            if key in r:
                groups.setdefault(r[key], []).append(r["correct"])
        if len(groups) > 1 or (key == "phrasing" and groups):
            summary[f"by_{key}"] = {k: {"accuracy": sum(v) / len(v), "items": len(v)} for k, v in sorted(groups.items())}
    if sampled:
        summary["samples"] = samples
        for k in ks:
            summary[f"pass@{k}"] = sum(pass_at_k(samples, sum(s["correct"] for s in r["samples"]), k)
                                       for r in results) / n
            votes = [majority([s["extracted"] for s in r["samples"][:k]]) for r in results]
            summary[f"maj@{k}"] = sum(equivalent(v, item.answer) for item, v in zip(items, votes)) / n
    if hasattr(sampler, "precision"):  # the local sampler: float32 weights, or under bf16 autocast
        summary["precision"] = sampler.precision
    summary["seconds"] = round(time.time() - started, 1)
    return results, summary


def write(results: list[dict], summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for row in results:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
