"""The model card (README.md with YAML front matter, as the Hugging Face hub reads it) written next to every model
alignkit saves: the final model of a run (train/loop.save_final), a reward model (models/heads.save_scalar_model)
and an exported checkpoint (`alignkit export`). It names the base model, the method, the data, the metrics of the
last step and the command line that made it.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

METHODS = {"DPOConfig": "dpo", "KTOConfig": "kto", "SFTConfig": "sft", "RMConfig": "rm", "PPOConfig": "ppo",
           "GRPOConfig": "grpo", "OnlineDPOConfig": "online-dpo"}
DESCRIPTIONS = {
    "dpo": "direct preference optimization on preference pairs",
    "kto": "Kahneman-Tversky optimization on completions labelled desirable or undesirable",
    "sft": "supervised fine-tuning on demonstrations",
    "rm": "a Bradley-Terry reward model trained on preference pairs",
    "ppo": "PPO against a reward (reward model or verifiable task rewards)",
    "grpo": "GRPO with verifiable rewards",
    "dapo": "DAPO (GRPO with clip-higher, dynamic sampling, token-level loss, overlong shaping)",
    "online-dpo": "online DPO on pairs the policy samples as it trains, ranked by rewards or a judge",
}
# not metrics of the model: timings and the schedule
NOT_SHOWN = {"step", "step_seconds", "tokens_per_second", "learning_rate", "skipped"}


def method_of(cfg) -> str:
    """dpo, kto, sft, rm, ppo, grpo or dapo: from a config object's class, or from the shape of a saved
    config.yaml."""
    name = METHODS.get(type(cfg).__name__)
    if name is not None:
        return (getattr(cfg, "preset", None) or name) if name == "grpo" else name
    tree = _tree(cfg)
    if "grpo" in tree or "preset" in tree:
        return tree.get("preset") or "grpo"
    if "online" in tree:
        return "online-dpo"
    if "ppo" in tree:
        return "ppo"
    if "reference" in tree:
        return "kto" if "desirable_weight" in (tree.get("loss") or {}) else "dpo"
    if "loss" in tree:
        return "rm" if "margin" in (tree["loss"] or {}) else "dpo"
    if "packing" in (tree.get("data") or {}):
        return "sft"
    raise ValueError("not the config of a training command (no dpo, sft, rm, ppo or grpo sections)")


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running: `alignkit ...` when it is alignkit's CLI (the console script or
    `python -m alignkit.cli`), else the process's whole argv."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    entry = Path(argv[0])
    if entry.name in ("alignkit", "alignkit.exe") or entry.parts[-2:] in (("alignkit", "cli.py"),
                                                                           ("alignkit", "__main__.py")):
        return " ".join(["alignkit", *(shlex.quote(a) for a in argv[1:])])
    return " ".join(shlex.quote(a) for a in argv)


def last_metrics(run_dir: Path | None, step: int | None = None) -> dict:
    """The metrics row of `step` (the last logged row at or before it) in run_dir/metrics.jsonl, or the last row;
    {} when there is none."""
    path = run_dir / "metrics.jsonl" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    chosen: dict = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and (step is None or row.get("step", 0) <= step):
            chosen = row
    return chosen


def render(cfg, method: str | None = None, metrics: dict | None = None, source: str = "",
           command: str | None = None) -> str:
    tree = _tree(cfg)
    method = method or method_of(tree)
    model = tree.get("model") or {}
    lora = model.get("lora")
    adapter_only = bool(lora) and not lora.get("merge", True) and method != "rm"
    base = str(model.get("path", ""))
    front = {"base_model": base, "library_name": "peft" if adapter_only else "transformers",
             "tags": ["alignkit", method] + (["reward-model"] if method == "rm" else [])}
    what = "A reward model" if method == "rm" else "A LoRA adapter" if adapter_only else "A model"
    rows = [("Base model", f"`{base}`"),
            ("Method", f"`{method}`: {DESCRIPTIONS.get(method, method)}{_settings(tree, method)}"),
            ("Data", _data(tree))]
    if lora:
        rows.append(("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, "
                             f"{'the adapter alone' if adapter_only else 'merged into the weights'}"
                             + (" (trained on a 4-bit base)" if model.get("load_in_4bit") else "")))
    metrics = dict(metrics or {})
    if "step" in metrics:
        rows.append(("Steps", str(metrics["step"])))
    if source:
        rows.append(("Source", source))
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {method.upper()} from {base.rstrip('/').rsplit('/', 1)[-1] or base}", "",
             f"{what} trained with alignkit (`alignkit {method}`) from `{base}`.", "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    shown = {k: v for k, v in metrics.items() if k not in NOT_SHOWN and isinstance(v, (int, float))}
    if shown:
        ordered = sorted(shown, key=lambda k: (k.startswith("eval_"), k))[:30]
        lines += [f"## Metrics at step {metrics.get('step', '?')}", "", "| metric | value |", "|---|---|",
                  *(f"| {k} | {shown[k]:.4g} |" for k in ordered), ""]
    command = command_line() if command is None else command
    if command:
        lines += ["## Command", "", "```", command, "```", ""]
    return "\n".join(lines)


def write(dest: Path, cfg, run_dir: Path | None = None, method: str | None = None, step: int | None = None,
          source: str = "", command: str | None = None) -> Path:
    """dest/README.md for the model in `dest`, trained with `cfg` (a config object or a saved config tree) in
    `run_dir` (whose metrics.jsonl gives the metrics of `step`, default the last one)."""
    path = Path(dest) / "README.md"
    path.write_text(render(cfg, method, last_metrics(run_dir, step), source, command), encoding="utf-8")
    return path


def try_write(dest: Path, cfg=None, run_dir: Path | None = None, method: str | None = None) -> None:
    """`write`, never failing the save it accompanies: a card that cannot be written is a warning. Without `cfg`,
    the run's saved config.yaml (in run_dir) is read, and no card is written when there is none."""
    try:
        if cfg is None:
            saved = Path(run_dir) / "config.yaml" if run_dir is not None else None
            if saved is None or not saved.is_file():
                return
            cfg = yaml.safe_load(saved.read_text(encoding="utf-8"))
        write(dest, cfg, run_dir, method, source=f"final model of run `{run_dir}`" if run_dir is not None else "")
    except Exception as e:  # noqa: BLE001 - the model itself is what matters
        log.warning("model card not written into %s (%s: %s)", dest, type(e).__name__, e)


def _tree(cfg) -> dict:
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    if not isinstance(cfg, dict):
        raise ValueError("expected a config (a mapping of sections)")
    return cfg


def _data(tree: dict) -> str:
    data, task = tree.get("data"), tree.get("task")
    if data:
        held = f"; held out: `{data['eval']}`" if data.get("eval") else (
            f"; held out: {data['eval_fraction']:.0%} of it" if data.get("eval_fraction") else "")
        return f"`{data.get('train')}`{held}"
    if task:
        where = f"`{task['file']}`" if task.get("file") else f"built-in task `{task.get('name')}`"
        rewards = ", ".join(r.get("function") or r.get("model") or r.get("kind", "")
                            for r in tree.get("rewards") or [])
        return f"{where} ({task.get('split', 'train')} split){f'; rewards: {rewards}' if rewards else ''}"
    return "?"


def _settings(tree: dict, method: str) -> str:
    def get(section, key):
        return (tree.get(section) or {}).get(key)

    if method == "dpo":
        return f" (loss {get('loss', 'type')}, beta {get('loss', 'beta')})"
    if method == "kto":
        return (f" (loss {get('loss', 'type')}, beta {get('loss', 'beta')}, desirable weight "
                f"{get('loss', 'desirable_weight')}, undesirable weight {get('loss', 'undesirable_weight')})")
    if method == "online-dpo":
        return (f" (loss {get('loss', 'type')}, beta {get('loss', 'beta')}, "
                f"{get('online', 'samples_per_prompt')} samples per prompt)")
    if method in ("grpo", "dapo"):
        return f" (group size {get('grpo', 'group_size')}, beta {get('grpo', 'beta')})"
    if method == "ppo":
        return f" (KL coefficient {get('ppo', 'kl_coef')})"
    if method == "rm":
        return f" (margin {get('loss', 'margin')})"
    return ""
