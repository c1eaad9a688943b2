"""`alignkit pairs build --config C.yaml`: self-correction preference pairs from a student's own mistakes.

For each question with a known answer the student samples k answers. A wrong one, chain of thought included,
becomes `rejected`; a teacher told the correct answer writes a chain of thought that, once verified, becomes
`chosen`. Questions the student answers right every time are skipped and counted.

    alignkit pairs build --config configs/pairs/smollm2-addition.yaml teacher.kind=openai \\
        teacher.base_url=http://127.0.0.1:8000/v1 teacher.model=qwen

Output, in `output_dir`:
    pairs.jsonl     conversational DPO rows (prompt, chosen, rejected) plus `metadata`; `alignkit dpo` reads it
    outcomes.jsonl  one line per question: pair, skipped or dropped, with the reason
    summary.json    questions, student accuracy, pairs, skips, drops by reason
Both JSONL files are append-only, one fsynced write per record. A rerun after a crash, a Ctrl-C or an endpoint
outage picks up where the run stopped: questions already in outcomes.jsonl are not asked again, and student
samples are seeded per question, so the resumed run writes what an uninterrupted one would have. A teacher
endpoint that is down or misconfigured (a wrong URL, model name or key) stops the run with an error naming it;
the questions it failed are not recorded, so a rerun against the fixed endpoint asks them.

No pair holds the student's chat-control text (its tokenizer's special and added tokens, e.g. `<|im_end|>`): a
question holding some is an error, a teacher answer holding some is a failed attempt (`control_text`), and a
student answer holding some is not used as `rejected` (`student_control_text` when no other wrong one is left).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

from alignkit import AlignkitError
from alignkit.config import PairsConfig, StudentConfig, save_resolved
from alignkit.data.jsonl import AppendLog, repair
from alignkit.progress import progress
from alignkit.tasks import make_task, task_items
from alignkit.tasks.extract import extract_answer

_SAME_RUN = ("task", "student", "teacher.kind", "teacher.model")


# Student settings that change how fast the samples come, not which: a rerun may change them.
_PACE = ("batch_size", "startup_timeout", "engine_timeout", "sync_timeout")


def _sampling_settings(student: dict) -> dict:
    """The student settings the samples depend on: keys a record predates take their defaults (a new key's
    default is the behaviour before it existed), and the pace settings are left out."""
    return {k: v for k, v in {**StudentConfig().model_dump(mode="json"), **student}.items() if k not in _PACE}


def _fingerprint(cfg: PairsConfig) -> dict:
    dump = cfg.model_dump(mode="json")
    return {"task": dump["task"], "student": _sampling_settings(dump["student"]),
            "teacher.kind": dump["teacher"]["kind"], "teacher.model": dump["teacher"]["model"]}


def _depends_on(pairs: list[dict], outcomes: list[dict]) -> tuple[str, ...]:
    """The fingerprint keys the records so far depend on: the teacher's only once it has taught (a pair or a drop)."""
    if pairs or any("teacher_attempts" in o for o in outcomes):
        return _SAME_RUN
    return ("task", "student") if outcomes else ()


def _check_same_run(out: Path, cfg: PairsConfig, pairs: list[dict], outcomes: list[dict]) -> None:
    """Refuse a config that changes what the recorded questions were built with. A change nothing recorded
    depends on is taken (the marker is rewritten): after a run stopped on a wrong teacher model name, the rerun
    with the right name carries on."""
    marker = out / "run.json"
    now = _fingerprint(cfg)
    if marker.exists():
        try:
            before = json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AlignkitError(f"{marker}: unreadable (edited or torn); move {out} away, or fix the file") from None
        if not isinstance(before, dict):
            raise AlignkitError(f"{marker}: not what pairs build writes (expected a JSON object); move {out} away")
        if isinstance(before.get("student"), dict):  # an older marker, in today's terms
            before["student"] = _sampling_settings(before["student"])
        changed = [k for k in _depends_on(pairs, outcomes) if before.get(k) != now[k]]
        if changed:
            raise AlignkitError(f"{out}: holds pairs built with a different {', '.join(changed)}; "
                                f"use another output_dir or move this one away")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(now, indent=1))


def _reconcile(pairs: list[dict], outcomes: list[dict], outcome_log: AppendLog) -> dict[str, dict]:
    """Outcomes by question id. A pair written just before a crash, without its outcome line, gets one now."""
    by_id = {o["id"]: o for o in outcomes}
    for row in pairs:
        meta = row["metadata"]
        if meta["id"] not in by_id:
            record = {"id": meta["id"], "outcome": "pair", "reason": None,
                      "student_correct": meta["student_correct"], "student_samples": meta["student_samples"]}
            outcome_log.write(record)
            by_id[meta["id"]] = record
    return by_id


def summarize(outcomes: dict[str, dict], total: int, retries: int = 0) -> dict:
    samples = sum(o["student_samples"] for o in outcomes.values())
    drops = Counter(o["reason"] for o in outcomes.values() if o["outcome"] == "dropped")
    return {
        "questions": total,
        "done": len(outcomes),
        "student_accuracy": round(sum(o["student_correct"] for o in outcomes.values()) / samples, 4) if samples else None,
        "pairs": sum(o["outcome"] == "pair" for o in outcomes.values()),
        "skipped_always_right": sum(o["outcome"] == "skipped" for o in outcomes.values()),
        "dropped": sum(drops.values()),
        "dropped_by_reason": dict(sorted(drops.items())),
        "teacher_retries": retries,
    }


def _rejected(task, item, samples, control, pick: str = "first"):
    """(the student's wrong, non-empty answer to use, None), preferring ones that ended on their own, or (None,
    why there is none). `pick`: the first such answer, or the likeliest (highest summed log-prob under the
    student), the mistake it would most likely make again. An answer holding control text is never used:
    trained on, it would forge a turn."""
    wrong = [s for s in samples if s.text.strip() and not task.evaluate(item, s.text)]
    usable = [s for s in wrong if control.find(s.text) is None]
    finished = [s for s in usable if s.finished]
    if usable:
        candidates = finished or usable
        if pick == "likeliest":
            return max(candidates, key=lambda s: sum(s.logps)), None  # max keeps the first of equals
        return candidates[0], None
    return None, "student_control_text" if wrong else "student_empty"


def student_ranking(out: Path, student, batch_size: int = 16) -> dict | None:
    """How hard the pairs are for the student: the share it already ranks right, chosen above rejected, by summed
    and by per-token log-prob, and the mean summed margin (chosen minus rejected). Pairs the student already
    ranks right teach DPO little; a pair of its own likely mistake against a chain it finds unlikely is a hard,
    informative one. In bf16 where the processor has native bf16 (a forward pass over every pair is minutes in
    float32 on a small CPU; a pair within a few tenths of a nat can rank the other way), else in float32. The
    precision is recorded. Kept in `ranking.json`, recomputed only when the pair count changed. `student`: a
    function giving (model, tokenizer), called only when there is something to compute."""
    import torch

    from alignkit.data.collate import load_pairs
    from alignkit.data.jsonl import count_records
    from alignkit.models.load import bf16_is_fast
    from alignkit.models.logprobs import SequenceLogps
    from alignkit.models.reference import bf16_autocast, pair_logps

    path, cache = out / "pairs.jsonl", out / "ranking.json"
    if not path.exists():
        return None
    n = count_records(path)
    if not n:
        return None
    if cache.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            saved = json.loads(cache.read_text(encoding="utf-8"))
            if saved["pairs"] == n:
                return saved
    model, tokenizer = student()
    pairs = load_pairs(str(path), tokenizer, max_length=1 << 20, max_prompt_length=1 << 20)
    device = next(model.parameters()).device
    autocast = bf16_autocast(device) if bf16_is_fast(device.type) else contextlib.nullcontext
    was_training = model.training
    model.eval()
    with torch.no_grad():
        rows = pair_logps(SequenceLogps(model), pairs, tokenizer.pad_token_id, batch_size, autocast, device)
    model.train(was_training)
    ranking = rank_summary(rows, "bf16" if autocast is not contextlib.nullcontext
                           else str(next(model.parameters()).dtype))
    cache.write_text(json.dumps(ranking, indent=1))
    return ranking


def rank_summary(rows: list[dict], precision: str) -> dict:
    """The ranking figures of `alignkit logps`-style rows (chosen_logp, rejected_logp and token counts)."""
    n = len(rows)
    return {
        "pairs": n,
        "ranks_chosen_higher": round(sum(r["chosen_logp"] > r["rejected_logp"] for r in rows) / n, 4),
        "ranks_chosen_higher_per_token": round(sum(r["chosen_logp"] / r["chosen_tokens"] >
                                                   r["rejected_logp"] / r["rejected_tokens"] for r in rows) / n, 4),
        "mean_margin": round(sum(r["chosen_logp"] - r["rejected_logp"] for r in rows) / n, 3),
        "precision": precision,
    }


def ranking_from_reference(pairs_file: Path, cache_dir: Path, tokenizer, precision: str) -> dict | None:
    """The same figures from a DPO run's reference-log-prob cache, when that run's reference was the student: no
    forward pass of its own (the demo trains on the pairs against the model that made them). Over the pairs the
    run visited."""
    from alignkit.data.collate import load_pairs
    from alignkit.models.reference import pair_key, read_cache

    cached = {}
    for f in sorted(cache_dir.glob("*.jsonl")):
        cached.update(read_cache(f))
    pairs = load_pairs(str(pairs_file), tokenizer, max_length=1 << 20, max_prompt_length=1 << 20)
    rows = [{"chosen_logp": cached[k][0], "rejected_logp": cached[k][1], "chosen_tokens": len(p.chosen_ids),
             "rejected_tokens": len(p.rejected_ids)} for p in pairs if (k := pair_key(p)) in cached]
    return rank_summary(rows, precision) if rows else None


def run(cfg: PairsConfig, student=None, tokenizer=None, log=None) -> dict:
    """Build (or resume) the pairs; returns the summary. `student`/`tokenizer` may be passed in already loaded."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(cfg.output_dir)
    task = make_task(cfg.task)
    items = task_items(task, cfg.task)
    pair_rows, outcome_rows = repair(out / "pairs.jsonl"), repair(out / "outcomes.jsonl")
    _check_same_run(out, cfg, pair_rows, outcome_rows)
    save_resolved(cfg, out)

    pair_log, outcome_log = AppendLog(out / "pairs.jsonl"), AppendLog(out / "outcomes.jsonl")
    outcomes: dict[str, dict] = {}
    backend = None  # the student's sampler, opened once there is a question to ask
    retries = 0
    shown = contextlib.ExitStack()  # the progress display, closed first
    try:
        outcomes = _reconcile(pair_rows, outcome_rows, outcome_log)
        keys = {item.id: i for i, item in enumerate(items)}
        todo = [item for item in items if item.id not in outcomes]
        if outcomes:
            log(f"pairs: resuming, {len(outcomes)} of {len(items)} questions already done")
        teacher = sampler = None
        if todo:
            from alignkit.data.chat import ControlText, chat_prompt_ids
            from alignkit.generation.rollout import LocalBackend, from_config
            from alignkit.models.load import load_model, load_tokenizer
            from alignkit.pairs.teachers import make_teacher

            s = cfg.student
            if tokenizer is None:
                tokenizer = load_tokenizer(s.model, s.trust_remote_code)
            control = ControlText(tokenizer)  # the student's: the pairs are trained on the student
            for item in todo:  # before any model loads: a question with control text would become a prompt
                control.check_question(item)
            if s.backend == "local" and student is None:
                student = load_model(s.model, trust_remote_code=s.trust_remote_code)
            teacher = make_teacher(cfg.teacher, control)
            # The local sampler records the model's own log-probs of each token it picks (temperature 1, before
            # top-p, whatever the temperature it sampled at): the reference log-prob of the rejected response
            # when `alignkit dpo` starts from this model in the same precision (bf16 autocast's are recorded as
            # such, and no DPO run takes them, so those skip scoring a cut answer's end of turn).
            backend = LocalBackend(student, tokenizer, s.batch_size, bf16=s.bf16, score_end=not s.bf16) \
                if s.backend == "local" else from_config(s, tokenizer, None, s.model, out)
            if s.backend == "local":
                from alignkit.data.chat import Tokenize
                from alignkit.models.reference import model_fingerprint

                sampler = (model_fingerprint(student), backend.precision, Tokenize(tokenizer))
        # progress per chunk, with an ETA: a bar on a terminal, else a line through `log` every ~10% or 30 s
        advance = shown.enter_context(progress("pairs build", total=len(items), completed=len(items) - len(todo),
                                               unit="questions", write=log))
        for start in range(0, len(todo), cfg.chunk):
            chunk = todo[start:start + cfg.chunk]
            samples = backend.generate([chat_prompt_ids(tokenizer, it.messages()) for it in chunk],
                                       n=1 if s.temperature == 0 else s.samples,
                                       temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                       seed=s.seed, prompt_keys=[keys[it.id] for it in chunk])
            need, rejected = [], {}
            for item, item_samples in zip(chunk, samples):
                correct = sum(task.evaluate(item, x.text) for x in item_samples)
                base = {"id": item.id, "student_correct": correct, "student_samples": len(item_samples)}
                choice, reason = _rejected(task, item, item_samples, control, s.rejected)
                if choice is None:
                    always_right = correct == len(item_samples)
                    record = {**base, "outcome": "skipped" if always_right else "dropped",
                              "reason": "student_always_right" if always_right else reason}
                    outcome_log.write(record)
                    outcomes[item.id] = record
                else:
                    need.append(item)
                    rejected[item.id] = (choice, base)
            for index, teaching in teacher.teach(task, need):
                item = need[index]
                choice, base = rejected[item.id]
                retries += teaching.retries
                if teaching.text is None:
                    record = {**base, "outcome": "dropped", "reason": teaching.reason, "teacher_attempts": teaching.attempts}
                else:
                    pair_log.write({
                        "prompt": item.messages(),
                        "chosen": [{"role": "assistant", "content": teaching.text}],
                        "rejected": [{"role": "assistant", "content": choice.text}],
                        "metadata": {
                            "task": task.name, "id": item.id, "question": item.question, "answer": item.answer,
                            "student_answer": extract_answer(choice.text), "student_finished": choice.finished,
                            "student_correct": base["student_correct"], "student_samples": base["student_samples"],
                            "teacher": teacher.name,
                            **({"student_logps": _sampler_record(sampler, choice, item.messages())}
                               if sampler else {}),
                            "verification": {"answer": True, "answer_line": True, "reasoning": True,
                                             "no_reveal": True, "attempts": teaching.attempts},
                        },
                    })
                    record = {**base, "outcome": "pair", "reason": None, "teacher_attempts": teaching.attempts}
                outcome_log.write(record)
                outcomes[item.id] = record
            so_far = summarize(outcomes, len(items))
            advance(len(chunk), info=f"{so_far['pairs']} pairs, {so_far['skipped_always_right']} skipped, "
                                     f"{so_far['dropped']} dropped")
    except AlignkitError as e:
        from alignkit.generation.openai_client import EndpointMisconfigured

        summary = summarize(outcomes, len(items), retries)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        # An outage passes; a wrong URL, model name or key has to be fixed before a rerun gets further.
        then = "fix the teacher and rerun" if isinstance(e, EndpointMisconfigured) else "rerun the same command"
        raise AlignkitError(f"{e}; {summary['done']} of {len(items)} questions are saved in {out}, "
                            f"{then} to resume") from None
    finally:
        shown.close()
        pair_log.close()
        outcome_log.close()
        if backend is not None:
            backend.close()
    summary = summarize(outcomes, len(items), retries)
    if cfg.student.backend == "local" and cfg.rank:
        summary["student_ranking"] = student_ranking(out, lambda: _student(cfg, student, tokenizer))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _sampler_record(sampler, choice, prompt) -> dict:
    """metadata.student_logps of a pair: the rejected answer's log-prob as the sampler computed it, over its token
    ids. DPO takes it as the reference log-prob when those ids are the ones its own tokenization gives the
    rejected response (data/chat.Tokenize), so an answer cut at max_new_tokens, which that tokenization closes with
    an end-of-turn token, gets that token and its log-prob from the sample's end_logps."""
    fingerprint, dtype, tokenize = sampler
    record = {"model": fingerprint, "dtype": dtype, "token_ids": list(choice.token_ids), "logp": sum(choice.logps)}
    if choice.finished or not choice.end_logps:
        return record
    try:
        closed = tokenize.responses(prompt, {"rejected": [{"role": "assistant", "content": choice.text}]},
                                    "the student's answer")[1]["rejected"]
    except AlignkitError:  # DPO refuses such a row itself, naming it
        return record
    if closed and closed[:-1] == record["token_ids"] and closed[-1] in choice.end_logps:
        record.update(token_ids=closed, logp=record["logp"] + choice.end_logps[closed[-1]])
    return record


def _student(cfg: PairsConfig, model, tokenizer):
    """(model, tokenizer) of the student, loading what was not passed in."""
    from alignkit.models.load import load_model, load_tokenizer

    s = cfg.student
    return (model if model is not None else load_model(s.model, trust_remote_code=s.trust_remote_code),
            tokenizer if tokenizer is not None else load_tokenizer(s.model, s.trust_remote_code))


def format_summary(summary: dict, out: str) -> str:
    acc = summary["student_accuracy"]
    lines = [
        f"questions          {summary['questions']}",
        f"student accuracy   {acc:.1%}" if acc is not None else "student accuracy   -",
        f"pairs              {summary['pairs']}",
        f"skipped (always right) {summary['skipped_always_right']}",
        f"dropped            {summary['dropped']}"
        + ("".join(f"\n  {reason:<17}{n}" for reason, n in summary["dropped_by_reason"].items())),
        f"output             {out}/pairs.jsonl",
    ]
    ranked = summary.get("student_ranking")
    if ranked:
        lines.insert(-1, f"student already ranks chosen higher  {ranked['ranks_chosen_higher']:.1%} of pairs by summed "
                         f"log-prob, {ranked['ranks_chosen_higher_per_token']:.1%} per token (mean margin "
                         f"{ranked['mean_margin']:+.1f} nats)")
    return "\n".join(lines)
