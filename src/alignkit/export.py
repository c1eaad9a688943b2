"""`alignkit export RUN_DIR [--step N] --out DIR`: a run's checkpoint as a model directory.

A checkpoint (`<run>/checkpoints/step-N/`, train/checkpoint.py) holds only what the run trains: the trainable
parameters (`trainable.safetensors`; all of them, or the LoRA adapter and nothing else), or for a sharded run
Accelerate's state with the model's shards (`pytorch_model_fsdp_0/`, torch.distributed.checkpoint). Export builds
the run's model afresh from its saved config.yaml (model.path, LoRA settings), loads the checkpoint's tensors into
it (every one must name a parameter of that model, and every trainable parameter must get one), merges LoRA, and
writes what `AutoModelForCausalLM.from_pretrained` loads, the tokenizer, and a model card. A reward model's
checkpoint is written as `alignkit rm` writes its final model (the causal LM plus the score head).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from alignkit import AlignkitError

SCHEMAS = {"dpo": "DPOConfig", "kto": "KTOConfig", "sft": "SFTConfig", "rm": "RMConfig", "ppo": "PPOConfig",
           "grpo": "GRPOConfig", "dapo": "GRPOConfig", "online-dpo": "OnlineDPOConfig"}


def read_run_config(run_dir: Path):
    """(the run's resolved config, its method) from run_dir/config.yaml."""
    from pydantic import ValidationError

    from alignkit import config as config_module
    from alignkit.model_card import method_of

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise AlignkitError(f"{run_dir}: no config.yaml (not the directory of a training run)")
    try:
        tree = yaml.safe_load(saved.read_text(encoding="utf-8"))
        method = method_of(tree)
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as e:
        raise AlignkitError(f"{saved}: not a saved training config ({str(e).splitlines()[0]})") from None
    schema = getattr(config_module, SCHEMAS[method])
    try:
        return schema.model_validate(tree), method
    except ValidationError as e:
        raise AlignkitError(config_module.format_validation(e, str(saved), schema)) from None


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """checkpoints/step-N of the run (the newest without `step`); read-only: nothing is cleaned up."""
    from alignkit.train.checkpoint import STEP_DIR, list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    steps = [int(STEP_DIR.match(p.name).group(1)) for p in found]
    if step is None:
        if not found:
            final = run_dir / "final"
            raise AlignkitError(f"{run_dir}: no checkpoints (a run writes them every train.save_every steps)"
                                + (f"; its final model is {final}" if final.is_dir() else ""))
        return found[-1]
    if step not in steps:
        raise AlignkitError(f"{run_dir}: no checkpoint of step {step} (checkpoints: "
                            f"{', '.join(map(str, steps)) or 'none'})")
    return found[steps.index(step)]


def checkpoint_tensors(path: Path) -> tuple[dict, int, bool]:
    """(tensors, step, whole): the checkpoint's trainable tensors (whole=False), or a sharded checkpoint's
    gathered model state (whole=True, every parameter)."""
    import torch
    from safetensors.torch import load_file

    try:
        step = int(json.loads((path / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AlignkitError(f"{path / 'state.json'}: unreadable ({type(e).__name__}); not a finished checkpoint") \
            from None
    trainable, dcp = path / "trainable.safetensors", path / "pytorch_model_fsdp_0"
    full = path / "pytorch_model_fsdp.bin"  # FSDP's FULL_STATE_DICT
    try:
        if trainable.is_file():
            return load_file(str(trainable)), step, False
        if dcp.is_dir():
            from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

            with tempfile.TemporaryDirectory() as tmp:
                dcp_to_torch_save(str(dcp), str(Path(tmp) / "model.pt"))
                state = torch.load(Path(tmp) / "model.pt", weights_only=True)
            return _model_state(state), step, True
        if full.is_file():
            return _model_state(torch.load(full, weights_only=True)), step, True
    except AlignkitError:
        raise
    except Exception as e:  # safetensors, pickle and DCP errors alike: not what a save wrote
        raise AlignkitError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    raise AlignkitError(f"{path}: no trainable.safetensors and no FSDP model state (pytorch_model_fsdp_0/); "
                        "cannot export it (a DeepSpeed checkpoint is not supported)")


def _model_state(state) -> dict:
    import torch

    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # Accelerate saves {"model": the state dict}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AlignkitError("the FSDP model state is not a mapping of parameter names to tensors")
    return state


def load_into(module, tensors: dict, where: Path, whole: bool) -> None:
    """Load `tensors` into `module`, strict=False (a checkpoint holds the trainable subset), checking that every
    tensor names one of its parameters and every trainable parameter gets a value."""
    names = set(module.state_dict())
    unknown = sorted(set(tensors) - names)
    if unknown:
        raise AlignkitError(f"{where}: parameter {unknown[0]} ({len(unknown)} in all) is not in the model the run's "
                            "config.yaml builds (was config.yaml or the base model changed since?)")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    lacking = sorted(trainable - set(tensors))
    if lacking:
        raise AlignkitError(f"{where}: no value for the trainable parameter {lacking[0]} ({len(lacking)} in all); "
                            "the checkpoint is not of the model the run's config.yaml builds")
    try:
        result = module.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a shape that does not fit
        raise AlignkitError(f"{where}: does not fit the model the run's config.yaml builds "
                            f"({str(e).strip().splitlines()[-1].strip()[:200]})") from None
    if result.unexpected_keys:  # excluded by the check above; kept as the contract
        raise AlignkitError(f"{where}: parameter {result.unexpected_keys[0]} is not in the model")


def _check_out(out: Path, run_dir: Path) -> Path:
    o, r = out.resolve(), run_dir.resolve()
    if o == r or o in r.parents or o == r / "final" or o == r / "checkpoints" or (r / "checkpoints") in o.parents:
        raise AlignkitError(f"--out {out}: would replace the run (or its final model or checkpoints); "
                            "give a directory outside them")
    if o.is_dir() and any(o.iterdir()) and not (o / "config.json").is_file():
        raise AlignkitError(f"--out {out}: exists and is not a model directory; give a new or empty directory")
    return out


def run(run_dir: str, step: int | None, out: str) -> Path:
    from alignkit import model_card
    from alignkit.models.load import load_tokenizer
    from alignkit.train.checkpoint import atomic_dir
    from alignkit.train.setup import fresh_module

    root = Path(run_dir)
    if not root.is_dir():
        raise AlignkitError(f"{run_dir}: no such run directory")
    cfg, method = read_run_config(root)
    path = find_checkpoint(root, step)
    dest = _check_out(Path(out), root)
    tensors, step, whole = checkpoint_tensors(path)
    if method == "ppo":  # the loop trains policy and critic together; the policy is the model
        tensors = {k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")}
    # A fresh copy in the run's storage dtype: a QLoRA run's adapter is merged into the full-precision base, and
    # gradient checkpointing (a training setting that also switches the saved config's cache off) stays off.
    build = cfg.model_copy(update={"model": cfg.model.model_copy(update={"load_in_4bit": False}),
                                   "train": cfg.train.model_copy(update={"gradient_checkpointing": False})})
    module = fresh_module(build, "scalar" if method == "rm" else "logps")
    load_into(module, tensors, path, whole)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    lora = cfg.model.lora is not None
    source = f"checkpoint step {step} of run `{root}`" + (" (LoRA merged)" if lora else "")
    print(f"export: {method} run {root}, checkpoint step {step}{' (sharded)' if whole else ''}"
          f"{', LoRA merged' if lora else ''}")
    if method == "rm":
        from alignkit.models.heads import save_scalar_model

        save_scalar_model(module, tokenizer, dest, True, "reward")
        model_card.write(dest, cfg, root, method, step, source)
        return dest
    model = module.model.merge_and_unload() if lora else module.model
    tree = cfg.model_dump(mode="json")
    if lora:
        tree["model"]["lora"]["merge"] = True  # what is written: merged weights, whatever the run kept
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        model_card.write(tmp, tree, root, method, step, source)
    return dest
