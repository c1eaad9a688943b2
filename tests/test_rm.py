"""`alignkit rm` and `alignkit rm score` on a tiny model; the Bradley–Terry loss by hand."""

import json
import math

import pytest
import torch

from alignkit.cli import main
from alignkit.losses.reward import bradley_terry
from conftest import ROOT

DATA = ROOT / "data" / "arith" / "train.jsonl"
HELD = ROOT / "data" / "arith" / "heldout.jsonl"


def test_bradley_terry_by_hand():
    """r_w − r_l = 1: −log σ(1) = log(1 + e^−1) = 0.31326; with margin 1: −log σ(0) = log 2 = 0.69315;
    r_w − r_l = −2: log(1 + e^2) = 2.12693."""
    loss = bradley_terry(torch.tensor([2.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, 1.0]), margin=0.0)
    assert loss.tolist() == pytest.approx([0.31326, 0.31326, 2.12693], abs=1e-5)
    assert bradley_terry(torch.tensor([2.0]), torch.tensor([1.0]), margin=1.0).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("pooling", ["last", "mean", "min", "mean\n  token_logprob: true"])
def test_rm_trains_and_scores(tiny_model, tmp_path, capsys, pooling):
    cfg = tmp_path / "rm.yaml"
    run = tmp_path / "rm"
    cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {DATA}\n  eval: {HELD}\n  max_length: 160\n"
                   f"  max_prompt_length: 96\ntrain:\n  output_dir: {run}\n  batch_size: 8\n  micro_batch_size: 4\n"
                   f"  lr: 1.0e-3\n  max_steps: 3\n  eval_batch_size: 40\nloss:\n  pooling: {pooling}\n")
    main(["rm", "--config", str(cfg)])
    marker = json.loads((run / "final" / "alignkit_scalar_head.json").read_text())
    assert (marker["pooling"], marker["token_logprob"]) == (pooling[:4].strip(), "token_logprob" in pooling)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "accuracy", "margin", "eval_loss", "eval_accuracy", "eval_margin"} <= rows[-1].keys()
    assert 0 <= rows[-1]["eval_accuracy"] <= 1
    out = tmp_path / "scores.jsonl"
    capsys.readouterr()
    main(["rm", "score", "--model", str(run / "final"), "--data", str(HELD), "--out", str(out), "--max-length", "160",
          "--max-prompt-length", "96"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["rows"] == len(scores) == 80
    # The scorer reloaded from disk gives the evaluation the run logged at its end.
    assert summary["accuracy"] == pytest.approx(rows[-1]["eval_accuracy"], abs=1e-6)
    assert summary["margin"] == pytest.approx(rows[-1]["eval_margin"], abs=1e-4)
    # An RL command's reward (kind: model) scores a completion as `rm score` scores a chosen answer.
    from alignkit.config_rl import RewardConfig
    from alignkit.data.collate import load_pairs
    from alignkit.models.load import load_tokenizer
    from alignkit.rewards import Rewards

    tokenizer = load_tokenizer(str(run / "final"))
    pairs = load_pairs(str(HELD), tokenizer, 160, 96)[:5]
    rewards = Rewards([RewardConfig(kind="model", model=str(run / "final"))], task=None, tokenizer=tokenizer)
    totals, _ = rewards([None] * 5, ["x"] * 5, [(p.prompt_ids, p.chosen_ids) for p in pairs],
                        tokenizer.pad_token_id)
    assert totals == pytest.approx([s["chosen_score"] for s in scores[:5]], abs=1e-5)


def test_rm_score_refuses_a_plain_language_model(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["rm", "score", "--model", str(tiny_model), "--data", str(HELD), "--out", str(tmp_path / "s.jsonl")])
    assert e.value.code == 2
    assert "not a reward or value model" in capsys.readouterr().err


@pytest.mark.parametrize("pooling", ["last", "mean", "min\n  token_logprob: true"])
def test_a_reward_model_trained_further_starts_from_its_own_head(tiny_model, tmp_path, capsys, pooling):
    """model.path a reward model: its saved head is the start, as TRL's sequence-classification model keeps its
    score layer, and so are its pooling and its learned token log-prob weight when the config does not name
    them. With a vanishing learning rate, the second run's held-out figures are the first model's scores."""
    first, second = tmp_path / "rm1", tmp_path / "rm2"
    for path, run, lr, loss in ((tiny_model, first, "1.0e-3", f"loss:\n  pooling: {pooling}\n"),
                                (first / "final", second, "1.0e-12", "")):
        cfg = tmp_path / "rm.yaml"
        cfg.write_text(f"model:\n  path: {path}\ndata:\n  train: {DATA}\n  eval: {HELD}\n  max_length: 160\n"
                       f"  max_prompt_length: 96\ntrain:\n  output_dir: {run}\n  batch_size: 8\n"
                       f"  micro_batch_size: 8\n  lr: {lr}\n  max_steps: 2\n  eval_batch_size: 40\n{loss}")
        main(["rm", "--config", str(cfg)])
    capsys.readouterr()
    main(["rm", "score", "--model", str(first / "final"), "--data", str(HELD), "--out", str(tmp_path / "s.jsonl"),
          "--max-length", "160", "--max-prompt-length", "96"])
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()][-1]
    assert abs(scored["margin"]) > 1e-3  # the first model tells pairs apart: a fresh head would not match it
    assert logged["eval_margin"] == pytest.approx(scored["margin"], abs=1e-4)
    assert logged["eval_accuracy"] == pytest.approx(scored["accuracy"], abs=1e-6)
    if "token_logprob" in pooling:  # the learned weight carried over, not started again at 1
        from alignkit.models.heads import saved_scorer

        weight = saved_scorer(first / "final").logprob_weight
        assert abs(weight - 1.0) > 1e-5
        assert saved_scorer(second / "final").logprob_weight == pytest.approx(weight, abs=1e-8)
