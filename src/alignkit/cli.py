"""`alignkit <command> ...`: the training commands are one table (`TRAINING`: name -> module, config, help);
the rest (scoring, pairs, evaluation, serving, reports) are typer commands below, each a thin call into its module.

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
from alignkit.cli_options import _finite, _out_dir, _out_file, _sampler, _task_config

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Align language models with preferences.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"alignkit {version('alignkit')}")
        raise typer.Exit()


@app.callback()
def _top(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print alignkit's version and exit.")) -> None:
    pass


# The training commands: name -> (module with run(cfg), config schema, preset, config required, help). Each reads a
# YAML config (overrides only) plus dotted `key.sub=value` overrides; `rm` (which also scores) is defined below.
TRAINING = {
    "dpo": ("alignkit.algos.dpo", "DPOConfig", None, True,
            "Train with DPO or a variant (TRL's loss types and mixes of them, SimPO, ORPO, CPO) on a preference file."),
    "kto": ("alignkit.algos.kto", "KTOConfig", None, True,
            "Train with KTO on unpaired rows (prompt, completion, label), or on a preference file, unpaired."),
    "sft": ("alignkit.algos.sft", "SFTConfig", None, True, "Supervised fine-tuning, loss on assistant tokens only."),
    "ppo": ("alignkit.algos.ppo", "PPOConfig", None, True,
            "PPO: a reward model (or task rewards), a value model, GAE, clipped losses, KL penalty to the reference."),
    "grpo": ("alignkit.algos.grpo", "GRPOConfig", None, False,
             "GRPO: group-relative advantages from verifiable rewards, clipped policy loss, KL to the reference."),
    "dapo": ("alignkit.algos.grpo", "GRPOConfig", "dapo", False,
             "DAPO: GRPO with clip-higher, dynamic sampling, token-level loss and overlong shaping (preset: dapo)."),
    "online-dpo": ("alignkit.algos.online_dpo", "OnlineDPOConfig", None, False,
                   "Online DPO: pairs sampled from the current policy each step, ranked by rewards or a judge."),
}


SHOW_CONFIG = ("Print every config key with its default (with --config and overrides: its resolved value) and its "
               "help, then exit.")


def _show_config(schema: str, config: Optional[str], overrides: list[str], command: str) -> None:
    from alignkit import config as config_module
    from alignkit.config_help import describe_config

    print(describe_config(getattr(config_module, schema), config, overrides, command))


def _missing_option(ctx, name: str) -> None:
    """click's own usage error for a required option left out (exit 2), for one required only without
    --show-config."""
    try:
        from typer._click.exceptions import MissingParameter
    except ImportError:
        from click import MissingParameter
    raise MissingParameter(ctx=ctx, param=next(p for p in ctx.command.params if p.name == name))


def _training_command(name: str, module: str, schema: str, preset: str | None, required: bool, help: str) -> None:
    def command(
        ctx: typer.Context,
        config: Optional[str] = typer.Option(None, "--config", "-c", help=f"YAML config (overrides only; see configs/"
                                             f"{module.rsplit('.', 1)[1].replace('_', '-')})"
                                             f"{'; required' if required else ''}."),
        overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
        show_config: bool = typer.Option(False, "--show-config", help=SHOW_CONFIG),
    ):
        import importlib

        from alignkit import config as config_module

        extra = [f"preset={preset}"] if preset else []
        if show_config:
            return _show_config(schema, config, [*extra, *(overrides or [])], name)
        if required and config is None:
            _missing_option(ctx, "config")
        cfg = config_module.load_config(getattr(config_module, schema), config, [*extra, *(overrides or [])])
        importlib.import_module(module).run(cfg)

    command.__doc__ = help
    app.command(name)(command)


for _name, _entry in TRAINING.items():
    _training_command(_name, *_entry)


@app.command(context_settings={"allow_interspersed_args": True})
def rm(
    args: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides; or 'score' to score a file"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (see configs/rm)."),
    model: Optional[str] = typer.Option(None, help="score: a reward model trained by alignkit rm"),
    data: Optional[str] = typer.Option(None, help="score: a preference file"),
    out: str = typer.Option("scores.jsonl", callback=_out_file, help="score: output JSONL"),
    batch_size: int = typer.Option(8, min=1),
    max_length: int = typer.Option(512, min=1),
    max_prompt_length: int = typer.Option(256, min=1),
    split: str = typer.Option("train"),
    show_config: bool = typer.Option(False, "--show-config", help=SHOW_CONFIG),
):
    """Train a Bradley-Terry reward model (--config), or score a preference file with one (rm score)."""
    args = args or []
    if show_config and args[:1] != ["score"]:
        return _show_config("RMConfig", config, args, "rm")
    from alignkit.algos import rm as algo

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
def pipeline(recipe: str = typer.Argument(..., help="recipe YAML: output_dir, model, stages")):
    """Run stages in order (for example sft -> rm -> ppo -> dpo), each starting from the last one's model."""
    from alignkit import pipeline as p

    p.run(recipe)


@app.command()
def logps(
    model: str = typer.Option(..., help="model directory, hub id, .gguf file or alias"),
    data: str = typer.Option(..., help="preference file (.jsonl, .json, .parquet, or a saved dataset dir)"),
    out: str = typer.Option(..., callback=_out_file, help="output JSONL"),
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
    show_config: bool = typer.Option(False, "--show-config", help=SHOW_CONFIG),
):
    """Self-correction pairs: the student's wrong answers vs. a teacher's verified chains of thought."""
    if show_config:
        return _show_config("PairsConfig", config, overrides or [], "pairs build")
    from alignkit.config import PairsConfig, load_config
    from alignkit.pairs import build

    cfg = load_config(PairsConfig, config, overrides or [])
    summary = build.run(cfg)
    print(build.format_summary(summary, cfg.output_dir))


@pairs_app.command("slips")
def pairs_slips(
    task: str = typer.Option(..., help="built-in arithmetic task (addition-2d, subtraction-3d, multiplication-2d, ...)"),
    out: str = typer.Option(..., help="the pairs file to write (JSONL: prompt, chosen, rejected, metadata)"),
    split: str = typer.Option("train", help="train or heldout"),
    limit: Optional[int] = typer.Option(None, min=1, help="the first N questions (default: the split's size)"),
    offset: int = typer.Option(0, min=0, help="skip the first N questions"),
    languages: str = typer.Option("en", help="en, zh or en,zh"),
    seed: int = typer.Option(0, help="which questions are drawn, and which slips"),
):
    """Hard pairs for a reward model: the task solver's solution vs. the same with one slip and a wrong answer."""
    from alignkit.pairs import slips

    cfg = _task_config(task, split, limit, languages, seed, "question", "answer").model_copy(update={"offset": offset})
    print(f"wrote {slips.write(cfg, out, seed)} pairs to {out}")


@eval_app.command("accuracy")
def eval_accuracy(
    model: str = typer.Option(..., help="model directory, hub id, .gguf file or alias"),
    task: str = typer.Option(..., help="built-in task (addition-2d, subtraction-3d, ...) or a question file"),
    split: str = typer.Option("heldout", help="built-in: train or heldout; saved DatasetDict: its split"),
    limit: Optional[int] = typer.Option(None, min=1, help="the first N questions"),
    languages: str = typer.Option("en", help="built-in tasks: en, zh or en,zh"),
    question_field: str = typer.Option("question"),
    answer_field: str = typer.Option("answer"),
    samples: int = typer.Option(0, min=0, help="sampled answers per question for pass@k / maj@k (0: greedy only)"),
    k: str = typer.Option("1", help="comma-separated k for pass@k and maj@k"),
    temperature: float = typer.Option(0.7, callback=_finite, min=0.0),
    top_p: float = typer.Option(1.0, callback=_finite, min=0.0, max=1.0),
    max_new_tokens: int = typer.Option(128, min=1),
    batch_size: int = typer.Option(64, min=1),
    bf16: bool = typer.Option(False, help="the local sampler under bf16 autocast (faster with bf16 units)"),
    seed: int = typer.Option(0),
    out: str = typer.Option("runs/eval-accuracy", callback=_out_dir,
                           help="directory for results.jsonl and summary.json"),
    backend: str = typer.Option("local", help="local (alignkit's sampler) or vllm (engines at --engine-url)"),
    engine_url: Optional[list[str]] = typer.Option(None, help="a vLLM server serving --model (repeatable)"),
    engine_timeout: float = typer.Option(300.0, callback=_finite, min=1.0, help="seconds for one request to an engine"),
):
    """Greedy pass@1 (and optional pass@k, maj@k) on a verifiable task."""
    import json
    from pathlib import Path

    from alignkit.eval import accuracy
    from alignkit.tasks import make_task, task_items

    ks = tuple(int(x) for x in k.split(",") if x.strip())
    if samples and any(x > samples or x < 1 for x in ks):
        raise AlignkitError(f"--k {k}: each k must be between 1 and --samples {samples}")
    cfg = _task_config(task, split, limit, languages, seed, question_field, answer_field)
    the_task = make_task(cfg)
    items = task_items(the_task, cfg)
    sampler, tokenizer = _sampler(model, backend, engine_url or [], engine_timeout, batch_size, bf16)
    try:
        results, summary = accuracy.evaluate(sampler, tokenizer, the_task, items, samples, ks if samples else (),
                                             temperature, top_p, max_new_tokens, seed)
    finally:
        sampler.close()
    summary["model"] = model
    summary["backend"] = sampler.name
    accuracy.write(results, summary, Path(out))
    print(json.dumps(summary, indent=1, ensure_ascii=False))


def _write_eval(results: list[dict] | None, summary: dict, out: str) -> None:
    """results.jsonl (when there are per-item results) and summary.json in `out`; the metrics printed."""
    import json
    from pathlib import Path

    from alignkit.eval.accuracy import write

    if results is None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    else:
        write(results, summary, Path(out))
    print(json.dumps(summary, indent=1, ensure_ascii=False))


def _judge_factory(url, model, key_env, local, concurrency, max_tokens, batch_size):
    from alignkit.eval.judges import make_judge

    return lambda: make_judge(url, model, key_env, local, concurrency, max_tokens, batch_size)


@eval_app.command("judge")
def eval_judge(
    mode: str = typer.Argument(..., help="single (1-10 ratings) or pairwise (two models, judged in both orders)"),
    answers: Optional[list[str]] = typer.Option(None, help="answers JSONL (prompt/question, answer/response); "
                                                           "twice for pairwise"),
    model: Optional[list[str]] = typer.Option(None, help="generate answers with this model (twice for pairwise)"),
    prompts: Optional[str] = typer.Option(None, help="with --model: JSONL with a prompt or question field"),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint of the judge"),
    judge_model: Optional[str] = typer.Option(None, help="the judge's model name at --judge-url"),
    judge_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the endpoint's key"),
    judge_local: Optional[str] = typer.Option(None, help="a local model as the judge (instead of --judge-url)"),
    template: Optional[str] = typer.Option(None, help="file with the judge's message: {question} and {answer}, "
                                                      "or {answer_a} and {answer_b}"),
    lang: str = typer.Option("en", help="language of the built-in templates: en or zh"),
    retries: int = typer.Option(2, min=0, help="re-asks for a verdict or rating that cannot be read"),
    concurrency: int = typer.Option(8, min=1, help="requests in flight to --judge-url"),
    judge_max_tokens: int = typer.Option(512, min=1),
    max_new_tokens: int = typer.Option(256, min=1, help="answers generated with --model"),
    batch_size: int = typer.Option(16, min=1),
    resamples: int = typer.Option(1000, min=1, help="bootstrap resamples for the 95% interval"),
    seed: int = typer.Option(0),
    out: str = typer.Option("runs/eval-judge", callback=_out_dir,
                           help="directory for results.jsonl and summary.json"),
):
    """LLM-as-judge: 1-10 ratings of one model's answers, or a pairwise win rate of two models."""
    from alignkit.eval import judge

    factory = _judge_factory(judge_url, judge_model, judge_key_env, judge_local, concurrency, judge_max_tokens,
                             batch_size)
    results, summary = judge.run(mode, answers or [], model or [], prompts, factory, template, lang, retries,
                                 max_new_tokens, batch_size, resamples, seed)
    _write_eval(results, summary, out)


@eval_app.command("refusal")
def eval_refusal(
    model: Optional[str] = typer.Option(None, help="generate the answers with this model (greedy)"),
    answers: Optional[str] = typer.Option(None, help="or read them: JSONL with prompt and answer fields"),
    prompts: str = typer.Option("data/refusal/prompts.jsonl", help="prompt set: prompt, should_refuse, lang"),
    phrases: Optional[str] = typer.Option(None, help="refusal phrases, one a line (default: built-in en + zh)"),
    judge_url: Optional[str] = typer.Option(None, help="ask this OpenAI-compatible endpoint whether it is a refusal"),
    judge_model: Optional[str] = typer.Option(None, help="the judge's model name at --judge-url"),
    judge_key_env: str = typer.Option("OPENAI_API_KEY"),
    judge_local: Optional[str] = typer.Option(None, help="a local model as the judge"),
    retries: int = typer.Option(2, min=0),
    concurrency: int = typer.Option(8, min=1),
    max_new_tokens: int = typer.Option(128, min=1),
    batch_size: int = typer.Option(32, min=1),
    out: str = typer.Option("runs/eval-refusal", callback=_out_dir,
                           help="directory for results.jsonl and summary.json"),
):
    """Refusal rate on harmful prompts and over-refusal rate on harmless ones, per language."""
    from alignkit.eval import refusal

    factory = (_judge_factory(judge_url, judge_model, judge_key_env, judge_local, concurrency, 128, batch_size)
               if judge_url or judge_local else None)
    results, summary = refusal.run(model, answers, prompts, phrases, factory, retries, max_new_tokens, batch_size)
    _write_eval(results, summary, out)


@eval_app.command("stability")
def eval_stability(
    model: str = typer.Option(..., help="model directory, hub id, .gguf file or alias"),
    task: str = typer.Option(..., help="built-in task (addition-2d, ...) or a question file"),
    split: str = typer.Option("heldout"),
    limit: Optional[int] = typer.Option(50, min=1, help="the first N questions"),
    languages: str = typer.Option("en", help="built-in tasks: en, zh or en,zh"),
    question_field: str = typer.Option("question"),
    answer_field: str = typer.Option("answer"),
    samples: int = typer.Option(8, min=2, help="times each question is asked"),
    temperature: float = typer.Option(0.7, callback=_finite, min=0.0),
    top_p: float = typer.Option(1.0, callback=_finite, min=0.0, max=1.0),
    max_new_tokens: int = typer.Option(128, min=1),
    batch_size: int = typer.Option(64, min=1),
    seed: int = typer.Option(0),
    out: str = typer.Option("runs/eval-stability", callback=_out_dir,
                           help="directory for results.jsonl and summary.json"),
):
    """Ask each question n times: agreement with the majority answer, spread of accuracy across passes."""
    from alignkit.eval import stability
    from alignkit.models.load import load_model, load_tokenizer
    from alignkit.tasks import make_task, task_items

    cfg = _task_config(task, split, limit, languages, seed, question_field, answer_field)
    the_task = make_task(cfg)
    items = task_items(the_task, cfg)
    tokenizer = load_tokenizer(model)
    results, summary = stability.evaluate(load_model(model), tokenizer, the_task, items, samples, temperature, top_p,
                                          max_new_tokens, batch_size, seed)
    summary["model"] = model
    _write_eval(results, summary, out)


@eval_app.command("perplexity")
def eval_perplexity(
    model: str = typer.Option(..., help="model directory, hub id, .gguf file or alias"),
    file: str = typer.Option("data/eval/heldout.txt", help="UTF-8 text file"),
    max_length: int = typer.Option(512, min=2, help="tokens per window"),
    stride: int = typer.Option(256, min=1, help="tokens between window starts (at most --max-length)"),
    out: str = typer.Option("runs/eval-perplexity", callback=_out_dir, help="directory for summary.json"),
):
    """Token-level perplexity (and bits per byte) over a held-out text file, in sliding windows."""
    from alignkit.eval import capability

    _write_eval(None, capability.run_perplexity(model, file, max_length, stride), out)


@eval_app.command("mc")
def eval_mc(
    model: str = typer.Option(..., help="model directory, hub id, .gguf file or alias"),
    file: str = typer.Option("data/eval/mmlu_sample.jsonl", help="MMLU / C-Eval layout, JSONL or CSV"),
    limit: Optional[int] = typer.Option(None, min=1, help="the first N questions"),
    batch_size: int = typer.Option(16, min=1, help="choices scored together"),
    out: str = typer.Option("runs/eval-mc", callback=_out_dir,
                           help="directory for results.jsonl and summary.json"),
):
    """Multiple-choice accuracy by choice log-likelihood (plain and length-normalised)."""
    from alignkit.eval import capability

    results, summary = capability.run_mc(model, file, batch_size, limit)
    _write_eval(results, summary, out)


@eval_app.command("compare")
def eval_compare(
    a: str = typer.Argument(..., help="summary.json of the baseline"),
    b: str = typer.Argument(..., help="summary.json of the candidate"),
    threshold: float = typer.Option(0.02, callback=_finite, min=0.0, help="worse by more than this is a regression (absolute for "
                                                        "rates in [0, 1], relative otherwise)"),
    fail_on_regression: bool = typer.Option(False, help="exit with status 1 when a regression is flagged"),
):
    """Two eval summaries side by side with deltas; regressions flagged in each metric's better direction."""
    from alignkit.eval import compare

    rows = compare.compare(compare.load_metrics(a), compare.load_metrics(b), threshold)
    print(compare.format_table(rows, a, b))
    if fail_on_regression and any(r["status"] == "REGRESSION" for r in rows):
        raise typer.Exit(1)


@app.command()
def demo(
    out: str = typer.Option("runs/demo", callback=_out_dir,
                           help="run directory (an interrupted demo resumes from it)"),
    model: str = typer.Option("smollm2-135m-instruct", help="the student"),
    task: str = typer.Option("addition-2d", help="built-in arithmetic task"),
    questions: int = typer.Option(288, min=1, help="training questions the student answers"),
    heldout: int = typer.Option(200, min=1, help="held-out questions evaluated before and after"),
    samples: int = typer.Option(1, min=1, help="student answers per training question"),
    temperature: float = typer.Option(1.0, callback=_finite, min=0.0, help="the student's sampling temperature (0: greedy, its "
                                                         "likeliest answer)"),
    rejected: str = typer.Option("first", help="which wrong answer is rejected: first, or likeliest (highest "
                                               "log-prob under the student)"),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="new tokens per held-out answer (default: the "
                                                              "task solver's longest solution + 16, at least 72)"),
    rounds: int = typer.Option(1, min=1, help="rounds of self-correction: each round's trained model answers "
                                             "fresh questions and learns from its remaining mistakes"),
    teacher_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint for the teacher (default: "
                                                         "the task's own solver)"),
    teacher_model: Optional[str] = typer.Option(None, help="model name at --teacher-url"),
    teacher_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the endpoint's key"),
    seed: int = typer.Option(0),
    language: str = typer.Option("en", help="en or zh: the language of the questions, the teacher's answers and "
                                            "the held-out set"),
):
    """Evaluate, build self-correction pairs, train DPO, evaluate again, write report.html."""
    from alignkit import demo as d

    if language not in ("en", "zh"):
        raise typer.BadParameter(f"{language!r}: use en or zh", param_hint="'--language'")
    if rejected not in ("first", "likeliest"):
        raise typer.BadParameter(f"{rejected!r}: use first or likeliest", param_hint="'--rejected'")
    d.run(out, model, task, questions, heldout, samples, teacher_url, teacher_model, teacher_key_env, seed=seed,
          language=language, rounds=rounds, temperature=temperature, rejected=rejected,
          max_new_tokens=max_new_tokens)


@app.command()
def serve(
    model: str = typer.Option(..., help="model directory, hub id, .gguf file or alias"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000, min=0, max=65535),
    name: Optional[str] = typer.Option(None, help="model name clients ask for (default: --model)"),
    api_key_env: Optional[str] = typer.Option(None, help="require this environment variable's value as the key"),
    max_batch: int = typer.Option(16, min=1, help="requests generated together"),
    max_tokens: int = typer.Option(512, min=1, help="default max_tokens per request"),
    max_tokens_limit: int = typer.Option(4096, min=1, help="the most max_tokens a request may ask for"),
):
    """An OpenAI-compatible chat server around a local model (for teachers and judges)."""
    from alignkit.generation.server import serve as run_server

    run_server(model, host, port, name, api_key_env, max_batch, max_tokens, max_tokens_limit)


def _quiet_libraries() -> None:
    # The hub is left as the user has it (HF_HUB_OFFLINE is theirs to set): a hub id downloads when online and
    # loads from the cache when cached; local paths, GGUF files and the built-in alias never touch the network.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alignkit").setLevel(logging.INFO)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


sxs_app = typer.Typer(no_args_is_help=True, help="Blind side-by-side labelling by people (see docs/sxs.md).")
app.add_typer(sxs_app, name="sxs")


@sxs_app.command("serve")
def sxs_serve(
    pairs: str = typer.Option(..., help="items: JSONL with prompt, model_a, answer_a, model_b, answer_b (and id)"),
    db: str = typer.Option("labels.sqlite", help="SQLite file the labels go to"),
    host: str = typer.Option("127.0.0.1", help="a non-loopback address needs --token"),
    port: int = typer.Option(8700, min=0, max=65535, help="0: any free port"),
    token: Optional[str] = typer.Option(None, envvar="ALIGNKIT_SXS_TOKEN",
                                        help="access token (16+ characters) annotators open the page with"),
    seed: int = typer.Option(0, help="seeds each annotator's item order and left/right sides"),
    lang: str = typer.Option("auto", help="the page's language: auto (Chinese when most prompts are), en or zh"),
):
    """Serve the labelling page: two answers, model names hidden, in random order; labels into SQLite."""
    from alignkit.sxs.server import serve as run_server

    run_server(pairs, db, host, port, token, seed, lang)


@sxs_app.command("export")
def sxs_export(
    db: str = typer.Option(..., help="the labels database written by sxs serve"),
    pairs: str = typer.Option(..., help="the items file the labels refer to"),
    out: str = typer.Option(..., callback=_out_dir,
                           help="directory for sxs_report.json, sxs_report.md and dpo_pairs.jsonl"),
    bootstrap: int = typer.Option(2000, min=100, help="bootstrap resamples for the 95% interval"),
    seed: int = typer.Option(0),
):
    """Win rates with bootstrap intervals, and a DPO preference file from the A/B-better labels."""
    from pathlib import Path

    from alignkit.sxs import export

    export.run(db, pairs, out, bootstrap, seed)
    print((Path(out) / "sxs_report.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {', '.join(str(Path(out) / n) for n in ('sxs_report.json', 'sxs_report.md', 'dpo_pairs.jsonl'))}")


@app.command("export")
def export_checkpoint(
    run_dir: str = typer.Argument(..., help="a training run's directory (its config.yaml and checkpoints/)"),
    out: str = typer.Option(..., callback=_out_dir, help="directory to write the model into (new, or a model "
                                                           "directory to replace)"),
    step: Optional[int] = typer.Option(None, min=1, help="the checkpoint's step (default: the newest checkpoint)"),
):
    """A run's checkpoint as a model directory from_pretrained loads: LoRA merged, tokenizer, model card."""
    from alignkit import export

    print(f"wrote {export.run(run_dir, step, out)}")


@app.command()
def report(
    run_dirs: list[str] = typer.Argument(..., help="run directories (metrics.jsonl, eval */summary.json)"),
    out: str = typer.Option("report.html", callback=_out_file, help="the HTML page to write"),
):
    """One HTML page: metric plots, evaluation tables and sample answers of one or more runs."""
    from alignkit.eval import run_report

    print(f"wrote {run_report.write(run_dirs, out)}")


def _usage_errors() -> tuple[type[Exception], ...]:
    """ClickException of the click typer parses with: typer may carry its own copy of click, whose exceptions
    are not the installed click's, so both are caught."""
    import click

    try:
        from typer._click.exceptions import ClickException as Vendored
    except ImportError:
        return (click.ClickException,)
    return (click.ClickException, Vendored)


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
    except (OSError, UnicodeError) as e:  # a file no check named first: still one line, naming the file
        name = getattr(e, "filename", None)
        print(f"error: {f'{name}: ' if name else ''}{getattr(e, 'strerror', None) or e}", file=sys.stderr)
        sys.exit(1)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "code", getattr(e, "exit_code", 0)))
    except _usage_errors() as e:  # a missing option, an unknown flag or command, an out-of-range value
        e.show()  # click's short usage message; usage errors exit 2
        sys.exit(e.exit_code)
    if isinstance(code, int) and code:
        if code == 130:  # Ctrl-C: the command was interrupted; what it had written stays
            print("interrupted", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
