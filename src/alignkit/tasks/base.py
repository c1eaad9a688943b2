"""What every verifiable task shares: items with a known answer, and one grading function for both the metric
and the reward, so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.tasks.extract import equivalent, extract_answer


@dataclass(frozen=True)
class Item:
    id: str  # stable across runs: pair files and evaluation results are keyed by it
    question: str
    answer: str  # the gold answer, normalised (see extract.parse_gold)
    language: str = "en"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def messages(self) -> list[dict]:
        """The chat prompt a model is asked: the question as one user turn."""
        return [{"role": "user", "content": self.question}]


class Task:
    """Base for tasks: subclasses provide `items(split)` and, where they can, `solve(item)`."""

    name = "task"

    def items(self, split: str) -> list[Item]:
        raise NotImplementedError

    def evaluate(self, item: Item, text: str) -> bool:
        return equivalent(extract_answer(text), item.answer)

    def reward(self, item: Item, text: str) -> float:
        return 1.0 if self.evaluate(item, text) else 0.0

    def solve(self, item: Item) -> str | None:
        """A step-by-step solution ending in the answer line, or None when the task has no solver."""
        return None


# The final line every solution and teacher answer ends with, per language.
ANSWER_LINE = {"en": "Answer: {answer}", "zh": "答案：{answer}"}
