"""Answer extraction: every format the task loader and graders accept, and the traps."""

import pytest

from alignkit.tasks.extract import equivalent, extract_answer, parse_gold


@pytest.mark.parametrize("text, expected", [
    ("Answer: 42", "42"),
    ("answer:42", "42"),
    ("Final answer: 42.", "42"),
    ("The answer is 42.", "42"),
    ("So the answer is \\boxed{42}.", "42"),
    ("\\boxed{1,234}", "1234"),
    ("$\\boxed{-17}$", "-17"),
    ("We get 23 + 45 = 68.", "68"),
    ("23 + 45 = 68. Done", "68"),
    ("The total is 1,234 apples.", "1234"),
    ("It costs 12,345,678 yuan", "12345678"),
    ("Answer: -7", "-7"),
    ("Answer: \u22127", "-7"),  # unicode minus
    ("Answer: 3.50", "3.5"),
    ("Answer: 0.25", "0.25"),
    ("Answer: .5", "0.5"),
    ("Answer: 3/4", "3/4"),
    ("She has 42 apples, not 24.", "42"),
    ("42 apples, not 24", "42"),
    ("It is 12 rather than 21", "12"),
    ("The answer is 42, not 24.", "42"),
    ("The answer is 42. It is not 24.", "42"),
    ("The answer is 60 + 8 = 68.", "68"),
    ("Tens: 20 + 40 = 60.\nOnes: 3 + 5 = 8.\nTotal: 60 + 8 = 68.\nAnswer: 68", "68"),
    ("Total: 60 + 8 = 68", "68"),  # no answer line: the number after the last '='
    ("Step 1: 2 apples. Step 2: 3 more. #### 5", "5"),
    ("答案：68", "68"),
    ("答案是 -3", "-3"),
    ("23加45等于68。", "68"),
    ("结果为 1,000。", "1000"),
    ("不是24，而是42", "42"),
    ("The sum is 1,234.5", "1234.5"),
    ("no numbers here", None),
    ("", None),
])
def test_extract(text, expected):
    assert extract_answer(text) == expected


def test_boxed_with_nested_braces_keeps_the_expression():
    assert extract_answer("so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert equivalent(extract_answer("so \\boxed{\\frac{1}{2}}"), "0.5")


@pytest.mark.parametrize("a, b, same", [
    ("1234", "1,234", True), ("3.50", "3.5", True), ("0.5", "1/2", True), ("-3", "3", False),
    ("68", "68.0", True), ("68", "86", False), ("\\frac{1}{2}", "0.5", True), ("x+1", "1+x", True),
    (None, "1", False),
])
def test_equivalent(a, b, same):
    assert equivalent(a, b) is same


@pytest.mark.parametrize("raw, gold", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("\\boxed{1,234}", "1234"),
    ("42", "42"), (42, "42"), ("-0.50", "-0.5"), ("\\frac{1}{2}", "\\frac{1}{2}"),
])
def test_parse_gold(raw, gold):
    assert parse_gold(raw) == gold
