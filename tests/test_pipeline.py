"""`alignkit pipeline`: sft -> rm -> ppo -> dpo on a tiny model; killed mid-stage, a rerun resumes there."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alignkit.cli import main
from conftest import ROOT

DATA = ROOT / "data" / "arith" / "train.jsonl"


def _recipe(tmp_path, model, ppo_steps=4):
    cfgs = {
        "sft": f"data:\n  train: {DATA}\n  max_length: 160\ntrain:\n  batch_size: 8\n  micro_batch_size: 8\n  max_steps: 2\n",
        "rm": f"data:\n  train: {DATA}\n  max_length: 160\n  max_prompt_length: 96\n"
              "train:\n  batch_size: 8\n  micro_batch_size: 8\n  max_steps: 2\n",
        "ppo": "task:\n  name: addition-2d\n  limit: 16\nppo:\n  rollout_prompts: 4\n  epochs: 1\n"
               "generation:\n  max_new_tokens: 6\n"
               f"train:\n  batch_size: 4\n  micro_batch_size: 4\n  max_steps: {ppo_steps}\n  save_every: 1\n",
        "dpo": f"data:\n  train: {DATA}\n  max_length: 160\n  max_prompt_length: 96\n"
               f"reference:\n  cache_dir: {tmp_path / 'ref-cache'}\n"
               "train:\n  batch_size: 4\n  micro_batch_size: 4\n  max_steps: 2\n",
    }
    return _write_recipe(tmp_path, model, cfgs)


def _write_recipe(tmp_path, model, cfgs: dict[str, str]):
    """A recipe with one stage per entry (stage name = command), each config written beside it."""
    stages = []
    for name, text in cfgs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        stages.append(f"  - {{name: {name}, command: {name}, config: {tmp_path / f'{name}.yaml'}}}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\nmodel: {model}\nstages:\n" + "".join(stages))
    return recipe


def test_sft_rm_ppo_dpo_hand_over_models(tiny_model, tmp_path, capsys):
    main(["pipeline", str(_recipe(tmp_path, tiny_model))])
    out = tmp_path / "out"
    assert json.loads((out / "pipeline.json").read_text())["completed"] == ["sft", "rm", "ppo", "dpo"]
    import yaml

    ppo = yaml.safe_load((out / "ppo.yaml").read_text())
    assert ppo["model"]["path"] == str(out / "sft" / "final")  # the policy after SFT
    assert ppo["rewards"] == [{"kind": "model", "function": None, "model": str(out / "rm" / "final"), "weight": 1.0}]
    assert yaml.safe_load((out / "rm.yaml").read_text())["model"]["path"] == str(out / "sft" / "final")
    assert yaml.safe_load((out / "dpo.yaml").read_text())["model"]["path"] == str(out / "ppo" / "final")
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert (out / stage / "final" / "config.json").is_file()
    capsys.readouterr()
    main(["pipeline", str(_recipe(tmp_path, tiny_model))])  # everything done: nothing reruns
    assert capsys.readouterr().out.count("done earlier") == 4


@pytest.mark.slow  # ~50 s; completed stages kept is in the default suite, a stage's own resume in test_dpo_cli
def test_killed_mid_stage_resumes_at_that_stage(tiny_model, tmp_path):
    recipe = _recipe(tmp_path, tiny_model, ppo_steps=40)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "alignkit.cli", "pipeline", str(recipe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 300
    while not list((out / "ppo" / "checkpoints").glob("step-*")):
        assert proc.poll() is None and time.time() < deadline, "the ppo stage never saved a checkpoint"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "pipeline.json").read_text())["completed"] == ["sft", "rm"]
    rerun = subprocess.run(cmd + [], capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "[pipeline] sft: done earlier" in rerun.stdout and "[pipeline] rm: done earlier" in rerun.stdout
    assert "[pipeline] ppo: alignkit ppo" in rerun.stdout
    assert "resumed from" in rerun.stderr  # the ppo stage went on from its checkpoint
    assert json.loads((out / "pipeline.json").read_text())["completed"] == ["sft", "rm", "ppo", "dpo"]


def test_a_failing_stage_stops_the_pipeline_and_keeps_what_completed(tiny_model, tmp_path, capsys):
    recipe = _recipe(tmp_path, tiny_model)
    (tmp_path / "rm.yaml").write_text("data:\n  train: /nonexistent/pairs.jsonl\n")
    with pytest.raises(SystemExit) as e:
        main(["pipeline", str(recipe)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "stage 'rm' failed" in err and "completed stages kept (sft)" in err
    assert json.loads((tmp_path / "out" / "pipeline.json").read_text())["completed"] == ["sft"]


@pytest.mark.slow  # ~30 s of three tiny stages; the hand-over itself is in the sft -> rm -> ppo -> dpo test
def test_rm_online_dpo_kto_hand_over_models(tiny_model, tmp_path):
    """An online-dpo stage without rewards is ranked by the rm stage's reward model, and a kto stage (reading the
    shipped preference file, unpaired) starts from the online-dpo stage's policy."""
    import yaml

    cfgs = {
        "rm": f"data:\n  train: {DATA}\n  max_length: 160\n  max_prompt_length: 96\n"
              "train:\n  batch_size: 8\n  micro_batch_size: 8\n  max_steps: 2\n",
        "online-dpo": "task:\n  name: addition-1d\n  limit: 8\nonline:\n  samples_per_prompt: 2\n"
                      "generation:\n  max_new_tokens: 6\n  batch_size: 8\n"
                      "train:\n  batch_size: 4\n  micro_batch_size: 4\n  max_steps: 2\n",
        "kto": f"data:\n  train: {DATA}\n  max_length: 160\n  max_prompt_length: 96\n"
               f"reference:\n  cache_dir: {tmp_path / 'ref-cache'}\n"
               "train:\n  batch_size: 4\n  micro_batch_size: 4\n  max_steps: 2\n",
    }
    main(["pipeline", str(_write_recipe(tmp_path, tiny_model, cfgs))])
    out = tmp_path / "out"
    assert json.loads((out / "pipeline.json").read_text())["completed"] == ["rm", "online-dpo", "kto"]
    online = yaml.safe_load((out / "online-dpo.yaml").read_text())
    assert online["model"]["path"] == str(tiny_model)  # an rm stage does not change the policy
    assert online["rewards"] == [{"kind": "model", "function": None, "model": str(out / "rm" / "final"),
                                  "weight": 1.0}]
    assert yaml.safe_load((out / "kto.yaml").read_text())["model"]["path"] == str(out / "online-dpo" / "final")
    rows = [json.loads(line) for line in (out / "online-dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("pairs" in r for r in rows)
    for stage in ("rm", "online-dpo", "kto"):
        assert (out / stage / "final" / "config.json").is_file()
