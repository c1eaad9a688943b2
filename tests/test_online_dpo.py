"""`alignkit online-dpo` on a tiny model through the real CLI: the pairs it trains on, its loss against a plain
forward, a step without a pair, resume, a judge as the ranker, several processes, and its config checks."""

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alignkit.algos.online_dpo import best_and_worst
from alignkit.cli import main
from conftest import ROOT
from test_rl_updates import _two_processes

REWARDS = '''
def by_length(prompts, completions, **fields):
    """Varies within most groups: longer completion text scores higher."""
    return [len(c) / 10.0 for c in completions]


def constant(prompts, completions, **fields):
    return [1.0 for _ in completions]


def only_item(prompts, completions, id, **fields):
    """Varies only for the question ONLY: every other prompt's samples score alike (no pair)."""
    return [len(c) / 10.0 if i == ONLY else 1.0 for c, i in zip(completions, id)]
'''


def _config(tmp_path: Path, model: Path, reward: str = "by_length", online: str = "", extra: str = "",
            train: str = "", only: str = "") -> Path:
    (tmp_path / "rewards.py").write_text(REWARDS.replace("ONLY", repr(only)))
    cfg = tmp_path / "online.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\ntask:\n  name: addition-1d\n  limit: 12\n"
        f"rewards:\n  - kind: function\n    function: {tmp_path / 'rewards.py'}:{reward}\n"
        "online:\n  samples_per_prompt: 4\n" + online + extra +
        "generation:\n  max_new_tokens: 6\n  batch_size: 16\n  log_rollouts: true\n"
        f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n"
        "  max_steps: 2\n" + train
    )
    return cfg


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _groups(rows: list[dict]) -> dict[tuple[int, int], list[dict]]:
    out: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        out.setdefault((r["step"], r["item"]), []).append(r)
    return out


def test_best_and_worst():
    """The first best against the first worst; all equal: no pair."""
    assert best_and_worst([0.2, 0.9, 0.1, 0.5]) == (1, 2)
    assert best_and_worst([1.0, 0.0, 1.0, 0.0]) == (0, 1)  # ties at either end: the first one, every time
    assert best_and_worst([0.0, 1.0]) == (1, 0)
    assert best_and_worst([0.5, 0.5, 0.5]) is None
    assert best_and_worst([-1.0, -1.0]) is None


@pytest.mark.parametrize("extra", ["", "model:\n  lora: {r: 4, alpha: 8}\nloss:\n  type: ipo\n  beta: 0.5\n"])
def test_trains_on_the_best_and_worst_of_each_prompt(tiny_model, tmp_path, extra, capsys):
    """Every logged prompt's pair is its best and its worst scored completion, ties give none, and the counts in
    metrics.jsonl are those of rollouts.jsonl."""
    cfg = _config(tmp_path, tiny_model)
    overrides = ["model.lora={r: 4, alpha: 8}", "loss.type=ipo", "loss.beta=0.5"] if extra else []
    main(["online-dpo", "--config", str(cfg), *overrides])
    out = capsys.readouterr().out
    assert ("reference: adapter off" if extra else "reference: frozen copy") in out
    metrics = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("loss", "reward", "reward_std", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                    "rewards/margins", "logps/chosen", "logps/rejected", "completion_length", "unfinished_fraction",
                    "pairs", "pairs_skipped", "score_margin", "step_seconds", "grad_norm"):
            assert key in m, key
        assert m["pairs"] + m["pairs_skipped"] == 4 and m["pairs"] >= 1
        assert m["logps/chosen"] < 0 and m["score_margin"] > 0
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # step 1: the policy is the reference
    groups = _groups(_jsonl(tmp_path / "run" / "rollouts.jsonl"))
    assert len(groups) == 8 and all(len(g) == 4 for g in groups.values())
    for (step, _), group in groups.items():
        scores = [r["score"] for r in group]
        roles = [r["pair"] for r in group]
        if max(scores) == min(scores):
            assert roles == [None] * 4
            continue
        assert roles.count("chosen") == roles.count("rejected") == 1
        assert roles.index("chosen") == scores.index(max(scores))
        assert roles.index("rejected") == scores.index(min(scores))
        for r in group:  # scores are the reward of the logged text: what the ranker saw
            assert r["score"] == pytest.approx(len(r["completion"]) / 10.0)
    for m in metrics:
        assert m["pairs"] == sum(1 for (s, _), g in groups.items() if s == m["step"] for r in g
                                 if r["pair"] == "chosen")
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert "`online-dpo`: online DPO" in (tmp_path / "run" / "final" / "README.md").read_text()  # the model card


def _sequence_logp(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """A plain forward: full logits, log_softmax, gather, summed over the completion's tokens."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logps = model(ids).logits[0, :-1].float().log_softmax(-1).gather(1, ids[0, 1:, None]).squeeze(1)
    return logps[len(prompt_ids) - 1 :].sum()


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _pairs(rows: list[dict], step: int) -> list[tuple[dict, dict]]:
    out = []
    for (s, _), group in sorted(_groups(rows).items()):
        if s == step and any(r["pair"] for r in group):
            role = {r["pair"]: r for r in group}
            out.append((role["chosen"], role["rejected"]))
    return out


def _plain_loss(policy, reference, pairs, beta: float, rpo_alpha: float) -> torch.Tensor:
    """DPO (Eq. 7) plus the RPO term, a mean over the pairs, from plain forwards of the logged token ids:
    −log σ(β·[(π_w − ref_w) − (π_l − ref_l)]) + α·(−π_w / |y_w|)."""
    losses = []
    for chosen, rejected in pairs:
        pw, pl = (_sequence_logp(policy, r["prompt_ids"], r["completion_ids"]) for r in (chosen, rejected))
        with torch.no_grad():
            rw, rl = (_sequence_logp(reference, r["prompt_ids"], r["completion_ids"]) for r in (chosen, rejected))
        losses.append(-F.logsigmoid(beta * ((pw - rw) - (pl - rl))) - rpo_alpha * pw / len(chosen["completion_ids"]))
    return torch.stack(losses).mean()


def test_loss_matches_a_plain_forward_of_the_logged_pairs(tiny_model, tmp_path, capsys):
    """Step 1 (policy = reference): the logged loss and gradient norm are those of a plain forward of the logged
    pairs. Step 2: its loss is recomputed with the policy after step 1 (the final model of a one-step run with the
    same seed) against the initial model as reference, so the log-ratios are no longer 0."""
    beta, alpha = 0.5, 0.3
    cfg = _config(tmp_path, tiny_model, online="", extra=f"loss:\n  beta: {beta}\n  rpo_alpha: {alpha}\n",
                  train="  max_grad_norm: null\n  scheduler: constant\n")
    main(["online-dpo", "--config", str(cfg)])
    main(["online-dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'one'}", "train.max_steps=1"])
    metrics = _jsonl(tmp_path / "run" / "metrics.jsonl")
    rows = _jsonl(tmp_path / "run" / "rollouts.jsonl")
    initial, after_one = _load(tiny_model), _load(tmp_path / "one" / "final")

    first = _pairs(rows, 1)
    assert len(first) == metrics[0]["pairs"] >= 1
    loss = _plain_loss(initial, _load(tiny_model), first, beta, alpha)
    assert metrics[0]["loss"] == pytest.approx(float(loss.detach()), abs=1e-5)
    loss.backward()
    grads = [p.grad.norm() for p in initial.parameters() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack(grads))
    assert metrics[0]["grad_norm"] == pytest.approx(float(grad_norm), rel=1e-4)

    second = _pairs(rows, 2)
    assert len(second) == metrics[1]["pairs"] >= 1
    with torch.no_grad():
        loss = _plain_loss(after_one, _load(tiny_model), second, beta, alpha)
        margins = [beta * (float(_sequence_logp(after_one, w["prompt_ids"], w["completion_ids"])
                                 - _sequence_logp(initial, w["prompt_ids"], w["completion_ids"]))
                           - float(_sequence_logp(after_one, r["prompt_ids"], r["completion_ids"])
                                   - _sequence_logp(initial, r["prompt_ids"], r["completion_ids"])))
                   for w, r in second]
    assert metrics[1]["loss"] == pytest.approx(float(loss), abs=1e-5)
    assert metrics[1]["rewards/margins"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
    assert abs(metrics[1]["rewards/margins"]) > 1e-4  # the policy has moved: not the trivial step-1 value


def test_a_step_without_a_pair_makes_no_update(tiny_model, tmp_path, capsys):
    main(["online-dpo", "--config", str(_config(tmp_path, tiny_model, reward="constant"))])
    out = capsys.readouterr().out
    assert out.count("scored alike; no pair: this step makes no update") == 2
    metrics = _jsonl(tmp_path / "run" / "metrics.jsonl")
    for m in metrics:
        assert m["skipped"] == 1.0 and m["pairs"] == 0 and m["pairs_skipped"] == 4
        assert m["reward"] == 1.0 and m["completion_length"] > 0 and m["step_seconds"] > 0 and "loss" not in m
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_missing_eos_penalty_is_added_to_unfinished_completions():
    """Rewards 1 and 0.5, −1 for a completion that hit max_new_tokens (finished: False): 1, −0.5, 0, −0.5."""
    from alignkit.algos.online_dpo import OnlineDPO
    from alignkit.config import OnlineDPOConfig
    from alignkit.generation.sample import Sample

    algo = OnlineDPO.__new__(OnlineDPO)
    algo.cfg = OnlineDPOConfig.model_validate({"online": {"samples_per_prompt": 2, "missing_eos_penalty": -1.0}})
    algo.judge, algo.items, algo.prompt_ids, algo.pad_id = None, ["q0", "q1"], [[7], [8]], 0
    algo.rewards = lambda items, texts, sequences, pad_id: ([1.0, 0.5, 0.0, 0.5], {"rewards/task": 0.5})
    samples = [[Sample("a", [5, 2], [], True), Sample("b", [5, 6], [], False)],
               [Sample("c", [5, 2], [], True), Sample("d", [5, 6], [], False)]]
    scores, sums = algo._score([0, 1], samples)
    assert scores == [1.0, -0.5, 0.0, -0.5]
    assert sums["reward"] == 0.0 and sums["rewards/task"] == 2.0  # the raw reward's mean is logged unpenalised
    assert best_and_worst(scores[:2]) == (0, 1) and best_and_worst(scores[2:]) == (0, 1)


def test_resume_after_an_interruption_continues_the_run(tiny_model, tmp_path, capsys, monkeypatch):
    """Killed in step 3, a rerun resumes from the step-2 checkpoint; the steps after it are the uninterrupted run's."""
    from alignkit.algos.online_dpo import OnlineDPO

    cfg = _config(tmp_path, tiny_model, train="  save_every: 1\n")
    main(["online-dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'full'}", "train.max_steps=4"])
    real = OnlineDPO.batches

    def dies_in_step_3(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(OnlineDPO, "batches", dies_in_step_3)
    with pytest.raises(SystemExit):
        main(["online-dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'cut'}", "train.max_steps=4"])
    assert [m["step"] for m in _jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2]
    monkeypatch.setattr(OnlineDPO, "batches", real)
    main(["online-dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'cut'}", "train.max_steps=4"])
    full, cut = _jsonl(tmp_path / "full" / "metrics.jsonl"), _jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [m["step"] for m in cut] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "reward", "pairs", "rewards/margins"):
        assert [m[key] for m in cut] == pytest.approx([m[key] for m in full], abs=1e-6), key
    main(["export", str(tmp_path / "cut"), "--step", "2", "--out", str(tmp_path / "exported")])  # a run's checkpoint
    assert (tmp_path / "exported" / "config.json").is_file()


@contextlib.contextmanager
def _judge_server(reply):
    """An OpenAI-compatible chat endpoint answering reply(user message); yields its base URL and the messages."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body["messages"][-1]["content"])
            payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": reply(seen[-1])}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def _answers(text: str) -> tuple[str, str]:
    return tuple(re.search(rf"\[The Start of Assistant {x}'s Answer\]\n(.*?)\n\[The End of Assistant {x}'s Answer\]",
                           text, re.S).group(1) for x in "AB")


def _prefer_longer(text: str) -> str:
    a, b = _answers(text)
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


def test_a_judge_ranks_the_samples(tiny_model, tmp_path, capsys):
    """A stand-in judge preferring the longer answer: with 3 samples, 3 comparisons per prompt, each asked in both
    orders; a completion scores its wins minus its losses, so the longest is chosen and the shortest rejected."""
    cfg = _config(tmp_path, tiny_model, online="  samples_per_prompt: 3\n")
    with _judge_server(_prefer_longer) as (url, seen):
        main(["online-dpo", "--config", str(cfg), "rewards=[]", f"judge={{url: '{url}', model: stand-in}}"])
    assert len(seen) == 2 * 4 * 3 * 2  # steps x prompts x comparisons x orders
    metrics = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all("judge/ties" in m and m["judge/unparseable"] == 0 and "reward" not in m for m in metrics)
    groups = _groups(_jsonl(tmp_path / "run" / "rollouts.jsonl"))
    for group in groups.values():
        lengths = [len(r["completion"]) for r in group]
        # with a strict order by length the scores are 2, 0, −2; equal lengths share their wins
        wins = [sum((a > b) - (a < b) for b in lengths) for a in lengths]
        assert [r["score"] for r in group] == wins
        if len(set(lengths)) == 1:
            assert all(r["pair"] is None for r in group)
        else:
            pair = {r["pair"]: len(r["completion"]) for r in group if r["pair"]}
            assert pair == {"chosen": max(lengths), "rejected": min(lengths)}
    assert sum(m["pairs"] for m in metrics) == sum(any(r["pair"] for r in g) for g in groups.values())


# only_item (~17 s) is in the slow suite; by_length keeps the two-process path in the default one
@pytest.mark.parametrize("reward", ["by_length", pytest.param("only_item", marks=pytest.mark.slow)])
def test_two_processes_match_one(tiny_model, tmp_path, reward):
    """Each process samples and ranks its own prompts (seeded per prompt); the loss is the mean over all pairs.
    only_item: only the first prompt of step 1 (process 0's) gives a pair, so process 1 joins the step's gradient
    all-reduce with a zero-weight stand-in pair (without it, the run would hang: the timeout fails the test)."""
    from alignkit.config import TaskConfig
    from alignkit.data.collate import stream_indices
    from alignkit.tasks import make_task, task_items

    task = TaskConfig(name="addition-1d", limit=12)
    only = task_items(make_task(task), task)[stream_indices(0, 4, 12, 0)[0]].id
    cfg = _config(tmp_path, tiny_model, reward=reward, only=only)
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["online-dpo", "--config", str(cfg), *(["train.max_steps=1"] if reward == "only_item" else [])]
    subprocess.run([sys.executable, "-m", "alignkit.cli", *args, f"train.output_dir={one}"], check=True, cwd=ROOT,
                   env=env, capture_output=True, timeout=300)
    proc = _two_processes([*args, f"train.output_dir={two}"], 29537 if reward == "by_length" else 29538)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _jsonl(one / "metrics.jsonl"), _jsonl(two / "metrics.jsonl")
    assert [m["step"] for m in b] == ([1] if reward == "only_item" else [1, 2])
    if reward == "only_item":
        assert b[0]["pairs"] == 1 and b[0]["grad_norm"] > 0
    for key in ("loss", "grad_norm", "reward", "pairs", "pairs_skipped", "rewards/margins", "completion_length"):
        assert [m[key] for m in b] == pytest.approx([m[key] for m in a], abs=1e-5), key


@pytest.mark.parametrize("override, expected", [
    ("online.samples_per_prompt=1", "online.samples_per_prompt: Input should be greater than or equal to 2"),
    ("rewards=[]", "rewards: no reward given"),
    ("judge={url: 'http://127.0.0.1:9/v1', model: m}", "give rewards or judge, not both"),
    ("generation.tis_cap=2", "generation.tis_cap: weights a policy-gradient loss"),
    ("loss.type=nope", "loss.type"),
    ("online.samples_pre_prompt=3", "online.samples_pre_prompt: unknown key"),
])
def test_bad_config_fails_before_any_model_loads(tmp_path, capsys, override, expected):
    cfg = _config(tmp_path, tmp_path / "no-such-model")
    with pytest.raises(SystemExit) as e:
        main(["online-dpo", "--config", str(cfg), override])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "no-such-model" not in err


def test_a_judge_takes_no_missing_eos_penalty(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "no-such-model", online="  missing_eos_penalty: -1.0\n")
    with pytest.raises(SystemExit):
        main(["online-dpo", "--config", str(cfg), "rewards=[]", "judge={url: 'http://127.0.0.1:9/v1', model: m}"])
    assert "online.missing_eos_penalty: adds to reward scores, and a judge gives none" in capsys.readouterr().err
