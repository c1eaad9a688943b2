"""The schemas of the commands that generate while they train: GRPO and DAPO, online DPO, PPO (and the rewards they
share). Part of `alignkit.config`, which re-exports every name here; the loading machinery lives there."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignkit import AlignkitError
from alignkit.config import EngineConfig, LoraConfig, LossConfig, ModelConfig, Strict, TaskConfig, TrainConfig


class RewardConfig(Strict):
    # task: the task's own reward (1.0 when `task.evaluate` accepts the answer, else 0.0; needs gold answers);
    # function: `path/to/file.py:name`, called as TRL calls one: name(prompts=[...], completions=[...], **fields)
    # -> one float (or None: not scored) per completion, where fields are the row's other columns (a TRL prompt
    # file's columns; answer, id, meta; completion_ids), one list entry per completion. A function without
    # **kwargs gets only the fields it names (see rewards.py).
    kind: Literal["task", "function", "model"] = "task"
    function: str | None = None
    model: str | None = None  # kind model: a reward model trained by `alignkit rm` (same tokenizer as the policy)
    weight: float = 1.0

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "model" and not self.model:
            raise ValueError("reward kind 'model' needs model: a directory written by alignkit rm")
        if self.kind == "function":
            if not self.function:
                raise ValueError("reward kind 'function' needs function: path/to/file.py:name")
            from alignkit.rewards import load_function

            try:
                load_function(self.function)  # a missing file or name fails now, before any model loads
            except AlignkitError as e:
                raise ValueError(str(e)) from None
        return self


class GRPOLossConfig(Strict):
    group_size: int = Field(8, ge=2)  # G completions per prompt
    beta: float = Field(0.04, ge=0)  # k3 KL to the reference; 0 loads no reference
    eps_low: float = Field(0.2, ge=0, lt=1)
    eps_high: float | None = Field(None, ge=0)  # default: eps_low; DAPO's clip-higher: 0.28
    iterations: int = Field(1, ge=1)  # μ: optimizer steps per generation round
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO); grpo advantages only
    # grpo: (r − mean_group) / std_group; rloo: r − the mean of the group's other completions; reinforce++: returns of
    # the KL-shaped token rewards normalised over the whole batch; reinforce++-baseline: the same after r − mean_group
    advantage: Literal["grpo", "rloo", "reinforce++", "reinforce++-baseline"] = "grpo"
    # Where β's KL to the reference goes: "loss" (k3 added to each token's loss, GRPO) or "reward" (k1 = log π_old −
    # log π_ref subtracted from the reward: token by token for reinforce++, summed over the sequence for grpo and
    # rloo, as TRL's RLOO). null: "loss" for grpo, "reward" for the others.
    kl_penalty: Literal["loss", "reward"] | None = None
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "seq-mean-token-mean"
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal and sample more prompts
    max_generation_rounds: int = Field(4, ge=1)  # bound on refills per step under dynamic sampling
    overlong_buffer: int = Field(0, ge=0)  # DAPO's soft overlong penalty inside this many tokens of the limit
    overlong_penalty: float = Field(1.0, ge=0)


class GenerationConfig(EngineConfig):
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(64, gt=0)  # completions per generation batch
    log_rollouts: bool = False  # append every completion, its reward and advantage to <output_dir>/rollouts.jsonl
    # Truncated importance sampling: weight each token's policy loss by min(π_trainer / π_sampler, tis_cap)
    tis_cap: float | None = Field(None, gt=0)


class GRPOTrainConfig(TrainConfig):
    output_dir: str = "runs/grpo"
    batch_size: int = Field(32, gt=0)  # completions per optimizer step (prompts × group_size), all processes
    micro_batch_size: int = Field(8, gt=0)  # completions per forward, per process
    lr: float = Field(1e-6, gt=0)


DAPO_PRESET = {"eps_high": 0.28, "dynamic_sampling": True, "aggregation": "token-mean", "beta": 0.0}


class GRPOConfig(Strict):
    preset: Literal["grpo", "dapo"] = "grpo"  # dapo: clip-higher, dynamic sampling, token-level loss, no KL, overlong
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()  # prompts and answers (train split)
    rewards: list[RewardConfig] = Field(default_factory=lambda: [RewardConfig()])
    grpo: GRPOLossConfig = GRPOLossConfig()
    generation: GenerationConfig = GenerationConfig()
    train: GRPOTrainConfig = GRPOTrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        """The dapo preset fills DAPO's settings wherever the config does not set them itself."""
        if isinstance(data, dict) and data.get("preset") == "dapo":
            grpo = dict(data.get("grpo") or {})
            for key, value in DAPO_PRESET.items():
                grpo.setdefault(key, value)
            if "overlong_buffer" not in grpo:
                max_new = (data.get("generation") or {}).get("max_new_tokens", GenerationConfig().max_new_tokens)
                grpo["overlong_buffer"] = max(1, int(max_new) // 4) if isinstance(max_new, int) else 0
            data = {**data, "grpo": grpo}
        return data

    @model_validator(mode="after")
    def _check(self):
        g, t = self.grpo, self.train
        if t.batch_size % g.group_size:
            raise ValueError(f"train.batch_size={t.batch_size} (completions per step) is not divisible by "
                             f"grpo.group_size={g.group_size}")
        if g.eps_high is not None and g.eps_high < g.eps_low:
            raise ValueError(f"grpo.eps_high={g.eps_high} is smaller than grpo.eps_low={g.eps_low}")
        if not self.rewards:
            raise ValueError("rewards: no reward given (a task reward, or a function path/to/file.py:name)")
        if g.overlong_buffer >= self.generation.max_new_tokens:
            raise ValueError(f"grpo.overlong_buffer={g.overlong_buffer} must be smaller than "
                             f"generation.max_new_tokens={self.generation.max_new_tokens}")
        return self


class OnlineConfig(Strict):
    samples_per_prompt: int = Field(2, ge=2)  # completions per prompt; the best and the worst scored make its pair
    # Added to the score of a completion without an end-of-turn token (normally negative: TRL's 1.0 is -1.0 here)
    missing_eos_penalty: float | None = None


class OnlineJudgeConfig(Strict):
    """A pairwise judge behind an OpenAI-compatible endpoint, ranking the samples instead of `rewards`."""

    url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the served model's name
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key (may be unset for local servers)
    concurrency: int = Field(8, gt=0)  # requests in flight
    max_tokens: int = Field(512, gt=0)
    retries: int = Field(2, ge=0)  # re-asks of a reply without a readable verdict


class OnlineDPOTrainConfig(TrainConfig):
    output_dir: str = "runs/online-dpo"
    batch_size: int = Field(8, gt=0)  # prompts per optimizer step, all processes (each gives at most one pair)
    micro_batch_size: int = Field(4, gt=0)  # pairs per forward, per process


class OnlineDPOConfig(Strict):
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()  # the prompts (and answers, for kind: task)
    rewards: list[RewardConfig] = Field(default_factory=lambda: [RewardConfig()])  # the ranker, unless `judge`
    judge: OnlineJudgeConfig | None = None  # a pairwise judge ranks instead; rewards are then not given
    loss: LossConfig = LossConfig()
    online: OnlineConfig = OnlineConfig()
    generation: GenerationConfig = GenerationConfig()
    train: OnlineDPOTrainConfig = OnlineDPOTrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _one_ranker(cls, data):
        """With a judge, no reward is loaded (so prompts need no gold answers); giving both is refused."""
        if isinstance(data, dict) and data.get("judge") is not None:
            if data.get("rewards") not in (None, []):
                raise ValueError("give rewards or judge, not both: the judge ranks the samples on its own")
            data = {**data, "rewards": []}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.judge is None and not self.rewards:
            raise ValueError("rewards: no reward given (a task reward, a function path/to/file.py:name, a reward "
                             "model), and no judge")
        if self.judge is not None and self.online.missing_eos_penalty is not None:
            raise ValueError("online.missing_eos_penalty: adds to reward scores, and a judge gives none; leave it "
                             "unset")
        if self.generation.tis_cap is not None:
            raise ValueError("generation.tis_cap: weights a policy-gradient loss (GRPO, PPO); online DPO has none")
        return self


class PPOLossConfig(Strict):
    rollout_prompts: int = Field(32, gt=0)  # prompts per rollout (one completion each)
    epochs: int = Field(2, ge=1)  # passes over each rollout, in minibatches of train.batch_size
    eps: float = Field(0.2, gt=0, lt=1)  # ratio clip
    value_clip: float | None = Field(0.2, gt=0)  # None: unclipped value loss
    vf_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    kl_coef: float = Field(0.05, ge=0)  # per-token KL penalty folded into the reward
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0)  # adaptive: target KL per sequence (nats)
    kl_horizon: int = Field(10000, gt=0)
    whiten_advantages: bool = True  # gae only (reinforce++ always normalises over the rollout; rloo never does)
    missing_eos_penalty: float | None = -1.0  # added to the score of a response without an end-of-turn token
    # gae: a value model (critic) and GAE(γ, λ); without a critic: rloo (leave-one-out baseline over a prompt's
    # samples), reinforce++ (returns of the KL-shaped token rewards, normalised over the rollout), reinforce++-baseline
    advantage: Literal["gae", "rloo", "reinforce++", "reinforce++-baseline"] = "gae"
    samples_per_prompt: int = Field(1, ge=1)  # completions per prompt in a rollout (rloo and the baseline need >= 2)


class ValueConfig(Strict):
    init: Literal["reward-model", "policy"] = "reward-model"  # reward-model: when a reward model is given
    lora: LoraConfig | None = None  # default: the policy's LoRA settings


class PPOTrainConfig(TrainConfig):
    output_dir: str = "runs/ppo"
    batch_size: int = Field(8, gt=0)  # sequences per optimizer step (a minibatch of the rollout)
    lr: float = Field(1e-5, gt=0)


class PPOConfig(Strict):
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    rewards: list[RewardConfig] = Field(default_factory=lambda: [RewardConfig()])
    ppo: PPOLossConfig = PPOLossConfig()
    value: ValueConfig = ValueConfig()
    generation: GenerationConfig = GenerationConfig()
    train: PPOTrainConfig = PPOTrainConfig()

    @model_validator(mode="after")
    def _check(self):
        p = self.ppo
        if p.rollout_prompts * p.samples_per_prompt % self.train.batch_size:
            raise ValueError(f"ppo.rollout_prompts={p.rollout_prompts} x ppo.samples_per_prompt={p.samples_per_prompt}"
                             f" (sequences per rollout) is not divisible by train.batch_size={self.train.batch_size}")
        if p.advantage in ("rloo", "reinforce++-baseline") and p.samples_per_prompt < 2:
            raise ValueError(f"ppo.advantage={p.advantage} compares each completion with the other completions of its "
                             "prompt: set ppo.samples_per_prompt to 2 or more")
        if not self.rewards:
            raise ValueError("rewards: no reward given (a reward model, a task reward, or a function)")
        return self
