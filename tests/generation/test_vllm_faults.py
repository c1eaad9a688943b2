"""Engines that fail: several engines, one stuck, one killed during a sync, one killed during generation.

Each failure must be one `AlignkitError` line naming the engine and what was being done, raised within the
configured timeout (the calls run in a thread that the test waits on with a generous bound, so a hang fails the
test instead of hanging it). Real vLLM servers throughout: the shared one and a second one started here, since
killing is what these tests do. The test that kills the shared engine comes last in this module.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from alignkit import AlignkitError
from alignkit.generation.engine_http import EngineHTTP
from alignkit.generation.vllm_backend import VLLMBackend

pytest.register_assert_rewrite("vllm_testing")  # it is also these tests' plugin (pytest_plugins below)
from vllm_testing import addition_prompts, greedy, with_lora  # noqa: E402

pytest_plugins = ["vllm_testing"]  # the fixtures: smol, vllm_engine, second_engine


def outcome(call, bound: float):
    """call()'s result or exception; fails the test if it has neither after `bound` seconds (a hang)."""
    box: dict = {}

    def run():
        try:
            box["result"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"no answer and no error after {bound} s: a hang"
    return box.get("error", box.get("result"))


def assert_one_line_naming(err, url: str, *words: str) -> None:
    assert isinstance(err, AlignkitError), repr(err)
    message = str(err)
    print(message)  # shown with the captured output when a test fails (or with -rP)
    assert "\n" not in message and message.startswith(f"engine {url}:"), message
    for word in words:
        assert word in message, message


def running_requests(url: str) -> float:
    metrics = EngineHTTP(url, timeout=5).call("GET", "/metrics", None, "reading metrics", expect_json=False)
    found = re.findall(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+-]+)$", metrics or "", re.M)
    return sum(map(float, found))


def kill_once_generating(engine, url: str) -> threading.Thread:
    """SIGKILL `engine`'s processes as soon as it reports requests running (or after 60 s regardless)."""

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if running_requests(url) > 0:
                    break
            except AlignkitError:
                pass
            time.sleep(0.2)
        engine.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_requests_spread_over_two_engines_that_agree(vllm_engine, second_engine, smol):
    base, tok = smol
    _, prompts = addition_prompts(tok, 8, offset=80)
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120) as one:
        alone = greedy(one, prompts, max_new_tokens=24)
    with VLLMBackend(tok, [vllm_engine.url, second_engine.url], request_timeout=120, concurrency=2) as two:
        spread = greedy(two, prompts, max_new_tokens=24)
        assert all(count > 0 for count in two.requests_per_engine), two.requests_per_engine
        report = two.sync(with_lora(base, seed=6))  # both engines loaded and probed
        assert report.version == 1 and report.probe_max_abs_diff < 1e-3
    assert [s.token_ids for s in spread] == [s.token_ids for s in alone]


def test_a_stuck_engine_times_out(second_engine, smol):
    _, tok = smol
    _, prompts = addition_prompts(tok, 2, offset=90)
    url = second_engine.url
    backend = VLLMBackend(tok, [url], request_timeout=5, connect_timeout=5)
    os.killpg(second_engine.process.pid, signal.SIGSTOP)  # frozen, but its socket still accepts connections
    try:
        err = outcome(lambda: backend.generate(prompts, temperature=0.0, max_new_tokens=8), bound=60)
    finally:
        os.killpg(second_engine.process.pid, signal.SIGCONT)
    assert_one_line_naming(err, url, "no answer within 5 s")
    assert len(greedy(backend, prompts, max_new_tokens=4)) == 2  # thawed, it answers again
    backend.close()


def test_engine_killed_during_a_sync(second_engine, smol):
    base, tok = smol
    url = second_engine.url
    policy = base.__class__(base.config)  # another set of full weights: nothing like the engine's
    policy.load_state_dict(base.state_dict())
    with VLLMBackend(tok, [url], request_timeout=30, sync_timeout=30) as backend:
        engine = backend.engines[0]
        post = engine.post

        def post_then_kill(path, *args, **kwargs):  # the kill lands while the engine reloads its weights
            if path == "/collective_rpc":
                threading.Timer(0.05, second_engine.kill).start()
            return post(path, *args, **kwargs)

        engine.post = post_then_kill
        err = outcome(lambda: backend.sync(policy), bound=30 * 4 + 30)
        assert_one_line_naming(err, url, "weight sync v1")
        assert backend.weight_version == 0  # nothing claims the new weights are served


def test_engine_killed_during_generation(vllm_engine, smol):
    """Kills the shared engine (the fixture starts it again if a later test needs it)."""
    _, tok = smol
    _, prompts = addition_prompts(tok, 4, offset=100)
    url = vllm_engine.url
    with VLLMBackend(tok, [url], request_timeout=60) as backend:
        kill_once_generating(vllm_engine, url)
        err = outcome(lambda: backend.generate(prompts, n=4, temperature=1.0, max_new_tokens=512, seed=1), bound=150)
    assert_one_line_naming(err, url, "generating")
    vllm_engine.process.process.wait(timeout=30)  # gone, and its port closed
    err = outcome(lambda: VLLMBackend(tok, [url], connect_timeout=5), bound=60)
    assert_one_line_naming(err, url, "connection refused")  # and it is gone: the next run's start says so
