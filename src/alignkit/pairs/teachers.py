"""Teachers write `chosen`: a clear chain of thought that ends in the known answer.

    solver  the task's own step-by-step solution (built-in tasks)
    hf      a local model, told the question and the correct answer
    openai  any OpenAI-compatible endpoint, told the same

`teacher.teach(task, items)` yields `(index, Teaching)` as answers complete. Every answer is verified
(pairs/verify.py), including that it holds none of the student's chat-control text (`control`, the student's
tokenizer: the pairs are trained on the student); a failing one is asked again, up to `attempts` times, then
dropped with its last reason. An endpoint that is down or misconfigured raises an EndpointError instead: the
questions are not at fault, so none of them may be recorded as dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from alignkit import AlignkitError
from alignkit.data.chat import ControlText
from alignkit.pairs.verify import verify
from alignkit.tasks.base import Item, Task


@dataclass
class Teaching:
    text: str | None  # the verified answer, or None when every attempt failed
    reason: str | None  # why the last attempt failed
    attempts: int
    retries: int = 0  # transport retries (openai)


def teacher_messages(cfg, item: Item) -> list[dict]:
    template = cfg.templates.get(item.language) or cfg.templates["en"]
    messages = [{"role": "system", "content": template.system}] if template.system else []
    user = template.user.replace("{question}", item.question).replace("{answer}", item.answer)
    return messages + [{"role": "user", "content": user}]


class SolverTeacher:
    name = "solver"

    def __init__(self, cfg, control: ControlText):
        self.cfg, self.control = cfg, control

    def teach(self, task: Task, items: list[Item]) -> Iterator[tuple[int, Teaching]]:
        for i, item in enumerate(items):
            solution = task.solve(item)
            if solution is None:
                raise AlignkitError(f"task '{task.name}' has no solver; use teacher.kind hf or openai")
            text, reason = verify(task, item, solution, self.cfg.reveal_phrases, self.cfg.min_reasoning_chars,
                                  self.control)
            yield i, Teaching(text, reason, 1)


class HFTeacher:
    def __init__(self, cfg, control: ControlText, device="cpu"):
        from alignkit.models.load import load_model, load_tokenizer

        self.cfg, self.control = cfg, control
        self.name = f"hf:{cfg.model}"
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_model(cfg.model).to(device).eval()

    def teach(self, task: Task, items: list[Item]) -> Iterator[tuple[int, Teaching]]:
        from alignkit.generation.sample import chat_prompt_ids, generate

        cfg = self.cfg
        todo = list(range(len(items)))
        for attempt in range(cfg.attempts):
            if not todo:
                break
            prompts = [chat_prompt_ids(self.tokenizer, teacher_messages(cfg, items[i])) for i in todo]
            samples = generate(self.model, self.tokenizer, prompts, n=1, temperature=cfg.temperature,
                               top_p=cfg.top_p, max_new_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
                               seed=cfg.seed * 1000 + attempt)
            failed = []
            for i, (sample,) in zip(todo, samples):
                text, reason = verify(task, items[i], sample.text, cfg.reveal_phrases, cfg.min_reasoning_chars,
                                      self.control)
                if text is not None:
                    yield i, Teaching(text, None, attempt + 1)
                elif attempt + 1 == cfg.attempts:
                    yield i, Teaching(None, reason, attempt + 1)
                else:
                    failed.append(i)
            todo = failed


class OpenAITeacher:
    def __init__(self, cfg, control: ControlText):
        from alignkit.generation.openai_client import ChatClient

        self.cfg, self.control = cfg, control
        self.name = f"openai:{cfg.model}@{cfg.base_url}"
        self.client = ChatClient(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout, cfg.max_retries,
                                 cfg.backoff, cfg.max_backoff, cfg.seed, role="teacher")

    def _one(self, task: Task, item: Item) -> Teaching:
        cfg, retries, reason = self.cfg, 0, None
        for attempt in range(1, cfg.attempts + 1):
            reply = self.client.complete(teacher_messages(cfg, item), temperature=cfg.temperature,
                                         top_p=cfg.top_p, max_tokens=cfg.max_tokens)
            retries += reply.retries
            if reply.text is None:
                reason = reply.error
                continue
            text, reason = verify(task, item, reply.text, cfg.reveal_phrases, cfg.min_reasoning_chars,
                                  self.control)
            if text is not None:
                return Teaching(text, None, attempt, retries)
        return Teaching(None, reason, cfg.attempts, retries)

    def teach(self, task: Task, items: list[Item]) -> Iterator[tuple[int, Teaching]]:
        from alignkit.generation.openai_client import in_parallel

        # A question that failed before the endpoint ever answered may have failed because of the endpoint
        # (a wrong model name answers 400 on some servers): it is held back until a request is answered, and if
        # none ever is, the client raises and the held questions stay undone for a rerun to ask again.
        held = []
        for index, teaching in in_parallel(lambda item: self._one(task, item), items, self.cfg.concurrency):
            if teaching.text is None and not self.client.answered:
                held.append((index, teaching))
                continue
            yield from held
            held = []
            yield index, teaching
        self.client.raise_if_never_answered()
        yield from held


def make_teacher(cfg, control: ControlText, device="cpu"):
    """The configured teacher; `control` is the student's control-text rule its answers are checked against."""
    if cfg.kind == "solver":
        return SolverTeacher(cfg, control)
    if cfg.kind == "hf":
        return HFTeacher(cfg, control, device)
    return OpenAITeacher(cfg, control)
