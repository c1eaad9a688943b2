"""`alignkit eval judge`: an LLM judge grades answers from 1 to 10, or compares two models side by side.

    alignkit eval judge single --answers answers.jsonl --judge-url http://127.0.0.1:8000/v1 --judge-model NAME
    alignkit eval judge pairwise --answers new.jsonl --answers old.jsonl --judge-url URL --judge-model NAME
    alignkit eval judge pairwise --model runs/dpo/final --model smollm2-135m-instruct --prompts prompts.jsonl \
        --judge-local path/to/judge-model

Answers come from JSONL files (a `prompt` or `question` field and an `answer` or `response` field; pairwise
files are matched by prompt) or are generated greedily by local models for a prompts file. The judge is an
OpenAI-compatible endpoint (`--judge-url`, retried on transport failures by ChatClient) or a local model
(`--judge-local`).

single: MT-Bench-style grading; the rating is read from "Rating: [[7]]", "[[7]]", "7/10", "Score: 7"...
pairwise: every prompt is judged twice, with model 1's answer shown first and then second, to cancel the
judge's position bias. Model 1 wins only when both orders say so (first order "A", swapped order "B"); any
disagreement is a tie. A verdict the judge keeps garbling after `--retries` re-asks (sampled at temperature
0.7) counts as `unparseable`: a tie in the win rate, reported on its own. The summary gives wins, ties, losses
and the win rate (wins + ties / 2) / n with a seeded bootstrap 95% interval.

A judge none of whose verdicts (or ratings) can be read is an error, not a summary; so is a judge endpoint that
answers client errors (a wrong URL, model name or key). No text the judge reads may hold chat-control text
(`<|im_end|>`, ...): such a prompt or answer is refused naming its file, row and field (see `_refuse_control_text`).

Writes `results.jsonl` (one line per prompt, judge replies included) and `summary.json` to `--out`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from alignkit import AlignkitError
from alignkit.eval.answers import collect_answers
from alignkit.eval.judges import ANSWER_FIELDS, PROMPT_FIELDS, ask, check_generated, check_rows, unreadable
from alignkit.eval.metrics import bootstrap_interval, win_rate

SYSTEM = {"en": "You are a helpful and impartial assistant.", "zh": "你是一个乐于助人且公正的助手。"}
SINGLE = {
    "en": "[Instruction]\nAct as an impartial judge and rate the quality of the response an AI assistant gave to "
          "the user question below. Weigh helpfulness, relevance, accuracy, depth and level of detail. Explain your "
          "assessment briefly and objectively, then give a rating from 1 to 10 in exactly this format: "
          "\"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
          "[The End of Assistant's Answer]",
    "zh": "[指令]\n请作为公正的评审，评价下面这位 AI 助手对用户问题的回答质量。考虑有用性、相关性、准确性、深度和细节。"
          "先简要客观地说明理由，然后严格按以下格式给出 1 到 10 的评分：\"评分：[[5]]\"。\n\n[问题]\n{question}\n\n"
          "[助手回答开始]\n{answer}\n[助手回答结束]",
}
PAIRWISE = {
    "en": "[Instruction]\nAct as an impartial judge and decide which of two AI assistants answered the user question "
          "below better. Weigh helpfulness, relevance, accuracy, depth and level of detail. Do not let the order "
          "of the answers, their length or the assistants' names sway you. Explain your comparison briefly, then "
          "give your verdict in exactly this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B "
          "is better, \"[[C]]\" for a tie.\n\n[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n"
          "{answer_a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
          "[The End of Assistant B's Answer]",
    "zh": "[指令]\n请作为公正的评审，判断两位 AI 助手中哪一位对下面的用户问题回答得更好。考虑有用性、相关性、准确性、深度和细节。"
          "不要受回答顺序、长度或助手名称的影响。先简要说明比较理由，然后严格按以下格式给出结论：助手 A 更好输出"
          "\"[[A]]\"，助手 B 更好输出\"[[B]]\"，平局输出\"[[C]]\"。\n\n[用户问题]\n{question}\n\n"
          "[助手 A 的回答开始]\n{answer_a}\n[助手 A 的回答结束]\n\n[助手 B 的回答开始]\n{answer_b}\n[助手 B 的回答结束]",
}
PLACEHOLDERS = {"single": ("{question}", "{answer}"), "pairwise": ("{question}", "{answer_a}", "{answer_b}")}

# --- parsing the judge's reply -------------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
_RATING = [
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]"),  # [[7]]
    re.compile(r"(?:\b(?:rating|score|grade)|评分|得分|分数)\s*(?:is|of)?\s*[:：]?\s*[*\[]*\s*" + _NUM, re.I),
    re.compile(_NUM + r"\s*(?:/|out of)\s*10\b", re.I),  # 7/10, 7 out of 10
    re.compile(r"^\W*" + _NUM + r"\W*$"),  # "7" alone
]
_LETTER = r"(?-i:(A|B|C))(?![A-Za-z])"
_VERDICT = [
    re.compile(r"\[\[\s*(?:(tie)|" + _LETTER + r")\s*\]\]", re.I),  # [[A]], [[C]], [[tie]]
    re.compile(r"(?:verdict|winner|decision|judge?ment|choice|结论|裁决|判决)\s*(?:is)?\s*[:：]?\s*[*\"'\[(]*\s*"
               r"(?:(tie)|(?:assistant\s*|助手\s*)?" + _LETTER + r")", re.I),  # Verdict: A, final verdict is tie
    re.compile(r"(?:assistant|response|answer|model|助手|回答)\s*" + r"(?-i:(A|B))(?![A-Za-z])"
               r"(?:'s answer)?\s*(?:is|was)?\s*(?:clearly\s+|slightly\s+|much\s+)?(?:the\s+)?"
               r"(?:better|superior|preferred|more helpful|stronger|wins|更好|更优|较好|胜出)", re.I),
    re.compile(r"(?:\b(tie)\b|平局|不相上下|两者相当|equally good)", re.I),
    re.compile(r"^[\W_]*(?:(tie)|" + _LETTER + r")[\W_]*$", re.I),  # "A" alone
]


def parse_rating(text: str | None) -> float | None:
    """The 1-10 rating in a judge's reply (the last one a pattern finds), or None."""
    for pattern in _RATING if text else ():
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return value if 1 <= value <= 10 else None
    return None


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from a pairwise judge's reply ('[[C]]' is a tie), or None when none can be read."""
    for pattern in _VERDICT if text else ():
        found = pattern.findall(text)
        if found:
            last = found[-1]
            word = next((g for g in last if g), "tie") if isinstance(last, tuple) else (last or "tie")
            return "tie" if word.lower() == "tie" or word == "C" else word
    return None


def outcome(verdict_first: str | None, verdict_swapped: str | None) -> str:
    """Model 1's result from the two orders: 'first' shows model 1 as A, 'swapped' shows it as B.

    win or loss only when both orders agree; any disagreement is a tie; a missing verdict is 'unparseable'."""
    if verdict_first is None or verdict_swapped is None:
        return "unparseable"
    first = {"A": "win", "B": "loss", "tie": "tie"}[verdict_first]
    swapped = {"B": "win", "A": "loss", "tie": "tie"}[verdict_swapped]
    return first if first == swapped else "tie"


# --- the two modes -------------------------------------------------------------------------------------------

def load_template(mode: str, template_file: str | None, lang: str) -> tuple[str, str]:
    """(system prompt, user message template) for a mode; a custom template must hold the mode's placeholders."""
    if lang not in SYSTEM:
        raise AlignkitError(f"--lang {lang}: no built-in template (use en or zh, or give --template)")
    if template_file is None:
        return SYSTEM[lang], (SINGLE if mode == "single" else PAIRWISE)[lang]
    path = Path(template_file)
    if not path.is_file():
        raise AlignkitError(f"{template_file}: template file not found")
    text = path.read_text(encoding="utf-8")
    missing = [p for p in PLACEHOLDERS[mode] if p not in text]
    if missing:
        raise AlignkitError(f"{template_file}: a {mode} template needs the placeholder {missing[0]}")
    return SYSTEM[lang], text


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():  # plain replacement: braces elsewhere in the template stay as they are
        template = template.replace("{" + key + "}", value)
    return template


def grade(judge, prompts: list[str], answers: list[str], system: str, template: str, retries: int,
          resamples: int, seed: int) -> tuple[list[dict], dict]:
    conversations = [[{"role": "system", "content": system},
                      {"role": "user", "content": _fill(template, question=p, answer=a)}]
                     for p, a in zip(prompts, answers)]
    replies = ask(judge, conversations, parse_rating, retries)
    results = [{"prompt": p, "answer": a, "judgment": text, "rating": rating, "attempts": attempts}
               for p, a, (text, rating, attempts) in zip(prompts, answers, replies)]
    ratings = [r["rating"] for r in results if r["rating"] is not None]
    if not ratings:  # a mean rating from no ratings would look like a result
        raise unreadable(judge, f"none of its {len(results)} replies held a readable rating",
                         [r["judgment"] for r in results], retries)
    metrics = {"items": len(results), "rated": len(ratings), "unparseable": len(results) - len(ratings)}
    low, high = bootstrap_interval(ratings, resamples, seed=seed)
    metrics.update(mean_rating=sum(ratings) / len(ratings), mean_rating_low=low, mean_rating_high=high)
    return results, metrics


def compare(judge, prompts: list[str], answers_1: list[str], answers_2: list[str], system: str, template: str,
            retries: int, resamples: int, seed: int) -> tuple[list[dict], dict]:
    def conversation(question, answer_a, answer_b):
        return [{"role": "system", "content": system},
                {"role": "user", "content": _fill(template, question=question, answer_a=answer_a, answer_b=answer_b)}]

    n = len(prompts)
    conversations = [conversation(p, a1, a2) for p, a1, a2 in zip(prompts, answers_1, answers_2)]  # model 1 as A
    conversations += [conversation(p, a2, a1) for p, a1, a2 in zip(prompts, answers_1, answers_2)]  # model 1 as B
    replies = ask(judge, conversations, parse_verdict, retries)
    results = []
    for i, (p, a1, a2) in enumerate(zip(prompts, answers_1, answers_2)):
        (text_first, first, tries_first), (text_swapped, swapped, tries_swapped) = replies[i], replies[n + i]
        results.append({"prompt": p, "answer_1": a1, "answer_2": a2, "judgment_first": text_first,
                        "verdict_first": first, "judgment_swapped": text_swapped, "verdict_swapped": swapped,
                        "attempts": tries_first + tries_swapped, "outcome": outcome(first, swapped)})
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("win", "tie", "loss", "unparseable")}
    if counts["unparseable"] == n:  # the win rate would be 0.5 from ties made of unread verdicts
        raise unreadable(judge, f"none of the {n} prompts got a readable verdict in both orders",
                         [text for text, _, _ in replies], retries)
    scores = [{"win": 1.0, "loss": 0.0}.get(r["outcome"], 0.5) for r in results]  # unparseable scores as a tie
    low, high = bootstrap_interval(scores, resamples, seed=seed)
    # Position bias at work: each order gave a clear but opposite winner (both said A, or both said B).
    flips = sum(r["verdict_first"] == r["verdict_swapped"] and r["verdict_first"] in ("A", "B") for r in results)
    metrics = {"items": n, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
               "unparseable": counts["unparseable"], "position_flips": flips,
               "win_rate": win_rate(counts["win"], counts["tie"] + counts["unparseable"], counts["loss"]),
               "win_rate_low": low, "win_rate_high": high}
    return results, metrics


def _refuse_control_text(judge, answers: list[str], models: list[str], prompts_file: str | None,
                         sides_answers: list[list[str]]) -> None:
    """Refuse a prompt or answer holding the judge's control text, naming file, row and field.

    A local judge renders the judge prompt with its own chat template: an answer holding `<|im_end|>` would close
    the judge's turn and could forge its verdict. An endpoint judge templates on the server; it is refused all
    the same (on the control strings of common templates, judges.ENDPOINT_CONTROL_TEXT): one rule for every judge
    is the simplest to explain and the safe side, as servers tokenize such text into special tokens too."""
    if answers:
        for path in answers:
            check_rows(judge.control, path, (PROMPT_FIELDS, ANSWER_FIELDS))
        return
    check_rows(judge.control, prompts_file, (PROMPT_FIELDS,))
    for model, side in zip(models, sides_answers):
        check_generated(judge.control, model, prompts_file, side)


def run(mode: str, answers: list[str], models: list[str], prompts_file: str | None, judge_factory, template_file,
        lang: str, retries: int, max_new_tokens: int, batch_size: int, resamples: int, seed: int):
    """(results, summary) for `alignkit eval judge`; `judge_factory()` builds the judge once the inputs check out."""
    if mode not in PLACEHOLDERS:
        raise AlignkitError(f"mode '{mode}': use single or pairwise")
    sides = 1 if mode == "single" else 2
    if len(answers) + len(models) != sides or (answers and models):
        raise AlignkitError(f"{mode} needs {sides} --answers file(s) or {sides} --model(s) with --prompts")
    system, template = load_template(mode, template_file, lang)
    started = time.time()
    prompts, sides_answers, names = collect_answers(answers, models, prompts_file, max_new_tokens, batch_size)
    judge = judge_factory()
    _refuse_control_text(judge, answers, models, prompts_file, sides_answers)
    if mode == "single":
        results, metrics = grade(judge, prompts, sides_answers[0], system, template, retries, resamples, seed)
        summary = {"command": "eval judge single", "answers": names[0]}
    else:
        results, metrics = compare(judge, prompts, *sides_answers, system, template, retries, resamples, seed)
        summary = {"command": "eval judge pairwise", "model_1": names[0], "model_2": names[1]}
    summary.update(judge=judge.name, template=template_file or f"built-in ({lang})", retries=retries,
                   bootstrap_resamples=resamples, seed=seed, seconds=round(time.time() - started, 1), metrics=metrics)
    return results, summary
