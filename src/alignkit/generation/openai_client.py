"""Chat completions from any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp, `alignkit serve`, hosted APIs).

    client = ChatClient("http://127.0.0.1:8000/v1", "my-model")
    reply = client.complete(messages, temperature=0.7, max_tokens=512)   # reply.text, reply.error
    for index, reply in in_parallel(lambda m: client.complete(m), conversations, concurrency=8): ...

Transport failures (HTTP 429 and 5xx, time-outs, refused or dropped connections) are retried with exponential
back-off and jitter, honouring a server's Retry-After. When the retries run out, `EndpointUnavailable` is raised:
the endpoint is down, not the question bad, so callers stop and let a rerun resume rather than throw the question
away. Anything else that goes wrong with one reply (a 4xx, a body that is not a chat completion, empty content) is
returned as `Reply(text=None, error=reason)` for the caller to count.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterator

from alignkit import AlignkitError


class EndpointUnavailable(AlignkitError):
    """The endpoint kept failing at the transport level after every retry."""


@dataclass
class Reply:
    text: str | None
    error: str | None = None  # e.g. "empty_content", "malformed_response", "http_400"
    retries: int = 0


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, seed: int = 0):
        try:
            import openai
        except ImportError:
            raise AlignkitError("the openai package is needed for OpenAI-compatible endpoints (pip install openai)")
        self._openai = openai
        # Local servers usually take any key; hosted APIs read theirs from the named environment variable.
        key = os.environ.get(api_key_env) or "not-needed"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.base_url, self.model = base_url, model
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.retries_total = 0  # across calls, for summaries

    def _transport_error(self, exc) -> str | None:
        """A short name for a retryable failure, or None when `exc` is not one."""
        o = self._openai
        if isinstance(exc, o.APITimeoutError):
            return "timeout"
        if isinstance(exc, o.APIConnectionError):
            return "connection_error"
        if isinstance(exc, o.RateLimitError):
            return "http_429"
        if isinstance(exc, o.APIStatusError) and exc.status_code >= 500:
            return f"http_{exc.status_code}"
        return None

    def complete(self, messages: list[dict], **params) -> Reply:
        retries = 0
        while True:
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages, **params)
            except Exception as exc:  # classified below: retry, give up on the endpoint, or report for this reply
                kind = self._transport_error(exc)
                if kind is None:
                    status = getattr(exc, "status_code", None)
                    return Reply(None, f"http_{status}" if status else "malformed_response", retries)
                if retries >= self.max_retries:
                    raise EndpointUnavailable(
                        f"teacher endpoint {self.base_url}: {kind} after {retries} retries ({str(exc)[:200]})"
                    ) from None
                delay = _retry_after(exc)
                if delay is None:
                    with self._lock:
                        jitter = self._rng.uniform(0.5, 1.0)
                    delay = min(self.max_backoff, self.backoff * 2**retries) * jitter
                time.sleep(min(delay, self.max_backoff))
                retries += 1
                with self._lock:
                    self.retries_total += 1
                continue
            try:
                text = response.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                return Reply(None, "malformed_response", retries)
            if not isinstance(text, str) or not text.strip():
                return Reply(None, "empty_content", retries)
            return Reply(text, None, retries)


def in_parallel(fn, jobs: list, concurrency: int) -> Iterator[tuple[int, object]]:
    """(index, fn(job)) in completion order with `concurrency` threads.

    On EndpointUnavailable the jobs not yet started are cancelled, those in flight finish and are yielded, and
    then the error is raised, so a caller can save what completed before stopping.
    """
    with ThreadPoolExecutor(concurrency) as pool:
        pending = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        failure = None
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except EndpointUnavailable as exc:
                    failure = failure or exc
                    for other in pending:
                        other.cancel()
                    continue
                yield index, result
        if failure is not None:
            raise failure
