"""Unknown config keys name the key alignkit has (TRL / transformers names mapped, typos matched), and
`--show-config` lists every key with its default and help."""

import pytest

from alignkit import AlignkitError
from alignkit import config as C
from alignkit import config_help as H
from alignkit.cli import main

SCHEMAS = {"dpo": C.DPOConfig, "kto": C.KTOConfig, "sft": C.SFTConfig, "rm": C.RMConfig, "grpo": C.GRPOConfig,
           "ppo": C.PPOConfig, "pairs": C.PairsConfig}


def _yaml(tmp_path, text="data:\n  train: a.jsonl\n"):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err  # one line
    return err


def test_top_level_trl_override_names_alignkit_key(tmp_path, capsys):
    err = _error(["dpo", "-c", _yaml(tmp_path), "learning_rate=1e-5"], capsys)
    assert "learning_rate: unknown key" in err and "train.lr" in err, err


def test_nested_trl_key_in_yaml(tmp_path, capsys):
    err = _error(["dpo", "-c", _yaml(tmp_path, "data:\n  train: a.jsonl\ntrain:\n  learning_rate: 1.0e-5\n")], capsys)
    assert "c.yaml: invalid config: train.learning_rate: unknown key" in err and "train.lr" in err, err


@pytest.mark.parametrize("command, key, target", [
    ("dpo", "per_device_train_batch_size", "train.micro_batch_size"),
    ("dpo", "gradient_accumulation_steps", "train.micro_batch_size x accumulation steps x processes"),
    ("sft", "num_train_epochs", "train.epochs"),
    ("dpo", "loss_type", "loss.type"),
    ("dpo", "beta", "loss.beta"),
    ("grpo", "beta", "grpo.beta"),
    ("grpo", "num_generations", "grpo.group_size"),
    ("grpo", "max_completion_length", "generation.max_new_tokens"),
    ("dpo", "max_prompt_length", "data.max_prompt_length"),
    ("rm", "max_length", "data.max_length"),
    ("dpo", "warmup_ratio", "train.warmup_ratio"),
    ("dpo", "lr_scheduler_type", "train.scheduler"),
    ("ppo", "output_dir", "train.output_dir"),
    ("sft", "bf16", "train.bf16"),
    ("sft", "gradient_checkpointing", "train.gradient_checkpointing"),
    ("dpo", "optim", "train.optim"),
    ("grpo", "epsilon", "grpo.eps_low"),
    ("grpo", "epsilon_high", "grpo.eps_high"),
    ("dpo", "max_steps", "train.max_steps"),
    ("dpo", "seed", "train.seed"),
    ("dpo", "logging_steps", "train.log_every"),
    ("dpo", "save_steps", "train.save_every"),
    ("dpo", "eval_steps", "train.eval_every"),
    ("dpo", "dataset_test_split", "data.eval_split"),
    ("sft", "model_name_or_path", "model.path"),
    ("dpo", "use_peft", "model.lora.r"),
    ("dpo", "lora_r", "model.lora.r"),
    ("dpo", "load_in_4bit", "model.load_in_4bit"),
])
def test_trl_names_map_to_keys_of_that_command(command, key, target):
    extra = [] if command in ("grpo", "ppo", "pairs") else ["data.train=a.jsonl"]
    with pytest.raises(AlignkitError) as e:
        C.load_config(SCHEMAS[command], None, [*extra, f"{key}=1"])
    assert f"{key}: unknown key (a TRL / transformers name: alignkit's is " in str(e.value)
    assert target in str(e.value)


def test_every_mapped_target_exists_somewhere_and_hints_name_only_existing_keys():
    for name, targets in H.TRL_NAMES.items():
        assert any(H._has_key(schema, t) for t in targets for schema in SCHEMAS.values()), name
        for schema in SCHEMAS.values():
            hint = H.unknown_key_hint(schema, (name,))
            if "alignkit's is " in hint:
                assert H._has_key(schema, hint.split("alignkit's is ")[1].split(";")[0].rstrip(")")), (name, hint)
    # pairs build has no train section: no train.lr there
    assert "train.lr" not in H.unknown_key_hint(C.PairsConfig, ("learning_rate",))


@pytest.mark.parametrize("schema, override, hint", [
    (C.DPOConfig, "train.lrr=1", "(did you mean train.lr?)"),
    (C.DPOConfig, "loss.betta=1", "(did you mean loss.beta?)"),
    (C.DPOConfig, "model.lora.rr=4", "(did you mean model.lora.r?)"),
    (C.DPOConfig, "lr=1", "(did you mean train.lr?)"),  # a key of another section, at the top
    (C.DPOConfig, "train.strict=true", "(did you mean data.strict?)"),  # the same name in another section
    (C.SFTConfig, "packing=true", "(did you mean data.packing?)"),
    (C.PairsConfig, "seed=1", "(did you mean task.seed, student.seed or teacher.seed?)"),
    (C.GRPOConfig, "grpo.groupsize=4", "(did you mean grpo.group_size?)"),
])
def test_typos_get_the_nearest_key(schema, override, hint):
    extra = ["data.train=a.jsonl"] if schema in (C.DPOConfig, C.SFTConfig) else []
    with pytest.raises(AlignkitError) as e:
        C.load_config(schema, None, [*extra, override])
    assert f"{override.split('=')[0]}: unknown key {hint}" in str(e.value)


def test_no_hint_when_nothing_is_near():
    with pytest.raises(AlignkitError, match=r"nosuch: unknown key$"):
        C.load_config(C.DPOConfig, None, ["data.train=a", "nosuch.key=1"])


def test_show_config_lists_defaults_and_help_without_a_config(capsys):
    main(["dpo", "--show-config"])  # returns: exit status 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "train.lr: 5e-06" in lines
    assert "train.batch_size: 8  # pairs per optimizer step, across all processes" in lines
    assert "data.train: <required>" in lines
    assert "model.lora: null" in lines
    assert any(line.startswith("model.lora.r: 16  # [when model.lora is set]") for line in lines)
    # a comment above a field is its help too
    assert any(line.startswith("train.gradient_checkpointing: false  # Recompute each decoder layer") for line in lines)
    # every key of the schema is listed
    listed = {line.split(":")[0] for line in lines if not line.startswith("#")}
    for key in H._all_keys(C.DPOConfig):
        section = H._is_section(C.DPOConfig.model_fields[key.split(".")[0]].annotation) and "." not in key
        assert section or key in listed, key


def test_show_config_with_a_config_shows_resolved_values(tmp_path, capsys):
    main(["dpo", "--show-config", "-c", _yaml(tmp_path, "data:\n  train: a.jsonl\ntrain:\n  lr: 1.0e-3\n"),
          "loss.beta=0.5"])
    lines = capsys.readouterr().out.splitlines()
    assert "train.lr: 0.001  # [default 5e-06]" in lines
    assert "data.train: a.jsonl" in lines and any(line.startswith("loss.beta: 0.5  # [default 0.1]") for line in lines)


def test_show_config_of_a_bad_config_is_the_usual_error(tmp_path, capsys):
    err = _error(["sft", "--show-config", "-c", _yaml(tmp_path), "train.learning_rate=1"], capsys)
    assert "train.lr" in err


@pytest.mark.parametrize("argv, line", [
    (["sft"], "train.lr: 2e-05"),
    (["rm"], "loss.margin: 0.0  # chosen must beat rejected by this much (Bradley–Terry with margin)"),
    (["ppo"], "ppo.kl_coef: 0.05  # per-token KL penalty folded into the reward"),
    (["grpo"], "grpo.group_size: 8  # G completions per prompt"),
    (["dapo"], "grpo.eps_high: 0.28  # [default null] default: eps_low; DAPO's clip-higher: 0.28"),
    (["pairs", "build"], "student.samples: 4  # k answers per question"),
])
def test_show_config_for_every_training_command(argv, line, capsys):
    main([*argv, "--show-config"])
    assert line in capsys.readouterr().out.splitlines()


def test_config_still_required_without_show_config(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dpo"])
    assert exc.value.code == 2 and "Missing option '--config'" in capsys.readouterr().err
