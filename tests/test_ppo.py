"""`alignkit ppo` on a tiny model: with a reward model from `alignkit rm`, and with task rewards."""

import json

import pytest

from alignkit.cli import main
from conftest import ROOT

DATA = ROOT / "data" / "arith" / "train.jsonl"


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    cfg = tmp / "rm.yaml"
    cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {DATA}\n  max_length: 160\n  max_prompt_length: 96\n"
                   f"train:\n  output_dir: {tmp / 'rm'}\n  batch_size: 8\n  micro_batch_size: 8\n  max_steps: 2\n")
    main(["rm", "--config", str(cfg)])
    return tmp / "rm" / "final"


def _config(tmp_path, model, rewards: str, extra: str = ""):
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(f"model:\n  path: {model}\ntask:\n  name: addition-2d\n  limit: 16\n{rewards}"
                   "ppo:\n  rollout_prompts: 8\n  epochs: 2\n" + extra +
                   "generation:\n  max_new_tokens: 6\n  batch_size: 8\n"
                   f"train:\n  output_dir: {tmp_path / 'ppo'}\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n"
                   "  max_steps: 8\n")
    return cfg


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ppo_with_a_reward_model(tiny_model, reward_model, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model, f"rewards:\n  - kind: model\n    model: {reward_model}\n",
                  "  adaptive_kl: true\n  kl_target: 0.5\n  kl_horizon: 100\n")
    main(["ppo", "--config", str(cfg)])
    assert f"critic from {reward_model}" in capsys.readouterr().out
    rows = _metrics(tmp_path / "ppo")
    assert [r["step"] for r in rows] == list(range(1, 9))  # 2 rollouts x 2 epochs x 2 minibatches
    keys = {"score", "score_std", "kl", "kl_coef", "clip_fraction", "approx_kl", "value_loss", "policy_loss",
            "explained_variance", "entropy", "response_length", "unfinished_fraction"}
    assert keys <= rows[0].keys()
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout: policy = reference
    assert rows[0]["approx_kl"] == pytest.approx(0.0, abs=1e-5) and rows[0]["clip_fraction"] == 0.0
    assert rows[0]["kl_coef"] != rows[-1]["kl_coef"]  # the adaptive controller moved
    assert (tmp_path / "ppo" / "final" / "config.json").is_file()
    assert (tmp_path / "ppo" / "value" / "score_head.safetensors").is_file()


def test_ppo_with_task_reward_and_lora(tiny_model, tmp_path):
    cfg = _config(tmp_path, tiny_model, "rewards:\n  - kind: task\n", "  value_clip: null\n")
    main(["ppo", "--config", str(cfg), "model.lora={r: 4, alpha: 8}", "train.max_steps=4"])
    rows = _metrics(tmp_path / "ppo")
    assert len(rows) == 4 and all(r["unfinished_fraction"] == 1.0 for r in rows)  # 6 tokens: nobody finishes
    assert rows[0]["score"] == pytest.approx(-1.0)  # a random model is never right, and pays the no-eos penalty


def test_ppo_config_checks(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "none", "rewards:\n  - kind: task\n")
    with pytest.raises(SystemExit):
        main(["ppo", "--config", str(cfg), "train.batch_size=3", "train.micro_batch_size=1"])
    assert ("ppo.rollout_prompts=8 x ppo.samples_per_prompt=1 (sequences per rollout) is not divisible by "
            "train.batch_size=3") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ppo", "--config", str(cfg), "ppo.advantage=rloo"])
    assert "ppo.advantage=rloo compares each completion with the other completions of its prompt: set " \
        "ppo.samples_per_prompt to 2 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ppo", "--config", str(cfg), "ppo.advantage=vtrace"])
    assert "ppo.advantage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ppo", "--config", str(cfg), "rewards=[{kind: model}]"])
    assert "reward kind 'model' needs model" in capsys.readouterr().err


def test_ppo_with_a_reward_model_that_pools_token_log_probs(tiny_model, tmp_path):
    """The reward reads the reward model's pooling and token log-prob term; the critic, started from it, reads
    its head alone (a value has no log-prob term) and is saved without one."""
    rm_cfg = tmp_path / "rm.yaml"
    rm_cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {DATA}\n  max_length: 160\n"
                      f"  max_prompt_length: 96\ntrain:\n  output_dir: {tmp_path / 'rm'}\n  batch_size: 8\n"
                      "  micro_batch_size: 8\n  max_steps: 1\nloss:\n  token_logprob: true\n")
    main(["rm", "--config", str(rm_cfg)])
    cfg = _config(tmp_path, tiny_model, f"rewards:\n  - kind: model\n    model: {tmp_path / 'rm' / 'final'}\n")
    main(["ppo", "--config", str(cfg), "train.max_steps=2"])
    rows = _metrics(tmp_path / "ppo")
    assert len(rows) == 2 and rows[0]["score"] < -3  # a random model's token log-probs: about -log(vocabulary)
    marker = json.loads((tmp_path / "ppo" / "value" / "alignkit_scalar_head.json").read_text())
    assert (marker["pooling"], marker["token_logprob"]) == ("mean", False)
