"""What every verifiable task shares: items with a known answer, and one grading function for both the metric
and the reward, so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit import AlignkitError
from alignkit.tasks.extract import equivalent, extract_answer


@dataclass(frozen=True)
class Item:
    id: str  # stable across runs: pair files and evaluation results are keyed by it
    question: str
    answer: str | None  # the gold answer, normalised (see extract.parse_gold); None: a prompt file without one
    language: str = "en"
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    # A conversational prompt (a TRL prompt file's `prompt` as a list of messages), asked as given; None: the
    # question is asked as one user turn.
    conversation: tuple[dict, ...] | None = field(default=None, compare=False, hash=False)

    def messages(self) -> list[dict]:
        """The chat prompt a model is asked: the conversation as given, or the question as one user turn."""
        if self.conversation is not None:
            return [dict(m) for m in self.conversation]
        return [{"role": "user", "content": self.question}]


class Task:
    """Base for tasks: subclasses provide `items(split)` and, where they can, `solve(item)`."""

    name = "task"

    def items(self, split: str) -> list[Item]:
        raise NotImplementedError

    def evaluate(self, item: Item, text: str) -> bool:
        if item.answer is None:
            raise AlignkitError(no_answer(item))
        return equivalent(extract_answer(text), item.answer)

    def reward(self, item: Item, text: str) -> float:
        return 1.0 if self.evaluate(item, text) else 0.0

    def solve(self, item: Item) -> str | None:
        """A step-by-step solution ending in the answer line, or None when the task has no solver."""
        return None

    def slip(self, item: Item, rng) -> str | None:
        """`solve`'s solution with one mistake carried to a wrong answer (hard pairs for a reward model), or None
        when the task cannot make one."""
        return None


def no_answer(item: Item) -> str:
    """Why `item` cannot be graded: it has no gold answer (a prompt file without the answer field in that row)."""
    where = item.meta.get("where", f"task item {item.id}")
    return (f"{where}: field '{item.meta.get('answer_field', 'answer')}': "
            f"{item.meta.get('no_answer', 'missing')}, so there is no gold answer to grade against")


# The final line every solution and teacher answer ends with, per language.
ANSWER_LINE = {"en": "Answer: {answer}", "zh": "答案：{answer}"}
