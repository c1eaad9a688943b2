"""Write the shipped arithmetic preference files (deterministic).

    python scripts/make_arith_pairs.py

data/arith/train.jsonl and data/arith/heldout.jsonl: two-digit additions asked in several phrasings;
`chosen` adds tens and ones step by step and is right; `rejected` makes a typical slip (a dropped carry,
a wrong digit sum, tens and ones mixed up) in the same style and ends with the wrong answer. The two files
never share a question.
"""

import json
import random
from pathlib import Path

PHRASINGS = [
    "What is {a} + {b}?",
    "Calculate {a} + {b}.",
    "Add {a} and {b}.",
    "What do you get when you add {a} to {b}?",
    "{a} + {b} = ?",
    "计算 {a} + {b}。",
]


def solve(a: int, b: int, slip: str | None = None) -> str:
    ones = a % 10 + b % 10
    carry = ones // 10
    if slip == "carry":
        carry = 0
    ones_digit = ones % 10
    if slip == "ones":
        ones_digit = (ones_digit + random.choice([1, 9])) % 10
    tens = a // 10 + b // 10 + carry
    if slip == "tens":
        tens += random.choice([-1, 1])
    total = tens * 10 + ones_digit
    steps = f"Add the ones: {a % 10} + {b % 10} = {a % 10 + b % 10 if slip != 'ones' else ones_digit + 10 * (ones // 10)}"
    steps += f", write {ones_digit} and carry {carry}." if carry else f", write {ones_digit}."
    carry_text = f" + {carry}" if carry else ""
    steps += f" Add the tens: {a // 10} + {b // 10}{carry_text} = {tens}."
    return f"{steps} So {a} + {b} = {total}.\nAnswer: {total}", total


def make_pair(a: int, b: int, phrasing: str) -> dict:
    chosen, right = solve(a, b)
    slips = ["ones", "tens"] + (["carry"] if (a % 10 + b % 10) >= 10 else [])
    rejected, wrong = solve(a, b, random.choice(slips))
    assert right == a + b and wrong != right, (a, b)
    return {
        "prompt": [{"role": "user", "content": phrasing.format(a=a, b=b)}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def main() -> None:
    random.seed(1234)
    questions = set()
    while len(questions) < 480:
        questions.add((random.randint(10, 99), random.randint(10, 99)))
    questions = sorted(questions)
    random.shuffle(questions)
    heldout, train = questions[:80], questions[80:]
    out = Path(__file__).resolve().parent.parent / "data" / "arith"
    out.mkdir(parents=True, exist_ok=True)
    for name, items in (("train", train), ("heldout", heldout)):
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for a, b in items:
                f.write(json.dumps(make_pair(a, b, random.choice(PHRASINGS)), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
