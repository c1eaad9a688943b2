"""`alignkit serve`: a small OpenAI-compatible chat server around a local model.

    alignkit serve --model smollm2-135m-instruct --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}'

Enough of the API for teachers and judges: `GET /v1/models`, `GET /v1/models/NAME`, `POST /v1/chat/completions`
(model, messages, temperature, top_p, max_tokens or max_completion_tokens, n, seed, stream, stream_options).
Requests that arrive together are generated as one batch (the same sampling settings share a batch); a request
whose client hangs up before its batch starts is not generated. It binds 127.0.0.1 by default; with
`--api-key-env NAME` every request must carry `Authorization: Bearer <the value of NAME>`.

Every refusal is a 4xx in OpenAI's error format, `{"error": {"message", "type", "param", "code"}}`:
malformed HTTP or JSON, a body that is not `application/json`, wrong field types, a model this server does
not serve (404), `max_tokens` over `--max-tokens-limit` or beyond the model's context, message content
holding the tokenizer's chat-control text (`<|im_end|>`, ...: it would forge a turn), and, without an API key
or when bound to loopback, a Host header that does not name the loopback interface (DNS rebinding).
`"stream": true` is answered as OpenAI streams (server-sent events), with the whole text in one chunk per
choice: generation runs in batches, not token by token.
"""

from __future__ import annotations

import hmac
import json
import queue
import selectors
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlsplit

from alignkit import AlignkitError
from alignkit.generation.chat_api import (MAX_TOKENS_LIMIT, ApiError, Sampling, context_length, fit_context,
                                          parse_chat_request)
from alignkit.httpd import (REQUEST_TIMEOUT, BadRequest, Server, ignore_body, is_loopback, listen, loopback_host,
                            parse_json_object, read_body)

MAX_BODY = 4 * 1024 * 1024  # bytes: far more than any chat a judge or teacher sends
DISCONNECT_POLL = 0.2  # seconds between checks that a client waiting for its generation is still there


class Engine:
    """One model; a worker thread batches whatever requests are waiting.

    Each request is a Future. Its handler cancels it when the client disconnects; the worker marks a group's
    futures running just before generating it and leaves the cancelled ones out, so a request whose client
    is gone before its batch starts is never generated (a batch already generating runs to its end).
    """

    def __init__(self, model, tokenizer, name: str, max_batch: int = 16):
        self.model, self.tokenizer, self.name, self.max_batch = model, tokenizer, name, max_batch
        self.context = context_length(model, tokenizer)
        self.requests: queue.Queue = queue.Queue()
        # Handler threads render prompts while the worker decodes; the lock keeps the fast tokenizer's Rust
        # object from being borrowed mutably by two prompts at once.
        self._tokenizer_lock = threading.Lock()
        self.worker = threading.Thread(target=self._loop, daemon=True)
        self.worker.start()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from alignkit.data.chat import chat_prompt_ids

        with self._tokenizer_lock:
            return chat_prompt_ids(self.tokenizer, messages)

    def submit(self, prompt: list[int], sampling: Sampling) -> Future:
        future: Future = Future()
        self.requests.put((prompt, sampling, future))
        return future

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list:
        """Samples for one group of requests: a list (per prompt) of lists of n Samples."""
        from alignkit.generation.sample import generate

        return generate(self.model, self.tokenizer, prompts, n=sampling.n, temperature=sampling.temperature,
                        top_p=sampling.top_p, max_new_tokens=sampling.max_tokens, seed=sampling.seed,
                        batch_size=self.max_batch)

    def _loop(self) -> None:
        while True:
            batch = [self.requests.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.requests.get_nowait())
                except queue.Empty:
                    break
            groups: dict[Sampling, list] = {}
            for prompt, sampling, future in batch:
                groups.setdefault(sampling, []).append((prompt, future))
            for sampling, members in groups.items():
                self._run(sampling, members)

    def _run(self, sampling: Sampling, members: list) -> None:
        live = [(prompt, future) for prompt, future in members if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            samples = self.generate([prompt for prompt, _ in live], sampling)
        except Exception as e:  # reported to these clients as a 500; the worker keeps serving
            for _, future in live:
                future.set_exception(e)
            return
        for (prompt, future), row in zip(live, samples):
            future.set_result((len(prompt), row))


def client_gone(sock: socket.socket) -> bool:
    """Whether the client has closed or reset its connection while its request waits: the socket reads as
    ready and holds no bytes. A pipelined next request is data, not a disconnect. (A client that half-closes
    its side to wait for the answer reads as gone too; HTTP clients do not do that.)"""
    try:
        with selectors.DefaultSelector() as selector:  # not select.select: it fails on descriptors over 1023
            selector.register(sock, selectors.EVENT_READ)
            if not selector.select(0):
                return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed
        return True


def _usage(prompt_tokens: int, samples) -> dict:
    completion_tokens = sum(len(s.token_ids) for s in samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _finish_reason(sample) -> str:
    return "stop" if sample.finished else "length"


def _completion(name: str, prompt_tokens: int, samples) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": s.text}, "finish_reason": _finish_reason(s)}
               for i, s in enumerate(samples)]
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": choices, "usage": _usage(prompt_tokens, samples)}


def _stream_events(name: str, prompt_tokens: int, samples, include_usage: bool) -> bytes:
    """The completion as OpenAI streams it: server-sent events of chat.completion.chunk objects, per choice one
    chunk with the role and the whole text and one with its finish_reason, a usage chunk when asked for, then
    `data: [DONE]`. The answer is generated before the first event (batches are generated whole)."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": name}
    chunks = []
    for i, s in enumerate(samples):
        chunks.append({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": s.text},
                                            "finish_reason": None}]})
        chunks.append({**head, "choices": [{"index": i, "delta": {}, "finish_reason": _finish_reason(s)}]})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": _usage(prompt_tokens, samples)})
    events = [f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    return "".join(events).encode()


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                default_max_tokens: int = 512, max_tokens_limit: int = MAX_TOKENS_LIMIT,
                request_timeout: float = REQUEST_TIMEOUT) -> Server:
    from alignkit.data.chat import ControlText

    if not 1 <= default_max_tokens <= max_tokens_limit:
        raise AlignkitError(f"--max-tokens {default_max_tokens}: must be from 1 to --max-tokens-limit "
                            f"({max_tokens_limit})")
    control = ControlText(engine.tokenizer)  # once per server: the tokenizer's special and added tokens
    # The Host rule of `alignkit sxs serve`: without a key anything that reaches the port is trusted, so only
    # requests addressed to a loopback name are (a DNS-rebinding page sends its own host name); bound to
    # loopback, no legitimate client uses another name either.
    check_host = api_key is None or is_loopback(host)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = request_timeout  # a stalled client (a short body, an idle keep-alive) frees its thread

        def log_message(self, *args):  # quiet; errors are returned to the client
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if content_type == "text/event-stream":
                self.send_header("Cache-Control", "no-cache")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json")

        def _error(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            self._json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """Errors http.server answers itself (a malformed request line, headers too long, an unsupported
            method) in OpenAI's error format too."""
            self.close_connection = True
            if self.request_version == "HTTP/0.9":  # a garbled request line: answer with a status line anyway
                self.request_version = "HTTP/1.0"
            self._error(code, message or self.responses.get(code, ("error",))[0])

        def _admit(self) -> None:
            if check_host and not loopback_host(self.headers.get("Host")):
                raise ApiError(403, "this server only answers requests addressed to the loopback interface",
                               code="host_not_allowed")
            given = self.headers.get("Authorization", "").encode("latin-1", "replace")
            if api_key is not None and not hmac.compare_digest(given, f"Bearer {api_key}".encode()):
                raise ApiError(401, "missing or wrong API key", code="invalid_api_key")

        def _respond(self, route) -> None:
            try:
                route()
            except ApiError as e:
                self._error(e.status, str(e), e.param, e.code)
            except BadRequest as e:  # from the shared body and JSON checks
                self._error(e.status, str(e))
            except (ConnectionError, TimeoutError):
                raise  # the client is gone or stuck: nothing to answer (Server.handle_error stays quiet)
            except Exception:  # a bug: the client still gets an answer, the traceback goes to stderr
                traceback.print_exc()
                self.close_connection = True
                self._error(500, "internal server error (see the server's log)")

        def do_GET(self):
            self._respond(self._get)

        def do_POST(self):
            self._respond(self._post)

        def _get(self) -> None:
            ignore_body(self)
            self._admit()
            path = urlsplit(self.path).path.rstrip("/")
            card = {"id": engine.name, "object": "model", "created": 0, "owned_by": "alignkit"}
            if path == "/v1/models":
                self._json(200, {"object": "list", "data": [card]})
            elif path.startswith("/v1/models/"):
                asked = unquote(path[len("/v1/models/"):])
                if asked != engine.name:
                    raise ApiError(404, f"The model `{asked}` does not exist.", "model", "model_not_found")
                self._json(200, card)
            else:
                raise ApiError(404, f"no route GET {path}", code="not_found")

        def _post(self) -> None:
            body = read_body(self, MAX_BODY)  # read before any refusal, so the connection can stay open
            self._admit()
            path = urlsplit(self.path).path.rstrip("/")
            if path != "/v1/chat/completions":
                raise ApiError(404, f"no route POST {path}", code="not_found")
            # JSON only, and a missing Content-Type is refused too: a page on another site can post text/plain,
            # a form, or a body with no Content-Type at all without a CORS preflight, but not application/json.
            if self.headers.get_content_type() != "application/json":
                raise ApiError(415, "Content-Type must be application/json", code="unsupported_media_type")
            chat = parse_chat_request(parse_json_object(body), engine.name, control, max_tokens_limit)
            prompt = self._prompt(chat.messages)
            sampling = Sampling(chat.temperature, chat.top_p,
                                fit_context(len(prompt), chat, default_max_tokens, engine.context), chat.n, chat.seed)
            result = self._wait(engine.submit(prompt, sampling))
            if result is None:
                return  # the client has gone: nothing to send
            prompt_tokens, samples = result
            if chat.stream:
                self._send(200, _stream_events(engine.name, prompt_tokens, samples, chat.include_usage),
                           "text/event-stream")
            else:
                self._json(200, _completion(engine.name, prompt_tokens, samples))

        def _prompt(self, messages: list[dict]) -> list[int]:
            from jinja2 import TemplateError

            try:
                return engine.prompt_ids(messages)
            except TemplateError as e:  # some templates refuse, e.g., two user turns in a row
                raise ApiError(400, f"the model's chat template refused these messages: {e}", "messages") from None

        def _wait(self, future: Future):
            """The generation's result, or None when the client disconnects first (the request is then
            cancelled: if its batch has not started, it is never generated)."""
            while True:
                try:
                    return future.result(timeout=DISCONNECT_POLL)
                except FutureTimeout:
                    if client_gone(self.connection):
                        future.cancel()
                        self.close_connection = True
                        return None
                except Exception as e:
                    raise ApiError(500, f"generation failed: {e}", code="generation_failed") from None

    return listen(Handler, host, port)


def serve(model_path: str, host: str, port: int, name: str | None, api_key_env: str | None, max_batch: int,
          max_tokens: int, max_tokens_limit: int = MAX_TOKENS_LIMIT) -> None:
    import os

    from alignkit.models.load import load_model, load_tokenizer

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise AlignkitError(f"--api-key-env {api_key_env}: the variable is not set")
    elif not is_loopback(host):
        raise AlignkitError(f"--host {host}: serving beyond this machine needs --api-key-env")
    if not 1 <= max_tokens <= max_tokens_limit:
        raise AlignkitError(f"--max-tokens {max_tokens}: must be from 1 to --max-tokens-limit ({max_tokens_limit})")
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path).eval()
    engine = Engine(model, tokenizer, name or model_path, max_batch)
    server = make_server(engine, host, port, api_key, max_tokens, max_tokens_limit)
    print(f"serving {engine.name} at http://{host}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
