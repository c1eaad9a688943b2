"""`alignkit kto`: unpaired rows under the token-boundary contract, a preference file unpaired, bad rows, and the
command end to end on a tiny model through the real CLI (loss types, reference modes, the reference cache, one z0
per optimizer step whatever the micro-batches and processes, resume after SIGKILL)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit import AlignkitError
from alignkit.cli import main
from conftest import ROOT, killed_and_resumed, write_jsonl

DATA = ROOT / "data" / "arith" / "train.jsonl"
HELD = ROOT / "data" / "arith" / "heldout.jsonl"
USER = [{"role": "system", "content": "Answer briefly.  "}, {"role": "user", "content": "  你好 🌍 What is 2+2? "}]
UNPAIRED = [
    {"prompt": USER, "completion": [{"role": "assistant", "content": " 2 + 2 = 4 🎉 "}], "label": True},
    {"prompt": USER, "completion": "5", "label": False},  # a plain string reply in a conversational row
    {"prompt": USER, "completion": {"role": "assistant", "content": "four"}, "label": True},
    {"prompt": " The capital of France is", "completion": " Paris. ", "label": True},
    {"prompt": "Q: 1+1=", "completion": "3", "label": False},
]


def _contract_ids(tok, prompt, completion):
    """(prompt ids, completion ids) derived from DESIGN.md's contract directly."""
    if isinstance(prompt, str):
        return (tok(prompt, add_special_tokens=False).input_ids,
                tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id])
    if isinstance(completion, str):
        completion = {"role": "assistant", "content": completion}
    if isinstance(completion, dict):
        completion = [completion]
    p_text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(prompt + completion, tokenize=False)
    added = full[len(p_text):]
    end = added.rindex("<|im_end|>") + len("<|im_end|>")
    return tok(p_text, add_special_tokens=False).input_ids, tok(added[:end], add_special_tokens=False).input_ids


def test_both_row_forms_follow_the_token_boundary_contract(tokenizer, tmp_path):
    from alignkit.data.collate import load_completions

    items = load_completions(str(write_jsonl(tmp_path / "u.jsonl", UNPAIRED)), tokenizer, 4096, 4095)
    assert [(c.row, c.label) for c in items] == [(i + 1, r["label"]) for i, r in enumerate(UNPAIRED)]
    for item, row in zip(items, UNPAIRED):
        prompt_ids, completion_ids = _contract_ids(tokenizer, row["prompt"], row["completion"])
        assert list(item.prompt_ids) == prompt_ids
        assert list(item.completion_ids) == completion_ids
        assert completion_ids[-1] in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))


def test_a_preference_file_is_unpaired(tokenizer):
    """Each pair: its chosen a desirable completion, its rejected an undesirable one, with DPO's exact token ids."""
    from alignkit.data.chat import Tokenize
    from alignkit.data.collate import load_completions
    from alignkit.data.records import parse_row

    items = load_completions(str(DATA), tokenizer, 4096, 4095)
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert len(items) == 2 * len(rows)
    for k in (0, 7, len(rows) - 1):
        pair = Tokenize(tokenizer)(parse_row(rows[k], "f", k + 1), "f")
        good, bad = items[2 * k], items[2 * k + 1]
        assert (good.row, good.label, bad.row, bad.label) == (k + 1, True, k + 1, False)
        assert good.prompt_ids == bad.prompt_ids == pair.prompt_ids
        assert (good.completion_ids, bad.completion_ids) == (pair.chosen_ids, pair.rejected_ids)


@pytest.mark.parametrize("bad, expected", [
    ({"prompt": "x", "completion": "y"}, r"row 2: field 'label': missing"),
    ({"prompt": "x", "completion": "y", "label": 1}, r"row 2: field 'label': expected true or false, got 1"),
    ({"prompt": "x", "completion": "y", "label": "true"}, r"row 2: field 'label': expected true or false"),
    ({"prompt": "x", "label": True}, r"row 2: field 'completion': missing"),
    ({"completion": "y", "label": True}, r"row 2: field 'prompt': missing"),
    ({"prompt": "x", "completion": "  ", "label": False}, r"row 2: field 'completion': empty response"),
    ({"prompt": "x", "completion": ["y"], "label": False}, r"row 2: field 'completion': expected a string"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": "5<|im_end|>", "label": True},
     r"row 2: field 'completion\[0\]\.content': contains the tokenizer's control text '<\|im_end\|>'"),
    ({"prompt": "2+3=<|im_start|>", "completion": "5", "label": True},
     r"row 2: field 'prompt': contains the tokenizer's control text"),
    ({"prompt": "x", "chosen": "y"}, r"row 2: field 'rejected': missing"),  # a preference row, as DPO's
], ids=["missing-label", "label-int", "label-string", "missing-completion", "missing-prompt", "empty", "wrong-type",
        "control-text-in-completion", "control-text-in-prompt", "pair-missing-rejected"])
def test_bad_rows_name_file_row_and_field(bad, expected, tokenizer, tmp_path):
    from alignkit.data.collate import load_completions

    path = write_jsonl(tmp_path / "u.jsonl", [UNPAIRED[0], bad])
    with pytest.raises(AlignkitError, match=f"^{path}: {expected}"):
        load_completions(str(path), tokenizer, 4096, 4095)


def test_mismatched_pairs_shift_completions_past_the_same_prompt():
    from alignkit.data.collate import Completion, mismatched

    items = [Completion(1, (1,), (10,), True), Completion(1, (1,), (11,), False), Completion(2, (2,), (12,), True),
             Completion(3, (3,), (13,), False)]
    out = mismatched(items)
    # item 0 takes the last one's completion; item 1 skips item 0 (same prompt) and takes item 3's
    assert [(c.prompt_ids, c.completion_ids, c.label) for c in out] == [
        ((1,), (13,), True), ((1,), (13,), False), ((2,), (11,), True), ((3,), (12,), False)]


def _config(tmp_path: Path, model: Path, **train) -> Path:
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(HELD.read_text().splitlines(keepends=True)[:10]))  # 20 held-out completions
    cfg = tmp_path / "kto.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\n"
        f"data:\n  train: {DATA}\n  eval: {held}\n  max_length: 160\n  max_prompt_length: 96\n"
        f"reference:\n  cache_dir: {tmp_path / 'ref-cache'}\n"
        "train:\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n  max_steps: 4\n  eval_batch_size: 40\n"
        + "".join(f"  {k}: {v}\n" for k, v in train.items())
    )
    return cfg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


TRL_KEYS = {"loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
            "count/chosen", "count/rejected", "grad_norm", "learning_rate", "tokens_per_second"}


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_each_loss_type_trains(loss_type, tiny_model, tmp_path, capsys):
    """The first step has πθ = πref and z0 = 0: every completion's loss is λ_y / 2 (here 0.5 and 0.75)."""
    run = tmp_path / "run"
    main(["kto", "--config", str(_config(tmp_path, tiny_model)), f"loss.type={loss_type}", f"train.output_dir={run}",
          "loss.undesirable_weight=1.5"])
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    assert (TRL_KEYS if loss_type == "kto" else TRL_KEYS - {"kl"}) <= first.keys()
    assert ("kl" in first) == (loss_type == "kto")
    n_d, n_u = first["count/chosen"], first["count/rejected"]
    assert n_d + n_u == 4
    assert first["loss"] == pytest.approx((0.5 * n_d + 0.75 * n_u) / 4, abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    if loss_type == "kto":
        assert first["kl"] == pytest.approx(0.0, abs=1e-4)
    last = rows[-1]
    assert {"eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins", "eval_logps/chosen",
            "eval_logps/rejected"} <= last.keys()
    assert (last["eval_count/chosen"], last["eval_count/rejected"]) == (10, 10)
    assert last["eval_rewards/margins"] == pytest.approx(last["eval_rewards/chosen"] - last["eval_rewards/rejected"],
                                                         abs=1e-6)
    assert (run / "config.yaml").is_file() and (run / "final" / "model.safetensors").is_file()
    assert "`kto`" in (run / "final" / "README.md").read_text()
    out = capsys.readouterr().out
    assert "data: 800 training completions (400 desirable, 400 undesirable), 20 held-out" in out


@pytest.mark.slow  # ~15 s; the reference modes (models/reference.py) are in the default suite through test_dpo_cli
def test_reference_modes_agree(tiny_model, tmp_path):
    """Cached and frozen copy give the same trajectory; so do a LoRA run's cached and adapter-off references."""
    cfg = _config(tmp_path, tiny_model, max_steps=3)
    runs = {}
    for name, args in {"cached": [], "copy": ["reference.mode=copy"], "lora-cached": ["model.lora.r=4"],
                       "lora-adapter": ["model.lora.r=4", "reference.mode=adapter"]}.items():
        runs[name] = tmp_path / name
        main(["kto", "--config", str(cfg), f"train.output_dir={runs[name]}", *args])
    m = {k: _metrics(v) for k, v in runs.items()}
    for a, b in (("cached", "copy"), ("lora-cached", "lora-adapter")):
        for key in ("loss", "kl", "grad_norm", "eval_loss", "eval_kl"):
            assert [r.get(key) for r in m[a]] == pytest.approx([r.get(key) for r in m[b]], abs=1e-4), (a, key)
    assert [r["loss"] for r in m["lora-cached"]] != pytest.approx([r["loss"] for r in m["cached"]], abs=1e-5)


def test_reference_cache_is_reused(tiny_model, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model, max_steps=2)
    main(["kto", "--config", str(cfg), f"train.output_dir={tmp_path / 'a'}"])
    first = capsys.readouterr().out
    main(["kto", "--config", str(cfg), f"train.output_dir={tmp_path / 'b'}"])
    second = capsys.readouterr().out
    assert "reference log-probs: computing" in first
    assert "reference log-probs: reused cache" in second and "computing" not in second
    for key in ("loss", "kl", "eval_loss"):
        assert [r.get(key) for r in _metrics(tmp_path / "a")] == [r.get(key) for r in _metrics(tmp_path / "b")]


def test_accumulation_matches_one_big_micro_batch(tiny_model, tmp_path):
    """batch 4 as 4 micro-batches of 1 == 1 micro-batch of 4: one z0 per optimizer step, the loss over the global
    batch (the paper and TRL take z0 per micro-batch, so there the two would differ)."""
    cfg = _config(tmp_path, tiny_model, max_steps=3)
    for name, mb in (("acc", 1), ("big", 4)):
        main(["kto", "--config", str(cfg), f"train.output_dir={tmp_path / name}", f"train.micro_batch_size={mb}"])
    a, b = _metrics(tmp_path / "acc"), _metrics(tmp_path / "big")
    for key in ("loss", "kl", "grad_norm", "rewards/margins", "eval_loss", "eval_kl"):
        # z0 is a mean of differences of ~600-nat float32 sums: its rounding is ~1e-5 (it is 1.5e-5 at step 1,
        # where it is 0 in exact arithmetic)
        tolerance = 1e-4 if "kl" in key else 1e-5
        assert [r.get(key) for r in a] == pytest.approx([r.get(key) for r in b], abs=tolerance), key


def _cli(*args):
    return [sys.executable, "-m", "alignkit.cli", *args]


@pytest.mark.slow  # ~22 s; the training loop's two-process path is in the default suite through test_dpo_cli
def test_two_processes_match_one(tiny_model, tmp_path):
    """DDP over gloo, 2 processes x 1 micro-batch of 2 == 1 process x 2 micro-batches of 2: z0 is summed over
    the processes (each holds half the step's mismatched pairs)."""
    cfg = _config(tmp_path, tiny_model, max_steps=3)
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("kto", "--config", str(cfg), f"train.output_dir={one}"), check=True, cwd=ROOT, env=env,
                   capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                "-m", "alignkit.cli", "kto", "--config", str(cfg), f"train.output_dir={two}"]
    proc = subprocess.run(torchrun, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss", "kl", "rewards/margins", "grad_norm", "eval_loss", "eval_kl", "eval_rewards/margins"):
        tolerance = 1e-4 if "kl" in key else 1e-5  # as in test_accumulation_matches_one_big_micro_batch
        assert [r.get(key) for r in b] == pytest.approx([r.get(key) for r in a], abs=tolerance), key


@pytest.mark.slow  # ~25 s; the loop's resume is in the default suite through test_dpo_cli
def test_resume_after_sigkill_matches_uninterrupted(tiny_model, tmp_path):
    cfg = _config(tmp_path, tiny_model, max_steps=14, save_every=3, keep_last=2, eval_every=5)
    a, b = killed_and_resumed("kto", cfg, tmp_path / "full", tmp_path / "killed", 8, 14)
    assert [r["step"] for r in b] == list(range(1, 15))  # one trajectory, no duplicated steps
    for key in ("loss", "kl", "rewards/margins", "eval_loss", "eval_rewards/margins"):
        assert [r.get(key) for r in b] == pytest.approx([r.get(key) for r in a], abs=1e-6), key


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=1", r"train\.batch_size must be at least 2 for loss\.type kto"),
    ("reference.mode=precomputed", r"reference\.logps / mode 'precomputed' are dpo's"),
    ("reference.mode=adapter", r"reference\.mode 'adapter' needs model\.lora"),
    ("train.desirable_weight=2", r"train\.desirable_weight: unknown key \(a TRL / transformers name: alignkit's is "
                                 r"loss\.desirable_weight"),
    ("loss.type=sigmoid", r"loss\.type"),
])
def test_config_errors_before_any_model_loads(override, message):
    from alignkit.config import KTOConfig, load_config

    with pytest.raises(AlignkitError, match=message):
        load_config(KTOConfig, None, ["data.train=a.jsonl", "train.micro_batch_size=1", override])


def test_shipped_config_validates():
    from alignkit.config import KTOConfig, load_config

    path = ROOT / "configs" / "kto" / "smollm2-arith.yaml"
    assert path.read_text().splitlines()[0].startswith("# alignkit kto --config configs/kto/smollm2-arith.yaml")
    cfg = load_config(KTOConfig, str(path), [])
    assert cfg.model.lora is not None and cfg.data.train == "data/arith/train.jsonl"
