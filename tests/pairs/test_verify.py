"""Teacher answers are verified before they become `chosen`."""

import pytest

from alignkit.config import REVEAL_PHRASES
from alignkit.pairs.verify import verify
from alignkit.tasks.arithmetic import Arithmetic

TASK = Arithmetic("add", 2, ("en", "zh"))
ITEM = next(i for i in TASK.items("train") if i.language == "en")
ZH = next(i for i in TASK.items("train") if i.language == "zh")


def _check(text, item=ITEM):
    return verify(TASK, item, text, REVEAL_PHRASES, 12)


def test_good_answer_is_kept_and_its_answer_line_made_canonical():
    a = ITEM.answer
    text, reason = _check(f"First add the tens, then the ones, then combine them.\n**Final answer:** {a}.")
    assert reason is None
    assert text == f"First add the tens, then the ones, then combine them.\nAnswer: {a}"
    text, reason = _check(f"先算十位，再算个位，最后合起来。\n答案：{ZH.answer}", ZH)
    assert reason is None and text.endswith(f"答案：{ZH.answer}")


@pytest.mark.parametrize("text, reason", [
    (None, "empty"), ("   ", "empty"),
    ("Add the tens and the ones; the result follows.", "no_answer_line"),
    ("Adding tens and ones carefully gives the sum.\nAnswer: 1", "wrong_answer"),
    ("Answer: {a}", "no_reasoning"),
    ("It is {a}.\nAnswer: {a}", "no_reasoning"),
    ("As given, the total is {a}, so we are done here.\nAnswer: {a}", "reveals_answer"),
    ("Adding the tens and ones matches the provided answer.\nAnswer: {a}", "reveals_answer"),
    ("The sum is 12 + 3, computed step by step.\nAnswer: {a}\nThanks!", "no_answer_line"),
    ("The answer is {a}.", "no_reasoning"),
    ("First, 20 + 40 = 70, and then the ones are added on top.\nAnswer: {a}", "wrong_step"),
    ("We add the parts: 1 + 1 = 2 = 3, which settles it.\nAnswer: {a}", "wrong_step"),
])
def test_failures_have_reasons(text, reason):
    text = text.format(a=ITEM.answer) if text else text
    assert _check(text) == (None, reason)


def test_a_closing_sentence_with_the_answer_counts_and_gets_the_answer_line_appended():
    a = ITEM.answer
    text = f"We add the tens and then the ones, carefully.\nSo the answer is {a}."
    assert _check(text) == (text + f"\nAnswer: {a}", None)


def test_answer_line_must_agree_with_the_known_answer_even_if_earlier_text_does():
    wrong = str(int(ITEM.answer) + 10)
    assert _check(f"The sum is {ITEM.answer} by adding tens and ones.\nAnswer: {wrong}") == (None, "wrong_answer")
