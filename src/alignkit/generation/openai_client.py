"""Chat completions from any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp, `alignkit serve`, hosted APIs).

    client = ChatClient("http://127.0.0.1:8000/v1", "my-model", role="teacher")
    reply = client.complete(messages, temperature=0.7, max_tokens=512)   # reply.text, reply.error
    for index, reply in in_parallel(lambda m: client.complete(m), conversations, concurrency=8): ...

Failures are sorted by whose fault they are:
- Transport failures (HTTP 408, 409, 429 and 5xx, time-outs, refused or dropped connections) are retried with
  exponential back-off and jitter, honouring a server's Retry-After. When the retries run out,
  `EndpointUnavailable` is raised: the endpoint is down, not the question bad.
- Client errors (any other 4xx, or a 200 whose body is not a chat completion) are not retried. Some name the
  endpoint itself (401/403: the key; 404: the model or the path) and raise `EndpointMisconfigured` at once;
  the others (400, 422, ...) may be one request's fault, so a single one is returned as
  `Reply(text=None, error="http_400")` for the caller to count, until `FAILURES_BEFORE_STOP` of them in a row,
  with no request answered yet, show that the endpoint is misconfigured. A caller whose work ends before that
  many failures applies the same rule with `raise_if_never_answered()`.
- Anything wrong with an answered reply (empty content) is returned as `Reply(text=None, error=reason)`.
Both exceptions are `EndpointError`s: callers stop and let a rerun resume rather than throw questions away. Their
one-line message names the role (teacher, judge), the URL, the model, the HTTP status and the server's message.
Once a client has raised one, it sends nothing more: every later `complete` (from any thread) raises the same
error at once, so the requests other threads had queued never reach an endpoint already known to be wrong.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterator

from alignkit import AlignkitError

RETRYABLE_4XX = (408, 409, 429)  # time-out, conflict, rate limit: the request was fine, try it again later
ENDPOINT_STATUSES = (401, 403, 404)  # the key, a permission, the model or the path: never one request's content
FAILURES_BEFORE_STOP = 3  # client errors in a row, none answered yet, that show the endpoint is misconfigured
MESSAGE_CHARS = 200  # of the server's error message, in our one-line error


class EndpointError(AlignkitError):
    """The endpoint, not one request, is at fault: stop, so a rerun redoes the work rather than lose it."""


class EndpointUnavailable(EndpointError):
    """The endpoint kept failing at the transport level after every retry."""


class EndpointMisconfigured(EndpointError):
    """The endpoint answers, but with client errors that show its URL, model name or key is wrong."""


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


def _one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _server_message(exc) -> str:
    """The error message a server put in its reply: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("detail") or json.dumps(body)
    if not body:
        response = getattr(exc, "response", None)
        body = response.text if response is not None else str(exc)
    return _one_line(body if isinstance(body, str) else json.dumps(body))


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, seed: int = 0, *, role: str):
        try:
            import openai
        except ImportError:
            raise AlignkitError("the openai package is needed for OpenAI-compatible endpoints (pip install openai)")
        self._openai = openai
        # Local servers usually take any key; hosted APIs read theirs from the named environment variable.
        key = os.environ.get(api_key_env) or "not-needed"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.base_url, self.model, self.role = base_url, model, role  # role: "teacher" or "judge", for messages
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.retries_total = 0  # across calls, for summaries
        self.answered = 0  # requests answered with a chat completion: the endpoint works
        self._failed_in_a_row = 0  # client errors since the last answered request
        self._last_failure = ""  # the latest client error, as `HTTP 404 "server's message"`
        self._gave_up: EndpointError | None = None  # the error that stopped this client; later calls raise it

    def _where(self) -> str:
        return f"{self.role} endpoint {self.base_url}, model '{self.model}'"

    def _transport_error(self, exc) -> str | None:
        """A short name for a retryable failure, or None when `exc` is not one."""
        o = self._openai
        if isinstance(exc, o.APITimeoutError):
            return "timeout"
        if isinstance(exc, o.APIConnectionError):
            return "connection_error"
        if isinstance(exc, o.APIStatusError) and (exc.status_code in RETRYABLE_4XX or exc.status_code >= 500):
            return f"http_{exc.status_code}"
        return None

    def complete(self, messages: list[dict], **params) -> Reply:
        try:
            return self._complete(messages, params)
        except EndpointError as exc:
            with self._lock:
                self._gave_up = self._gave_up or exc
            raise

    def _complete(self, messages: list[dict], params: dict) -> Reply:
        retries = 0
        while True:
            with self._lock:
                gave_up = self._gave_up
            if gave_up is not None:
                raise type(gave_up)(str(gave_up))
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages, **params)
            except Exception as exc:  # classified below: retry, give up on the endpoint, or a client error
                kind = self._transport_error(exc)
                if kind is None:
                    return self._client_error(exc, retries)
                if retries >= self.max_retries:
                    raise EndpointUnavailable(f"{self._where()}: {kind} after {retries} retries "
                                              f"({_server_message(exc)})") from None
                self._back_off(exc, retries)
                retries += 1
                continue
            return self._read(response, retries)

    def _back_off(self, exc, retries: int) -> None:
        delay = _retry_after(exc)
        if delay is None:
            with self._lock:
                jitter = self._rng.uniform(0.5, 1.0)
            delay = min(self.max_backoff, self.backoff * 2**retries) * jitter
        time.sleep(min(delay, self.max_backoff))
        with self._lock:
            self.retries_total += 1

    def _read(self, response, retries: int) -> Reply:
        try:
            text = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            # A wrong path can answer 200 with a web page, which the SDK hands back as a string.
            body = response if isinstance(response, str) else "no choices"
            return self._failure(f'HTTP 200 but not a chat completion "{_one_line(body)}"', "malformed_response",
                                 retries)
        with self._lock:
            self.answered += 1
            self._failed_in_a_row = 0
        if not isinstance(text, str) or not text.strip():
            return Reply(None, "empty_content", retries)  # the endpoint works; this reply is the model's
        return Reply(text, None, retries)

    def _client_error(self, exc, retries: int) -> Reply:
        status = getattr(exc, "status_code", None)
        if status is None:  # e.g. a body sent as JSON that is not JSON
            return self._failure(f'not a chat completion "{_one_line(exc)}"', "malformed_response", retries)
        failure = f'HTTP {status} "{_server_message(exc)}"'
        if status in ENDPOINT_STATUSES:
            raise EndpointMisconfigured(f"{self._where()}: {failure}; check the URL, the model name and the API key")
        return self._failure(failure, f"http_{status}", retries)

    def _failure(self, failure: str, error: str, retries: int) -> Reply:
        """Count a client error; raise once enough in a row, with none answered, show the endpoint is wrong."""
        with self._lock:
            self._failed_in_a_row += 1
            self._last_failure = failure
            stop = self.answered == 0 and self._failed_in_a_row >= FAILURES_BEFORE_STOP
        if stop:
            raise self._misconfigured()
        return Reply(None, error, retries)

    def _misconfigured(self) -> EndpointMisconfigured:
        n = self._failed_in_a_row
        return EndpointMisconfigured(f"{self._where()}: {self._last_failure} ({n} request{'s' * (n != 1)} failed, "
                                     "none answered); check the URL, the model name and the API key")

    def raise_if_never_answered(self) -> None:
        """Raise when requests failed with client errors and none was ever answered.

        For callers whose work ran out before `FAILURES_BEFORE_STOP` failures: with no answered request to
        compare against, the endpoint is the likely fault, and counting the requests as failed would record
        work as done that a rerun against a fixed endpoint should do."""
        with self._lock:
            failed = self.answered == 0 and self._failed_in_a_row > 0
        if failed:
            raise self._misconfigured()


def in_parallel(fn, jobs: list, concurrency: int) -> Iterator[tuple[int, object]]:
    """(index, fn(job)) in completion order with `concurrency` threads.

    On an EndpointError the jobs not yet started are cancelled, those in flight finish and are yielded, and
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
                except EndpointError as exc:
                    failure = failure or exc
                    for other in pending:
                        other.cancel()
                    continue
                yield index, result
        if failure is not None:
            raise failure
