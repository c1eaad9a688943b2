"""`alignkit <command> ...`: one table maps command names to entry points.

    alignkit dpo --config configs/dpo/smollm2-arith.yaml train.max_steps=20
    alignkit logps --model smollm2-135m-instruct --data pairs.jsonl --out logps.jsonl
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer

from alignkit import AlignkitError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Align language models with preferences.")


@app.command(context_settings={"allow_extra_args": False})
def dpo(
    config: str = typer.Option(..., "--config", "-c", help="YAML config (overrides only; see configs/dpo)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
):
    """Train with DPO (or IPO, hinge, robust, SimPO) on a preference file."""
    from alignkit.algos import dpo as algo
    from alignkit.config import DPOConfig, load_config

    cfg = load_config(DPOConfig, config, overrides or [])
    algo.run(cfg)


@app.command()
def sft(
    config: str = typer.Option(..., "--config", "-c", help="YAML config (see configs/sft)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
):
    """Supervised fine-tuning, loss on assistant tokens only."""
    from alignkit.algos import sft as algo
    from alignkit.config import SFTConfig, load_config

    algo.run(load_config(SFTConfig, config, overrides or []))


@app.command(context_settings={"allow_interspersed_args": True})
def rm(
    args: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides; or 'score' to score a file"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (see configs/rm)."),
    model: Optional[str] = typer.Option(None, help="score: a reward model trained by alignkit rm"),
    data: Optional[str] = typer.Option(None, help="score: a preference file"),
    out: str = typer.Option("scores.jsonl", help="score: output JSONL"),
    batch_size: int = typer.Option(8, min=1),
    max_length: int = typer.Option(512, min=1),
    max_prompt_length: int = typer.Option(256, min=1),
    split: str = typer.Option("train"),
):
    """Train a Bradley-Terry reward model (--config), or score a preference file with one (rm score)."""
    from alignkit.algos import rm as algo

    args = args or []
    if args[:1] == ["score"]:
        if not (model and data) or len(args) > 1:
            raise AlignkitError("usage: alignkit rm score --model MODEL --data FILE [--out scores.jsonl]")
        algo.score(model, data, out, batch_size, max_length, max_prompt_length, split)
        return
    if config is None:
        raise AlignkitError("alignkit rm: give --config (training) or 'score --model M --data F' (scoring)")
    from alignkit.config import RMConfig, load_config

    algo.run(load_config(RMConfig, config, args))


@app.command()
def ppo(
    config: str = typer.Option(..., "--config", "-c", help="YAML config (see configs/ppo)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
):
    """PPO: a reward model (or task rewards), a value model, GAE, clipped losses, KL penalty to the reference."""
    from alignkit.algos import ppo as algo
    from alignkit.config import PPOConfig, load_config

    algo.run(load_config(PPOConfig, config, overrides or []))


@app.command()
def pipeline(recipe: str = typer.Argument(..., help="recipe YAML: output_dir, model, stages")):
    """Run stages in order (for example sft -> rm -> ppo -> dpo), each starting from the last one's model."""
    from alignkit import pipeline as p

    p.run(recipe)


def _grpo(config: str | None, overrides: list[str], preset: str | None) -> None:
    from alignkit.algos import grpo as algo
    from alignkit.config import GRPOConfig, load_config

    if preset:
        overrides = [f"preset={preset}", *overrides]
    algo.run(load_config(GRPOConfig, config, overrides))


@app.command()
def grpo(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (see configs/grpo)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
):
    """GRPO: group-relative advantages from verifiable rewards, clipped policy loss, KL to the reference."""
    _grpo(config, overrides or [], None)


@app.command()
def dapo(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (see configs/grpo)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
):
    """DAPO: GRPO with clip-higher, dynamic sampling, token-level loss and overlong shaping (preset: dapo)."""
    _grpo(config, overrides or [], "dapo")


@app.command()
def logps(
    model: str = typer.Option(..., help="model directory, hub id in the local cache, .gguf file or alias"),
    data: str = typer.Option(..., help="preference file (.jsonl, .json, .parquet, or a saved dataset dir)"),
    out: str = typer.Option(..., help="output JSONL"),
    batch_size: int = typer.Option(8, min=1),
    max_length: int = typer.Option(4096, min=1),
    max_prompt_length: int = typer.Option(4095, min=1),
    bf16: bool = typer.Option(False, help="bf16 autocast"),
    split: str = typer.Option("train", help="split of a saved DatasetDict"),
    trust_remote_code: bool = typer.Option(False),
):
    """Summed chosen/rejected response log-probs per row (also a reference cache for dpo)."""
    from alignkit.algos import logps as cmd

    cmd.run(model, data, out, batch_size, max_length, max_prompt_length, bf16, split, trust_remote_code)


pairs_app = typer.Typer(no_args_is_help=True, help="Build preference pairs.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models.")
app.add_typer(pairs_app, name="pairs")
app.add_typer(eval_app, name="eval")


@pairs_app.command("build")
def pairs_build(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (see configs/pairs)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
):
    """Self-correction pairs: the student's wrong answers vs. a teacher's verified chains of thought."""
    from alignkit.config import PairsConfig, load_config
    from alignkit.pairs import build

    cfg = load_config(PairsConfig, config, overrides or [])
    summary = build.run(cfg)
    print(build.format_summary(summary, cfg.output_dir))


def _task_config(task: str, split: str, limit, languages: str, seed: int, question_field: str, answer_field: str):
    from pydantic import ValidationError

    from alignkit.config import TaskConfig, format_validation

    is_file = task.endswith((".jsonl", ".json", ".parquet")) or os.path.isdir(task)
    try:
        return TaskConfig(name=None if is_file else task, file=task if is_file else None, split=split, limit=limit,
                          languages=[x for x in languages.split(",") if x], seed=seed,
                          question_field=question_field, answer_field=answer_field)
    except ValidationError as e:
        raise AlignkitError(format_validation(e, "command-line options")) from None


@eval_app.command("accuracy")
def eval_accuracy(
    model: str = typer.Option(..., help="model directory, hub id in the local cache, .gguf file or alias"),
    task: str = typer.Option(..., help="built-in task (addition-2d, subtraction-3d, ...) or a question file"),
    split: str = typer.Option("heldout", help="built-in: train or heldout; saved DatasetDict: its split"),
    limit: Optional[int] = typer.Option(None, min=1, help="the first N questions"),
    languages: str = typer.Option("en", help="built-in tasks: en, zh or en,zh"),
    question_field: str = typer.Option("question"),
    answer_field: str = typer.Option("answer"),
    samples: int = typer.Option(0, min=0, help="sampled answers per question for pass@k / maj@k (0: greedy only)"),
    k: str = typer.Option("1", help="comma-separated k for pass@k and maj@k"),
    temperature: float = typer.Option(0.7, min=0.0),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    max_new_tokens: int = typer.Option(128, min=1),
    batch_size: int = typer.Option(64, min=1),
    seed: int = typer.Option(0),
    out: str = typer.Option("runs/eval-accuracy", help="directory for results.jsonl and summary.json"),
):
    """Greedy pass@1 (and optional pass@k, maj@k) on a verifiable task."""
    import json
    from pathlib import Path

    from alignkit.eval import accuracy
    from alignkit.models.load import load_model, load_tokenizer
    from alignkit.tasks import make_task, task_items

    ks = tuple(int(x) for x in k.split(",") if x.strip())
    if samples and any(x > samples or x < 1 for x in ks):
        raise AlignkitError(f"--k {k}: each k must be between 1 and --samples {samples}")
    cfg = _task_config(task, split, limit, languages, seed, question_field, answer_field)
    the_task = make_task(cfg)
    items = task_items(the_task, cfg)
    tokenizer = load_tokenizer(model)
    lm = load_model(model)
    results, summary = accuracy.evaluate(lm, tokenizer, the_task, items, samples, ks if samples else (), temperature,
                                         top_p, max_new_tokens, batch_size, seed)
    summary["model"] = model
    accuracy.write(results, summary, Path(out))
    print(json.dumps(summary, indent=1, ensure_ascii=False))


@app.command()
def demo(
    out: str = typer.Option("runs/demo", help="run directory (an interrupted demo resumes from it)"),
    model: str = typer.Option("smollm2-135m-instruct", help="the student"),
    task: str = typer.Option("addition-2d", help="built-in arithmetic task"),
    questions: int = typer.Option(288, min=1, help="training questions the student answers"),
    heldout: int = typer.Option(200, min=1, help="held-out questions evaluated before and after"),
    samples: int = typer.Option(1, min=1, help="student answers per training question"),
    teacher_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint for the teacher (default: "
                                                         "the task's own solver)"),
    teacher_model: Optional[str] = typer.Option(None, help="model name at --teacher-url"),
    teacher_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the endpoint's key"),
    seed: int = typer.Option(0),
):
    """Evaluate, build self-correction pairs, train DPO, evaluate again, write report.html."""
    from alignkit import demo as d

    d.run(out, model, task, questions, heldout, samples, teacher_url, teacher_model, teacher_key_env, seed=seed)


@app.command()
def serve(
    model: str = typer.Option(..., help="model directory, hub id in the local cache, .gguf file or alias"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000, min=0, max=65535),
    name: Optional[str] = typer.Option(None, help="model name clients ask for (default: --model)"),
    api_key_env: Optional[str] = typer.Option(None, help="require this environment variable's value as the key"),
    max_batch: int = typer.Option(16, min=1, help="requests generated together"),
    max_tokens: int = typer.Option(512, min=1, help="default max_tokens per request"),
):
    """An OpenAI-compatible chat server around a local model (for teachers and judges)."""
    from alignkit.generation.server import serve as run_server

    run_server(model, host, port, name, api_key_env, max_batch, max_tokens)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alignkit").setLevel(logging.INFO)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    try:
        code = app(args=argv, standalone_mode=False)
    except AlignkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "code", getattr(e, "exit_code", 0)))
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    if isinstance(code, int) and code:
        if code == 130:  # Ctrl-C: the command was interrupted; what it had written stays
            print("interrupted", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
