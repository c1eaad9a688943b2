"""Starting and stopping a vLLM server that alignkit owns (the `generation.engine_command` case).

    command = vllm_command("/path/to/hf-model-dir", port=8000, served_model_name="policy", lora_rank=16)
    engine = EngineProcess(command, "http://127.0.0.1:8000", log_path="runs/x/engine.log", startup_timeout=300)
    engine.start()          # polls GET /v1/models until it answers; one-line AlignkitError on exit or time-out
    ...
    engine.stop()           # SIGTERM to its process group, SIGKILL after a grace period

The engine runs from its own environment (`make engine` builds `.venv-engine`), never imported: vLLM pins its
own torch and transformers. It runs in a new session (process group), so stopping it also stops the engine-core
processes it spawns. Its output goes to `log_path`, which error messages name.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from alignkit import AlignkitError
from alignkit.generation.engine_http import EngineHTTP, base_url

ROOT = Path(__file__).resolve().parents[3]
ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"  # what `make engine` builds in a source checkout

# Environment the engine needs for alignkit's weight sync (docs/engines.md): dev mode opens /collective_rpc,
# /pause, /resume and the weight-version endpoints; runtime LoRA updating opens /v1/load_lora_adapter.
ENGINE_ENV = {
    "VLLM_SERVER_DEV_MODE": "1",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
    "HF_HUB_OFFLINE": "1",
}


def cpu_engine_env() -> dict[str, str]:
    """For a vLLM CPU engine beside the trainer: every core this process may use runs the model. vLLM's default
    keeps one core for its scheduler and computes on the rest, which on a 2-core machine halves generation while
    the trainer, waiting for the samples, leaves its cores idle (measured: 39 against 58 tokens/s with LoRA, and
    the model on one thread). Ignored by GPU engines; an explicit setting in the environment wins."""
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return {"VLLM_CPU_OMP_THREADS_BIND": cpus, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def engine_python() -> Path:
    """The engine environment's interpreter: $ALIGNKIT_ENGINE_PYTHON, else the checkout's .venv-engine."""
    return Path(os.environ.get("ALIGNKIT_ENGINE_PYTHON") or ENGINE_PYTHON)


def vllm_command(model: str | Path, port: int | str, served_model_name: str = "policy", *, host: str = "127.0.0.1",
                 python: str | Path | None = None, dtype: str = "auto", max_model_len: int | None = None,
                 lora_rank: int | None = None, max_loras: int = 2, extra_args: list[str] | None = None) -> list[str]:
    """The argv that serves `model` (an HF directory) with vLLM's OpenAI-compatible server.

    `port` may be "{port}", for open_backend to fill with a free port. `--generation-config vllm` keeps the
    model's generation_config.json out of the sampling defaults, so a request's sampling settings are all of
    them. `lora_rank` enables LoRA hot-loading up to that rank.
    """
    argv = [str(python or engine_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", served_model_name, "--host", host, "--port", str(port), "--dtype", dtype,
            "--generation-config", "vllm"]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if lora_rank is not None:
        argv += ["--enable-lora", "--max-lora-rank", str(lora_rank), "--max-loras", str(max_loras)]
    return argv + list(extra_args or [])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EngineProcess:
    """A server started from `command` (argv list or shell-style string) that answers at `url` when ready."""

    def __init__(self, command: list[str] | str, url: str, *, env: dict[str, str] | None = None,
                 log_path: str | Path | None = None, startup_timeout: float = 300.0, poll_interval: float = 1.0):
        self.command = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        self.url = base_url(url)
        self.env = {**cpu_engine_env(), **os.environ, **ENGINE_ENV, **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.poll_interval = poll_interval
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _where_log(self) -> str:
        return f" (log: {self.log_path})" if self.log_path else ""

    def start(self) -> None:
        """Launch the command and wait until GET /v1/models answers; on failure the process is stopped."""
        if self.process is not None:
            raise AlignkitError(f"engine {self.url}: already started (pid {self.process.pid})")
        if not Path(self.command[0]).exists() and "/" in self.command[0]:
            raise AlignkitError(f"engine {self.url}: {self.command[0]} does not exist (run `make engine`)")
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        except OSError as e:
            self._close_log()
            raise AlignkitError(f"engine {self.url}: could not run {self.command[0]}: {e.strerror}") from None
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> float:
        """Seconds until the server answered; AlignkitError if it exits first or the start-up time runs out."""
        http = EngineHTTP(self.url, timeout=5.0)
        started = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise AlignkitError(f"engine {self.url}: the engine command exited with code {code} during "
                                    f"start-up{self._where_log()}")
            try:
                http.served_models()
                return time.monotonic() - started
            except AlignkitError:
                pass
            if time.monotonic() - started > self.startup_timeout:
                raise AlignkitError(f"engine {self.url}: not ready after {self.startup_timeout:g} s of start-up "
                                    f"(GET /v1/models does not answer){self._where_log()}")
            time.sleep(self.poll_interval)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the engine's process group (the server and the engine-core processes it spawned)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after `grace` seconds. Safe to call twice."""
        if self.process is not None:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may outlive its leader: engine-core children
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
