"""Helpers of the command-line layer: option callbacks that check values before any model loads, and the task
and sampler the evaluation commands build from their options."""

from __future__ import annotations

import os

import typer

from alignkit import AlignkitError


def _finite(ctx, param, value: float) -> float:
    """A float option must be a finite number: "inf" and "nan" parse as floats and pass min/max checks."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value


def _out_file(value: str) -> str:
    """--out names a file to write: refused up front when it is a directory (before any model loads)."""
    from alignkit.data.files import output_file

    output_file(value)
    return value


def _out_dir(value: str) -> str:
    """--out names a directory to write into: refused up front when it is a file."""
    from alignkit.data.files import output_dir

    output_dir(value)
    return value


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


def _sampler(model: str, backend: str, engine_urls: list[str], timeout: float, batch_size: int, bf16: bool = False):
    """(rollout backend, tokenizer) for a command that generates without a config: the local sampler on --model
    (under bf16 autocast with `bf16`), or vLLM engines that serve it (checked with a log-prob probe against
    --model's weights)."""
    from types import SimpleNamespace

    from alignkit.generation.rollout import LocalBackend, from_config
    from alignkit.models.load import load_model, load_tokenizer

    if backend not in ("local", "vllm"):
        raise AlignkitError(f"--backend {backend}: expected local or vllm")
    if backend == "vllm" and not engine_urls:
        raise AlignkitError("--backend vllm needs --engine-url URL (a vLLM server serving --model)")
    if backend == "local" and engine_urls:
        raise AlignkitError("--engine-url is given but --backend is local; add --backend vllm")
    if backend == "vllm" and bf16:
        raise AlignkitError("--bf16 is for the local sampler; an engine computes in the dtype it was started with")
    tokenizer, lm = load_tokenizer(model), load_model(model)
    if backend == "local":
        return LocalBackend(lm, tokenizer, batch_size, bf16=bf16), tokenizer
    gen = SimpleNamespace(backend=backend, engine_urls=engine_urls, engine_command=None, startup_timeout=timeout,
                          engine_timeout=timeout, sync_timeout=timeout, sync_dir=None, batch_size=batch_size,
                          lora_sync="adapter")
    sampler = from_config(gen, tokenizer, lm, model)
    if backend == "vllm":
        sampler.verify(lm)  # the engines must serve --model's weights, token for token
    return sampler, tokenizer
