"""`alignkit pipeline recipe.yaml`: run training stages in order, each starting from the model the last one made.

    output_dir: runs/pipeline
    model: smollm2-135m-instruct        # the starting policy
    stages:
      - {name: sft, command: sft, config: configs/sft/smollm2-arith.yaml}
      - {name: rm,  command: rm,  config: configs/rm/smollm2-arith.yaml}
      - {name: ppo, command: ppo, config: configs/ppo/smollm2-arith.yaml, overrides: ["train.max_steps=20"]}
      - {name: dpo, command: dpo, config: configs/dpo/smollm2-arith.yaml}

Hand-over:
- Every stage writes into `<output_dir>/<name>` (its `train.output_dir`).
- Policy stages (sft, dpo, kto, ppo, grpo, dapo, online-dpo) start from the current policy: the recipe's `model`,
  then the `final/` of the last policy stage. An `rm` stage starts from the current policy too (the InstructGPT
  recipe), and its `final/` becomes the reward model of later `ppo` / `grpo` / `dapo` / `online-dpo` stages: it
  replaces the path of every reward of kind `model`, and is the reward of a stage whose config gives neither
  `rewards` nor a `judge`.

Each stage runs as its own process with its resolved config saved as `<output_dir>/<name>.yaml`.
`pipeline.json` records the stages that completed. A failed stage stops the pipeline and keeps everything
completed; a rerun skips completed stages and resumes the failed one from its own checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from alignkit import AlignkitError
from alignkit.config import Strict, format_validation, load_config

POLICY = {"sft", "dpo", "kto", "ppo", "grpo", "dapo", "online-dpo"}
RANKED = ("ppo", "grpo", "dapo", "online-dpo")  # stages a reward model (the last rm stage's) can score


class Stage(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    command: Literal["sft", "rm", "dpo", "kto", "ppo", "grpo", "dapo", "online-dpo"]
    config: str
    overrides: list[str] = []


class Recipe(Strict):
    output_dir: str = "runs/pipeline"
    model: str = "smollm2-135m-instruct"
    stages: list[Stage] = Field(min_length=1)


def _schema(command: str):
    from alignkit import config as c

    return {"sft": c.SFTConfig, "rm": c.RMConfig, "dpo": c.DPOConfig, "kto": c.KTOConfig, "ppo": c.PPOConfig,
            "grpo": c.GRPOConfig, "dapo": c.GRPOConfig, "online-dpo": c.OnlineDPOConfig}[command]


def _read_recipe(path: str) -> Recipe:
    from alignkit.data.files import read_text

    text = read_text(path)
    try:
        tree = yaml.safe_load(text) or {}
        return Recipe.model_validate(tree)
    except yaml.YAMLError as e:
        raise AlignkitError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    except ValidationError as e:
        raise AlignkitError(format_validation(e, path)) from None


def _stage_configs(recipe: Recipe, source: str) -> list[tuple[Stage, Path, Path]]:
    """Resolve every stage's config before anything runs: a bad stage fails the pipeline up front."""
    out_dir = Path(recipe.output_dir)
    names = [s.name for s in recipe.stages]
    if len(set(names)) != len(names):
        raise AlignkitError(f"{source}: stages: names must be unique (got {names})")
    policy, reward_model, planned = recipe.model, None, []
    for i, stage in enumerate(recipe.stages):
        stage_dir = out_dir / stage.name
        raw = yaml.safe_load(Path(stage.config).read_text()) if Path(stage.config).is_file() else None
        if raw is None and not Path(stage.config).is_file():
            raise AlignkitError(f"{source}: stages.{i}.config: {stage.config} not found")
        overrides = [*stage.overrides, f"model.path={policy}", f"train.output_dir={stage_dir}"]
        if stage.command == "dapo":
            overrides.insert(0, "preset=dapo")
        if stage.command in RANKED and reward_model and not {"rewards", "judge"} & set(raw or {}):
            overrides.append(f"rewards=[{{kind: model, model: '{reward_model}'}}]")
        cfg = load_config(_schema(stage.command), stage.config, overrides)
        if stage.command in RANKED and reward_model:  # reward models: the rm stage's
            cfg = cfg.model_copy(update={"rewards": [
                r.model_copy(update={"model": reward_model}) if r.kind == "model" else r for r in cfg.rewards]})
        resolved = out_dir / f"{stage.name}.yaml"
        planned.append((stage, resolved, stage_dir / "final"))
        out_dir.mkdir(parents=True, exist_ok=True)
        resolved.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        if stage.command == "rm":
            reward_model = str(stage_dir / "final")
        else:
            policy = str(stage_dir / "final")
    return planned


def run(path: str) -> None:
    recipe = _read_recipe(path)
    out_dir = Path(recipe.output_dir)
    state_path = out_dir / "pipeline.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"completed": []}
    plan = _stage_configs(recipe, path)
    for stage, config, final in plan:
        if stage.name in state["completed"] and final.exists():
            print(f"[pipeline] {stage.name}: done earlier, reusing {final}", flush=True)
            continue
        print(f"[pipeline] {stage.name}: alignkit {stage.command} --config {config}", flush=True)
        code = subprocess.call([sys.executable, "-m", "alignkit.cli", stage.command, "--config", str(config)])
        if code != 0 or not final.exists():
            done = ", ".join(state["completed"]) or "none"
            raise AlignkitError(f"pipeline stopped: stage '{stage.name}' failed (exit code {code}); completed "
                                f"stages kept ({done}); rerun the same command to resume at '{stage.name}'")
        state["completed"].append(stage.name)
        tmp = state_path.with_name(f"pipeline.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, state_path)
    print(f"[pipeline] all {len(plan)} stages done; final model {plan[-1][2]}", flush=True)
