"""Help with the config: a hint for an unknown key (a TRL / transformers name mapped to alignkit's, the same key in
another section, or the nearest key), and the listing `alignkit <command> --show-config` prints (every key, its
value or default, and the comment beside it in config.py)."""

from __future__ import annotations

import yaml
from pydantic import BaseModel, ValidationError

from alignkit import AlignkitError
from alignkit.config import _set_dotted, format_validation, read_tree

# TRL / transformers TrainingArguments names -> the alignkit keys that mean the same, in order of preference: a hint
# names the first one the command's schema has (so `beta` is loss.beta for dpo, grpo.beta for grpo).
TRL_NAMES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("train.lr",),
    "per_device_train_batch_size": ("train.micro_batch_size",),
    "per_device_eval_batch_size": ("train.eval_batch_size",),
    "gradient_accumulation_steps": ("train.batch_size",),
    "num_train_epochs": ("train.epochs",),
    "max_steps": ("train.max_steps",),
    "warmup_ratio": ("train.warmup_ratio",),
    "warmup_steps": ("train.warmup_steps",),
    "lr_scheduler_type": ("train.scheduler",),
    "weight_decay": ("train.weight_decay",),
    "max_grad_norm": ("train.max_grad_norm",),
    "adam_beta1": ("train.adam_betas",),
    "adam_beta2": ("train.adam_betas",),
    "output_dir": ("train.output_dir", "output_dir"),
    "overwrite_output_dir": ("train.overwrite",),
    "resume_from_checkpoint": ("train.resume",),
    "bf16": ("train.bf16",),
    "fp16": ("train.bf16",),
    "gradient_checkpointing": ("train.gradient_checkpointing",),
    "optim": ("train.optim",),
    "report_to": ("train.report_to", "train.tensorboard"),
    "logging_dir": ("train.tensorboard",),
    "seed": ("train.seed",),
    "logging_steps": ("train.log_every",),
    "save_steps": ("train.save_every",),
    "eval_steps": ("train.eval_every",),
    "save_total_limit": ("train.keep_last",),
    "loss_type": ("loss.type", "grpo.aggregation"),
    "loss_weights": ("loss.weights",),
    "f_divergence_type": ("loss.f_divergence",),
    "f_alpha_divergence_coef": ("loss.f_alpha",),
    "rpo_alpha": ("loss.rpo_alpha",),
    "beta": ("loss.beta", "grpo.beta", "ppo.kl_coef"),
    "desirable_weight": ("loss.desirable_weight",),
    "undesirable_weight": ("loss.undesirable_weight",),
    "num_generations": ("grpo.group_size",),
    "num_iterations": ("grpo.iterations",),
    "epsilon": ("grpo.eps_low", "ppo.eps"),
    "epsilon_high": ("grpo.eps_high",),
    "cliprange": ("ppo.eps", "grpo.eps_low"),
    "cliprange_value": ("ppo.value_clip",),
    "num_ppo_epochs": ("ppo.epochs",),
    "max_completion_length": ("generation.max_new_tokens", "student.max_new_tokens"),
    "max_prompt_length": ("data.max_prompt_length",),
    "max_length": ("data.max_length",),
    "max_seq_length": ("data.max_length",),
    "dataset_train_split": ("data.split", "task.split"),
    "dataset_test_split": ("data.eval_split",),
    "model_name_or_path": ("model.path",),
    "torch_dtype": ("model.dtype",),
    "use_peft": ("model.lora.r",),
    "lora_r": ("model.lora.r",),
    "lora_alpha": ("model.lora.alpha",),
    "lora_dropout": ("model.lora.dropout",),
    "lora_target_modules": ("model.lora.target_modules",),
    "load_in_4bit": ("model.load_in_4bit",),
    "use_vllm": ("generation.backend",),
}
# (TRL name, alignkit key) -> what to know besides the key
TRL_NOTES = {
    ("gradient_accumulation_steps", "train.batch_size"):
        "train.batch_size = train.micro_batch_size x accumulation steps x processes",
    ("use_peft", "model.lora.r"): "LoRA is on when model.lora is set",
    ("adam_beta1", "train.adam_betas"): "a pair [beta1, beta2]",
    ("adam_beta2", "train.adam_betas"): "a pair [beta1, beta2]",
    ("fp16", "train.bf16"): "bf16 autocast; there is no fp16",
    ("report_to", "train.tensorboard"): "true writes TensorBoard logs",
    ("logging_dir", "train.tensorboard"): "true writes TensorBoard logs into train.output_dir",
    ("use_vllm", "generation.backend"): "vllm, with generation.engine_urls or generation.engine_command",
    ("f_alpha_divergence_coef", "loss.f_alpha"): "α of f'(u) = (1 - u^-α)/α as in Wang et al. 2023 (TRL 1.x computes "
        "it with 1 - α: the same at the default 0.5)",
}


def _model_of(annotation) -> type[BaseModel] | None:
    """The config class inside an annotation (X, X | None, list[X], dict[K, X]), or None for a plain value."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _is_section(annotation) -> bool:
    """A field holding one config class (X or X | None), not a list or mapping of them."""
    import typing

    return _model_of(annotation) is not None and typing.get_origin(annotation) not in (list, dict, tuple)


def _section_at(schema: type[BaseModel] | None, loc) -> type[BaseModel] | None:
    """The config class at a validation error's location (list indices and mapping keys pass through)."""
    cls = schema
    for part in loc:
        if cls is None:
            return None
        if isinstance(part, str) and part in cls.model_fields:
            cls = _model_of(cls.model_fields[part].annotation)
    return cls


def _has_key(schema: type[BaseModel], dotted: str) -> bool:
    cls: type[BaseModel] | None = schema
    for part in dotted.split("."):
        if cls is None or part not in cls.model_fields:
            return False
        annotation = cls.model_fields[part].annotation
        cls = _model_of(annotation) if _is_section(annotation) else None
    return True


def _all_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of `schema`, sections included (not inside lists or mappings of sections)."""
    out = []
    for name, field in schema.model_fields.items():
        out.append(prefix + name)
        if _is_section(field.annotation):
            out.extend(_all_keys(_model_of(field.annotation), f"{prefix}{name}."))
    return out


def _either(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " or " + keys[-1]


def unknown_key_hint(schema: type[BaseModel] | None, loc) -> str:
    """' (did you mean train.lr?)' for an unknown key at `loc` of `schema`: alignkit's key for a TRL / transformers
    name, else the same name in another section, else the nearest key of that section (difflib); '' when none."""
    import difflib

    if schema is None or not loc:
        return ""
    try:
        *parent, leaf = [str(p) for p in loc]
        path = ".".join(parent + [leaf])
        targets = [k for k in TRL_NAMES.get(leaf, ()) if k != path and _has_key(schema, k)]
        if targets:
            note = TRL_NOTES.get((leaf, targets[0]))
            return f" (a TRL / transformers name: alignkit's is {targets[0]}{f'; {note}' if note else ''})"
        keys = _all_keys(schema)
        same = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != path]
        if same:
            return f" (did you mean {_either(same[:3])}?)"
        section = _section_at(schema, loc[:-1])
        if section is not None:
            close = difflib.get_close_matches(leaf, list(section.model_fields), n=2, cutoff=0.6)
            if close:
                return f" (did you mean {_either(['.'.join(parent + [c]) for c in close])}?)"
        by_leaf: dict[str, list[str]] = {}
        for k in keys:
            by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
        close = difflib.get_close_matches(leaf, list(by_leaf), n=2, cutoff=0.75)
        if close:
            return f" (did you mean {_either([k for c in close for k in by_leaf[c]][:3])}?)"
    except Exception:  # a hint must never hide the error it adds to
        return ""
    return ""


REQUIRED = "<required>"  # shown for a key without a default that the config does not set


def describe_config(schema: type[BaseModel], path: str | None, overrides: list[str], command: str = "") -> str:
    """Every key of `schema` with its value (the default, or what `path` and `overrides` resolve to) and its help
    (the field's description, else its comment in this file), one `section.key: value  # help` line each."""
    tree = read_tree(path, overrides)
    for _ in range(16):  # keys without a default that nothing sets get a placeholder, a section at a time
        try:
            cfg = schema.model_validate(tree)
            break
        except ValidationError as e:
            errors = e.errors()
            if any(x["type"] != "missing" or not all(isinstance(p, str) for p in x["loc"]) for x in errors):
                raise AlignkitError(format_validation(e, path or "config", schema)) from None
            for x in errors:
                *parent, leaf = x["loc"]
                section = _section_at(schema, parent)
                field = section.model_fields.get(leaf) if section is not None else None
                placeholder = {} if field is not None and _is_section(field.annotation) else REQUIRED
                _set_dotted(tree, ".".join(x["loc"]), placeholder, "--show-config")
    else:
        raise AlignkitError(f"{path or 'config'}: cannot list the config (required keys keep failing)")
    title = f"alignkit {command}: " if command else ""
    where = f"as {path}{' and the overrides' if overrides else ''} resolve them" if path else "defaults"
    lines = [f"# {title}every config key, its value ({where}) and what it does"]
    _describe(type(cfg), cfg, "", "", lines)
    return "\n".join(lines)


_NO_DEFAULT = object()


def _describe(cls: type[BaseModel], obj, prefix: str, when: str, lines: list[str], defaults=None) -> None:
    """Lines for the fields of `obj` (a `cls`); `defaults`: what this section is by default when that is not
    simply its class's field defaults (say, the teacher's built-in templates)."""
    for name, field in cls.model_fields.items():
        key = prefix + name
        value = getattr(obj, name, REQUIRED) if obj is not None else REQUIRED
        if defaults is not None:
            default = getattr(defaults, name, _NO_DEFAULT)
        else:
            default = _NO_DEFAULT if field.is_required() else field.get_default(call_default_factory=True)
        help = _field_help(cls, name)
        sub = _model_of(field.annotation)
        if sub is not None and isinstance(value, BaseModel):
            _describe(type(value), value, key + ".", when, lines,
                      default if isinstance(default, BaseModel) and type(default) is type(value) else None)
            continue
        if sub is not None and isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, v in enumerate(value):
                d = default[i] if isinstance(default, list) and i < len(default) else None
                _describe(type(v), v, f"{key}[{i}].", when, lines, d if type(d) is type(v) else None)
            continue
        if sub is not None and isinstance(value, dict) and value and all(isinstance(v, BaseModel)
                                                                         for v in value.values()):
            for k, v in value.items():
                d = default.get(k) if isinstance(default, dict) else None
                _describe(type(v), v, f"{key}.{k}.", when, lines, d if type(d) is type(v) else None)
            continue
        notes = [when] if when else []
        if default is not _NO_DEFAULT and _plain(default) != _plain(value):
            notes.append(f"[default {_show(default)}]")
        notes += [help] if help else []
        lines.append(f"{key}: {_show(value)}" + (f"  # {' '.join(notes)}" if notes else ""))
        if sub is not None and value is None and _is_section(field.annotation):  # an optional section, off
            _describe(sub, sub.model_construct(), key + ".", f"[when {key} is set]", lines)


def _plain(value):
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _show(value) -> str:
    import json
    import re

    value = _plain(value)
    if isinstance(value, str) and value == REQUIRED:
        return REQUIRED
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        plain = re.fullmatch(r"[\w./@+-][\w./@+ -]*", value) and not value.endswith(" ")
        return value if plain and yaml.safe_load(value) == value else json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False)


def _field_help(cls: type[BaseModel], name: str) -> str:
    """A field's help: its Field(description=...), else the comments on and above its line in the first class
    (this one or a base) whose source gives it any."""
    field = cls.model_fields.get(name)
    if field is not None and field.description:
        return field.description
    for klass in cls.__mro__:
        if issubclass(klass, BaseModel) and name in klass.__dict__.get("__annotations__", {}):
            text = _source_comments(klass).get(name)
            if text:
                return text
    return ""


_COMMENTS: dict[type, dict[str, str]] = {}


def _source_comments(cls: type) -> dict[str, str]:
    """field name -> its comment in the class's source: the comment lines right above it, then its trailing one."""
    if cls in _COMMENTS:
        return _COMMENTS[cls]
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    found: dict[str, str] = {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        lines = source.splitlines()
        comments = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments.setdefault(tok.start[0], tok.string.lstrip("#").strip())
        for node in ast.parse(source).body[0].body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above, n = [], node.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments.get(n, ""))
                n -= 1
            trailing = [comments[i] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                        if i in comments and not lines[i - 1].strip().startswith("#")]
            found[node.target.id] = " ".join(t for t in above + trailing if t)
    except (OSError, TypeError, SyntaxError, IndexError, tokenize.TokenError):
        pass
    _COMMENTS[cls] = found
    return found
