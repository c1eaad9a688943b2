"""`alignkit export`: a checkpoint from the middle of a run becomes a model directory that transformers loads, with
the checkpoint's weights (LoRA merged); and every final model gets a model card (README.md)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main
from conftest import ROOT

DATA = ROOT / "data" / "arith" / "train.jsonl"


def _config(tmp_path: Path, model: Path, command: str = "dpo") -> Path:
    cfg = tmp_path / f"{command}.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\n"
        f"data:\n  train: {DATA}\n  max_length: 160\n" + ("" if command == "sft" else "  max_prompt_length: 96\n")
        + (f"reference:\n  cache_dir: {tmp_path / 'ref-cache'}\n" if command == "dpo" else "")
        + "train:\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n  max_steps: 4\n  save_every: 2\n")
    return cfg


def _train(monkeypatch, command: str, cfg: Path, run: Path, *extra: str) -> list[str]:
    """The run through the CLI, with sys.argv as the console script would set it (the card records it)."""
    argv = [command, "--config", str(cfg), f"train.output_dir={run}", *extra]
    monkeypatch.setattr(sys, "argv", ["alignkit", *argv])
    main(argv)
    return argv


def _export(monkeypatch, run: Path, out: Path, *extra: str) -> None:
    argv = ["export", str(run), "--out", str(out), *extra]
    monkeypatch.setattr(sys, "argv", ["alignkit", *argv])
    main(argv)


def test_mid_run_checkpoint_exports_and_loads(tiny_model, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    _train(monkeypatch, "dpo", _config(tmp_path, tiny_model), run)
    ckpt = run / "checkpoints" / "step-00000002"
    assert (ckpt / "trainable.safetensors").is_file()
    capsys.readouterr()

    out = tmp_path / "step2"
    _export(monkeypatch, run, out, "--step", "2")
    assert f"wrote {out}" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    exported = model.state_dict()
    trained = load_file(str(ckpt / "trainable.safetensors"))
    assert trained  # full fine-tuning: every parameter is in the checkpoint
    for name, value in trained.items():
        assert name.startswith("model.")  # SequenceLogps(model): the transformers model's own names follow
        assert torch.equal(exported[name.removeprefix("model.")], value), name
    # the middle of the run: neither the base model nor the final one
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    final = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(exported[key], base[key]) and not torch.equal(exported[key], final[key])
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and f"base_model: {tiny_model}" in card and "- dpo" in card
    assert "library_name: transformers" in card and "checkpoint step 2" in card
    assert "## Metrics at step 2" in card and f"alignkit export {run} --out {out} --step 2" in card

    # without --step: the newest checkpoint (step 2 here; step 4 is the final model)
    _export(monkeypatch, run, tmp_path / "newest")
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "newest").state_dict()[key], exported[key])


def test_final_model_card_names_base_model_and_command(tiny_model, tmp_path, monkeypatch):
    import yaml

    run = tmp_path / "run"
    argv = _train(monkeypatch, "dpo", _config(tmp_path, tiny_model), run, "loss.beta=0.2")
    card = (run / "final" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {"base_model": str(tiny_model), "library_name": "transformers", "tags": ["alignkit", "dpo"]}
    assert "alignkit " + " ".join(argv) in card
    assert str(DATA) in card and "beta 0.2" in card
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "## Metrics at step 4" in card and f"| loss | {last['loss']:.4g} |" in card


def test_lora_checkpoint_exports_merged(tiny_model, tmp_path, monkeypatch):
    """The exported weight of an adapted layer is W + (alpha / r) B A, from the checkpoint's own A and B."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    _train(monkeypatch, "dpo", _config(tmp_path, tiny_model), run, "model.lora.r=4", "model.lora.alpha=8",
           "model.lora.merge=false")
    trained = load_file(str(run / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    assert trained and all("lora_" in name for name in trained)  # only the adapter is trained and saved
    out = tmp_path / "merged"
    _export(monkeypatch, run, out, "--step", "2")
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert not any("lora" in name for name in exported)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    prefix = "model.base_model.model.model.layers.0.self_attn.q_proj"
    a, b = trained[f"{prefix}.lora_A.default.weight"], trained[f"{prefix}.lora_B.default.weight"]
    assert b.abs().max() > 0  # trained away from its zero start
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(exported[key], base[key] + (8 / 4) * b @ a, atol=1e-6)
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "merged into the weights" in card
    # the run kept the adapter alone (merge=false): its own card says so
    final_card = (run / "final" / "README.md").read_text()  # alignkit's, not the template peft writes
    assert "library_name: peft" in final_card and "- alignkit" in final_card and "the adapter alone" in final_card


def test_reward_model_gets_a_card(tiny_model, tmp_path, monkeypatch):
    from alignkit.models.heads import load_scalar_model

    run = tmp_path / "run"
    _train(monkeypatch, "rm", _config(tmp_path, tiny_model, "rm"), run)
    card = (run / "final" / "README.md").read_text()
    assert f"base_model: {tiny_model}" in card and "- rm" in card and "reward-model" in card
    assert "alignkit rm --config" in card
    out = tmp_path / "rm-step2"
    _export(monkeypatch, run, out, "--step", "2")  # written as alignkit rm writes its model: the LM plus the score head
    trained = load_file(str(run / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    assert torch.equal(load_scalar_model(str(out)).head.weight, trained["head.weight"])


def test_export_refusals(tiny_model, tmp_path, monkeypatch, capsys):
    """One line each, exit 2; the run stays as it was."""
    import re

    run = tmp_path / "run"
    _train(monkeypatch, "dpo", _config(tmp_path, tiny_model), run)
    for args, message in [(["--step", "3", "--out", str(tmp_path / "x")],
                           r"no checkpoint of step 3 \(checkpoints: 2\)"),
                          (["--out", str(run)], "would replace the run"),
                          (["--out", str(run / "final")], "would replace the run"),
                          (["--out", str(tmp_path)], "would replace the run"),
                          (["--out", str(ROOT / "src")], "exists and is not a model directory")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["export", str(run), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert re.search(message, err), err
    assert (run / "final" / "model.safetensors").is_file() and (run / "checkpoints" / "step-00000002").is_dir()


def test_export_needs_a_run_with_checkpoints(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "no config.yaml" in capsys.readouterr().err


def test_sharded_checkpoint_exports(tiny_model, tmp_path, monkeypatch):
    """An FSDP2 run on two CPU processes (configs/accelerate/fsdp2.yaml) checkpoints shards through
    torch.distributed.checkpoint; its export holds the weights a one-process run has at the same step."""
    import os
    import subprocess

    from transformers import AutoModelForCausalLM

    cfg = _config(tmp_path, tiny_model)
    cfg.write_text(cfg.read_text().replace("reference:\n", "reference:\n  mode: copy\n"))
    one, two = tmp_path / "one", tmp_path / "two"
    _train(monkeypatch, "dpo", cfg, one)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29611"}  # a port no other test launches on
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "configs" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
                           "--main_process_port", "29611", "-m", "alignkit.cli", "dpo", "--config", str(cfg),
                           f"train.output_dir={two}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (two / "checkpoints" / "step-00000002" / "pytorch_model_fsdp_0").is_dir()
    out = tmp_path / "exported"
    _export(monkeypatch, two, out, "--step", "2")
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    reference = load_file(str(one / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    for name, value in reference.items():
        assert torch.allclose(exported[name.removeprefix("model.")], value, atol=1e-5), name
