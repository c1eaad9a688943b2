"""One rollout interface for everything that samples from the policy: GRPO/DAPO and PPO rollouts, the student in
`pairs build`, `eval accuracy`.

    backend = open_backend("local", tokenizer, model=policy)                       # alignkit's own sampler
    backend = open_backend("vllm", tokenizer, engine_urls=["http://127.0.0.1:8000"])  # vLLM servers
    samples = backend.generate(prompt_ids, n=8, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=step,
                               prompt_keys=item_keys)
    report = backend.sync(policy)   # after an update, before the next rollout; a SyncReport to log
    backend.close()

Contract, the same for every backend (tests/generation/test_engine.py holds `vllm` to `local`):
- `generate` returns, per prompt (token ids, e.g. `chat_prompt_ids`), n `Sample`s in order. `token_ids` hold
  the generated ids with the end-of-turn token when one ended the answer (`finished`); `text` decodes them
  without it; `logps` are the policy's own per-token log-probs of those ids (temperature 1, before top-p);
  `weight_version` is the number of syncs made before it (0: the weights the backend started with).
- Each (prompt, sample) row has its own seed from (seed, prompt key, sample index): a row's sample does not
  depend on how the list was batched or split, so a resumed run regenerates what it had. Greedy
  (temperature 0) answers agree across backends; sampled ones agree only within a backend (different RNGs).
- `sync(model)` makes the backend generate from `model`'s current weights and checks that it does. The local
  backend samples from the model object itself, so its sync only counts the version. Engines start from the
  weights they were launched with: a run whose policy differs (a resumed run, an engine reused across runs)
  syncs once before its first rollout.
- Failures are one-line `AlignkitError`s naming the engine and what was being done; the caller adds its step.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from alignkit import AlignkitError
from alignkit.generation.sample import Sample


@dataclass
class SyncReport:
    """What one weight sync did, for the run's log."""

    version: int  # the weight version now served
    kind: str  # "local" (nothing to move), "lora" (adapter hot-load) or "full" (reload from safetensors)
    seconds: float = 0.0  # the whole sync, checks included
    save_seconds: float = 0.0  # writing the weights for the engines
    push_seconds: float = 0.0  # engines loading them
    probe_max_abs_diff: float | None = None  # largest |engine - trainer| per-token log-prob on the probe (nats)
    served: tuple[str, str] | None = None  # what the engines now serve: ("lora", adapter path) or ("full", label)


class RolloutBackend(Protocol):
    name: str
    weight_version: int

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, seed: int = 0,
                 prompt_keys: list[int] | None = None) -> list[list[Sample]]: ...

    def sync(self, model) -> SyncReport: ...

    def adopt(self, report: SyncReport) -> None: ...

    def close(self) -> None: ...


class LocalBackend:
    """The reference: `sample.generate` (batched KV-cache sampler) on the policy model in this process; with
    `bf16`, under bf16 autocast (faster where the processor has bf16 units; `precision` says which ran); with
    `score_end`, cut samples carry their end-of-turn tokens' log-probs (sample.py)."""

    name = "local"

    def __init__(self, model, tokenizer, batch_size: int = 32, stop_ids: set[int] | None = None, bf16: bool = False,
                 score_end: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.stop_ids, self.bf16, self.score_end = batch_size, stop_ids, bf16, score_end
        self.weight_version = 0

    @property
    def precision(self) -> str:
        """What the log-probs were computed in: "bf16-autocast", or the weights' dtype ("torch.float32")."""
        return "bf16-autocast" if self.bf16 else str(next(self.model.parameters()).dtype)

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, seed: int = 0, prompt_keys: list[int] | None = None) -> list[list[Sample]]:
        import contextlib

        import torch

        from alignkit.generation.sample import generate

        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext():
            samples = generate(self.model, self.tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, seed=seed, batch_size=self.batch_size,
                               stop_ids=self.stop_ids, prompt_keys=prompt_keys, score_end=self.score_end)
        for row in samples:
            for sample in row:
                sample.weight_version = self.weight_version
        return samples

    def sync(self, model) -> SyncReport:
        """Nothing to move: the sampler uses the model it was opened with, which training updates in place."""
        self.weight_version += 1
        return SyncReport(version=self.weight_version, kind="local")

    def adopt(self, report: SyncReport) -> None:
        """Take on a sync another process made (see VLLMBackend.adopt)."""
        self.weight_version = report.version

    def close(self) -> None:
        pass


def open_backend(kind: str, tokenizer, *, model=None, engine_urls: Sequence[str] = (),
                 engine_command: str | list[str] | None = None, engine_log: str | Path | None = None,
                 startup_timeout: float = 300.0, request_timeout: float = 300.0, sync_timeout: float = 120.0,
                 concurrency: int = 32, served_model_name: str | None = None, sync_dir: str | Path | None = None,
                 probe_tolerance: float = 1e-2, api_key: str | None = None, batch_size: int = 32,
                 lora_sync: str = "adapter") -> RolloutBackend:
    """The backend a command asked for: "local" (needs `model`) or "vllm" (engines at `engine_urls`, or one that
    `engine_command` starts: the command answers at the single URL given, or at a free local port substituted
    for '{port}' in it). An engine started here is stopped by the backend's close()."""
    if kind == "local":
        if model is None:
            raise AlignkitError("generation.backend local: no model to generate with")
        return LocalBackend(model, tokenizer, batch_size=batch_size)
    if kind != "vllm":
        raise AlignkitError(f"generation.backend: unknown backend '{kind}' (local or vllm)")
    from alignkit.generation.engine_process import EngineProcess, free_port
    from alignkit.generation.vllm_backend import VLLMBackend

    urls, processes = list(engine_urls), []
    if engine_command is not None:
        argv = shlex.split(engine_command) if isinstance(engine_command, str) else [str(a) for a in engine_command]
        if not urls and any("{port}" in a for a in argv):
            port = free_port()
            argv, urls = [a.replace("{port}", str(port)) for a in argv], [f"http://127.0.0.1:{port}"]
        if len(urls) != 1:
            raise AlignkitError("generation.engine_command: give the one URL it serves in generation.engine_urls, "
                                "or put '{port}' in the command")
        processes.append(EngineProcess(argv, urls[0], log_path=engine_log, startup_timeout=startup_timeout))
    if not urls:
        raise AlignkitError("generation.backend vllm: give generation.engine_urls or generation.engine_command")
    try:
        for process in processes:
            process.start()
        return VLLMBackend(tokenizer, urls, model_name=served_model_name, request_timeout=request_timeout,
                           sync_timeout=sync_timeout, concurrency=concurrency, sync_dir=sync_dir,
                           probe_tolerance=probe_tolerance, api_key=api_key, processes=processes,
                           lora_sync=lora_sync)
    except BaseException:
        for process in processes:
            process.stop()
        raise


def from_config(gen, tokenizer, model, model_path: str, run_dir: Path | None = None) -> RolloutBackend:
    """The backend a config's `generation` (or `student`) section names (config.EngineConfig). In an
    engine_command, '{model}' is the policy's model directory (a GGUF or alias converted once), '{python}' the
    engine environment's interpreter and '{port}' a free port. Engines' vLLM versions go to run_dir/engines.json."""
    import json

    command = gen.engine_command
    if command is not None:
        from alignkit.generation.engine_process import engine_python
        from alignkit.models.load import resolve

        if "{model}" in command:
            command = command.replace("{model}", shlex.quote(str(resolve(model_path))))
        command = command.replace("{python}", shlex.quote(str(engine_python())))
    backend = open_backend(gen.backend, tokenizer, model=model, engine_urls=gen.engine_urls, engine_command=command,
                           engine_log=run_dir / "engine.log" if run_dir is not None and command else None,
                           startup_timeout=gen.startup_timeout, request_timeout=gen.engine_timeout,
                           sync_timeout=gen.sync_timeout, sync_dir=gen.sync_dir, batch_size=gen.batch_size,
                           lora_sync=gen.lora_sync)
    if run_dir is not None and hasattr(backend, "versions"):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "engines.json").write_text(json.dumps({"backend": backend.name, "vllm": backend.versions()},
                                                         indent=1))
    return backend
