"""YAML + dotted overrides -> validated pydantic models.

Unknown keys and wrong types fail here, before any model loads, with the key's dotted path in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignkit import AlignkitError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Strict):
    r: int = Field(16, gt=0)
    alpha: float = 32.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge: bool = True  # final model: merged weights (True) or the adapter alone (False)


class ModelConfig(Strict):
    path: str = "smollm2-135m-instruct"  # HF directory, cached hub id, .gguf file, or built-in alias
    dtype: Literal["float32", "bfloat16"] = "float32"  # storage dtype of the weights
    trust_remote_code: bool = False
    allow_pickle: bool = False  # allow loading *.bin / *.pt weights
    lora: LoraConfig | None = None


class DataConfig(Strict):
    train: str
    eval: str | None = None
    eval_fraction: float = Field(0.0, ge=0, lt=1)  # held out from `train` when `eval` is not given
    split: str = "train"  # split of a `datasets` DatasetDict saved to disk
    max_length: int = Field(512, gt=0)  # prompt + response tokens
    max_prompt_length: int = Field(256, gt=0)
    strict: bool = False  # rows that cannot fit: error (True) or drop and count (False)


class LossConfig(Strict):
    type: Literal["sigmoid", "ipo", "hinge", "robust", "simpo"] = "sigmoid"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    simpo_gamma: float = 0.5
    rpo_alpha: float = Field(0.0, ge=0)  # weight of the NLL term on chosen (0 = off)


class ReferenceConfig(Strict):
    # auto: precomputed `logps` if given, else the on-disk cache if `cache`, else the LoRA model with its
    # adapter disabled, else a frozen copy of the policy.
    mode: Literal["auto", "copy", "adapter", "precomputed", "cached"] = "auto"
    logps: str | None = None  # a file written by `alignkit logps`, for data.train
    eval_logps: str | None = None  # the same for data.eval, when that is a separate file
    cache: bool = True
    cache_dir: str | None = None  # default: <user cache>/alignkit/ref-logps


class TrainConfig(Strict):
    output_dir: str = "runs/dpo"
    seed: int = 0
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # overrides epochs
    batch_size: int = Field(8, gt=0)  # pairs per optimizer step, across all processes
    micro_batch_size: int = Field(4, gt=0)  # pairs per forward, per process
    lr: float = Field(5e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    bf16: bool = False  # bf16 autocast for compute; weights and optimizer state stay as loaded
    logits_chunk: int = Field(1024, gt=0)  # response rows per lm_head chunk
    log_every: int = Field(1, gt=0)
    eval_every: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(8, gt=0)
    save_every: int | None = Field(None, gt=0)
    keep_last: int = Field(2, gt=0)
    resume: bool = True  # continue from the newest checkpoint in output_dir
    tensorboard: bool = False
    threads: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self):
        if self.batch_size % self.micro_batch_size:
            raise ValueError("train.batch_size must be a multiple of train.micro_batch_size")
        return self


class DPOConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    loss: LossConfig = LossConfig()
    reference: ReferenceConfig = ReferenceConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check(self):
        if self.data.max_prompt_length >= self.data.max_length:
            raise ValueError("data.max_prompt_length must be smaller than data.max_length")
        if self.reference.mode == "precomputed" and not self.reference.logps:
            raise ValueError("reference.mode 'precomputed' needs reference.logps")
        if self.reference.mode == "adapter" and self.model.lora is None:
            raise ValueError("reference.mode 'adapter' needs model.lora")
        return self


def _set_dotted(tree: dict, dotted: str, value, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise AlignkitError(f"{source}: '{'.'.join(keys[: i + 1])}' is not a section, cannot set '{dotted}'")
        node = child
    node[keys[-1]] = value


def _format_validation(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        if path and e["type"] not in ("extra_forbidden", "missing") and "input" in e:
            msg += f" (got {e['input']!r})"
        parts.append(f"{path}: {msg}" if path else msg)
    return f"{source}: invalid config: " + "; ".join(parts)


def load_config(schema: type[BaseModel], path: str | None, overrides: list[str]) -> BaseModel:
    """Read YAML at `path` (may be None), apply `key.sub=value` overrides, validate against `schema`."""
    tree: dict = {}
    source = path or "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise AlignkitError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise AlignkitError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise AlignkitError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        if "=" not in item:
            raise AlignkitError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value, f"override '{item}'")
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        raise AlignkitError(_format_validation(e, source)) from None


def save_resolved(cfg: BaseModel, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
