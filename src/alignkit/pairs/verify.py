"""Checks every teacher answer must pass before it becomes `chosen`.

1. It is not empty, and holds none of the student's chat-control text (`<|im_end|>`, ...: the special and
   added tokens of the student's tokenizer, which would be tokenized into control ids and forge a turn).
2. Its last line states the final answer: the answer line in the fixed format ("Answer: 42" / "答案：42",
   markdown decoration tolerated) or a sentence with an answer marker ("So the answer is 42."); that answer
   equals the known one, and so does the answer the task's own grader extracts from the whole text.
3. It reasons: besides the final answer statement there are at least `min_reasoning_chars` characters of
   working.
4. It does not reveal that it was told the answer ("as given", "the provided answer", "已知答案", ...).
5. Every calculation it writes out is true: each chain "a + b = c = d" of numbers and + − × ÷ is evaluated,
   so a right answer reached through "45 + 16 = 22" is refused.

A passing answer ends with the canonical answer line of the item's language (replacing an answer line, or
appended after a closing sentence), so every `chosen` ends the same way.
"""

from __future__ import annotations

import re

from alignkit.data.chat import ControlText
from alignkit.tasks.base import ANSWER_LINE, Item, Task
from alignkit.tasks.extract import equivalent, extract_answer

_ANSWER_LINE = re.compile(r"^(?:final\s+)?(?:answer|答案)\s*[:：]\s*(.+?)\s*$", re.IGNORECASE)
_MARKER = re.compile(r"answer|答案|\\boxed|####", re.IGNORECASE)
_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_EXPR = rf"{_NUM}(?:\s*[-+×*÷/]\s*{_NUM})*"
_CHAIN = re.compile(rf"(?<![\w.]){_EXPR}(?:\s*=\s*{_EXPR})+(?!\w|\.\d)")


def _plain(line: str) -> str:
    return line.strip().strip("*#_`> ").replace("**", "").replace("$", "").strip()


def _value(expr: str) -> float:
    # Only digits, dots, spaces and + - * / reach eval (the regex admits nothing else).
    return float(eval(expr.replace(",", "").replace("×", "*").replace("÷", "/"), {"__builtins__": {}}))


def wrong_step(text: str) -> str | None:
    """The first written calculation that is false ("45 + 16 = 22", "7 × 8 = 54 = 56"), or None."""
    for m in _CHAIN.finditer(text.replace("\u2212", "-")):
        parts = [p.strip() for p in m.group().split("=")]
        try:
            values = [_value(p) for p in parts]
        except (ZeroDivisionError, SyntaxError):
            return m.group()
        if any(abs(v - values[0]) > 1e-6 * max(1.0, abs(values[0])) for v in values[1:]):
            return m.group()
    return None


def verify(task: Task, item: Item, text: str | None, reveal_phrases: list[str], min_reasoning_chars: int,
           control: ControlText | None = None) -> tuple[str | None, str | None]:
    """(canonical text, None) when `text` passes, else (None, the reason it failed).

    `control` is the student's control-text rule; without one (checking a pairs file again) it is not applied."""
    if text is None or not text.strip():
        return None, "empty"
    if control is not None and control.find(text) is not None:
        return None, "control_text"
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    last = _plain(lines[-1])
    m = _ANSWER_LINE.match(last)
    if m is not None:  # "Answer: 42": the working is everything above it
        final, body = m.group(1).rstrip(".。"), "\n".join(lines[:-1]).strip()
        canonical_body = body
    elif _MARKER.search(last):  # "... so the answer is 42.": the working is everything but that sentence
        final = extract_answer(last)
        sentences = re.split(r"(?<=[.!?。！？])\s+", last)
        cut = max(i for i, sentence in enumerate(sentences) if _MARKER.search(sentence))
        body = "\n".join(lines[:-1] + [" ".join(sentences[:cut])]).strip()
        canonical_body = "\n".join(lines)
    else:
        return None, "no_answer_line"
    if final is None or not equivalent(extract_answer(f"Answer: {final}") if m else final, item.answer) \
            or not task.evaluate(item, text):
        return None, "wrong_answer"
    if len(re.sub(r"\s", "", body)) < min_reasoning_chars:
        return None, "no_reasoning"
    lowered = text.lower()
    if any(phrase.lower() in lowered for phrase in reveal_phrases):
        return None, "reveals_answer"
    if wrong_step(text) is not None:
        return None, "wrong_step"
    return canonical_body + "\n" + ANSWER_LINE[item.language].format(answer=item.answer), None
