"""`alignkit dpo` end to end on a tiny model through the real CLI: loss types, reference modes, the
reference cache, resume after SIGKILL, a crash during a checkpoint write, and DDP over two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.cli import main
from conftest import ROOT, killed_and_resumed

DATA = ROOT / "data" / "arith" / "train.jsonl"
HELD = ROOT / "data" / "arith" / "heldout.jsonl"


def _config(tmp_path: Path, model: Path, **train) -> Path:
    # 20 held-out pairs are enough to compare evaluations; each is scored over the tiny model's 49k-token vocab.
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(HELD.read_text().splitlines(keepends=True)[:20]))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\n"
        f"data:\n  train: {DATA}\n  eval: {held}\n  max_length: 160\n  max_prompt_length: 96\n"
        f"reference:\n  cache_dir: {tmp_path / 'ref-cache'}\n"
        "train:\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n  max_steps: 4\n  eval_batch_size: 40\n"
        + "".join(f"  {k}: {v}\n" for k, v in train.items())
    )
    return cfg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


TRL_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "grad_norm", "learning_rate", "tokens_per_second"}


@pytest.mark.parametrize("loss_type, extra", [
    ("sigmoid", []), ("ipo", []),
    # ~5 s each, slow suite: the same path as sigmoid's, their values in tests/losses/test_preference.py
    pytest.param("hinge", [], marks=pytest.mark.slow),
    pytest.param("robust", ["loss.label_smoothing=0.1"], marks=pytest.mark.slow),
    ("simpo", ["loss.beta=2.0"]), ("sigmoid", ["loss.rpo_alpha=1.0"]),
])
def test_each_loss_type_trains(loss_type, extra, tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    main(["dpo", "--config", str(_config(tmp_path, tiny_model)), f"loss.type={loss_type}",
          f"train.output_dir={run}", *extra])
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert TRL_KEYS <= rows[0].keys()
    assert "eval_loss" in rows[-1] and "eval_rewards/accuracies" in rows[-1]
    if "loss.rpo_alpha=1.0" in extra:
        assert "nll_loss" in rows[0]
    assert (run / "config.yaml").is_file() and (run / "final" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert ("reference: none" in out) == (loss_type == "simpo")


def test_first_step_loss_is_log2_with_reference(tiny_model, tmp_path):
    """Policy = reference at step 0, so every pair's sigmoid loss is −log σ(0) = log 2."""
    run = tmp_path / "run"
    main(["dpo", "--config", str(_config(tmp_path, tiny_model)), f"train.output_dir={run}", "train.max_steps=1"])
    assert _metrics(run)[0]["loss"] == pytest.approx(0.6931472, abs=1e-6)


def test_reference_modes_agree(tiny_model, tmp_path, capsys):
    """Cached, frozen copy and precomputed (an `alignkit logps` file) give the same trajectory; so do the
    cached reference of a LoRA run and its adapter-disabled reference."""
    cfg = _config(tmp_path, tiny_model)
    runs = {}
    logps, data = tmp_path / "ref.jsonl", tmp_path / "train.jsonl"
    data.write_text("".join(DATA.read_text().splitlines(keepends=True)[:40]))  # 4 steps of 4 pairs visit 16
    main(["logps", "--model", str(tiny_model), "--data", str(data), "--out", str(logps),
          "--max-length", "160", "--max-prompt-length", "96"])
    for name, args in {
        "cached": [], "copy": ["reference.mode=copy"],
        "precomputed": [f"reference.logps={logps}", "data.eval=null"],
        "cached-noeval": ["data.eval=null"],
        "lora-cached": ["model.lora.r=4"], "lora-adapter": ["model.lora.r=4", "reference.mode=adapter"],
    }.items():
        runs[name] = tmp_path / name
        main(["dpo", "--config", str(cfg), f"train.output_dir={runs[name]}", f"data.train={data}", *args])
    losses = {k: [r["loss"] for r in _metrics(v)] for k, v in runs.items()}
    assert losses["cached"] == pytest.approx(losses["copy"], abs=1e-5)
    assert losses["precomputed"] == pytest.approx(losses["cached-noeval"], abs=1e-5)
    assert losses["lora-cached"] == pytest.approx(losses["lora-adapter"], abs=1e-5)
    assert losses["lora-cached"] != pytest.approx(losses["cached"], abs=1e-5)


def test_reference_cache_is_reused(tiny_model, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model)
    main(["dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'a'}"])
    first = capsys.readouterr().out
    main(["dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'b'}"])
    second = capsys.readouterr().out
    assert "reference log-probs: computing" in first
    assert "reference log-probs: reused cache" in second and "computing" not in second
    assert [r["loss"] for r in _metrics(tmp_path / "a")] == [r["loss"] for r in _metrics(tmp_path / "b")]


def _cli(*args):
    return [sys.executable, "-m", "alignkit.cli", *args]


def test_resume_after_sigkill_matches_uninterrupted(tiny_model, tmp_path):
    cfg = _config(tmp_path, tiny_model, max_steps=14, save_every=3, keep_last=2, eval_every=5)
    a, b = killed_and_resumed("dpo", cfg, tmp_path / "full", tmp_path / "killed", 8, 14)
    assert [r["step"] for r in b] == list(range(1, 15))  # one trajectory, no duplicated steps
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], abs=1e-6)
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    assert len(list((tmp_path / "killed" / "checkpoints").glob("step-*"))) == 2  # keep_last


def test_crash_during_checkpoint_write_keeps_previous(tiny_model, tmp_path, monkeypatch):
    from alignkit.train import checkpoint

    run = tmp_path / "run"
    cfg = _config(tmp_path, tiny_model, max_steps=6, save_every=2)
    real_save = checkpoint.torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the second checkpoint (step 4), after its weights were written
            raise KeyboardInterrupt("killed while writing")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(SystemExit):
        main(["dpo", "--config", str(cfg), f"train.output_dir={run}"])
    root = run / "checkpoints"
    assert (root / ".tmp-step-00000004").is_dir() and not (root / "step-00000004").exists()
    assert checkpoint.latest(root) == root / "step-00000002"
    assert not (root / ".tmp-step-00000004").exists()  # latest() cleared the torn write
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    main(["dpo", "--config", str(cfg), f"train.output_dir={run}"])  # resumes from step 2
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_two_processes_match_one(tiny_model, tmp_path):
    """DDP over gloo with 2 processes x 1 micro-batch of 2 == 1 process x 2 micro-batches of 2."""
    cfg = _config(tmp_path, tiny_model, max_steps=4)
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("dpo", "--config", str(cfg), f"train.output_dir={one}"), check=True, cwd=ROOT, env=env,
                   capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                "-m", "alignkit.cli", "dpo", "--config", str(cfg), f"train.output_dir={two}"]
    proc = subprocess.run(torchrun, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout  # really two: not two single-process runs side by side
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "rewards/margins", "grad_norm", "eval_loss"):
        assert [r.get(key) for r in b] == pytest.approx([r.get(key) for r in a], abs=1e-5), key


def test_accumulation_matches_one_big_micro_batch(tiny_model, tmp_path):
    """batch 4 as 4 micro-batches of 1 == 1 micro-batch of 4: the loss divides by the global batch."""
    cfg = _config(tmp_path, tiny_model, max_steps=3)
    main(["dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'acc'}", "train.micro_batch_size=1",
          "data.eval=null"])
    main(["dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'big'}", "train.micro_batch_size=4",
          "data.eval=null"])
    a, b = _metrics(tmp_path / "acc"), _metrics(tmp_path / "big")
    for key in ("loss", "grad_norm", "rewards/margins"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], abs=1e-5), key


def test_final_model_loads_with_transformers(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    for name, extra in {"merged": ["model.lora.r=4"], "adapter": ["model.lora.r=4", "model.lora.merge=false"],
                        "full": []}.items():
        run = tmp_path / name
        main(["dpo", "--config", str(_config(tmp_path, tiny_model, max_steps=2)), f"train.output_dir={run}",
              "data.eval=null", *extra])
        files = {p.name for p in (run / "final").iterdir()}
        if name == "adapter":
            assert "adapter_model.safetensors" in files
            from peft import AutoPeftModelForCausalLM

            AutoPeftModelForCausalLM.from_pretrained(run / "final")
        else:
            assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
            model = AutoModelForCausalLM.from_pretrained(run / "final")
            assert not any("lora" in n for n, _ in model.named_parameters())


def test_eager_attention_trains_as_the_default_kernel_does(tiny_model, tmp_path):
    """model.attn_implementation picks transformers' attention kernel for training (the demo trains with eager on
    CPUs, where the fused kernel's backward is slow for short pairs): the same losses, the kernel really used."""
    from alignkit.config import DPOConfig, load_config
    from alignkit.train.setup import fresh_module

    cfg = _config(tmp_path, tiny_model)
    runs = {}
    for kernel in ("sdpa", "eager"):
        runs[kernel] = tmp_path / kernel
        overrides = [f"model.attn_implementation={kernel}", "model.lora.r=8", "train.max_steps=2"]
        main(["dpo", "--config", str(cfg), f"train.output_dir={runs[kernel]}", *overrides])
        module = fresh_module(load_config(DPOConfig, str(cfg), overrides))
        assert module.model.config._attn_implementation == kernel
    for a, b in zip(_metrics(runs["sdpa"]), _metrics(runs["eager"]), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["logps/chosen"] == pytest.approx(a["logps/chosen"], rel=1e-4)
