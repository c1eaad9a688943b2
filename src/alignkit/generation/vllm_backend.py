"""The `vllm` rollout backend: one or more vLLM servers over HTTP, with verified weight sync.

    backend = VLLMBackend(tokenizer, ["http://10.0.0.5:8000", "http://10.0.0.6:8000"], request_timeout=300)
    samples = backend.generate(prompt_ids, n=8, temperature=1.0, max_new_tokens=256, seed=step)
    report = backend.sync(policy)     # LoRA hot-load or full reload, then version check + log-prob probe
    backend.close()

Generation: one `POST /v1/completions` per (prompt, sample), with the prompt as token ids (the chat template and
the token boundary stay alignkit's), `return_token_ids`, `logprobs: 1`, the tokenizer's end-of-turn ids as stop
ids, every sampling knob explicit (so no server default leaks in), and a seed per row derived from (seed,
prompt key, sample index) exactly as the local sampler derives it: a row's sample does not depend on which
engine or batch it ran in. Requests go to the engine with the fewest in flight, `concurrency` per engine at a
time. The engine's log-probs are vLLM's default `raw_logprobs`: the model's own log-probs at temperature 1
before top-p, which is what the local sampler records and what the trainer computes.

Weight sync, chosen by what the run trains (docs/engines.md):
- a PEFT (LoRA) model: the adapter is saved to a RAM-backed directory (/dev/shm), a new one per version, and
  `POST /v1/load_lora_adapter {"load_inplace": true}` replaces the served adapter; requests then name it.
- with `lora_sync="merged"`, a LoRA model's adapter is folded into its weights (W + scale·B·A, the training
  model untouched) and the result goes over as full weights: the engine then runs without LoRA kernels.
- full weights: safetensors saved the same way, then `POST /pause?mode=wait`, `POST /collective_rpc
  {"method": "reload_weights", "kwargs": {"weights_path": DIR}}`, `POST /reset_prefix_cache` (cached prefixes were
  computed with the old weights), `POST /update_weight_version`, `POST /resume` (also when a step fails).
  Needs VLLM_SERVER_DEV_MODE=1 on the engine.
Every sync is verified: each engine must report the new version (the adapter's path, or the weight version
label), and a greedy probe of a few tokens on a fixed prompt must have engine log-probs within
`probe_tolerance` nats of the trainer model's own log-probs of those tokens. Before each generation the version
is checked again, so an engine restarted behind the run's back (serving its start weights) is an error.
Engines on other machines need `sync_dir` on a file system they also mount.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Sequence

from alignkit import AlignkitError
from alignkit.generation.engine_http import EngineHTTP
from alignkit.generation.rollout import SyncReport
from alignkit.generation.sample import Sample, _row_seed

PROBE_MESSAGES = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def save_merged(model, path: Path) -> None:
    """A PEFT LoRA model's weights with each adapter folded in (W + scale·B·A), saved as a plain checkpoint of the
    base model; the training model is not touched (no merge and unmerge, so its weights do not drift)."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                layer = module.get_base_layer()
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
                merged[f"{name}.weight"] = (layer.weight + delta).detach().contiguous()
                if getattr(layer, "bias", None) is not None:
                    merged[f"{name}.bias"] = layer.bias.detach()
        state = {}
        for key, value in base.state_dict().items():
            if "lora_" in key:
                continue
            plain = key.replace(".base_layer.", ".")
            state[plain] = merged.get(plain, value)
    base.save_pretrained(str(path), state_dict=state, safe_serialization=True)


def trainer_token_logps(model, prompt_ids: Sequence[int], token_ids: Sequence[int]) -> list[float]:
    """The model's own log-probs of `token_ids` following `prompt_ids` (eval mode, no grad, float32 softmax)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(token_ids)], device=device)  # (1, P + T)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()  # (T, V)
    finally:
        model.train(was_training)
    targets = torch.tensor(list(token_ids), device=device)[:, None]
    return logits.log_softmax(-1).gather(1, targets).squeeze(1).tolist()


class VLLMBackend:
    """Rollouts from vLLM servers at `urls`; `processes` (EngineProcess) are stopped by close()."""

    name = "vllm"

    def __init__(self, tokenizer, urls: Sequence[str], *, model_name: str | None = None, api_key: str | None = None,
                 request_timeout: float = 300.0, sync_timeout: float = 120.0, connect_timeout: float = 10.0,
                 concurrency: int = 32, stop_ids: set[int] | None = None, sync_dir: str | Path | None = None,
                 lora_name: str = "alignkit-policy", probe_tokens: int = 8, probe_tolerance: float = 1e-2,
                 processes: Sequence = (), lora_sync: str = "adapter"):
        from alignkit.data.chat import chat_prompt_ids, end_of_turn_ids

        if not urls:
            raise AlignkitError("vllm backend: no engine URL given")
        self.tokenizer = tokenizer
        self.engines = [EngineHTTP(url, request_timeout, api_key) for url in urls]
        self.sync_timeout, self.connect_timeout = sync_timeout, connect_timeout
        self.concurrency = concurrency
        self.stop_ids = set(stop_ids) if stop_ids is not None else end_of_turn_ids(tokenizer)
        self.lora_name = lora_name
        if lora_sync not in ("adapter", "merged"):
            raise AlignkitError(f"lora_sync: '{lora_sync}' is neither adapter nor merged")
        self.lora_sync = lora_sync  # LoRA runs: hot-load the adapter, or push the merged weights in full
        self.probe_tokens, self.probe_tolerance = probe_tokens, probe_tolerance
        self.processes = list(processes)
        self.weight_version = 0  # syncs done; 0 = the weights the engines started with
        self._sync_root = Path(sync_dir) if sync_dir else _ram_dir()
        self._sync_dir: Path | None = None  # created at the first sync, removed by close()
        self._expected: tuple[str, str] | None = None  # ("lora", adapter path) or ("full", version label)
        self._in_flight = [0] * len(self.engines)
        self.requests_per_engine = [0] * len(self.engines)  # generation requests sent to each, for the log
        self._lock = threading.Lock()
        self._closed = False
        self.probe_prompt = (chat_prompt_ids(tokenizer, PROBE_MESSAGES) if tokenizer.chat_template
                             else tokenizer("The numbers from one to ten are", add_special_tokens=False)["input_ids"])
        served = [[m.get("id") for m in engine.served_models(timeout=connect_timeout)] for engine in self.engines]
        if model_name is None:
            names = {ids[0] if ids else None for ids in served}
            if len(names) != 1 or None in names:
                raise AlignkitError(f"vllm backend: the engines serve different models ({sorted(map(str, names))}); "
                                    f"give the served model name")
            model_name = names.pop()
        for engine, ids in zip(self.engines, served):
            if model_name not in ids:
                raise AlignkitError(f"engine {engine.url}: does not serve model '{model_name}' (it serves {ids})")
        self.model_name = model_name
        self._policy_name = model_name  # what requests name: the base model, or the LoRA adapter once synced

    @property
    def urls(self) -> list[str]:
        return [engine.url for engine in self.engines]

    def versions(self) -> dict[str, str]:
        """vLLM version of each engine, by URL (record it in the run directory)."""
        return {engine.url: engine.version(timeout=self.connect_timeout) for engine in self.engines}

    # ----- generation -----

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, seed: int = 0, prompt_keys: list[int] | None = None) -> list[list[Sample]]:
        """n samples per prompt (token ids), in order; temperature 0 is greedy. Same contract as LocalBackend."""
        if not prompts:
            return []
        self._check_versions("checking the weight version before generating")
        keys = prompt_keys if prompt_keys is not None else list(range(len(prompts)))
        jobs = [(p, j) for p in range(len(prompts)) for j in range(n)]
        samples = self._spread(jobs, lambda engine, job: self._complete(
            engine, prompts[job[0]], _row_seed(seed, keys[job[0]], job[1]), temperature, top_p, max_new_tokens,
            "generating"))
        out: list[list[Sample]] = [[] for _ in prompts]
        for (p, _), sample in zip(jobs, samples):
            out[p].append(sample)
        return out

    def _complete(self, engine: EngineHTTP, prompt: Sequence[int], seed: int, temperature: float, top_p: float,
                  max_new_tokens: int, what: str, timeout: float | None = None) -> Sample:
        body = {
            "model": self._policy_name, "prompt": [int(t) for t in prompt], "max_tokens": max_new_tokens,
            "temperature": temperature, "top_p": top_p, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": seed, "n": 1,
            "logprobs": 1, "return_token_ids": True, "stop_token_ids": sorted(self.stop_ids),
        }
        answer = engine.post("/v1/completions", body, what, timeout)
        try:
            choice = answer["choices"][0]
            ids = [int(t) for t in choice["token_ids"]]
            logps = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise AlignkitError(f"engine {engine.url}: {what}: the completion lacks token_ids or per-token "
                                f"log-probs (is it a vLLM server?)") from None
        if len(ids) != len(logps):
            raise AlignkitError(f"engine {engine.url}: {what}: {len(ids)} token ids but {len(logps)} log-probs")
        finished = bool(ids) and ids[-1] in self.stop_ids
        body_ids = ids[:-1] if finished else ids
        return Sample(self.tokenizer.decode(body_ids, skip_special_tokens=True), ids, logps, finished,
                      self.weight_version)

    def _spread(self, items: list, fn: Callable) -> list:
        """fn(engine, item) for every item, each on the engine with the fewest requests in flight; the first
        error cancels what has not started and is raised (requests in flight end within their timeout)."""
        if not items:
            return []

        def run(item):
            with self._lock:
                k = min(range(len(self.engines)), key=self._in_flight.__getitem__)
                self._in_flight[k] += 1
                self.requests_per_engine[k] += 1
            try:
                return fn(self.engines[k], item)
            finally:
                with self._lock:
                    self._in_flight[k] -= 1

        pool = ThreadPoolExecutor(min(len(items), self.concurrency * len(self.engines)),
                                  thread_name_prefix="alignkit-engine")
        futures = [pool.submit(run, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
        pool.shutdown(wait=failed is None, cancel_futures=True)
        if failed is not None:
            raise failed.exception()
        return [f.result() for f in futures]

    # ----- weight sync -----

    def sync(self, model) -> SyncReport:
        """Push `model`'s weights to every engine (LoRA adapter if it is a PEFT model, else all weights), then
        verify (version + log-prob probe). Pass the bare model (unwrapped from DDP/FSDP, gathered)."""
        version = self.weight_version + 1
        started = time.monotonic()
        if self._sync_dir is None:
            self._sync_root.mkdir(parents=True, exist_ok=True)
            self._sync_dir = Path(tempfile.mkdtemp(prefix="alignkit-sync-", dir=self._sync_root))
        peft = is_peft_model(model)
        kind = "lora" if peft and self.lora_sync == "adapter" else "full"
        path = self._sync_dir / f"{kind}-v{version}"
        shutil.rmtree(path, ignore_errors=True)
        if kind == "lora":
            model.save_pretrained(str(path))  # the adapter only
        elif peft:  # merged: the engine runs plain weights, no LoRA kernels (on CPU engines much faster)
            save_merged(model, path)
        else:
            model.save_pretrained(str(path), safe_serialization=True)
        saved = time.monotonic()
        if kind == "lora":
            self._spread_each(lambda engine: engine.post(
                "/v1/load_lora_adapter",
                {"lora_name": self.lora_name, "lora_path": str(path), "load_inplace": True},
                f"weight sync v{version}: loading the LoRA adapter", self.sync_timeout, expect_json=False))
            self._policy_name, self._expected = self.lora_name, ("lora", str(path))
        else:
            label = f"alignkit-{version}"
            self._spread_each(lambda engine: _reload_full(engine, path, label, version, self.sync_timeout))
            self._policy_name, self._expected = self.model_name, ("full", label)
        pushed = time.monotonic()
        self.weight_version = version
        self._check_versions(f"weight sync v{version}: checking the weight version")
        probe = self.verify(model)
        for old in self._sync_dir.iterdir():  # keep only the version engines serve (LoRA may be re-read)
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        return SyncReport(version=version, kind=kind, seconds=time.monotonic() - started, save_seconds=saved - started,
                          push_seconds=pushed - saved, probe_max_abs_diff=probe, served=self._expected)

    def adopt(self, report: SyncReport) -> None:
        """Take on a sync another process made (several training processes share the engines: one pushes the
        weights, the others adopt its report), so this backend requests and checks the same weights."""
        self.weight_version, self._expected = report.version, report.served
        self._policy_name = self.lora_name if report.kind == "lora" else self.model_name

    def verify(self, model) -> float:
        """Greedy probe on every engine; the largest |engine - trainer| log-prob (nats) over probe tokens.
        AlignkitError if it exceeds `probe_tolerance`: the engine does not serve the trainer's weights."""
        what = f"weight sync v{self.weight_version}: log-prob probe"
        samples = self._spread_each(lambda engine: self._complete(
            engine, self.probe_prompt, 0, 0.0, 1.0, self.probe_tokens, what, self.sync_timeout))
        worst = 0.0
        for engine, sample in zip(self.engines, samples):
            if not sample.token_ids:
                raise AlignkitError(f"engine {engine.url}: {what}: no tokens generated")
            mine = trainer_token_logps(model, self.probe_prompt, sample.token_ids)
            diff = max(abs(a - b) for a, b in zip(sample.logps, mine))
            if diff > self.probe_tolerance:
                raise AlignkitError(f"engine {engine.url}: {what}: engine log-probs differ from the trainer's by "
                                    f"{diff:.3g} nats (tolerance {self.probe_tolerance:g}); the engine is not "
                                    f"serving the trainer's weights")
            worst = max(worst, diff)
        return worst

    def _spread_each(self, fn: Callable) -> list:
        """fn(engine) on every engine at once (in parallel threads), results in engine order."""
        pool = ThreadPoolExecutor(len(self.engines), thread_name_prefix="alignkit-engine-sync")
        futures = [pool.submit(fn, engine) for engine in self.engines]
        wait(futures)
        pool.shutdown()
        return [f.result() for f in futures]

    def _check_versions(self, what: str) -> None:
        if self._expected is None:
            return
        kind, expected = self._expected
        for engine in self.engines:
            if kind == "lora":
                models = engine.served_models(timeout=self.connect_timeout)
                got = next((m.get("root") for m in models if m.get("id") == self.lora_name), None)
            else:
                answer = engine.get("/weight_info", what, self.connect_timeout)
                got = answer.get("weight_version") if isinstance(answer, dict) else None
            if got != expected:
                raise AlignkitError(f"engine {engine.url}: {what}: it serves {kind} weights '{got}', expected "
                                    f"'{expected}' (v{self.weight_version}); was the engine restarted?")

    # ----- life cycle -----

    def close(self) -> None:
        """Stop engines alignkit started and remove the sync directory. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for process in self.processes:
            process.stop()
        if self._sync_dir is not None:
            shutil.rmtree(self._sync_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reload_full(engine: EngineHTTP, path: Path, label: str, version: int, timeout: float) -> None:
    what = f"weight sync v{version}"
    engine.post("/pause?mode=wait", None, f"{what}: pausing generation", timeout)
    try:
        engine.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(path)},
                                        "timeout": timeout}, f"{what}: reloading weights from {path}", timeout)
        engine.post("/reset_prefix_cache", None, f"{what}: resetting the prefix cache", timeout)
        engine.post("/update_weight_version", {"new_version": label}, f"{what}: setting the weight version", timeout)
    except AlignkitError:
        try:  # leave the engine generating (with whatever it has) if it is still there; the sync error wins
            engine.post("/resume", None, f"{what}: resuming generation", timeout)
        except AlignkitError:
            pass
        raise
    engine.post("/resume", None, f"{what}: resuming generation", timeout)


def _ram_dir() -> Path:
    """A RAM-backed directory for weight files when there is one (Linux /dev/shm), else the temp directory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and shutil.disk_usage(shm).free > 0 and _writable(shm) else Path(tempfile.gettempdir())


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)
