"""Memory savers, each a config key: gradient (activation) checkpointing gives the same losses as without it;
8-bit optimizer states (bitsandbytes AdamW8bit) train, checkpoint and resume; QLoRA (4-bit base weights, LoRA on
top) trains through the same loop. Peak memory of each is measured in docs/benchmarks.md, not here."""

import json

import pytest
import torch

from alignkit.cli import main
from conftest import ROOT

DATA = ROOT / "data" / "arith" / "train.jsonl"
bnb = pytest.importorskip("bitsandbytes", reason="the quant extra is not installed (pip install 'alignkit[quant]')")


def _config(tmp_path, model, command="dpo", **train):
    cfg = tmp_path / f"{command}.yaml"
    prompt = "" if command == "sft" else "  max_prompt_length: 96\n"
    cfg.write_text(f"model:\n  path: {model}\ndata:\n  train: {DATA}\n  max_length: 160\n{prompt}"
                   "train:\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n  max_steps: 4\n"
                   + "".join(f"  {k}: {v}\n" for k, v in train.items()))
    return cfg


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("command, extra", [("dpo", []), ("dpo", ["model.lora.r=4"]), ("sft", []),
                                            ("sft", ["data.packing=true"]), ("rm", [])],
                         ids=["dpo", "dpo-lora", "sft", "sft-packed", "rm"])
def test_gradient_checkpointing_gives_the_same_losses(command, extra, tiny_model, tmp_path):
    """Recomputing activations in backward changes no number: losses and gradient norms equal, step by step.
    (DPO's shared-prompt pass needs the decoder's cache, which transformers turns off under checkpointing while
    training; the plain pass takes over there.)"""
    cfg = _config(tmp_path, tiny_model, command)
    main([command, "--config", str(cfg), f"train.output_dir={tmp_path / 'off'}", *extra])
    main([command, "--config", str(cfg), f"train.output_dir={tmp_path / 'on'}", "train.gradient_checkpointing=true",
          *extra])
    off, on = _metrics(tmp_path / "off"), _metrics(tmp_path / "on")
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in on] == pytest.approx([r[key] for r in off], abs=1e-5), key


def test_8bit_optimizer_states_train_and_resume(tiny_model, tmp_path):
    cfg = _config(tmp_path, tiny_model, max_steps=6, save_every=3)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(["dpo", "--config", str(cfg), f"train.output_dir={full}", "train.optim=adamw_8bit"])
    state = torch.load(full / "checkpoints" / "step-00000003" / "optimizer.pt", weights_only=True)["state"]
    quantised = [s.get("__bnb_optimizer_quant_state__", s) for s in state.values()]  # bnb's wrapped layout
    moments = [v for s in quantised for k, v in s.items() if k in ("state1", "state2")]
    bytes_8bit = sum(v.numel() for v in moments if v.dtype == torch.uint8)
    assert bytes_8bit > 0.9 * sum(v.numel() * v.element_size() for v in moments)  # tensors under 4096 stay fp32
    main(["dpo", "--config", str(cfg), f"train.output_dir={resumed}", "train.optim=adamw_8bit", "train.max_steps=3"])
    main(["dpo", "--config", str(cfg), f"train.output_dir={resumed}", "train.optim=adamw_8bit"])
    a, b = _metrics(full), _metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    main(["dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'fp32'}"])
    fp32 = _metrics(tmp_path / "fp32")
    assert a[0]["loss"] == pytest.approx(fp32[0]["loss"], abs=1e-6)  # same start
    assert a[-1]["loss"] == pytest.approx(fp32[-1]["loss"], abs=2e-3)  # 8-bit states: close, not equal


def test_qlora_trains_4bit_base_weights_with_lora(tiny_model, tmp_path, capsys):
    from alignkit.config import DPOConfig, load_config
    from alignkit.train.setup import fresh_module

    cfg = _config(tmp_path, tiny_model, max_steps=4)
    overrides = ["model.lora.r=4", "model.load_in_4bit=true", "reference.mode=adapter"]
    module = fresh_module(load_config(DPOConfig, str(cfg), overrides))
    linear4 = [m for m in module.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(m.weight.dtype == torch.uint8 for m in linear4)  # packed 4-bit base weights
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    main(["dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'q'}", *overrides])
    rows = _metrics(tmp_path / "q")
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # adapter off = the policy at step 1
    assert rows[-1]["loss"] < rows[0]["loss"] and (tmp_path / "q" / "final" / "model.safetensors").is_file()


def test_qlora_without_lora_is_refused(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["dpo", "--config", str(_config(tmp_path, tiny_model)), "model.load_in_4bit=true"])
    assert "model.load_in_4bit (QLoRA) trains LoRA adapters on frozen 4-bit weights: set model.lora" in \
        capsys.readouterr().err
