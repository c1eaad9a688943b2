"""A run directory holds one run: a rerun continues it only with the same config (apart from the keys a rerun
may change), stops otherwise without touching it, and `train.overwrite=true` replaces it. A step whose loss is
not finite stops the run before the update; no final model is written."""

import json

import pytest
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.config import DPOConfig, GRPOConfig, OnlineDPOConfig, changed_keys
from conftest import ROOT

DATA = ROOT / "data" / "arith" / "train.jsonl"


def _dpo(tmp_path, model, *overrides):
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"model:\n  path: {model}\ndata:\n  train: {DATA}\n  max_length: 160\n  max_prompt_length: 96\n"
                   f"reference:\n  cache_dir: {tmp_path / 'ref-cache'}\n"
                   f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 2\n  micro_batch_size: 2\n"
                   "  lr: 1.0e-3\n  max_steps: 2\n  save_every: 1\n")
    main(["dpo", "--config", str(cfg), *overrides])


def _snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_rerun_with_another_loss_type_stops_and_changes_nothing(tiny_model, tmp_path, capsys):
    _dpo(tmp_path, tiny_model)
    run = tmp_path / "run"
    before = _snapshot(run)
    assert "config.yaml" in before and "metrics.jsonl" in before and "final/model.safetensors" in before
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main_argv = ["loss.type=ipo"]
        _dpo(tmp_path, tiny_model, *main_argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"{run}: holds a run with another config (loss.type: 'sigmoid' -> 'ipo')" in err
    assert "use another train.output_dir, or set train.overwrite=true" in err
    assert _snapshot(run) == before  # metrics.jsonl, config.yaml, checkpoints and final/ byte-identical


def test_rerun_with_more_steps_resumes_and_overwrite_replaces(tiny_model, tmp_path, capsys, caplog):
    _dpo(tmp_path, tiny_model)
    run = tmp_path / "run"
    capsys.readouterr()
    _dpo(tmp_path, tiny_model, "train.max_steps=3")  # max_steps may change: the run continues
    assert "resumed from" in caplog.text
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    _dpo(tmp_path, tiny_model, "loss.type=hinge", "train.overwrite=true")  # a new run in the same directory
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert "hinge" in (run / "config.yaml").read_text()
    with pytest.raises(SystemExit):  # starting over without saying so is refused too
        _dpo(tmp_path, tiny_model, "loss.type=hinge", "train.resume=false")
    assert "train.resume is false" in capsys.readouterr().err


def test_keys_a_rerun_may_change():
    base = {"data": {"train": "a.jsonl"}}
    cfg = DPOConfig.model_validate(base)
    saved = cfg.model_dump(mode="json")
    later = DPOConfig.model_validate({**base, "train": {"max_steps": 9, "save_every": 3, "output_dir": "elsewhere"}})
    assert changed_keys(saved, later) == []
    other = DPOConfig.model_validate({**base, "loss": {"beta": 0.5}, "train": {"lr": 1e-4}})
    assert [k for k, _, _ in changed_keys(saved, other)] == ["loss.beta", "train.lr"]
    grpo = GRPOConfig().model_dump(mode="json")
    moved = GRPOConfig.model_validate({"generation": {"backend": "vllm", "engine_urls": ["http://h:1"]}})
    assert [k for k, _, _ in changed_keys(grpo, moved)] == ["generation.backend"]  # the address may change, not the backend
    judged = {"judge": {"url": "http://h:1/v1", "model": "m"}}
    online = OnlineDPOConfig.model_validate(judged).model_dump(mode="json")
    elsewhere = OnlineDPOConfig.model_validate({"judge": {"url": "http://g:2/v1", "model": "m", "concurrency": 2}})
    assert changed_keys(online, elsewhere) == []  # the judge's address may change, not the judge
    other_judge = OnlineDPOConfig.model_validate({"judge": {"url": "http://g:2/v1", "model": "n"}})
    assert [k for k, _, _ in changed_keys(online, other_judge)] == ["judge.model"]


def test_non_finite_loss_stops_before_the_update(tiny_model, tmp_path, capsys):
    """A learning rate of 1e30 sends the weights to inf after one step; the next loss is nan. The run stops at
    that step naming it, keeps the finite checkpoint of step 1 and writes no final model."""
    with pytest.raises(SystemExit) as exc:
        _dpo(tmp_path, tiny_model, "train.lr=1e30", "train.max_steps=4")
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: step ") and "is not finite; stopped before the update" in err, err
    run = tmp_path / "run"
    assert not (run / "final").exists() and not list(run.glob("final.tmp-*"))
    import torch

    for ckpt in (run / "checkpoints").iterdir():
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "trainable.safetensors")).values())


def test_a_killed_final_write_leaves_nothing_after_the_next_one(tiny_model, tmp_path):
    """A write of final/ killed midway leaves final.tmp-<pid> (model-sized); the next write removes it."""
    leftover = tmp_path / "run" / "final.tmp-99999"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"\0" * 1024)
    _dpo(tmp_path, tiny_model)
    assert not leftover.exists() and not list((tmp_path / "run").glob("*.tmp-*"))
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
