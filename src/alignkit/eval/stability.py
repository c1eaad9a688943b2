"""`alignkit eval stability`: does a model give the same answer when asked the same question again?

    alignkit eval stability --model smollm2-135m-instruct --task addition-2d --limit 50 --samples 8
    alignkit eval stability --model M --task questions.jsonl --samples 5 --temperature 1.0

Each question is sampled `--samples` times (temperature, top-p, seeded per question and sample). Per question:
the majority extracted answer and `agreement`, the share of samples that give it (a sample with no answer never
agrees). The tasks are verifiable, so each sample is also graded: sample j of every question forms pass j, and
the accuracy of each pass shows how much a single-sample score moves from run to run (std, min and max across
the passes). Writes `results.jsonl` and `summary.json` (metrics flat, per-pass accuracies beside them) to `--out`.
"""

from __future__ import annotations

import statistics
import time

from alignkit.eval.metrics import agreement, majority
from alignkit.tasks.extract import equivalent, extract_answer


def evaluate(model, tokenizer, task, items, samples: int, temperature: float, top_p: float, max_new_tokens: int,
             batch_size: int, seed: int) -> tuple[list[dict], dict]:
    from alignkit.data.chat import task_prompt_ids
    from alignkit.generation.sample import generate

    started = time.time()
    prompts = [task_prompt_ids(tokenizer, item) for item in items]
    sampled = generate(model, tokenizer, prompts, n=samples, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    results = []
    for item, row in zip(items, sampled):
        answers = [extract_answer(s.text) for s in row]
        top = majority(answers)
        results.append({"id": item.id, "question": item.question, "answer": item.answer, "extracted": answers,
                        "correct": [task.evaluate(item, s.text) for s in row], "majority": top,
                        "majority_correct": equivalent(top, item.answer), "agreement": agreement(answers)})
    n = len(results)
    per_pass = [sum(r["correct"][j] for r in results) / n for j in range(samples)]  # accuracy of sample j
    agreements = [r["agreement"] for r in results]
    metrics = {"items": n, "samples": samples, "mean_agreement": sum(agreements) / n,
               "min_agreement": min(agreements), "unanimous": sum(a == 1.0 for a in agreements) / n,
               "accuracy_mean": sum(per_pass) / samples, "accuracy_std": statistics.pstdev(per_pass),
               "accuracy_min": min(per_pass), "accuracy_max": max(per_pass),
               "majority_accuracy": sum(r["majority_correct"] for r in results) / n}
    summary = {"command": "eval stability", "task": task.name, "temperature": temperature, "top_p": top_p,
               "seed": seed, "accuracy_per_pass": per_pass, "seconds": round(time.time() - started, 1),
               "metrics": metrics}
    return results, summary
