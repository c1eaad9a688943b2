"""HTTP calls to one inference-engine server (vLLM's OpenAI-compatible API), each with a timeout.

    engine = EngineHTTP("http://127.0.0.1:8000", timeout=60)
    engine.get("/v1/models", "listing models")
    engine.post("/v1/completions", body, "generating", timeout=300)

Every failure is one `AlignkitError` line naming the engine and what was being done: refused or dropped
connections, time-outs (a stuck engine), HTTP errors (status and the first line of the server's message) and
bodies that are not JSON. No retries: an engine that does not answer is down, and the caller (a training step)
stops and resumes from its last checkpoint rather than train on half a round. Only the standard library, and no
proxy from the environment: engines sit on the same machine or the cluster's own network.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

from alignkit import AlignkitError


def base_url(url: str) -> str:
    """'http://host:port' from 'host:port', 'http://host:port/', or '.../v1' (what OpenAI clients are given)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlignkitError(f"engine URL '{url}': expected http://HOST:PORT")
    return url


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _server_message(raw: bytes) -> str:
    """The error text inside a vLLM/FastAPI error body ({"error": {"message"}}, {"detail"}, {"error": "..."})."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)
    return str(body)


class EngineHTTP:
    """One engine server; `timeout` (seconds) bounds every call unless a call gives its own."""

    def __init__(self, url: str, timeout: float = 60.0, api_key: str | None = None):
        self.url = base_url(url)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def get(self, path: str, what: str, timeout: float | None = None):
        return self.call("GET", path, None, what, timeout)

    def post(self, path: str, body: dict | None, what: str, timeout: float | None = None, expect_json: bool = True):
        return self.call("POST", path, body, what, timeout, expect_json)

    def call(self, method: str, path: str, body: dict | None, what: str, timeout: float | None = None,
             expect_json: bool = True):
        """The decoded JSON answer (None for an empty 200 body; the text if not `expect_json`); AlignkitError on
        anything else."""
        limit = self.timeout if timeout is None else timeout
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._host, self._port, timeout=limit)
        started = time.monotonic()
        try:
            conn.request(method, self._prefix + path, body=None if body is None else json.dumps(body),
                         headers=self._headers)
            response = conn.getresponse()
            raw = response.read()
        except (TimeoutError, socket.timeout):
            raise AlignkitError(f"engine {self.url}: {what}: no answer within {limit:g} s "
                                f"({method} {path}); the engine is stuck or overloaded") from None
        except ConnectionRefusedError:
            raise AlignkitError(f"engine {self.url}: {what}: connection refused ({method} {path}); "
                                f"is the engine running?") from None
        except (OSError, http.client.HTTPException) as e:
            reason = _one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            raise AlignkitError(f"engine {self.url}: {what}: connection lost after "
                                f"{time.monotonic() - started:.1f} s ({method} {path}: {reason}); "
                                f"did the engine die?") from None
        finally:
            conn.close()
        if response.status >= 400:
            hint = " (start the engine with VLLM_SERVER_DEV_MODE=1)" if response.status == 404 else ""
            raise AlignkitError(f"engine {self.url}: {what}: HTTP {response.status} from {method} {path}: "
                                f"{_one_line(_server_message(raw))}{hint}")
        if not raw.strip():
            return None
        if not expect_json:
            return raw.decode("utf-8", "replace")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise AlignkitError(f"engine {self.url}: {what}: {method} {path} answered something that is not "
                                f"JSON: {_one_line(raw.decode('utf-8', 'replace'), 120)}") from None

    def served_models(self, timeout: float | None = None) -> list[dict]:
        """GET /v1/models: the base model first, then loaded LoRA adapters (each with its path as 'root')."""
        answer = self.get("/v1/models", "listing served models", timeout)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise AlignkitError(f"engine {self.url}: listing served models: GET /v1/models has no 'data' list")
        return data

    def version(self, timeout: float | None = None) -> str:
        """The engine's vLLM version (GET /version), to record in a run directory."""
        answer = self.get("/version", "reading the engine version", timeout)
        if not isinstance(answer, dict) or "version" not in answer:
            raise AlignkitError(f"engine {self.url}: reading the engine version: GET /version has no 'version'")
        return str(answer["version"])


def engine_version(url: str, timeout: float = 10.0) -> str:
    """vLLM version of the engine at `url`, e.g. '0.32.0'."""
    return EngineHTTP(url, timeout).version()
