"""The engine plumbing that needs no vLLM: URLs, one-line errors for engines that are absent, failing, stuck or
answering garbage (a tiny stand-in HTTP server plays the broken engine; parity and sync are tested against the
real one in test_vllm_backend.py), starting and stopping an engine command, and the local backend's contract."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignkit import AlignkitError
from alignkit.generation.engine_http import EngineHTTP, base_url
from alignkit.generation.engine_process import EngineProcess, free_port
from alignkit.generation.rollout import LocalBackend, open_backend
from alignkit.generation.vllm_backend import VLLMBackend


def test_base_url_accepts_what_users_paste():
    assert base_url("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert base_url("http://h:8000/v1/") == "http://h:8000"
    with pytest.raises(AlignkitError, match="expected http://HOST:PORT"):
        base_url("ftp://h:1")


def test_engine_with_nothing_listening_is_one_line(tokenizer):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AlignkitError) as err:
        VLLMBackend(tokenizer, [url], connect_timeout=5)
    message = str(err.value)
    assert message.startswith(f"engine {url}: listing served models: connection refused")
    assert "connection refused" in message and "\n" not in message


@pytest.fixture
def broken_engine():
    """A stand-in server: /v1/models answers; /stuck never answers; /fail is a 500 with a two-line message."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body: bytes, kind="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, json.dumps({"data": [{"id": "m"}]}).encode())
            elif self.path == "/stuck":
                release.wait(30)
            elif self.path == "/garbage":
                self._send(200, b"<html>not json</html>", "text/html")
            else:
                self._send(500, json.dumps({"error": {"message": "boom\nsecond line"}}).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()


def test_http_failures_are_one_line_naming_engine_and_step(broken_engine):
    engine = EngineHTTP(broken_engine, timeout=1)
    assert engine.served_models() == [{"id": "m"}]
    cases = [("/stuck", "no answer within 1 s"), ("/fail", "HTTP 500 from GET /fail: boom second line"),
             ("/garbage", "not JSON")]
    for path, expected in cases:
        with pytest.raises(AlignkitError) as err:
            engine.get(path, "doing the thing")
        message = str(err.value)
        assert message.startswith(f"engine {broken_engine}: doing the thing: "), message
        assert expected in message and "\n" not in message


def test_engine_command_that_exits_is_one_line_with_its_log(tmp_path):
    log = tmp_path / "engine.log"
    url = f"http://127.0.0.1:{free_port()}"
    process = EngineProcess([sys.executable, "-c", "import sys; print('no model'); sys.exit(3)"], url, log_path=log,
                            startup_timeout=60, poll_interval=0.1)
    with pytest.raises(AlignkitError) as err:
        process.start()
    assert str(err.value) == f"engine {url}: the engine command exited with code 3 during start-up (log: {log})"
    assert "no model" in log.read_text()


def test_engine_that_never_gets_ready_is_stopped_at_the_startup_timeout(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    process = EngineProcess([sys.executable, "-c", "import time; time.sleep(120)"], url, startup_timeout=1,
                            poll_interval=0.1)
    with pytest.raises(AlignkitError, match=r"not ready after 1 s of start-up"):
        process.start()
    assert process.process.poll() is not None  # stopped, not left running


def test_missing_engine_environment_says_how_to_build_it(tokenizer, tmp_path):
    with pytest.raises(AlignkitError, match=r"does not exist \(run `make engine`\)"):
        open_backend("vllm", tokenizer, engine_command=[str(tmp_path / "nope" / "python"), "-m", "x", "{port}"])


def test_open_backend_refuses_incomplete_settings(tokenizer):
    with pytest.raises(AlignkitError, match="unknown backend 'sglang'"):
        open_backend("sglang", tokenizer)
    with pytest.raises(AlignkitError, match="engine_urls or generation.engine_command"):
        open_backend("vllm", tokenizer)
    with pytest.raises(AlignkitError, match="no model"):
        open_backend("local", tokenizer)


def test_local_backend_tags_samples_with_the_weight_version(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    backend = open_backend("local", tok, model=model)
    assert isinstance(backend, LocalBackend)
    prompts = [[1, 2, 3], [4, 5]]
    first = backend.generate(prompts, n=2, temperature=1.0, max_new_tokens=4, seed=1)
    assert [len(row) for row in first] == [2, 2] and all(s.weight_version == 0 for row in first for s in row)
    assert backend.sync(model).version == 1
    again = backend.generate(prompts, n=2, temperature=1.0, max_new_tokens=4, seed=1)
    assert [[s.token_ids for s in row] for row in again] == [[s.token_ids for s in row] for row in first]
    assert all(s.weight_version == 1 for row in again for s in row)
