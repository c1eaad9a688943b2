"""Final-answer extraction and answer equivalence for verifiable tasks.

    extract_answer("So 23 + 45 = 68.")            -> "68"
    extract_answer("The answer is \\boxed{1,234}") -> "1234"
    extract_answer("42 apples, not 24")            -> "42"
    equivalent("0.50", "1/2")                      -> True

Where the answer is, in order of trust: the last `\\boxed{...}`; the text after the last `####` (GSM8K); the
first number after the last answer marker ("Answer:", "the answer is", "答案："...); the number after the last
"="; otherwise the last number that is not negated ("not 24", "instead of 24", "不是24"). Numbers may carry
thousands separators ("1,234"), a sign (including U+2212 minus), decimals or a plain fraction.
Equivalence compares numbers exactly (as fractions) and falls back to `math-verify` for anything symbolic.
"""

from __future__ import annotations

import re
from fractions import Fraction

NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+"
_NUMBER = re.compile(NUMBER)
_MARKERS = re.compile(
    r"\banswer\s*(?:is|=|:|would\s+be|will\s+be)|\bresult\s*(?:is|=|:)"
    r"|答案\s*(?:是|为|:)|结果\s*(?:是|为|:)|得数\s*(?:是|为|:)|等于",
    re.IGNORECASE,
)
_NEGATED = re.compile(
    r"(?:\bnot|\bisn't|\bnever|instead\s+of|rather\s+than|other\s+than|\bwrong(?:ly)?|\bnor|不是|而非|并非|不等于)\s*(?:\w+\s+){0,2}$",
    re.IGNORECASE,
)


def _clean(text: str) -> str:
    return (text.replace("\u2212", "-").replace("\uff0c", ",").replace("\uff1a", ":")
            .replace("$", "").replace("\\!", "").replace("\\,", ""))


def normalize_number(s: str) -> str:
    """'1,234.50' -> '1234.5'; '+7' -> '7'; '-0' -> '0'; '6/4' -> '3/2'."""
    value = Fraction(s.replace(",", ""))
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in s:
        return f"{value.numerator}/{value.denominator}"
    return format(value.numerator / value.denominator, "f").rstrip("0").rstrip(".") if _is_short(value) else str(value)


def _is_short(value: Fraction) -> bool:
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1  # a terminating decimal


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1] if depth == 0 else None


def _first_number(text: str) -> str | None:
    m = _NUMBER.search(text)
    return normalize_number(m.group()) if m else None


def extract_answer(text: str) -> str | None:
    """The final answer in `text`: a normalised number, a boxed expression, or None when there is none."""
    text = _clean(text)
    boxed = _last_boxed(text)
    if boxed is not None:
        stripped = boxed.strip().rstrip(".")
        if _NUMBER.fullmatch(stripped):
            return normalize_number(stripped)
        return stripped or None
    if "####" in text:
        return _first_number(text.rsplit("####", 1)[1])
    markers = list(_MARKERS.finditer(text))
    if markers:
        segment = re.split(r"\n|。|[!?](?:\s|$)|\.(?:\s|$)", text[markers[-1].end():], maxsplit=1)[0]
        found = _first_number(segment.rsplit("=", 1)[1] if "=" in segment else segment)
        if found is not None:
            return found
    if "=" in text:
        tail = text.rsplit("=", 1)[1]
        m = _NUMBER.match(tail.strip())
        if m:
            return normalize_number(m.group())
    candidates = [m for m in _NUMBER.finditer(text) if not _NEGATED.search(text[max(0, m.start() - 30):m.start()])]
    return normalize_number(candidates[-1].group()) if candidates else None


def equivalent(predicted: str | None, gold: str) -> bool:
    """Whether two answers are the same: exact numbers as fractions, otherwise math-verify."""
    if predicted is None:
        return False
    p, g = _clean(predicted).strip(), _clean(gold).strip()
    if _NUMBER.fullmatch(p) and _NUMBER.fullmatch(g):
        return Fraction(p.replace(",", "")) == Fraction(g.replace(",", ""))
    if p == g:
        return True
    try:
        from math_verify import parse, verify

        return bool(verify(parse(f"${g}$"), parse(f"${p}$")))
    except Exception:  # math-verify raises on some malformed LaTeX: not equivalent
        return False


def parse_gold(raw) -> str:
    """A dataset's answer field as a gold answer: '#### 42' (GSM8K), '\\boxed{42}', a plain number or text."""
    text = _clean(str(raw)).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        text = boxed.strip()
    if _NUMBER.fullmatch(text.rstrip(".")):
        return normalize_number(text.rstrip("."))
    return text
