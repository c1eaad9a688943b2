"""Judges: an OpenAI-compatible endpoint or a local model that answers conversations, and `ask`, which re-asks
until a reply parses. Used by `eval judge` and by `eval refusal` (a judge deciding what is a refusal).
"""

from __future__ import annotations

from alignkit import AlignkitError

RETRY_TEMPERATURE = 0.7  # re-asks sample, so a garbled verdict is not repeated word for word


class EndpointJudge:
    """A judge behind an OpenAI-compatible endpoint."""

    def __init__(self, url: str, model: str, key_env: str, concurrency: int, max_tokens: int):
        from alignkit.generation.openai_client import ChatClient

        self.client, self.concurrency, self.max_tokens = ChatClient(url, model, key_env), concurrency, max_tokens
        self.name = f"{model} at {url}"

    def replies(self, conversations: list[list[dict]], attempt: int) -> list[str | None]:
        from alignkit.generation.openai_client import in_parallel

        params = {"temperature": 0.0 if attempt == 0 else RETRY_TEMPERATURE, "max_tokens": self.max_tokens}
        if attempt:
            params["seed"] = attempt
        texts: list[str | None] = [None] * len(conversations)
        for i, reply in in_parallel(lambda m: self.client.complete(m, **params), conversations, self.concurrency):
            texts[i] = reply.text
        return texts


class LocalJudge:
    """A local model as the judge, through alignkit's batched generation."""

    def __init__(self, model_path: str, max_tokens: int, batch_size: int):
        from alignkit.models.load import load_model, load_tokenizer

        self.tokenizer, self.model = load_tokenizer(model_path), load_model(model_path).eval()
        self.max_tokens, self.batch_size, self.name = max_tokens, batch_size, model_path

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
