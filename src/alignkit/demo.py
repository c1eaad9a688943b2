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
                             ReferenceConfig, StudentConfig, TaskConfig, TeacherConfig, TrainConfig)
from alignkit.data.jsonl import count_records, read_jsonl, write_jsonl


def _say(msg: str) -> None:
    print(msg, flush=True)


def _evaluate_stage(name, model_path, model, tokenizer, task_cfg, out: Path, max_new_tokens, batch_size, bf16):
    from alignkit.eval import accuracy
    from alignkit.generation.rollout import LocalBackend
    from alignkit.tasks import make_task, task_items

    if (out / "summary.json").exists():
        _say(f"[{name}] reusing {out}/summary.json")
        return json.loads((out / "summary.json").read_text())
    task = make_task(task_cfg)
    items = task_items(task, task_cfg)
    _say(f"[{name}] greedy answers to {len(items)} held-out questions ...")
    sampler = LocalBackend(model, tokenizer, batch_size, bf16=bf16)
    results, summary = accuracy.evaluate(sampler, tokenizer, task, items, max_new_tokens=max_new_tokens,
                                         chunk=batch_size)  # one call per batch: no ETA, the least waiting
    summary["model"] = str(model_path)
    accuracy.write(results, summary, out)
    _say(f"[{name}] accuracy {summary['accuracy']:.1%} ({summary['seconds']:.0f}s)")
    return summary


def answer_budget(task_cfg, tokenizer) -> int:
    """New tokens for a held-out answer: room for the solver's longest worked solution to these questions and 16
    tokens more, and never under 72 (two-digit addition's 54-token solutions get 72, three-digit's 83 get 99)."""
    from alignkit.tasks import make_task, task_items

    task = make_task(task_cfg)
    longest = max(len(tokenizer(task.solve(i), add_special_tokens=False)["input_ids"]) for i in task_items(task, task_cfg))
    return max(72, longest + 16)


def _round_dir(run_dir: Path, k: int) -> Path:
    """Round 1 writes pairs/, dpo/ and eval-trained/ into the run directory itself; round k > 1 into round-k/."""
    return run_dir if k == 1 else run_dir / f"round-{k}"


def run(out: str = "runs/demo", model: str = "smollm2-135m-instruct", task: str = "addition-2d",
        questions: int = 288, heldout: int = 200, samples: int = 1, teacher_url: str | None = None,
        teacher_model: str | None = None, teacher_key_env: str = "OPENAI_API_KEY", lr: float = 1e-3,
        epochs: float = 1.0, seed: int = 0, max_new_tokens: int | None = None, language: str = "en", rounds: int = 1,
        temperature: float = 1.0, rejected: str = "first") -> dict:
    from alignkit.algos import dpo
    from alignkit.models.load import bf16_is_fast, load_model, load_tokenizer
    from alignkit.pairs import build

    started = time.time()
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    heldout_cfg = TaskConfig(name=task, split="heldout", limit=heldout, seed=seed, languages=[language])
    tokenizer = load_tokenizer(model)
    if max_new_tokens is None:
        max_new_tokens = answer_budget(heldout_cfg, tokenizer)
    student = load_model(model)
    # Where the processor has bf16 units, the evaluations answer under bf16 autocast (nearly twice as fast) and
    # DPO trains under it on float32 weights. The student answering the training questions stays in float32:
    # its samples are the rejected answers, and one run with bf16 samples trained a weaker model (docs/pairs.md).
    bf16 = bf16_is_fast("cpu")

    t = time.time()
    before = _evaluate_stage("base", model, student, tokenizer, heldout_cfg, run_dir / "eval-base",
                             max_new_tokens, 256, bf16)
    times["evaluate base"] = time.time() - t

    if teacher_url:
        teacher = TeacherConfig(kind="openai", base_url=teacher_url, model=teacher_model or "default",
                                api_key_env=teacher_key_env)
    else:
        teacher = TeacherConfig(kind="solver")
    per_call = min(questions, 320)  # training questions in one batch: fewer, larger batches are faster on a CPU
    current, history = model, []
    for k in range(1, rounds + 1):
        d, tag = _round_dir(run_dir, k), ("" if rounds == 1 else f" (round {k})")
        name = "" if rounds == 1 else f"round {k}: "
        t = time.time()
        # Each round's student answers questions no earlier round asked: the next slice of one seeded draw.
        pairs_cfg = PairsConfig(
            task=TaskConfig(name=task, split="train", offset=(k - 1) * questions, limit=questions, seed=seed,
                            languages=[language]),
            student=StudentConfig(model=str(current), samples=samples, temperature=temperature, rejected=rejected,
                                  max_new_tokens=64, batch_size=per_call, seed=seed),
            # saved after each batch; samples do not depend on the batching
            teacher=teacher, output_dir=str(d / "pairs"), chunk=per_call,
            rank=False,  # ranked from DPO's reference
        )
        _say(f"[pairs{tag}] the student answers {questions} training questions; the {teacher.kind} teacher "
             f"writes chosen ...")
        pair_summary = build.run(pairs_cfg, student=student, tokenizer=tokenizer, log=_say)
        times[f"{name}build pairs"] = time.time() - t
        student = None  # DPO loads its own copy
        gc.collect()
        if not pair_summary["pairs"]:
            _say(f"[pairs{tag}] no wrong answers left to learn from; stopping after round {k - 1}")
            break

        t = time.time()
        # Each round trains a fresh adapter on the model the last round made, against that model as reference
        # (the adapter off): the reference refreshed every round, as in iterative DPO. It trains on every round's
        # pairs so far: a later round's few pairs share one or two mistakes (a carry forgotten), and DPO on them
        # alone over-corrects (docs/pairs.md, "Rounds").
        train_file = d / "pairs" / "pairs.jsonl"
        if k > 1:
            train_file = d / "train-pairs.jsonl"
            if not train_file.exists():
                write_jsonl(train_file, [row for j in range(1, k + 1)
                                         for row in read_jsonl(_round_dir(run_dir, j) / "pairs" / "pairs.jsonl")])
        dpo_cfg = DPOConfig(
            # eager attention: on a CPU the fused kernel's backward is slow for pairs this short
            model=ModelConfig(path=str(current), lora=LoraConfig(r=16, alpha=32, merge=True),
                              attn_implementation="eager"),
            # The reference is this round's student; its log-probs of the pairs, cached here, also say how hard
            # the pairs were for it (below).
            reference=ReferenceConfig(cache_dir=str(d / "dpo" / "ref-logps")),
            data=DataConfig(train=str(train_file), max_length=192, max_prompt_length=96),
            loss=LossConfig(type="sigmoid", beta=0.1, rpo_alpha=1.0),
            train=TrainConfig(output_dir=str(d / "dpo"), seed=seed, epochs=epochs, batch_size=8,
                              micro_batch_size=8, lr=lr, warmup_steps=2, scheduler="cosine", log_every=1,
                              save_every=5, keep_last=1, bf16=bf16),
        )
        final = d / "dpo" / "final"
        if (final / "config.json").exists():
            _say(f"[dpo{tag}] reusing {final}")
        else:
            total = count_records(train_file)
            _say(f"[dpo{tag}] training on {total} pairs" + (f" (this round's {pair_summary['pairs']} and the earlier "
                                                              f"rounds')" if k > 1 else "") + " ...")
            dpo.run(dpo_cfg)
        times[f"{name}train dpo"] = time.time() - t
        ranking = build.ranking_from_reference(d / "pairs" / "pairs.jsonl", d / "dpo" / "ref-logps", tokenizer,
                                               "bf16" if bf16 else "torch.float32")
        if ranking:
            _say(f"[pairs{tag}] the student ranked chosen above rejected in {ranking['ranks_chosen_higher']:.1%} "
                 f"of the {ranking['pairs']} pairs DPO trained on, before training (summed log-prob)")

        t = time.time()
        student = load_model(str(final))  # evaluated now, and the next round's student
        after = _evaluate_stage(f"trained{tag}", final, student, tokenizer, heldout_cfg, d / "eval-trained",
                                max_new_tokens, 256, bf16)
        times[f"{name}evaluate trained"] = time.time() - t
        history.append({"round": k, "model": str(final), "pairs": pair_summary["pairs"],
                        "training_questions": questions, "student_accuracy": pair_summary["student_accuracy"],
                        "student_ranking": ranking, "accuracy": after["accuracy"],
                        "accuracy_reserved_phrasings": after.get("accuracy_reserved_phrasings")})
        current = final
    student = None
    gc.collect()

    last = history[-1] if history else {"accuracy": None, "accuracy_reserved_phrasings": None, "model": model}
    first = history[0] if history else {"pairs": 0, "student_accuracy": None}
    summary = {
        "model": model, "task": task, "language": language, "heldout_questions": before["items"],
        "max_new_tokens": max_new_tokens,
        "training_questions": questions, "rounds": history, "final_model": last["model"],
        "accuracy_before": before["accuracy"], "accuracy_after": last["accuracy"],
        "accuracy_reserved_before": before.get("accuracy_reserved_phrasings"),
        "accuracy_reserved_after": last["accuracy_reserved_phrasings"],
        "pairs": first["pairs"], "student_accuracy": first["student_accuracy"],
        "teacher": teacher.kind, "seconds": {k: round(v, 1) for k, v in times.items()},
        "total_seconds": round(time.time() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if history:
        write_report(run_dir, summary)
    _say(console_summary(summary, run_dir))
    return summary


def console_summary(s: dict, run_dir: Path) -> str:
    minutes, seconds = divmod(int(s["total_seconds"]), 60)
    rounds = s.get("rounds") or []
    path = f"{s['accuracy_before']:.1%}" + "".join(f" -> {r['accuracy']:.1%}" for r in rounds)
    lines = [
        "",
        f"alignkit demo: {s['model']} on {s['task']}",
        f"  held-out accuracy   {path}" + (" (after each round)" if len(rounds) > 1 else "")
        + f"   ({s['heldout_questions']} questions no training question shares)",
    ]
    if rounds and rounds[-1].get("accuracy_reserved_phrasings") is not None:
        lines.append(f"  unseen phrasings    {s['accuracy_reserved_before']:.1%}"
                     + "".join(f" -> {r['accuracy_reserved_phrasings']:.1%}" for r in rounds))
    for r in rounds:
        label = "pairs" if len(rounds) == 1 else f"pairs, round {r['round']}"
        ranked = r.get("student_ranking")
        lines.append(f"  {label:<20}{r['pairs']} from {r['training_questions']} training questions (student right "
                     f"{r['student_accuracy']:.1%} of the time"
                     + (f"; it already ranked chosen higher in {ranked['ranks_chosen_higher']:.0%}" if ranked else "")
                     + f"; teacher: {s['teacher']})")
    lines += [
        "  time                " + ", ".join(f"{k} {v:.0f}s" for k, v in s["seconds"].items())
        + f"; total {minutes}m{seconds:02d}s",
        f"  trained model       {s['final_model']}",
        f"  report              {run_dir / 'report.html'}",
    ]
    return "\n".join(lines)


def _share(rows: list[dict]) -> str:
    return f"{sum(r['correct'] for r in rows) / len(rows):.1%}" if rows else "-"


def _group_rows(base: list[dict], trained: list[list[dict]]) -> list[list[str]]:
    """Accuracy before and after (each round) per language and per phrasing template, each template shown by one
    of its questions and marked when training never used it."""
    rows = []
    for key in ("language", "phrasing"):
        names = sorted({r[key] for r in base if key in r}, key=lambda n: (n.split("/")[0], int(n.split("/")[-1]))
                       if key == "phrasing" else n)
        for name in names:
            before = [r for r in base if r.get(key) == name]
            if key == "language":
                label = f"language {name}"
            else:
                label = f"“{before[0]['question']}”" + (" (unseen phrasing)" if before[0].get("reserved_phrasing") else "")
            rows.append([f"{label}, {len(before)} questions", _share(before)]
                        + [_share([r for r in after if r.get(key) == name]) for after in trained])
    return rows


def write_report(run_dir: Path, s: dict) -> Path:
    from alignkit.eval import report as r

    rounds = s.get("rounds") or [{"round": 1, "accuracy": s["accuracy_after"], "pairs": s["pairs"],
                                  "training_questions": s["training_questions"],
                                  "student_accuracy": s["student_accuracy"],
                                  "accuracy_reserved_phrasings": s.get("accuracy_reserved_after")}]
    dirs = [_round_dir(run_dir, x["round"]) for x in rounds]
    groups = {
        "loss": ["loss", "nll_loss"],
        "rewards": ["rewards/chosen", "rewards/rejected", "rewards/margins"],
        "preference accuracy": ["rewards/accuracies"],
        "log-probs": ["logps/chosen", "logps/rejected"],
    }
    plots = "".join(
        (f"<h3>round {x['round']}</h3>" if len(rounds) > 1 else "")
        + f"<div class='plots'>{r.metric_plots(r.read_metrics(d / 'dpo' / 'metrics.jsonl'), groups, every=r.log_every(d / 'dpo' / 'config.yaml'))}</div>"
        for x, d in zip(rounds, dirs))
    base = read_jsonl(run_dir / "eval-base" / "results.jsonl")
    trained = [read_jsonl(d / "eval-trained" / "results.jsonl") for d in dirs]
    after = ["after"] if len(rounds) == 1 else [f"after round {x['round']}" for x in rounds]
    acc_rows = [["all held-out questions", f"{s['accuracy_before']:.1%}"] + [f"{x['accuracy']:.1%}" for x in rounds]]
    if s.get("accuracy_reserved_after") is not None:
        acc_rows.append(["phrasings never used in training", f"{s['accuracy_reserved_before']:.1%}"]
                        + [f"{x['accuracy_reserved_phrasings']:.1%}" for x in rounds])
    acc_rows += _group_rows(base, trained)
    built_rows = []
    for x, d in zip(rounds, dirs):
        ranked = x.get("student_ranking")
        built_rows.append([x["round"], r.pairs_built(d / "pairs"), x["training_questions"],
                           f"{x['student_accuracy']:.1%}",
                           f"{ranked['ranks_chosen_higher']:.1%}" if ranked else "-",
                           f"{ranked['mean_margin']:+.1f}" if ranked else "-", s["teacher"]])
    pairs = read_jsonl(run_dir / "pairs" / "pairs.jsonl")[:5]
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
        for b, a in list(zip(base, trained[-1]))[:8]
    )
    stage_rows = [[k, f"{v:.0f} s"] for k, v in s["seconds"].items()] + [["total", f"{s['total_seconds']:.0f} s"]]
    html_text = r.page(f"alignkit demo: {s['model']} on {s['task']}", [
        ("Held-out accuracy (greedy pass@1)", r.table(["questions", "before", *after], acc_rows)),
        ("Pairs built", r.table(["round", "pairs", "from training questions", "student right",
                                 "student already ranks chosen higher", "mean log-prob margin, chosen − rejected",
                                 "teacher"], built_rows)),
        ("Training curves (DPO + NLL on chosen)", plots),
        ("Sample pairs", pair_html),
        ("Sample held-out answers" + ("" if len(rounds) == 1 else " (before, and after the last round)"), answer_html),
        ("Time per stage", r.table(["stage", "time"], stage_rows)),
        ("DPO config" + ("" if len(rounds) == 1 else " (round 1)"), r.config_block(run_dir / "dpo" / "config.yaml")),
        ("About this report", r.provenance()),
    ])
    path = run_dir / "report.html"
    path.write_text(html_text, encoding="utf-8")
    return path
