"""Shared by the engine tests: real vLLM servers started from the engine environment, the trainer-side model,
and helpers that compare the two. Test modules load it as a plugin (`pytest_plugins = ["vllm_testing"]`), so
each fixture exists once per session; a conftest.py here would shadow tests/conftest.py, which other test
modules import as `conftest`.

`make engine` builds `.venv-engine` (CI does it before `make test`); without it the engine tests are skipped and
say so. A server serves SmolLM2-135M-Instruct (the `smollm2-135m-instruct` alias, converted once into the
alignkit cache) in float32 with LoRA hot-loading on. One shared server per test session; an idle one uses no CPU
here (measured: under 1 CPU-second in 30 s).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import torch

from alignkit import AlignkitError
from alignkit.data.chat import chat_prompt_ids
from alignkit.generation.engine_process import EngineProcess, engine_python, free_port, vllm_command
from alignkit.tasks.arithmetic import Arithmetic

ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_SERVER_DEV_MODE": "1",
              "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "TOKENIZERS_PARALLELISM": "false"}
SERVED_NAME = "smollm2"
STARTUP_TIMEOUT = 300.0  # measured 25-85 s here; the rest of a busy 2-core machine can slow it
NATS = 1e-3  # per-token |engine - trainer| log-prob allowed in float32


class TestEngine:
    """One vLLM server process for tests; `url` (re)starts it when it is not running."""

    __test__ = False  # not a test class

    def __init__(self, model_dir, log_dir, name: str):
        self.model_dir, self.log_dir, self.name = model_dir, log_dir, name
        self.process: EngineProcess | None = None
        self._url = ""
        self.starts = 0

    @property
    def url(self) -> str:
        """The server's URL, starting it first if it is not running (not yet, or killed by a fault test)."""
        return self._url if self.running() else self.start()

    def start(self) -> str:
        port = free_port()
        self._url = f"http://127.0.0.1:{port}"
        command = vllm_command(self.model_dir, port, SERVED_NAME, dtype="float32", max_model_len=1024,
                               lora_rank=16, max_loras=2)
        log = self.log_dir / f"{self.name}-{self.starts}.log"
        self.process = EngineProcess(command, self._url, env=ENGINE_ENV, log_path=log, startup_timeout=STARTUP_TIMEOUT)
        self.starts += 1
        try:
            self.process.start()
        except AlignkitError as e:
            tail = log.read_text(errors="replace").splitlines()[-30:] if log.is_file() else []
            pytest.fail(f"{e}\n" + "\n".join(tail), pytrace=False)
        return self._url

    def running(self) -> bool:
        return self.process is not None and self.process.process is not None and self.process.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and its engine-core processes, then remove the shared-memory buffers they had open
        (a stopped engine removes them itself, a killed one cannot; only a 32-byte semaphore file stays)."""
        if self.process is None or not self.running():
            return
        group = self.process.pid
        leftovers = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) == group:
                    maps = Path(f"/proc/{pid}/maps").read_text()
                    leftovers.update(line.split()[-1] for line in maps.splitlines() if " /dev/shm/" in line)
                    leftovers.update(os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()
                                     if os.readlink(fd).startswith("/dev/shm/"))
            except OSError:
                pass
        self.process.kill()
        self.process.process.wait(timeout=30)
        for path in leftovers:
            Path(path).unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def require_engine_env() -> None:
    if not engine_python().exists():
        pytest.skip(f"no engine environment ({engine_python()} is missing): run `make engine`; CI builds it")


@functools.cache
def _smol_dir():
    from alignkit.models.load import resolve

    return resolve("smollm2-135m-instruct")


@functools.cache
def _smol():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(_smol_dir(), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(_smol_dir())


@pytest.fixture(scope="session")
def smol():
    """The trainer's side: SmolLM2-135M-Instruct in float32 (eval mode) and its tokenizer."""
    require_engine_env()
    return _smol()


def _running_engine(tmp_path_factory, name: str):
    require_engine_env()
    engine = TestEngine(_smol_dir(), tmp_path_factory.mktemp("engine-logs"), name)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory):
    """The session's shared vLLM server."""
    yield from _running_engine(tmp_path_factory, "shared")


@pytest.fixture(scope="module")
def second_engine(tmp_path_factory):
    """A separately started server for tests that kill it; stopped at the end of the module."""
    yield from _running_engine(tmp_path_factory, "second")


# ----- helpers -----

def addition_prompts(tokenizer, count: int, offset: int = 0) -> tuple[list, list[list[int]]]:
    """`count` held-out questions of the shipped addition-2d task and their chat prompts (token ids)."""
    items = Arithmetic("add", 2).items("heldout")[offset : offset + count]
    return items, [chat_prompt_ids(tokenizer, item.messages()) for item in items]


def greedy(backend, prompts, max_new_tokens: int = 24):
    return [row[0] for row in backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens)]


def trainer_logps(model, pad_id: int, prompts: list[list[int]], samples) -> list[list[float]]:
    """Per-token log-probs of each sample's tokens as training computes them (SequenceLogps, per_token)."""
    from alignkit.models.logprobs import SequenceLogps

    rows = [list(p) + list(s.token_ids) for p, s in zip(prompts, samples)]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, row) in enumerate(zip(prompts, rows)):
        input_ids[i, : len(row)] = torch.tensor(row)
        response_mask[i, len(p) : len(row)] = True
    model.eval()
    with torch.no_grad():
        per_token = SequenceLogps(model)(input_ids, response_mask, per_token=True)  # (B, T)
    return [per_token[i, len(p) : len(row)].tolist() for i, (p, row) in enumerate(zip(prompts, rows))]


def max_gap(engine_samples, reference: list[list[float]]) -> float:
    """Largest |engine - reference| per-token log-prob over all samples (nats)."""
    return max(abs(a - b) for s, ref in zip(engine_samples, reference) for a, b in zip(s.logps, ref, strict=True))


def greedy_split(model, prompt_ids: list[int], a: list[int], b: list[int]) -> tuple[int, float] | None:
    """Where two greedy continuations of one prompt first differ, and how far the lower of the two tokens chosen
    there sits below the trainer model's best token (nats; 0 for both when they tie at the top); None when they
    do not differ, inf when one stops where the other goes on. Greedy decoding on two engines may part only where
    both tokens are the best to within float error (NATS): a split elsewhere is a real disagreement."""
    if a == b:
        return None
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if k == min(len(a), len(b)):  # one stopped where the other went on: not a tie between two tokens
        return k, float("inf")
    model.eval()
    with torch.no_grad():
        logps = model(torch.tensor([list(prompt_ids) + list(a[:k])])).logits[0, -1].float().log_softmax(-1)
    best = logps.max().item()
    return k, max(best - logps[a[k]].item(), best - logps[b[k]].item())


def tied_rows(model, prompts: list[list[int]], a_samples, b_samples) -> set[int]:
    """The rows where two backends' greedy samples part; asserts each parts at a tie (greedy_split)."""
    tied = set()
    for i, (p, a, b) in enumerate(zip(prompts, a_samples, b_samples, strict=True)):
        split = greedy_split(model, p, list(a.token_ids), list(b.token_ids))
        if split is not None:
            assert split[1] <= NATS, f"row {i} parts at token {split[0]}, not a tie: {split[1]:.4f} nats"
            tied.add(i)
    return tied


def same_or_tied(model, tokenizer, messages: list[dict], a: str, b: str) -> bool:
    """Two greedy answers (texts) to one chat prompt are the same, or part only at a tie (see greedy_split)."""
    prompt = chat_prompt_ids(tokenizer, messages)
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in (a, b)]
    split = greedy_split(model, prompt, *ids)
    return split is None or split[1] <= NATS


def nudge(model, seed: int, name_part: str, scale: float) -> None:
    """A training step's stand-in: change the weights whose names contain `name_part`, reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name_part in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def with_lora(base, seed: int):
    """A PEFT copy of `base` whose LoRA adapter is not the identity (B is not zero), so its answers differ."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # LoRA A's initialisation
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                           task_type="CAUSAL_LM"))
    nudge(model, seed, "lora_B", 0.02)
    return model.eval()
