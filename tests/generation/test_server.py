"""`alignkit serve`: the OpenAI-compatible server, driven by the official openai client."""

import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from alignkit.generation.sample import chat_prompt_ids, generate
from alignkit.generation.server import Engine, make_server


@pytest.fixture(scope="module")
def served(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)
    engine = Engine(model, tok, "tiny", max_batch=4)
    server = make_server(engine, "127.0.0.1", 0, api_key="sekret", default_max_tokens=8)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", model, tok
    server.shutdown()
    server.server_close()


def test_chat_completion_matches_local_generation(served):
    url, model, tok = served
    client = openai.OpenAI(base_url=url, api_key="sekret", max_retries=0)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=6)
    local = generate(model, tok, [chat_prompt_ids(tok, messages)], temperature=0, max_new_tokens=6)[0][0]
    assert reply.choices[0].message.content == local.text
    assert reply.usage.completion_tokens == len(local.token_ids)
    assert reply.choices[0].finish_reason == ("stop" if local.finished else "length")
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_concurrent_requests_are_batched_and_answered(served):
    url, model, tok = served
    client = openai.OpenAI(base_url=url, api_key="sekret", max_retries=0)
    questions = [f"What is {i} + {i}?" for i in range(6)]
    replies = [None] * 6

    def ask(i):
        replies[i] = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": questions[i]}], temperature=0, max_tokens=5)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": q}]) for q in questions]
    local = generate(model, tok, prompts, temperature=0, max_new_tokens=5)
    assert [r.choices[0].message.content for r in replies] == [row[0].text for row in local]


def _post(url, body: bytes, key="sekret"):
    req = urllib.request.Request(url + "/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("body, status", [
    (b"not json", 400),
    (b'{"model": "tiny"}', 400),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400),
])
def test_bad_requests_get_400(served, body, status):
    code, payload = _post(served[0], body)
    assert code == status and payload["error"]["message"] and payload["error"]["type"] == "invalid_request_error"


def test_key_is_required(served):
    code, payload = _post(served[0], b'{"messages": [{"role": "user", "content": "hi"}]}', key="wrong")
    assert code == 401
