"""`train/setup.py`: every training command starts the same way, so `train.bf16` means the same in each."""

import pytest
import torch

from alignkit.cli import main
from conftest import ROOT

PAIRS = ROOT / "data" / "arith" / "train.jsonl"


def _empty(tmp_path) -> str:
    (tmp_path / "empty.yaml").write_text("{}\n")
    return str(tmp_path / "empty.yaml")


def _config(command: str, tmp_path, model) -> list[str]:
    run = tmp_path / "run"
    common = [f"model.path={model}", f"train.output_dir={run}", "train.max_steps=1"]
    if command in ("dpo", "rm"):
        return [*common, f"data.train={PAIRS}", "data.max_length=160", "data.max_prompt_length=96",
                "train.batch_size=2", "train.micro_batch_size=2", f"reference.cache_dir={tmp_path / 'cache'}"
                ][: None if command == "dpo" else -1]
    if command == "sft":
        return [*common, f"data.train={PAIRS}", "data.max_length=160", "train.batch_size=2", "train.micro_batch_size=2"]
    task = ["task.name=addition-1d", "task.limit=4", "generation.max_new_tokens=4"]
    if command == "grpo":
        return [*common, *task, "grpo.group_size=2", "train.batch_size=4", "train.micro_batch_size=4"]
    return [*common, *task, "rewards=[{kind: task}]", "ppo.rollout_prompts=2", "train.batch_size=2",
            "train.micro_batch_size=2"]


@pytest.mark.parametrize("command", ["sft", "rm", "ppo", "dpo", "grpo"])
def test_bf16_sets_the_compute_precision_of_every_command(command, tiny_model, tmp_path, monkeypatch, capsys):
    """The dtype of every linear layer's output, over the whole run (training passes, sampling, reference and
    rollout passes): float32 without train.bf16, bf16 with it. bf16 is taken as native here so the test runs on
    any CPU (where it is not, the command falls back to float32 for every command alike, with a warning)."""
    monkeypatch.setattr("alignkit.train.setup.bf16_is_fast", lambda device: True)
    seen: dict[bool, set] = {False: set(), True: set()}
    current = [False]

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            seen[current[0]].add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        for bf16 in (False, True):
            current[0] = bf16
            main([command, "--config", _empty(tmp_path), *_config(command, tmp_path / str(bf16), tiny_model),
                  f"train.bf16={str(bf16).lower()}"])
            assert ("bf16 autocast" if bf16 else "float32 compute") in capsys.readouterr().out
    finally:
        handle.remove()
    assert seen[False] == {torch.float32}
    assert seen[True] == {torch.bfloat16}


def test_bf16_falls_back_to_float32_where_the_hardware_has_none(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("alignkit.train.setup.bf16_is_fast", lambda device: False)
    main(["sft", "--config", _empty(tmp_path), *_config("sft", tmp_path, tiny_model), "train.bf16=true"])
    assert "float32 compute" in capsys.readouterr().out
    assert "bf16: false" in (tmp_path / "run" / "config.yaml").read_text()
