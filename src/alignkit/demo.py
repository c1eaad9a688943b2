"""`alignkit demo`: a small model learns from its own mistakes, end to end, on a laptop CPU.

    alignkit demo                                    # SmolLM2-135M-Instruct, two-digit addition, solver teacher
    alignkit demo --teacher-url http://127.0.0.1:8000/v1 --teacher-model qwen2.5-7b-instruct
    alignkit demo --language zh --out runs/demo-zh      # the same in Chinese: questions, teacher, held-out set

1. Evaluate the base model (greedy pass@1) on the held-out split: questions never used for training, some in
   phrasings training never sees.
2. Build self-correction pairs on the training split: the student's wrong answers become `rejected`, the
   teacher's verified chains of thought `chosen` (alignkit pairs build).
3. Train DPO with an NLL term on chosen, LoRA (alignkit dpo).
4. Evaluate the trained model on the same held-out questions.
5. Write report.html (accuracy before and after, pairs built, training curves, sample pairs and answers, the DPO
   config, versions and date) and print a summary.

Every stage writes into `--out` and is skipped on a rerun when its result is already there, so an interrupted
demo resumes where it stopped.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from alignkit.config import (DataConfig, DPOConfig, LoraConfig, LossConfig, ModelConfig, PairsConfig,
                             StudentConfig, TaskConfig, TeacherConfig, TrainConfig)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _evaluate_stage(name, model_path, model, tokenizer, task_cfg, out: Path, max_new_tokens, batch_size):
    from alignkit.eval import accuracy
    from alignkit.generation.rollout import LocalBackend
    from alignkit.tasks import make_task, task_items

    if (out / "summary.json").exists():
        _say(f"[{name}] reusing {out}/summary.json")
        return json.loads((out / "summary.json").read_text())
    task = make_task(task_cfg)
    items = task_items(task, task_cfg)
    _say(f"[{name}] greedy answers to {len(items)} held-out questions ...")
    results, summary = accuracy.evaluate(LocalBackend(model, tokenizer, batch_size), tokenizer, task, items,
                                         max_new_tokens=max_new_tokens)
    summary["model"] = str(model_path)
    accuracy.write(results, summary, out)
    _say(f"[{name}] accuracy {summary['accuracy']:.1%} ({summary['seconds']:.0f}s)")
    return summary


def run(out: str = "runs/demo", model: str = "smollm2-135m-instruct", task: str = "addition-2d",
        questions: int = 288, heldout: int = 200, samples: int = 1, teacher_url: str | None = None,
        teacher_model: str | None = None, teacher_key_env: str = "OPENAI_API_KEY", lr: float = 1e-3,
        epochs: float = 1.0, seed: int = 0, max_new_tokens: int = 72, language: str = "en") -> dict:
    from alignkit.algos import dpo
    from alignkit.models.load import load_model, load_tokenizer
    from alignkit.pairs import build

    started = time.time()
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    heldout_cfg = TaskConfig(name=task, split="heldout", limit=heldout, seed=seed, languages=[language])
    tokenizer = load_tokenizer(model)
    student = load_model(model)

    t = time.time()
    before = _evaluate_stage("base", model, student, tokenizer, heldout_cfg, run_dir / "eval-base",
                             max_new_tokens, 256)
    times["evaluate base"] = time.time() - t

    t = time.time()
    if teacher_url:
        teacher = TeacherConfig(kind="openai", base_url=teacher_url, model=teacher_model or "default",
                                api_key_env=teacher_key_env)
    else:
        teacher = TeacherConfig(kind="solver")
    pairs_cfg = PairsConfig(
        task=TaskConfig(name=task, split="train", limit=questions, seed=seed, languages=[language]),
        student=StudentConfig(model=model, samples=samples, temperature=1.0, max_new_tokens=64, batch_size=256,
                              seed=seed),
        teacher=teacher, output_dir=str(run_dir / "pairs"), chunk=128,
    )
    _say(f"[pairs] the student answers {questions} training questions; the {teacher.kind} teacher writes chosen ...")
    pair_summary = build.run(pairs_cfg, student=student, tokenizer=tokenizer, log=_say)
    times["build pairs"] = time.time() - t
    del student
    gc.collect()

    t = time.time()
    dpo_cfg = DPOConfig(
        model=ModelConfig(path=model, lora=LoraConfig(r=16, alpha=32, merge=True)),
        data=DataConfig(train=str(run_dir / "pairs" / "pairs.jsonl"), max_length=192, max_prompt_length=96),
        loss=LossConfig(type="sigmoid", beta=0.1, rpo_alpha=1.0),
        train=TrainConfig(output_dir=str(run_dir / "dpo"), seed=seed, epochs=epochs, batch_size=8,
                          micro_batch_size=8, lr=lr, warmup_steps=2, scheduler="cosine", log_every=1,
                          save_every=5, keep_last=1),
    )
    final = run_dir / "dpo" / "final"
    if (final / "config.json").exists():
        _say(f"[dpo] reusing {final}")
    else:
        _say(f"[dpo] training on {pair_summary['pairs']} pairs ...")
        dpo.run(dpo_cfg)
    times["train dpo"] = time.time() - t

    t = time.time()
    trained = load_model(str(final))
    after = _evaluate_stage("trained", final, trained, tokenizer, heldout_cfg, run_dir / "eval-trained",
                            max_new_tokens, 256)
    times["evaluate trained"] = time.time() - t
    del trained
    gc.collect()

    summary = {
        "model": model, "task": task, "language": language, "heldout_questions": before["items"],
        "training_questions": questions,
        "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
        "accuracy_reserved_before": before.get("accuracy_reserved_phrasings"),
        "accuracy_reserved_after": after.get("accuracy_reserved_phrasings"),
        "pairs": pair_summary["pairs"], "student_accuracy": pair_summary["student_accuracy"],
        "teacher": teacher.kind, "seconds": {k: round(v, 1) for k, v in times.items()},
        "total_seconds": round(time.time() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    write_report(run_dir, summary)
    _say(console_summary(summary, run_dir))
    return summary


def console_summary(s: dict, run_dir: Path) -> str:
    minutes, seconds = divmod(int(s["total_seconds"]), 60)
    lines = [
        "",
        f"alignkit demo: {s['model']} on {s['task']}",
        f"  held-out accuracy   {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%}"
        f"   ({s['heldout_questions']} questions no training question shares)",
    ]
    if s.get("accuracy_reserved_after") is not None:
        lines.append(f"  unseen phrasings    {s['accuracy_reserved_before']:.1%} -> {s['accuracy_reserved_after']:.1%}")
    lines += [
        f"  pairs               {s['pairs']} from {s['training_questions']} training questions "
        f"(student right {s['student_accuracy']:.1%} of the time; teacher: {s['teacher']})",
        "  time                " + ", ".join(f"{k} {v:.0f}s" for k, v in s["seconds"].items())
        + f"; total {minutes}m{seconds:02d}s",
        f"  report              {run_dir / 'report.html'}",
    ]
    return "\n".join(lines)


def _group_rows(base: list[dict], trained: list[dict]) -> list[list[str]]:
    """Accuracy before and after per language (when there are several) and per phrasing template, each template
    shown by one of its questions and marked when training never used it."""
    rows = []
    for key in ("language", "phrasing"):
        names = sorted({r[key] for r in base if key in r}, key=lambda n: (n.split("/")[0], int(n.split("/")[-1]))
                       if key == "phrasing" else n)
        if len(names) < 2 and key == "language":
            continue
        for name in names:
            before = [r for r in base if r.get(key) == name]
            after = [r for r in trained if r.get(key) == name]
            if key == "language":
                label = f"language {name}"
            else:
                label = f"“{before[0]['question']}”" + (" (unseen phrasing)" if before[0].get("reserved_phrasing") else "")
            rows.append([f"{label}, {len(before)} questions", f"{sum(r['correct'] for r in before) / len(before):.1%}",
                         f"{sum(r['correct'] for r in after) / max(len(after), 1):.1%}"])
    return rows


def write_report(run_dir: Path, s: dict) -> Path:
    from alignkit.eval import report as r

    metrics = r.read_metrics(run_dir / "dpo" / "metrics.jsonl")
    plots = r.metric_plots(metrics, {
        "loss": ["loss", "nll_loss"],
        "rewards": ["rewards/chosen", "rewards/rejected", "rewards/margins"],
        "preference accuracy": ["rewards/accuracies"],
        "log-probs": ["logps/chosen", "logps/rejected"],
    }, every=r.log_every(run_dir / "dpo" / "config.yaml"))
    base = [json.loads(line) for line in (run_dir / "eval-base" / "results.jsonl").read_text().splitlines()]
    trained = [json.loads(line) for line in (run_dir / "eval-trained" / "results.jsonl").read_text().splitlines()]
    acc_rows = [["all held-out questions", f"{s['accuracy_before']:.1%}", f"{s['accuracy_after']:.1%}"]]
    if s.get("accuracy_reserved_after") is not None:
        acc_rows.append(["phrasings never used in training", f"{s['accuracy_reserved_before']:.1%}",
                         f"{s['accuracy_reserved_after']:.1%}"])
    acc_rows += _group_rows(base, trained)
    pairs = [json.loads(line) for line in (run_dir / "pairs" / "pairs.jsonl").read_text().splitlines()[:5]]
    pair_html = "".join(
        f"<h3>{r.html.escape(p['metadata']['question'])} (answer {p['metadata']['answer']})</h3><div class='pair'>"
        f"<div><b class='ok'>chosen</b> ({r.html.escape(p['metadata']['teacher'])}){r.pre(p['chosen'][0]['content'])}</div>"
        f"<div><b class='bad'>rejected</b> (the student){r.pre(p['rejected'][0]['content'])}</div></div>"
        for p in pairs
    )
    answer_html = "".join(
        f"<h3>{r.html.escape(b['question'])} (answer {b['answer']})</h3><div class='pair'>"
        f"<div><b class='{'ok' if b['correct'] else 'bad'}'>before</b>{r.pre(b['response'])}</div>"
        f"<div><b class='{'ok' if a['correct'] else 'bad'}'>after</b>{r.pre(a['response'])}</div></div>"
        for b, a in list(zip(base, trained))[:8]
    )
    stage_rows = [[k, f"{v:.0f} s"] for k, v in s["seconds"].items()] + [["total", f"{s['total_seconds']:.0f} s"]]
    html_text = r.page(f"alignkit demo: {s['model']} on {s['task']}", [
        ("Held-out accuracy (greedy pass@1)", r.table(["questions", "before", "after"], acc_rows)),
        ("Pairs built", r.table(["pairs", "from training questions", "student right", "teacher"], [[
            r.pairs_built(run_dir / "pairs"), s["training_questions"], f"{s['student_accuracy']:.1%}", s["teacher"]]])),
        ("Training curves (DPO + NLL on chosen)", f"<div class='plots'>{plots}</div>"),
        ("Sample pairs", pair_html),
        ("Sample held-out answers", answer_html),
        ("Time per stage", r.table(["stage", "time"], stage_rows)),
        ("DPO config", r.config_block(run_dir / "dpo" / "config.yaml")),
        ("About this report", r.provenance()),
    ])
    path = run_dir / "report.html"
    path.write_text(html_text, encoding="utf-8")
    return path
