"""`alignkit serve`: a small OpenAI-compatible chat server around a local model.

    alignkit serve --model smollm2-135m-instruct --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"model": "smollm2-135m-instruct",
         "messages": [{"role": "user", "content": "What is 2 + 2?"}]}'

Enough of the API for teachers and judges: `GET /v1/models`, `POST /v1/chat/completions` (messages, temperature,
top_p, max_tokens or max_completion_tokens, n, seed). Requests that arrive together are generated as one batch
(the same sampling settings share a batch). It binds 127.0.0.1 by default; with `--api-key-env NAME` every
request must carry `Authorization: Bearer <the value of NAME>`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alignkit import AlignkitError


class BadRequest(Exception):
    pass


def _parse_request(body: bytes, default_max_tokens: int) -> dict:
    try:
        req = json.loads(body or b"{}")
    except json.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON ({e.msg})") from None
    if not isinstance(req, dict):
        raise BadRequest("body must be a JSON object")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}] must have a role (system, user, assistant) and string content")
    params = {
        "temperature": req.get("temperature", 1.0), "top_p": req.get("top_p", 1.0),
        "max_tokens": next((req[k] for k in ("max_completion_tokens", "max_tokens") if req.get(k) is not None),
                           default_max_tokens),
        "n": req.get("n", 1), "seed": req.get("seed", 0),
    }
    for name, lo, hi in (("temperature", 0, 2), ("top_p", 0, 1), ("max_tokens", 1, 1 << 20), ("n", 1, 64)):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise BadRequest(f"'{name}' must be a number between {lo} and {hi}")
    if not isinstance(params["seed"], int) or isinstance(params["seed"], bool):
        raise BadRequest("'seed' must be an integer")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], **params}


class Engine:
    """One model; a worker thread batches whatever requests are waiting."""

    def __init__(self, model, tokenizer, name: str, max_batch: int = 16):
        self.model, self.tokenizer, self.name, self.max_batch = model, tokenizer, name, max_batch
        self.requests: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self._loop, daemon=True)
        self.worker.start()

    def submit(self, req: dict) -> Future:
        future: Future = Future()
        self.requests.put((req, future))
        return future

    def _loop(self) -> None:
        from alignkit.generation.sample import chat_prompt_ids, generate

        while True:
            batch = [self.requests.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.requests.get_nowait())
                except queue.Empty:
                    break
            groups: dict[tuple, list] = {}
            for req, future in batch:
                key = (req["temperature"], req["top_p"], req["max_tokens"], req["n"], req["seed"])
                groups.setdefault(key, []).append((req, future))
            for (temperature, top_p, max_tokens, n, seed), members in groups.items():
                try:
                    prompts = [chat_prompt_ids(self.tokenizer, req["messages"]) for req, _ in members]
                    samples = generate(self.model, self.tokenizer, prompts, n=n, temperature=temperature,
                                       top_p=top_p, max_new_tokens=max_tokens, seed=seed, batch_size=self.max_batch)
                except Exception as e:  # reported to the clients as a 500, the server keeps serving
                    for _, future in members:
                        future.set_exception(e)
                    continue
                for (_, future), prompt, row in zip(members, prompts, samples):
                    future.set_result((len(prompt), row))


def _completion(name: str, prompt_tokens: int, samples) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": s.text},
                "finish_reason": "stop" if s.finished else "length"} for i, s in enumerate(samples)]
    completion_tokens = sum(len(s.token_ids) for s in samples)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                default_max_tokens: int = 512) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet; errors are returned to the client
            pass

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, kind: str) -> None:
            self._send(status, {"error": {"message": message, "type": kind, "code": status}})

        def _authorized(self) -> bool:
            if api_key is None or self.headers.get("Authorization") == f"Bearer {api_key}":
                return True
            self._error(401, "missing or wrong API key", "authentication_error")
            return False

        def do_GET(self):
            if not self._authorized():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": engine.name, "object": "model",
                                                             "owned_by": "alignkit"}]})
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}", "not_found")
                return
            try:
                req = _parse_request(body, default_max_tokens)
            except BadRequest as e:
                self._error(400, str(e), "invalid_request_error")
                return
            try:
                prompt_tokens, samples = engine.submit(req).result()
            except Exception as e:
                self._error(500, f"generation failed: {e}", "server_error")
                return
            self._send(200, _completion(engine.name, prompt_tokens, samples))

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise AlignkitError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve(model_path: str, host: str, port: int, name: str | None, api_key_env: str | None, max_batch: int,
          max_tokens: int) -> None:
    import os

    from alignkit.models.load import load_model, load_tokenizer

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise AlignkitError(f"--api-key-env {api_key_env}: the variable is not set")
    elif host not in ("127.0.0.1", "localhost", "::1"):
        raise AlignkitError(f"--host {host}: serving beyond this machine needs --api-key-env")
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path).eval()
    engine = Engine(model, tokenizer, name or model_path, max_batch)
    server = make_server(engine, host, port, api_key, max_tokens)
    print(f"serving {engine.name} at http://{host}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
