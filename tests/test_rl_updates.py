"""GRPO and PPO updates checked against the maths, through the real CLI on a tiny model: the sign and size of
the first update against a plain implementation, gradient accumulation against one big micro-batch, and
several processes against one (including a process that draws no useful row)."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from conftest import ROOT

REWARDS = '''
def by_length(prompts, completions, **fields):
    """Varies within a group: longer completion text scores higher."""
    return [len(c) / 10.0 for c in completions]


def chars(prompts, completions, **fields):
    """Large differences between completions, so PPO's advantages are dominated by the score."""
    return [float(len(c)) for c in completions]


def only_item(prompts, completions, id, **fields):
    """Varies only for the question ONLY; every other group's rewards are equal (no signal)."""
    return [sum(map(ord, c)) % 7 if i == ONLY else 1.0 for c, i in zip(completions, id)]
'''


def _grpo_config(tmp_path: Path, model: Path, reward: str = "by_length", grpo: str = "", train: str = "",
                 only: str = "") -> Path:
    (tmp_path / "rewards.py").write_text(REWARDS.replace("ONLY", repr(only)))
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\ntask:\n  name: addition-1d\n  limit: 12\n"
        f"rewards:\n  - kind: function\n    function: {tmp_path / 'rewards.py'}:{reward}\n"
        "grpo:\n  group_size: 4\n" + grpo +
        "generation:\n  max_new_tokens: 6\n  batch_size: 16\n  log_rollouts: true\n"
        f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 8\n  micro_batch_size: 4\n  lr: 1.0e-3\n"
        "  max_steps: 2\n" + train
    )
    return cfg


def _ppo_config(tmp_path: Path, model: Path, ppo: str = "", train: str = "") -> Path:
    (tmp_path / "rewards.py").write_text(REWARDS)
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\ntask:\n  name: addition-2d\n  limit: 16\n"
        f"rewards:\n  - kind: function\n    function: {tmp_path / 'rewards.py'}:chars\n"
        "ppo:\n  rollout_prompts: 4\n  epochs: 1\n" + ppo +
        "generation:\n  max_new_tokens: 6\n  batch_size: 8\n  log_rollouts: true\n"
        f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n"
        "  max_steps: 1\n" + train
    )
    return cfg


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _token_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """A plain forward: full logits, log_softmax, gather; (T,) log-probs of the completion's tokens."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logps = model(ids).logits[0, :-1].float().log_softmax(-1).gather(1, ids[0, 1:, None]).squeeze(1)
    return logps[len(prompt_ids) - 1 :]


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_grpo_first_update_matches_a_plain_implementation(tiny_model, tmp_path, capsys):
    """One GRPO step (β = 0, μ = 1, token-mean) against a direct transcription.

    Advantages are recomputed from the logged rewards: A_i = (r_i − mean_g) / (std_g + 1e-6), std unbiased.
    With ρ = 1 the surrogate's value is −Σ_i A_i T_i / Σ_i T_i and its gradient is that of
    −Σ_i A_i Σ_t log π(y_it) / Σ_i T_i: the logged loss and grad norm must equal those of a plain forward. The
    update must then raise the surrogate: Σ_i A_i (log π_new(y_i) − log π_old(y_i)) > 0, i.e. the
    completions the reward prefers become more likely (a flipped advantage sign makes it negative)."""
    cfg = _grpo_config(tmp_path, tiny_model, grpo="  beta: 0.0\n  aggregation: token-mean\n",
                       train="  max_grad_norm: null\n")
    main(["grpo", "--config", str(cfg), "train.max_steps=1"])
    (logged,) = _jsonl(tmp_path / "run" / "metrics.jsonl")
    rows = _jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert len(rows) == 8
    rewards = torch.tensor([r["reward"] for r in rows]).reshape(2, 4)
    assert rewards.std(1).min() > 0  # both groups carry signal
    advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).reshape(-1)
    assert [r["advantage"] for r in rows] == pytest.approx(advantages.tolist(), abs=1e-5)

    before = _load(tiny_model)
    total_tokens = sum(len(r["completion_ids"]) for r in rows)
    objective = sum(a * _token_logps(before, r["prompt_ids"], r["completion_ids"]).sum()
                    for a, r in zip(advantages.tolist(), rows))
    (-objective / total_tokens).backward()
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in before.parameters() if p.grad is not None]))
    value = -sum(a * len(r["completion_ids"]) for a, r in zip(advantages.tolist(), rows)) / total_tokens
    assert logged["loss"] == pytest.approx(value, abs=1e-5)
    assert logged["grad_norm"] == pytest.approx(float(grad_norm), rel=1e-4)

    after = _load(tmp_path / "run" / "final")
    with torch.no_grad():
        gain = sum(a * float(_token_logps(after, r["prompt_ids"], r["completion_ids"]).sum()
                             - _token_logps(before, r["prompt_ids"], r["completion_ids"]).sum())
                   for a, r in zip(advantages.tolist(), rows))
    assert gain > 0


def test_ppo_advantages_and_update_direction(tiny_model, tmp_path, capsys):
    """PPO with γ = λ = 1, no KL penalty and no whitening: GAE telescopes to A_t = score − V_t at every response
    token (Schulman et al. 2016, Eq. 18 with λ = 1), which the logged values and advantages must satisfy. The
    first update must raise the surrogate Σ_{i,t} A_it (log π_new − log π_old)(y_it)."""
    cfg = _ppo_config(tmp_path, tiny_model, ppo="  gamma: 1.0\n  lam: 1.0\n  kl_coef: 0.0\n"
                      "  whiten_advantages: false\n  missing_eos_penalty: null\n")
    main(["ppo", "--config", str(cfg)])
    rows = _jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert len(rows) == 4 and len({r["reward"] for r in rows}) > 1
    for r in rows:
        assert len(r["advantages"]) == len(r["values"]) == len(r["completion_ids"])
        assert r["advantages"] == pytest.approx([r["reward"] - v for v in r["values"]], abs=1e-4)
    before, after = _load(tiny_model), _load(tmp_path / "run" / "final")
    with torch.no_grad():
        gain = sum(float((torch.tensor(r["advantages"]) * (_token_logps(after, r["prompt_ids"], r["completion_ids"])
                                                           - _token_logps(before, r["prompt_ids"], r["completion_ids"]))
                          ).sum()) for r in rows)
    assert gain > 0


def _normalised(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return [(v - mean) / math.sqrt(var + 1e-8) for v in values]


def test_grpo_rloo_advantages_and_first_update(tiny_model, tmp_path, capsys):
    """advantage: rloo, β = 0, token-mean: A_i = r_i − mean of the other three rewards of its group (from the
    logged rewards), and the logged loss is −Σ_i A_i T_i / Σ_i T_i (ρ = 1 on-policy)."""
    cfg = _grpo_config(tmp_path, tiny_model, grpo="  beta: 0.0\n  aggregation: token-mean\n  advantage: rloo\n")
    main(["grpo", "--config", str(cfg), "train.max_steps=1"])
    (logged,) = _jsonl(tmp_path / "run" / "metrics.jsonl")
    rows = _jsonl(tmp_path / "run" / "rollouts.jsonl")
    want = []
    for start in (0, 4):
        group = [r["reward"] for r in rows[start : start + 4]]
        want += [x - (sum(group) - x) / 3 for x in group]
    assert [r["advantage"] for r in rows] == pytest.approx(want, abs=1e-5)
    assert any(abs(a) > 0.01 for a in want)
    total = sum(len(r["completion_ids"]) for r in rows)
    assert logged["loss"] == pytest.approx(-sum(a * len(r["completion_ids"]) for a, r in zip(want, rows)) / total,
                                           abs=1e-5)


def test_grpo_reinforce_pp_normalises_returns_over_the_batch(tiny_model, tmp_path, capsys):
    """advantage: reinforce++ with β = 0: every token's return is its completion's reward (γ = 1, the reward at the
    last token), and the advantages are those returns normalised over every response token of the step."""
    cfg = _grpo_config(tmp_path, tiny_model, grpo="  beta: 0.0\n  advantage: reinforce++\n")
    main(["grpo", "--config", str(cfg), "train.max_steps=1"])
    rows = _jsonl(tmp_path / "run" / "rollouts.jsonl")
    returns = [r["reward"] for r in rows for _ in r["completion_ids"]]
    logged = [a for r in rows for a in r["advantages"]]
    assert [len(r["advantages"]) for r in rows] == [len(r["completion_ids"]) for r in rows]
    assert logged == pytest.approx(_normalised(returns), abs=1e-4)


def test_grpo_kl_in_the_reward_is_per_token():
    """The wiring of `GRPO._advantages` with the KL in the reward, against a direct transcription:
    reinforce++: r_t = −β(log π_old − log π_ref)_t, plus the score at the last token; A = normalised returns.
    rloo: the score minus β·Σ_t KL_t, then the leave-one-out baseline."""
    from types import SimpleNamespace

    from alignkit.algos.grpo import GRPO
    from alignkit.config import GRPOConfig

    g = torch.Generator().manual_seed(0)
    lengths = [3, 1, 2, 4]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    old, ref = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0])
    algo = GRPO.__new__(GRPO)
    algo.run = SimpleNamespace(sum_over_processes=lambda v: list(v))
    beta = 0.3
    algo.cfg = GRPOConfig(grpo={"group_size": 2, "beta": beta, "advantage": "reinforce++"},
                          train={"batch_size": 4, "micro_batch_size": 4})
    adv, kl_sum = algo._advantages(scores, mask, old, ref, True)
    kl = [[float(old[b, t] - ref[b, t]) for t in range(lengths[b])] for b in range(4)]
    returns = {}
    for b in range(4):
        for t in range(lengths[b]):
            returns[b, t] = sum(-beta * k for k in kl[b][t:]) + float(scores[b])
    for (b, t), a in zip(returns, _normalised(list(returns.values()))):
        assert float(adv[b, t]) == pytest.approx(a, abs=1e-5)
    assert kl_sum == pytest.approx(sum(map(sum, kl)), abs=1e-5)

    algo.cfg = GRPOConfig(grpo={"group_size": 2, "beta": beta, "advantage": "rloo"},
                          train={"batch_size": 4, "micro_batch_size": 4})
    adv, _ = algo._advantages(scores, mask, old, ref, True)
    total = [float(scores[b]) - beta * sum(kl[b]) for b in range(4)]
    want = [total[0] - total[1], total[1] - total[0], total[2] - total[3], total[3] - total[2]]
    assert adv.tolist() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("advantage", ["rloo", "reinforce++", "reinforce++-baseline"])
def test_ppo_without_a_critic(tiny_model, tmp_path, advantage, capsys):
    """ppo.advantage other than gae: 2 samples per prompt, no value model (no value/ directory, no value loss), and
    with kl_coef 0 and γ = 1 every token's advantage is from the prompt's scores: rloo: score − the other sample's
    score; reinforce++: the score, normalised over the rollout's tokens; the baseline: score − the pair's mean,
    then normalised."""
    cfg = _ppo_config(tmp_path, tiny_model, ppo=f"  advantage: {advantage}\n  samples_per_prompt: 2\n"
                      "  kl_coef: 0.0\n  missing_eos_penalty: null\n")
    main(["ppo", "--config", str(cfg), "train.batch_size=8", "train.micro_batch_size=4"])
    assert "no critic" in capsys.readouterr().out
    rows = _jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert len(rows) == 8 and [r["item"] for r in rows][::2] == [r["item"] for r in rows][1::2]
    scores = [r["reward"] for r in rows]
    if advantage == "rloo":
        per_row = [s - scores[i ^ 1] for i, s in enumerate(scores)]
        want = [a for a, r in zip(per_row, rows) for _ in r["completion_ids"]]
    else:
        if advantage == "reinforce++-baseline":
            scores = [s - (scores[i] + scores[i ^ 1]) / 2 for i, s in enumerate(scores)]
        want = _normalised([s for s, r in zip(scores, rows) for _ in r["completion_ids"]])
    assert [a for r in rows for a in r["advantages"]] == pytest.approx(want, abs=1e-4)
    assert not (tmp_path / "run" / "value").exists() and (tmp_path / "run" / "final").is_dir()
    (logged,) = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert "value_loss" not in logged and "policy_loss" in logged


@pytest.mark.parametrize("grpo", [
    "",  # defaults: β = 0.04 against a frozen copy, seq-mean-token-mean
    "  beta: 0.0\n  aggregation: token-mean\n  iterations: 2\n",
])
def test_grpo_accumulation_matches_one_big_micro_batch(tiny_model, tmp_path, grpo, capsys):
    """8 completions a step as 8 micro-batches of 1 == 1 micro-batch of 8: the loss divides by the step's
    completions (or tokens), not the micro-batch's."""
    runs = {}
    for micro in (1, 8):
        out = tmp_path / f"micro{micro}"
        main(["grpo", "--config", str(_grpo_config(tmp_path, tiny_model, grpo=grpo)), f"train.output_dir={out}",
              f"train.micro_batch_size={micro}"])
        runs[micro] = _jsonl(out / "metrics.jsonl")
    assert len(runs[1]) == 2
    for key in ("loss", "grad_norm", "reward"):
        assert [r[key] for r in runs[1]] == pytest.approx([r[key] for r in runs[8]], abs=1e-5), key


def test_ppo_accumulation_matches_one_big_micro_batch(tiny_model, tmp_path, capsys):
    """4 sequences a step as 4 micro-batches of 1 == 1 micro-batch of 4: the token mean is over the minibatch."""
    runs = {}
    for micro in (1, 4):
        out = tmp_path / f"micro{micro}"
        main(["ppo", "--config", str(_ppo_config(tmp_path, tiny_model)), f"train.output_dir={out}",
              f"train.micro_batch_size={micro}", "ppo.rollout_prompts=8", "ppo.epochs=2", "train.max_steps=4"])
        runs[micro] = _jsonl(out / "metrics.jsonl")
    assert len(runs[1]) == 4
    for key in ("loss", "policy_loss", "value_loss", "grad_norm"):  # value losses are ~500: relative tolerance
        assert [r[key] for r in runs[1]] == pytest.approx([r[key] for r in runs[4]], rel=1e-5, abs=1e-5), key


def _two_processes(args: list[str], port: int, timeout: int = 300) -> subprocess.CompletedProcess:
    """torchrun with 2 processes; past `timeout` the whole process group is killed and the test fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "alignkit.cli", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(args[:1])} on 2 processes did not finish in {timeout} s (a hang)")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# REINFORCE++ over two processes (~17 s) is in the slow suite; GRPO over two processes stays in the default one
@pytest.mark.parametrize("grpo", ["", pytest.param("  advantage: reinforce++\n", marks=pytest.mark.slow)])
def test_grpo_two_processes_match_one(tiny_model, tmp_path, grpo):
    """Each process samples and scores its own prompts; the step's losses and gradients equal one process's
    (REINFORCE++ normalises over the global batch: its moments are summed over processes; its KL is in the
    reward)."""
    cfg = _grpo_config(tmp_path, tiny_model, grpo=grpo)
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "alignkit.cli", "grpo", "--config", str(cfg), f"train.output_dir={one}"],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    proc = _two_processes(["grpo", "--config", str(cfg), f"train.output_dir={two}"], 29527)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    a, b = _jsonl(one / "metrics.jsonl"), _jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2]
    for key in ("loss", "grad_norm", "reward", "reward_std", "kl", "completion_length"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], abs=1e-5), key


def test_grpo_process_without_useful_rows_finishes_the_step(tiny_model, tmp_path):
    """Two processes, one prompt each: only the first process's group has differing rewards, so the second has
    no row to train on. It joins the step with a zero-weight row; without that it would wait in the gradient
    all-reduce forever (the timeout turns a hang into a failure)."""
    from alignkit.config import TaskConfig
    from alignkit.data.collate import stream_indices
    from alignkit.tasks import make_task, task_items

    task_cfg = TaskConfig(name="addition-1d", limit=12)
    items = task_items(make_task(task_cfg), task_cfg)
    first, second = stream_indices(0, 2, len(items), 0)  # step 1's prompts: process 0 gets the first
    cfg = _grpo_config(tmp_path, tiny_model, reward="only_item", grpo="  beta: 0.0\n", only=items[first].id)
    proc = _two_processes(["grpo", "--config", str(cfg), "train.max_steps=1"], 29528, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _jsonl(tmp_path / "run" / "rollouts.jsonl")
    by_rank = {rank: [r for r in rows if r["rank"] == rank] for rank in (0, 1)}
    assert {r["item"] for r in by_rank[0]} == {first} and {r["item"] for r in by_rank[1]} == {second}
    assert any(r["advantage"] != 0 for r in by_rank[0]) and all(r["advantage"] == 0 for r in by_rank[1])
    (step,) = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert "skipped" not in step and step["grad_norm"] > 0 and math.isfinite(step["loss"])


def test_truncated_importance_sampling_weights_grpos_token_losses():
    """With generation.tis_cap, each token's policy loss is multiplied by min(π_old / π_sampler, cap): on-policy
    (μ = 1, ρ = 1) the token-mean loss is −Σ_t A·w_t / T. Sampler log-probs 0.5 and 2 nats below the trainer's,
    cap 2: w = e^0.5 = 1.6487 and min(e^2, 2) = 2; A = 1 on both tokens gives −(1.6487 + 2) / 2."""
    from types import SimpleNamespace

    from alignkit.algos.grpo import GRPO, GRPOBatch
    from alignkit.config import GRPOConfig

    cfg = GRPOConfig.model_validate({"grpo": {"beta": 0.0, "aggregation": "token-mean", "group_size": 2},
                                     "generation": {"tis_cap": 2.0}})
    algo = GRPO.__new__(GRPO)
    algo.cfg, algo.run = cfg, SimpleNamespace(device=torch.device("cpu"), world=1)
    trainer = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)  # (1, T): the prompt token, then two response tokens

    def model(ids, mask, per_token):
        return torch.where(mask, trainer, 0.0)

    mask = torch.tensor([[False, True, True]])
    sampler = torch.tensor([[0.0, -1.5, -4.0]])
    batch = GRPOBatch(torch.zeros(1, 3, dtype=torch.long), mask, torch.tensor([1.0]), None, None, sampler, 1.0,
                      step_rows=1, step_tokens=2, trained_rows=1, stats={})
    loss, metrics = algo.loss(model, batch)
    assert float(loss) == pytest.approx(-(math.exp(0.5) + 2.0) / 2, rel=1e-6)
    assert float(metrics["sampler/logp_diff_max"]) == pytest.approx(2.0)
    assert float(metrics["sampler/logp_diff_mean"]) == pytest.approx(1.25)  # (0.5 + 2) / 2 tokens, one row
