"""Judges: an OpenAI-compatible endpoint or a local model that answers conversations, and `ask`, which re-asks
until a reply parses. Used by `eval judge` and by `eval refusal` (a judge deciding what is a refusal).

Each judge has `control`, the chat-control text it must never be shown inside content (`check_rows`,
`check_generated` refuse it naming file, row and field), and `unreadable` builds the error for a judge none of
whose replies could be read: a summary computed from no verdicts would look like a result.
"""

from __future__ import annotations

from types import SimpleNamespace

from alignkit import AlignkitError
from alignkit.data.chat import ControlText
from alignkit.eval.answers import read_prompts

RETRY_TEMPERATURE = 0.7  # re-asks sample, so a garbled verdict is not repeated word for word
PROMPT_FIELDS, ANSWER_FIELDS = ("prompt", "question"), ("answer", "response")  # as eval/answers.py reads them

# The control strings of common chat templates (ChatML, Llama 3, Gemma, Phi-3). An endpoint judge renders its
# template on the server with a tokenizer we cannot see, and servers such as vLLM tokenize control strings in the
# rendered text into special tokens, so the judge's input is refused on these, as a local judge's is on its own
# tokenizer's: one rule whichever the judge. `<s>`/`</s>` are left out: they are also HTML.
ENDPOINT_CONTROL_TEXT = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>",
                         "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<|system|>",
                         "<|user|>", "<|assistant|>", "<|end|>")


class EndpointJudge:
    """A judge behind an OpenAI-compatible endpoint."""

    def __init__(self, url: str, model: str, key_env: str, concurrency: int, max_tokens: int):
        from alignkit.generation.openai_client import ChatClient

        self.client = ChatClient(url, model, key_env, role="judge")
        self.concurrency, self.max_tokens = concurrency, max_tokens
        self.name = f"{model} at {url}"
        self.control = ControlText(SimpleNamespace(all_special_tokens=ENDPOINT_CONTROL_TEXT))

    def replies(self, conversations: list[list[dict]], attempt: int) -> list[str | None]:
        from alignkit.generation.openai_client import in_parallel

        params = {"temperature": 0.0 if attempt == 0 else RETRY_TEMPERATURE, "max_tokens": self.max_tokens}
        if attempt:
            params["seed"] = attempt
        texts: list[str | None] = [None] * len(conversations)
        for i, reply in in_parallel(lambda m: self.client.complete(m, **params), conversations, self.concurrency):
            texts[i] = reply.text
        # Fewer requests than it takes to call an endpoint misconfigured, all failed: still not a verdict each.
        self.client.raise_if_never_answered()
        return texts


class LocalJudge:
    """A local model as the judge, through alignkit's batched generation."""

    def __init__(self, model_path: str, max_tokens: int, batch_size: int):
        from alignkit.models.load import load_model, load_tokenizer

        self.tokenizer, self.model = load_tokenizer(model_path), load_model(model_path).eval()
        self.max_tokens, self.batch_size, self.name = max_tokens, batch_size, model_path
        self.control = ControlText(self.tokenizer)  # its chat template renders the judge prompt

    def replies(self, conversations: list[list[dict]], attempt: int) -> list[str | None]:
        from alignkit.generation.sample import chat_prompt_ids, generate

        prompts = [chat_prompt_ids(self.tokenizer, m) for m in conversations]
        samples = generate(self.model, self.tokenizer, prompts, temperature=0.0 if attempt == 0 else RETRY_TEMPERATURE,
                           max_new_tokens=self.max_tokens, batch_size=self.batch_size, seed=attempt)
        return [row[0].text for row in samples]


def make_judge(url: str | None, model: str | None, key_env: str, local: str | None, concurrency: int,
               max_tokens: int, batch_size: int):
    if bool(url) == bool(local):
        raise AlignkitError("give the judge as --judge-url URL --judge-model NAME, or as --judge-local MODEL")
    if url:
        if not model:
            raise AlignkitError("--judge-url needs --judge-model (the model name at that endpoint)")
        return EndpointJudge(url, model, key_env, concurrency, max_tokens)
    return LocalJudge(local, max_tokens, batch_size)


def ask(judge, conversations: list[list[dict]], parse, retries: int) -> list[tuple[str | None, object, int]]:
    """(reply, parsed, attempts) per conversation; replies that do not parse are asked again up to `retries` times."""
    results: list[tuple[str | None, object, int]] = [(None, None, 0)] * len(conversations)
    todo = list(range(len(conversations)))
    for attempt in range(retries + 1):
        if not todo:
            break
        texts = judge.replies([conversations[i] for i in todo], attempt)
        for i, text in zip(todo, texts):
            results[i] = (text, parse(text), attempt + 1)
        todo = [i for i in todo if results[i][1] is None]
    return results


def check_rows(control: ControlText, path: str, field_sets: tuple[tuple[str, ...], ...]) -> None:
    """Refuse a row of `path` whose text for the judge (the first present field of each set) holds control text."""
    for number, _, record in read_prompts(path):
        for names in field_sets:
            name = next((n for n in names if record.get(n) is not None), None)
            if name is not None:
                control.check(record[name], f"{path}: row {number}", name)


def check_generated(control: ControlText, model: str, prompts_file: str, answers: list[str]) -> None:
    """Refuse a generated answer holding control text, named by the model and the prompt's row."""
    for (number, _, _), answer in zip(read_prompts(prompts_file), answers):
        control.check(answer, f"{model}: answer to {prompts_file}: row {number}", "answer")


def unreadable(judge, problem: str, replies: list[str | None], retries: int) -> AlignkitError:
    """The error for a judge whose replies could not be read at all; `problem` says what was missing."""
    first = next((" ".join(t.split()) for t in replies if t and t.strip()), None)
    shown = f'its first reply: "{first[:120]}"' if first else "every reply was empty"
    return AlignkitError(f"judge {judge.name}: {problem} after {retries} re-ask{'s' * (retries != 1)} ({shown}); "
                         "check the judge model and the template")
