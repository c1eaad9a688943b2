"""`alignkit grpo` / `alignkit dapo` on a tiny model through the real CLI, and their config checks."""

import json
from pathlib import Path

import pytest

from alignkit.cli import main

REWARDS = '''
def by_length(prompts, completions, answer, **fields):
    """Varies within every group: longer completions score higher."""
    return [len(c) / 10.0 for c in completions]


def constant(prompts, completions, **fields):
    return [1.0 for _ in completions]


def odd_ids_only(prompts, completions, id, **fields):
    """Differs within a group only for questions whose operands sum to an odd number."""
    out = []
    for c, i in zip(completions, id):
        a, b = i.split(":")[1].split("+")
        out.append(len(c) / 10.0 if (int(a) + int(b)) % 2 else 0.5)
    return out
'''


def _config(tmp_path: Path, model: Path, reward: str, extra: str = "") -> Path:
    (tmp_path / "rewards.py").write_text(REWARDS)
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\n"
        "task:\n  name: addition-1d\n  limit: 12\n"
        f"rewards:\n  - kind: function\n    function: {tmp_path / 'rewards.py'}:{reward}\n"
        "grpo:\n  group_size: 4\n" + extra +
        "generation:\n  max_new_tokens: 6\n  batch_size: 16\n"
        f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 8\n  micro_batch_size: 4\n  lr: 1.0e-3\n"
        "  max_steps: 2\n"
    )
    return cfg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [
    "",  # GRPO defaults: beta 0.04 with a frozen copy as reference, seq-mean-token-mean
    "  iterations: 2\n  beta: 0.0\n  aggregation: seq-mean-token-sum\n  scale_rewards: false\n",
])
def test_grpo_trains(tiny_model, tmp_path, extra, capsys):
    main(["grpo", "--config", str(_config(tmp_path, tiny_model, "by_length", extra))])
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward"] > 0 and r["completion_length"] > 0 and r["loss"] == r["loss"]
        assert 0 <= r["clip_fraction"] <= 1
    if "beta: 0.0" in extra:
        assert "kl" not in rows[0]
        assert rows[0]["generation_rounds"] == rows[1]["generation_rounds"] == 1
    else:
        assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # first step: the policy is the reference
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_grpo_with_lora_reference_and_task_reward(tiny_model, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model, "by_length")
    main(["grpo", "--config", str(cfg), "rewards=[{kind: task}, {kind: function, weight: 0.5, function: "
          f"'{tmp_path / 'rewards.py'}:by_length'}}]", "model.lora={r: 4, alpha: 8}", "train.max_steps=1"])
    (row,) = _metrics(tmp_path / "run")
    assert "rewards/task" in row and row["kl"] == pytest.approx(0.0, abs=1e-6)


def test_dapo_drops_equal_groups_and_refills(tiny_model, tmp_path, capsys):
    main(["dapo", "--config", str(_config(tmp_path, tiny_model, "odd_ids_only", "  max_generation_rounds: 6\n"))])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("dynamic sampling")]
    assert len(lines) == 2
    assert any("dropped 0 " not in line for line in lines)  # some groups had equal rewards
    assert any("refill" in line and "(0 refill" not in line for line in lines)
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2] and all("skipped" not in r for r in rows)
    assert sum(r["groups_dropped"] for r in rows) >= 1


def test_dapo_with_all_rewards_equal_ends_cleanly(tiny_model, tmp_path, capsys):
    main(["dapo", "--config", str(_config(tmp_path, tiny_model, "constant", "  max_generation_rounds: 2\n"))])
    out = capsys.readouterr().out
    assert out.count("no group has differing rewards: this step makes no update") == 2
    assert "kept 0/2 groups, dropped 4 with equal rewards, 2 generation round(s) (1 refill(s))" in out
    rows = _metrics(tmp_path / "run")
    assert [r.get("skipped") for r in rows] == [1.0, 1.0]
    # A step without an update still reports its generation round and its time.
    for r in rows:
        assert "reward" in r and r["reward_std"] == 0.0 and r["groups_dropped"] == 4.0
        assert r["generation_rounds"] == 2.0 and r["completion_length"] > 0 and r["step_seconds"] > 0
    assert (tmp_path / "run" / "final" / "config.json").is_file()


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=10 train.micro_batch_size=2",
     "train.batch_size=10 (completions per step) is not divisible by grpo.group_size=4"),
    ("grpo.beta=-0.1", "grpo.beta: Input should be greater than or equal to 0"),
    ("grpo.eps_high=0.1", "grpo.eps_high=0.1 is smaller than grpo.eps_low=0.2"),
    ("rewards=[]", "rewards: no reward given"),
    ("rewards=[{kind: function, function: 'nowhere.py:f'}]",
     "rewards.0: reward function 'nowhere.py:f': file nowhere.py not found"),
    ("generation.backend=vllm", "generation: backend vllm needs engine_urls"),
    ("generation.engine_urls=[http://127.0.0.1:9]", "engine_urls / engine_command are given but backend is local"),
    ("generation.tis_cap=0", "generation.tis_cap: Input should be greater than 0"),
    ("task.format=trl", "task.format=trl: applies to a file; give task.file"),
    ("grpo.advantage=gae", "grpo.advantage: Input should be 'grpo', 'rloo', 'reinforce++' or 'reinforce++-baseline'"),
    ("grpo.kl_penalty=both", "grpo.kl_penalty: Input should be 'loss' or 'reward'"),
])
def test_bad_config_fails_before_any_model_loads(tmp_path, capsys, override, expected):
    cfg = _config(tmp_path, tmp_path / "no-such-model", "by_length")
    with pytest.raises(SystemExit) as e:
        main(["grpo", "--config", str(cfg), *(override.split(" ") if override.startswith("train") else [override])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "not found" not in err.replace("nowhere.py not found", "")  # no model was looked up


def test_unknown_reward_function_name(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "no-such-model", "by_length")
    with pytest.raises(SystemExit):
        main(["grpo", "--config", str(cfg),
              f"rewards=[{{kind: function, function: '{tmp_path / 'rewards.py'}:nope'}}]"])
    assert "rewards.py defines no function 'nope'" in capsys.readouterr().err


def test_dapo_preset_fills_its_settings(tmp_path):
    from alignkit.config import GRPOConfig, load_config

    cfg = load_config(GRPOConfig, None, ["preset=dapo", "generation.max_new_tokens=64", "grpo.eps_high=0.3"])
    g = cfg.grpo
    assert (g.eps_low, g.eps_high, g.dynamic_sampling, g.aggregation, g.beta, g.overlong_buffer) == (
        0.2, 0.3, True, "token-mean", 0.0, 16)
    assert load_config(GRPOConfig, None, []).grpo.dynamic_sampling is False
