"""Built-in arithmetic: addition, subtraction and multiplication of n-digit numbers, in English and Chinese.

    task = Arithmetic(op="add", digits=2, languages=("en",))
    task.items("heldout")[0].question   # 'How much is 47 plus 38?'
    task.solve(item)                    # 'Tens: 40 + 30 = 70.\nOnes: 7 + 8 = 15.\nTotal: 70 + 15 = 85.\nAnswer: 85'

Splits never share a question: an operand pair (unordered for + and ×) belongs to `train` or `heldout` by a
hash of the pair, whatever the seed or size asked for. Some phrasings are reserved for the held-out split, so
it also measures whether a model learnt arithmetic rather than a wording; held-out questions use every
phrasing, training questions only the others. Items are drawn with a seeded generator, so the same arguments
give the same items.
"""

from __future__ import annotations

import hashlib
import random

from alignkit import AlignkitError
from alignkit.tasks.base import ANSWER_LINE, Item, Task

SYMBOL = {"add": "+", "sub": "-", "mul": "×"}
SPLITS = ("train", "heldout")
# (phrasings used in both splits, phrasings reserved for the held-out split)
PHRASINGS = {
    ("add", "en"): (["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
                     "What do you get if you add {a} and {b}?", "Calculate the sum of {a} and {b}."],
                    ["How much is {a} plus {b}?", "{a} + {b} = ?"]),
    ("sub", "en"): (["What is {a} - {b}?", "Compute {a} - {b}.", "Subtract {b} from {a}.",
                     "What do you get if you take {b} away from {a}?", "Calculate the difference {a} minus {b}."],
                    ["How much is {a} minus {b}?", "{a} - {b} = ?"]),
    ("mul", "en"): (["What is {a} × {b}?", "Compute {a} * {b}.", "Multiply {a} by {b}.",
                     "What do you get if you multiply {a} and {b}?", "Calculate the product of {a} and {b}."],
                    ["How much is {a} times {b}?", "{a} × {b} = ?"]),
    ("add", "zh"): (["{a} + {b} 等于多少？", "计算 {a} 加 {b}。", "{a} 和 {b} 的和是多少？"],
                    ["请问 {a} 加上 {b} 得多少？"]),
    ("sub", "zh"): (["{a} - {b} 等于多少？", "计算 {a} 减 {b}。", "{a} 减去 {b} 的差是多少？"],
                    ["请问 {a} 减掉 {b} 得多少？"]),
    ("mul", "zh"): (["{a} × {b} 等于多少？", "计算 {a} 乘 {b}。", "{a} 和 {b} 的积是多少？"],
                    ["请问 {a} 乘以 {b} 得多少？"]),
}
PLACES = {"en": ["Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands", "Hundred-thousands"],
          "zh": ["个位", "十位", "百位", "千位", "万位", "十万位"]}
WORDS = {"en": {"total": "Total", "split": "Split {b} by place: {parts}."},
         "zh": {"total": "合计", "split": "把 {b} 按数位拆开：{parts}。"}}
STOP = {"en": ".", "zh": "。"}
COLON = {"en": ": ", "zh": "："}


def _hash_permille(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000


def _place_values(n: int) -> list[int]:
    """47 -> [40, 7]; 305 -> [300, 0, 5] (highest place first)."""
    digits = str(abs(n))
    sign = -1 if n < 0 else 1
    return [sign * int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits)]


def _result(op: str, a: int, b: int) -> int:
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


def _signed_sum(parts: list[int]) -> str:
    """[70, -5, 3] -> '70 - 5 + 3'."""
    text = str(parts[0])
    for p in parts[1:]:
        text += f" - {-p}" if p < 0 else f" + {p}"
    return text


class Arithmetic(Task):
    def __init__(self, op: str = "add", digits: int = 2, languages: tuple[str, ...] = ("en",),
                 size: dict[str, int] | None = None, seed: int = 0, heldout_permille: int = 200):
        if op not in SYMBOL:
            raise AlignkitError(f"arithmetic task: unknown op '{op}' (use add, sub or mul)")
        if not 1 <= digits <= 6:
            raise AlignkitError(f"arithmetic task: digits must be between 1 and 6, got {digits}")
        for lang in languages:
            if lang not in PLACES:
                raise AlignkitError(f"arithmetic task: unknown language '{lang}' (use en or zh)")
        self.op, self.digits, self.languages = op, digits, tuple(languages)
        self.size = {"train": 1000, "heldout": 200, **(size or {})}
        self.seed, self.heldout_permille = seed, heldout_permille
        self.name = f"{ {'add': 'addition', 'sub': 'subtraction', 'mul': 'multiplication'}[op]}-{digits}d"

    def split_of(self, a: int, b: int) -> str:
        x, y = (min(a, b), max(a, b)) if self.op in ("add", "mul") else (a, b)
        return "heldout" if _hash_permille(f"{self.op}:{x}:{y}") < self.heldout_permille else "train"

    def items(self, split: str) -> list[Item]:
        if split not in SPLITS:
            raise AlignkitError(f"arithmetic task: unknown split '{split}' (use train or heldout)")
        lo, hi = (0 if self.digits == 1 else 10 ** (self.digits - 1)), 10 ** self.digits - 1
        rng = random.Random(f"{self.seed}:{self.op}:{self.digits}:{split}")
        wanted, seen, items = self.size[split], set(), []
        for _ in range(wanted * 200):
            if len(items) == wanted:
                break
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            key = (min(a, b), max(a, b)) if self.op in ("add", "mul") else (a, b)
            if key in seen or self.split_of(a, b) != split:
                continue
            seen.add(key)
            lang = rng.choice(self.languages)
            common, reserved = PHRASINGS[(self.op, lang)]
            choices = common + reserved if split == "heldout" else common
            k = rng.randrange(len(choices))
            items.append(Item(
                id=f"{self.name}:{a}{SYMBOL[self.op]}{b}", question=choices[k].format(a=a, b=b),
                answer=str(_result(self.op, a, b)),
                language=lang, meta={"a": a, "b": b, "op": self.op, "phrasing": k, "reserved": k >= len(common)},
            ))
        if len(items) < wanted:
            raise AlignkitError(f"arithmetic task {self.name}: only {len(items)} distinct {split} questions exist, "
                                f"{wanted} were asked for")
        return items

    def solve(self, item: Item) -> str:
        """Place value, highest place first: each place's sum (or difference), then the total; for ×, partial
        products by the places of the second number. Ends with the answer line.

        Whole place values ("20 + 40 = 60") rather than digit columns ("2 + 4 = 6, carry ...") because a small
        model reads numbers as wholes: trained on column solutions, SmolLM2-135M lost track of which digit was
        which (38% held-out accuracy against 86% with this format, same pairs and steps).
        """
        return self._worked(item)[0]

    def slip(self, item: Item, rng: random.Random) -> str:
        """`solve`'s solution with one mistake of the kinds a small model makes in it, carried through to a wrong
        answer, the rest unchanged: a place's sum (or a partial product) off by a unit of its place, a digit of an
        operand misread in its step, the carry dropped from a place sum ("Ones: 6 + 7 = 3"), or the steps right
        and the total wrong. Hard negatives for a reward model (`alignkit pairs slips`): the text differs from
        the right solution in a number or two."""
        right = _result(self.op, item.meta["a"], item.meta["b"])
        for _ in range(100):
            text, value = self._worked(item, rng)
            if value != right and (self.op != "add" or value >= 0):
                return text
        raise AlignkitError(f"arithmetic task {self.name}: no slip found for {item.id}")  # pragma: no cover

    def _worked(self, item: Item, rng: random.Random | None = None) -> tuple[str, int]:
        """(the worked solution, the answer it ends with); with `rng`, one random slip in it."""
        a, b, lang = item.meta["a"], item.meta["b"], item.language
        w, stop, colon = WORDS[lang], STOP[lang], COLON[lang]
        lines = []
        if self.op == "mul":
            parts = [p for p in _place_values(b) if p] or [0]
            products = [a * p for p in parts]
            total = _result(self.op, a, b)
            if rng is not None:
                unit = 10 ** rng.randrange(len(str(max(total, 1))))
                if len(parts) > 1 and rng.random() < 0.3:
                    total += rng.choice([-1, 1]) * unit
                else:
                    i = rng.randrange(len(parts))
                    products[i] += rng.choice([-1, 1]) * (parts[i] if rng.random() < 0.5 else unit)
                    total = sum(products)
            if len(parts) > 1:
                lines.append(w["split"].format(b=b, parts=" + ".join(map(str, parts))))
            lines += [f"{a} × {p} = {q}{stop}" for p, q in zip(parts, products)]
            if len(parts) > 1:
                lines.append(f"{w['total']}{colon}{_signed_sum(products)} = {total}{stop}")
        else:
            sign = 1 if self.op == "add" else -1
            xs, ys = _place_values(a), _place_values(b)
            width = max(len(xs), len(ys))
            xs, ys = [0] * (width - len(xs)) + xs, [0] * (width - len(ys)) + ys
            sums = [x + sign * y for x, y in zip(xs, ys)]
            total = _result(self.op, a, b)
            if rng is not None:
                kinds = ["place", "operand"] + (["total"] if width > 1 else [])
                kinds += ["carry"] if self.op == "add" and width > 1 and sums[-1] >= 10 else []
                kind, i = rng.choice(kinds), rng.randrange(width)
                unit = 10 ** (width - 1 - i)
                if kind == "total":
                    total += rng.choice([-1, 1]) * 10 ** rng.randrange(width + 1)
                else:
                    if kind == "place":
                        sums[i] += rng.choice([-1, 1]) * unit * rng.choice([1, 1, 2])
                    elif kind == "carry":
                        sums[-1] -= 10
                    else:  # an operand's digit read one off in its step
                        digit = xs[i] // unit
                        low = 1 if i == 0 and width > 1 else 0
                        digit += rng.choice([d for d in (-1, 1) if low <= digit + d <= 9])
                        xs[i] = digit * unit
                        sums[i] = xs[i] + sign * ys[i]
                    total = sum(sums)
            for i, (x, y) in enumerate(zip(xs, ys)):
                lines.append(f"{PLACES[lang][width - 1 - i]}{colon}{x} {SYMBOL[self.op]} {y} = {sums[i]}{stop}")
            if width > 1:
                lines.append(f"{w['total']}{colon}{_signed_sum(sums)} = {total}{stop}")
        lines.append(ANSWER_LINE[lang].format(answer=total))
        return "\n".join(lines), total
