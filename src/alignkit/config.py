"""YAML + dotted overrides -> validated pydantic models.

Unknown keys and wrong types fail here, before any model loads, with the key's dotted path in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignkit import AlignkitError


class Strict(BaseModel):
    # inf and nan are refused in every float (YAML's .inf/.nan and the strings "inf", "nan" alike)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraConfig(Strict):
    r: int = Field(16, gt=0)
    alpha: float = 32.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # Adapt only these decoder layers (0 = nearest the embeddings); negative numbers count from the top, so
    # [-15, ..., -1] is the top 15. Backward then stops at the lowest adapted layer: faster steps, less memory.
    layers: list[int] | None = None
    merge: bool = True  # final model: merged weights (True) or the adapter alone (False)


class ModelConfig(Strict):
    path: str = "smollm2-135m-instruct"  # HF directory, hub id (downloaded, or from the cache offline), .gguf file, or built-in alias
    dtype: Literal["float32", "bfloat16"] = "float32"  # storage dtype of the weights
    trust_remote_code: bool = False
    allow_pickle: bool = False  # allow loading *.bin / *.pt weights
    # transformers' attention kernel for training (None: its default, sdpa). On CPUs, "eager" trains short
    # sequences (a few hundred tokens) faster: the fused kernel's backward is slow there (docs/benchmarks.md).
    attn_implementation: Literal["eager", "sdpa"] | None = None
    lora: LoraConfig | None = None
    # QLoRA: the base weights in 4 bits (bitsandbytes), LoRA trained on top in the compute precision
    load_in_4bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"

    @model_validator(mode="after")
    def _check(self):
        if self.load_in_4bit and self.lora is None:
            raise ValueError("model.load_in_4bit (QLoRA) trains LoRA adapters on frozen 4-bit weights: set model.lora")
        return self


class DataConfig(Strict):
    train: str
    eval: str | None = None
    eval_fraction: float = Field(0.0, ge=0, lt=1)  # held out from `train` when `eval` is not given
    split: str = "train"  # split of a `datasets` DatasetDict saved to disk, for `train`
    eval_split: str = "test"  # the split `eval` is read from, when it is a saved DatasetDict (TRL: dataset_test_split)
    max_length: int = Field(512, gt=0)  # prompt + response tokens
    max_prompt_length: int = Field(256, gt=0)
    strict: bool = False  # rows that cannot fit: error (True) or drop and count (False)


class LossConfig(Strict):
    # A loss of losses/preference.py by its TRL loss_type name, or a list of them, summed per pair with `weights`
    # (MPO: [sigmoid, bco_pair, sft]). Reference-free: simpo, orpo, cpo, sft; the others need the reference.
    type: str | list[str] = "sigmoid"
    weights: list[float] | None = None  # one per loss.type entry, each >= 0; null: 1 each
    beta: float = Field(0.1, gt=0)  # β; IPO's τ; ORPO's λ
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # ε: cDPO, robust, exo_pair (> 0 there), aot, cpo
    simpo_gamma: float = 0.5  # γ, the target margin of simpo and of cpo_variant simpo
    rpo_alpha: float = Field(0.0, ge=0)  # weight of the NLL term on chosen (0 = off)
    # Compare f'(πθ/πref) instead of the log-ratio (Wang et al. 2023; reverse_kl is DPO)
    f_divergence: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = "reverse_kl"
    f_alpha: float = Field(0.5, gt=0)  # α of alpha_divergence, f'(u) = (1 − u^−α)/α: → 0 reverse KL, 1 forward KL
    ipo_length_normalized: bool = False  # ipo on summed log-probs (false) or on per-token log-ratios (true, TRL's)
    discopop_tau: float = Field(0.05, gt=0)  # τ of discopop's modulation σ(βΔ/τ)
    bco_running_mean: bool = True  # bco_pair's δ: the running mean of past rewards (the BCO paper), or 0 (TRL 1.x)
    cpo_variant: Literal["sigmoid", "hinge", "ipo", "simpo"] = "sigmoid"  # cpo's preference term (TRL's CPO loss_type)
    cpo_alpha: float = Field(1.0, ge=0)  # weight of cpo's NLL term on chosen

    @property
    def types(self) -> list[str]:
        return [self.type] if isinstance(self.type, str) else list(self.type)

    @field_validator("type")
    @classmethod
    def _known(cls, v):
        known = ("sigmoid robust hinge ipo exo_pair nca_pair bco_pair sppo_hard aot aot_unpaired apo_zero apo_down "
                 "discopop sft sigmoid_norm simpo orpo cpo").split()
        names = [v] if isinstance(v, str) else v
        bad = [n for n in names if n not in known]
        if bad or not names or len(set(names)) < len(names):
            raise ValueError(f"unknown loss {bad[0]!r} (one of: {', '.join(known)})" if bad else
                             "name each loss once, at least one")
        return v

    @model_validator(mode="after")
    def _check(self):
        n, w = len(self.types), self.weights
        if w is not None and (len(w) != n or min(w) < 0 or max(w) <= 0):
            raise ValueError(f"loss.weights: need one weight >= 0 per loss.type entry ({n}), not all 0")
        if "exo_pair" in self.types and self.label_smoothing == 0:
            raise ValueError("loss.label_smoothing: exo_pair needs ε > 0 (the EXO paper uses 1e-3)")
        shaped = {"sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "discopop",
                  "sigmoid_norm"}
        if self.f_divergence != "reverse_kl" and not shaped & set(self.types):
            raise ValueError(f"loss.f_divergence: shapes only {', '.join(sorted(shaped))}")
        return self


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
    epochs: float = Field(1.0, gt=0, le=1e6)  # bounded: epochs x rows must stay a countable number of steps
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
    # Recompute each decoder layer's activations in backward instead of keeping them: less memory, ~1/3 more compute
    gradient_checkpointing: bool = False
    # adamw_torch: torch's AdamW (fp32 states, 8 bytes a parameter); adamw_8bit: bitsandbytes' AdamW8bit (block-wise
    # 8-bit states, 2 bytes a parameter)
    optim: Literal["adamw_torch", "adamw_8bit"] = "adamw_torch"
    logits_chunk: int = Field(1024, gt=0)  # response rows per lm_head chunk
    # Rows with the same prompt run it through the decoder once. null: on for CPUs, off for GPUs, where a small
    # model is bound by kernel launches and the two passes cost more than the saved prompt tokens (docs/benchmarks.md).
    share_prompts: bool | None = None
    log_every: int = Field(1, gt=0)
    eval_every: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(8, gt=0)
    save_every: int | None = Field(None, gt=0)
    keep_last: int = Field(2, gt=0)
    resume: bool = True  # continue from the newest checkpoint in output_dir (only a run with the same config)
    overwrite: bool = False  # replace the run in output_dir (its checkpoints, metrics, final model) with this one
    tensorboard: bool = False  # an alias: true adds tensorboard to report_to
    # Trackers for each logged step's metrics and the resolved config (train/log.py), each a pip extra:
    # alignkit[mlflow] and so on. "mlflow" alone is [mlflow]; "none" is [].
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = []
    threads: int | None = Field(None, gt=0)

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, v):
        if isinstance(v, str):
            return [] if v.strip().lower() == "none" else [x.strip() for x in v.split(",") if x.strip()]
        return [] if v is None else v

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


class KTOLossConfig(Strict):
    type: Literal["kto", "apo_zero_unpaired"] = "kto"  # apo_zero_unpaired: kto with the reference point z0 = 0
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)  # λ_D (TRL's desirable_weight)
    undesirable_weight: float = Field(1.0, gt=0)  # λ_U (TRL's undesirable_weight)


class KTOTrainConfig(TrainConfig):
    output_dir: str = "runs/kto"
    batch_size: int = Field(8, gt=0)  # completions per optimizer step, across all processes
    micro_batch_size: int = Field(4, gt=0)  # completions per forward, per process


class KTOConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig  # unpaired rows (prompt, completion, label), or a preference file, unpaired
    loss: KTOLossConfig = KTOLossConfig()
    reference: ReferenceConfig = ReferenceConfig()  # auto, cached, copy or adapter
    train: KTOTrainConfig = KTOTrainConfig()

    @model_validator(mode="after")
    def _check(self):
        if self.data.max_prompt_length >= self.data.max_length:
            raise ValueError("data.max_prompt_length must be smaller than data.max_length")
        if self.reference.mode == "precomputed" or self.reference.logps or self.reference.eval_logps:
            raise ValueError("reference.logps / mode 'precomputed' are dpo's; kto caches its own (mode: cached)")
        if self.reference.mode == "adapter" and self.model.lora is None:
            raise ValueError("reference.mode 'adapter' needs model.lora")
        if self.loss.type == "kto" and self.train.batch_size < 2:
            raise ValueError("train.batch_size must be at least 2 for loss.type kto (z0 needs mismatched pairs)")
        return self


class TaskConfig(Strict):
    # A built-in arithmetic task ("addition-2d", "subtraction-3d", "multiplication-2d") or a file of questions.
    name: str | None = "addition-2d"
    file: str | None = None  # .jsonl / .json / .parquet / saved dataset with question and answer fields
    # qa: question and answer fields; trl: a TRL prompt dataset (prompt_field: a string or a list of messages, any
    # other columns, an optional answer_field); auto: trl when the first row has prompt_field and no question_field
    format: Literal["auto", "qa", "trl"] = "auto"
    question_field: str = "question"
    prompt_field: str = "prompt"  # format trl
    answer_field: str = "answer"  # "#### 42" (GSM8K), "\\boxed{42}" or a plain number; optional in format trl
    id_field: str | None = None  # default: the row number
    split: str = "train"  # built-in: train or heldout; a saved DatasetDict: its split
    limit: int | None = Field(None, gt=0)  # the first N items (after `offset`)
    offset: int = Field(0, ge=0)  # skip the first N items: rounds of training on fresh questions of one draw
    languages: list[Literal["en", "zh"]] = ["en"]  # built-in tasks only
    seed: int = 0  # built-in tasks only: which questions are drawn

    @model_validator(mode="before")
    @classmethod
    def _file_or_name(cls, data):
        if isinstance(data, dict) and data.get("file"):
            data = {**data, "name": None}  # a file replaces the default built-in task
        elif isinstance(data, dict) and "name" in data and not data["name"]:
            raise ValueError("task: give a built-in task name or a file")
        if isinstance(data, dict) and data.get("format", "auto") != "auto" and not data.get("file"):
            raise ValueError(f"task.format={data['format']}: applies to a file; give task.file")
        return data


class EngineConfig(Strict):
    """Where samples come from: alignkit's own sampler, or vLLM servers (docs/engines.md)."""

    backend: Literal["local", "vllm"] = "local"
    engine_urls: list[str] = Field(default_factory=list)  # running vLLM servers, requests spread over them
    # or one alignkit starts (and stops): '{port}' becomes a free port, '{model}' the policy's model directory
    engine_command: str | None = None
    startup_timeout: float = Field(300.0, gt=0)  # seconds for a started engine to answer
    engine_timeout: float = Field(300.0, gt=0)  # seconds for one generation request
    sync_timeout: float = Field(120.0, gt=0)  # seconds for one weight sync, checks included
    sync_dir: str | None = None  # where weights are written for the engines to read (default: a RAM-backed dir)
    # LoRA runs: hot-load the adapter (megabytes), or fold it in and push full weights (no LoRA kernels in the engine)
    lora_sync: Literal["adapter", "merged"] = "adapter"

    @model_validator(mode="after")
    def _engines(self):
        if self.backend == "vllm" and not (self.engine_urls or self.engine_command):
            raise ValueError("backend vllm needs engine_urls (running servers) or engine_command (one to start)")
        if self.backend == "local" and (self.engine_urls or self.engine_command):
            raise ValueError("engine_urls / engine_command are given but backend is local; set backend: vllm")
        return self


class StudentConfig(EngineConfig):
    model: str = "smollm2-135m-instruct"
    samples: int = Field(4, gt=0)  # k answers per question
    temperature: float = Field(1.0, ge=0)  # 0: greedy (one answer per question, whatever `samples` says)
    # Which wrong answer becomes `rejected`: the first one, or the likeliest (highest summed log-prob under the
    # student): the mistake it would most likely make again (docs/pairs.md, "Informative pairs").
    rejected: Literal["first", "likeliest"] = "first"
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(64, gt=0)
    seed: int = 0
    trust_remote_code: bool = False
    # The local sampler under bf16 autocast: faster where the processor has bf16 units; a few answers may differ
    # from float32's in some tokens. Its log-probs are then never reused as a DPO reference's.
    bf16: bool = False


class TemplateConfig(Strict):
    system: str | None = None
    user: str  # {question} and {answer} are filled in


DEFAULT_TEMPLATES = {
    "en": TemplateConfig(
        system="You are a patient math teacher who explains clearly and briefly.",
        user=("Solve the problem below step by step. Keep each step short and show the calculation, then end with "
              "a final line of exactly this form: Answer: <number>\n"
              "The correct answer is {answer}. Use it only to check your work: never mention that you were given "
              "the answer, and write as if you worked it out yourself.\n\nProblem: {question}"),
    ),
    "zh": TemplateConfig(
        system="你是一位耐心的数学老师，讲解清楚而简洁。",
        user=("请一步一步地解答下面的题目。每一步都要简短，并写出计算过程，最后一行必须写成：答案：<数字>\n"
              "正确答案是 {answer}。它只用于检查你的计算：不要提到你事先知道答案，要像自己算出来一样书写。\n\n"
              "题目：{question}"),
    ),
}
REVEAL_PHRASES = [
    "as given", "given answer", "provided answer", "answer provided", "answer given", "answer you gave",
    "the answer is given", "we are told", "i was told", "you told me", "as stated", "stated answer",
    "expected answer", "correct answer is given", "according to the answer", "matches the answer",
    "已知答案", "给定的答案", "给出的答案", "提供的答案", "题目给出的答案", "告诉我答案", "如题所给",
]


class TeacherConfig(Strict):
    kind: Literal["solver", "hf", "openai"] = "solver"
    model: str | None = None  # hf: model path or alias; openai: the served model's name
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key (may be unset for local servers)
    concurrency: int = Field(4, gt=0)  # openai: requests in flight
    timeout: float = Field(60.0, gt=0)  # openai: seconds per request
    max_retries: int = Field(4, ge=0)  # openai: retries on 429, 5xx, time-outs and connection errors
    backoff: float = Field(1.0, ge=0)  # first retry delay in seconds; doubles each retry, with jitter
    max_backoff: float = Field(30.0, ge=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, gt=0)
    attempts: int = Field(3, gt=0)  # tries per question before the question is dropped
    batch_size: int = Field(16, gt=0)  # hf: prompts per generation batch
    templates: dict[Literal["en", "zh"], TemplateConfig] = Field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    reveal_phrases: list[str] = Field(default_factory=lambda: list(REVEAL_PHRASES))
    min_reasoning_chars: int = Field(12, ge=0)  # text besides the final answer line
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("teacher kind 'openai' needs teacher.base_url and teacher.model")
        if self.kind == "hf" and not self.model:
            raise ValueError("teacher kind 'hf' needs teacher.model")
        return self


class PairsConfig(Strict):
    task: TaskConfig = TaskConfig()
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig = TeacherConfig()
    output_dir: str = "runs/pairs"
    chunk: int = Field(32, gt=0)  # questions per round of student sampling + teaching; progress is saved per record
    # How hard the pairs are: a forward pass of a local student over them at the end (pairs/build.py: student_ranking)
    rank: bool = True


class SFTDataConfig(Strict):
    train: str | None = None  # rows with "messages", or "prompt" + "completion"
    # or demonstrations written by a built-in task's own solver for its questions (a warm start before RL)
    task: TaskConfig | None = None
    eval: str | None = None
    eval_fraction: float = Field(0.0, ge=0, lt=1)
    split: str = "train"  # for `train`, when it is a saved DatasetDict
    eval_split: str = "test"  # for `eval`, when it is a saved DatasetDict
    max_length: int = Field(512, gt=0)
    strict: bool = False  # rows longer than max_length: error (True) or drop and count (False)
    # Pack each micro-batch's rows end to end into rows of at most max_length tokens (no padding between
    # them); positions restart per row and attention stays inside it, so the loss is the unpacked one.
    packing: bool = False

    @model_validator(mode="after")
    def _source(self):  # neither is refused when the run starts (algos/sft.py), so --show-config lists both
        if self.train is not None and self.task is not None:
            raise ValueError("data: give train (a file of rows) or task (the task's solver writes them), not both")
        return self


class SFTTrainConfig(TrainConfig):
    output_dir: str = "runs/sft"
    lr: float = Field(2e-5, gt=0)


class SFTConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: SFTDataConfig
    train: SFTTrainConfig = SFTTrainConfig()


class RMLossConfig(Strict):
    margin: float = Field(0.0, ge=0)  # chosen must beat rejected by this much (Bradley–Terry with margin)
    # a row's score from the head's per-token values: at the last response token (TRL's), their mean over the
    # response, or their minimum; default: the starting reward model's pooling, else last
    pooling: Literal["last", "mean", "min"] | None = None
    # add the model's own log-probability of each response token to that token's value, with a learned weight
    # starting at 1 (needs pooling mean or min; mean when pooling is not set); default: as the starting reward
    # model, else off
    token_logprob: bool | None = None


class RMTrainConfig(TrainConfig):
    output_dir: str = "runs/rm"
    lr: float = Field(1e-5, gt=0)


class RMConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    loss: RMLossConfig = RMLossConfig()
    train: RMTrainConfig = RMTrainConfig()

    @model_validator(mode="after")
    def _check(self):
        if self.data.max_prompt_length >= self.data.max_length:
            raise ValueError("data.max_prompt_length must be smaller than data.max_length")
        if self.loss.token_logprob and self.loss.pooling == "last":
            raise ValueError("loss.token_logprob adds a value at every response token: set loss.pooling to mean or "
                             "min (last reads one token)")
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


def format_validation(err: ValidationError, source: str, schema: type[BaseModel] | None = None) -> str:
    """One line naming each failing key; an unknown key gets the nearest alignkit key (or, for a TRL /
    transformers name, alignkit's) of `schema` (default: the schema the error came from, by its name)."""
    if schema is None:
        named = globals().get(err.title)
        schema = named if isinstance(named, type) and issubclass(named, BaseModel) else None
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            from alignkit.config_help import unknown_key_hint

            msg = "unknown key" + unknown_key_hint(schema, e["loc"])
        else:
            msg = e["msg"].removeprefix("Value error, ")
        if path and e["type"] not in ("extra_forbidden", "missing") and "input" in e:
            msg += f" (got {e['input']!r})"
        parts.append(f"{path}: {msg}" if path else msg)
    return f"{source}: invalid config: " + "; ".join(parts)


def load_config(schema: type[BaseModel], path: str | None, overrides: list[str]) -> BaseModel:
    """Read YAML at `path` (may be None), apply `key.sub=value` overrides, validate against `schema`."""
    tree = read_tree(path, overrides)
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        raise AlignkitError(format_validation(e, path or "config", schema)) from None


# Keys a rerun may change and still continue the run in its directory: how long it runs, how often it logs and
# saves, and where (not what) it computes with. Any other difference is another run.
MAY_CHANGE = ("train.max_steps", "train.epochs", "train.resume", "train.overwrite", "train.output_dir",
              "train.save_every", "train.keep_last", "train.log_every", "train.eval_every", "train.eval_batch_size",
              "train.threads", "train.tensorboard",
              "train.report_to", "reference.cache_dir", "generation.engine_urls",
              "generation.engine_command", "generation.startup_timeout", "generation.engine_timeout",
              "generation.sync_timeout", "generation.sync_dir", "judge.url", "judge.api_key_env", "judge.concurrency")


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_keys(before: dict, cfg: BaseModel) -> list[tuple[str, object, object]]:
    """(key, old value, new value) for each key of a saved resolved config that `cfg` sets otherwise, ignoring
    MAY_CHANGE (and anything below those keys)."""
    old, new = _flatten(before), _flatten(cfg.model_dump(mode="json"))
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k), new.get(k)) for k in keys
            if old.get(k) != new.get(k) and not any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)]


def save_resolved(cfg: BaseModel, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def read_tree(path: str | None, overrides: list[str]) -> dict:
    """The YAML at `path` (may be None) with the `key.sub=value` overrides applied, not yet validated."""
    tree: dict = {}
    if path is not None:
        from alignkit.data.files import read_text

        try:
            tree = yaml.safe_load(read_text(path)) or {}
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
    return tree


# The schemas of the commands that generate while they train, kept in their own file (config_rl.py) and re-exported.
from alignkit.config_rl import (  # noqa: E402
    RewardConfig,
    GRPOLossConfig,
    GenerationConfig,
    GRPOTrainConfig,
    GRPOConfig,
    OnlineConfig,
    OnlineJudgeConfig,
    OnlineDPOTrainConfig,
    OnlineDPOConfig,
    PPOLossConfig,
    ValueConfig,
    PPOTrainConfig,
    PPOConfig,
    DAPO_PRESET,
)
