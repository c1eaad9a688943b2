"""`alignkit sft`: assistant-only masks under the token-boundary contract, and the loss through the real CLI."""

import json

import pytest
import torch

from alignkit import AlignkitError
from alignkit.cli import main
from alignkit.data.chat import TokenizeSFT

CONVO = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5.\nAnswer: 5"},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "Answer: 8"},
]}


def _spans(mask):
    spans, start = [], None
    for i, m in enumerate(mask + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_every_assistant_turn_and_nothing_else(tokenizer):
    ids, mask = TokenizeSFT(tokenizer)(CONVO, "d.jsonl", 1)
    spans = _spans(mask)
    assert [tokenizer.decode(ids[a:b]) for a, b in spans] == ["2 + 3 = 5.\nAnswer: 5<|im_end|>", "Answer: 8<|im_end|>"]
    # The row is the rendered conversation up to its last end-of-turn token (what the template adds after it is
    # not part of any turn), and each turn tokenizes as the model would emit it.
    rendered = tokenizer.apply_chat_template(CONVO["messages"], tokenize=False)
    assert tokenizer.decode(ids) == rendered[: rendered.rfind("<|im_end|>") + len("<|im_end|>")]
    for (a, b), turn in zip(spans, ("2 + 3 = 5.\nAnswer: 5", "Answer: 8")):
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert ids[a:b] == tokenizer(turn, add_special_tokens=False)["input_ids"] + [end]


def test_prompt_completion_trains_the_completion_only(tokenizer):
    row = {"prompt": CONVO["messages"][:4], "completion": "Answer: 8"}
    ids, mask = TokenizeSFT(tokenizer)(row, "d.jsonl", 1)
    ((a, b),) = _spans(mask)
    assert tokenizer.decode(ids[a:b]) == "Answer: 8<|im_end|>"
    ids, mask = TokenizeSFT(tokenizer)({"prompt": "Q: 2+2\nA:", "completion": " 4"}, "d.jsonl", 1)
    ((a, b),) = _spans(mask)
    assert ids[a:b] == tokenizer(" 4", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_a_preference_row_trains_on_chosen(tokenizer):
    row = {"prompt": [{"role": "user", "content": "2 + 2?"}], "chosen": [{"role": "assistant", "content": "Answer: 4"}],
           "rejected": [{"role": "assistant", "content": "Answer: 5"}]}
    ids, mask = TokenizeSFT(tokenizer)(row, "d.jsonl", 1)
    ((a, b),) = _spans(mask)
    assert tokenizer.decode(ids[a:b]) == "Answer: 4<|im_end|>"


@pytest.mark.parametrize("row, message", [
    ({"text": "x"}, "d.jsonl: row 3: field 'messages': missing"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "d.jsonl: row 3: field 'messages': no assistant message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "d.jsonl: row 3: field 'messages[0].role': unknown role"),
])
def test_bad_rows_name_file_row_and_field(tokenizer, row, message):
    with pytest.raises(AlignkitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TokenizeSFT(tokenizer)(row, "d.jsonl", 3)


def test_sft_cli_loss_is_the_token_mean_nll_and_falls(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"{a} + {b} = {a + b}.\nAnswer: {a + b}"}]}
            for a in range(2, 6) for b in range(3, 5)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {data}\n"
                   f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 8\n  micro_batch_size: 4\n  lr: 1.0e-2\n"
                   "  max_steps: 6\n  scheduler: constant\n  max_grad_norm: null\n")
    main(["sft", "--config", str(cfg)])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5

    # Step 1's logged loss = mean NLL over the assistant tokens of all 8 rows, computed directly.
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    total, count = 0.0, 0
    for r in rows:
        ids, mask = TokenizeSFT(tok)(r, "x", 1)
        with torch.no_grad():
            logps = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        for t in range(1, len(ids)):
            if mask[t]:
                total -= float(logps[t - 1, ids[t]])
                count += 1
    assert metrics[0]["loss"] == pytest.approx(total / count, rel=1e-4)
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_packing_gives_the_unpacked_losses(tiny_model, tmp_path):
    """Rows of different lengths packed end to end (positions restarting, attention kept inside each row) give
    the same loss and gradient norm at every step as right-padded rows."""
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?" + " Please." * (a % 3)},
                          {"role": "assistant", "content": f"{a} + {b} = {a + b}." + " Done." * (b % 4)}]}
            for a in range(2, 6) for b in range(3, 7)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for packing in (False, True):
        cfg = tmp_path / f"sft-{packing}.yaml"
        cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {data}\n  max_length: 96\n"
                       f"  packing: {str(packing).lower()}\ntrain:\n  output_dir: {tmp_path / str(packing)}\n"
                       "  batch_size: 8\n  micro_batch_size: 8\n  lr: 1.0e-2\n  max_steps: 3\n  scheduler: constant\n")
        main(["sft", "--config", str(cfg)])
        runs[packing] = [json.loads(line) for line in (tmp_path / str(packing) / "metrics.jsonl").read_text().splitlines()]
    for plain, packed in zip(runs[False], runs[True], strict=True):
        assert packed["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert packed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)


def test_pack_layout():
    from alignkit.algos.sft import _pack

    rows = [([1, 2, 3], [False, True, True]), ([4, 5], [True, True]), ([6, 7, 8, 9], [False, False, True, True])]
    input_ids, mask, positions = _pack(rows, pad_id=0, max_length=6)
    # First-fit decreasing: [6 7 8 9] then [1 2 3] does not fit beside it; [4 5] joins the first bin.
    assert input_ids.tolist() == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 0, 0, 0]]
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5]]
    # A row's first token is never trained: nothing inside its own row predicts it.
    assert mask.tolist() == [[False, False, True, True, False, True], [False, True, True, False, False, False]]


def test_sft_from_a_tasks_solver(tiny_model, tokenizer, tmp_path, capsys):
    """`data.task`: the rows are the task's questions with its solver's worked solutions as completions, token for
    token what the same rows in a file give; through the CLI the run trains on them. Neither or both of train and
    task, or a task without a solver, is an error naming the key."""
    from alignkit.algos.sft import load_rows, solver_rows
    from alignkit.config import TaskConfig
    from alignkit.tasks import make_task, task_items

    task_cfg = TaskConfig(name="addition-2d", split="train", limit=8, offset=3)
    task = make_task(task_cfg)
    file = tmp_path / "solutions.jsonl"
    file.write_text("".join(json.dumps({"prompt": i.messages(), "completion": [
        {"role": "assistant", "content": task.solve(i)}]}) + "\n" for i in task_items(task, task_cfg)))
    from_task = load_rows("task", tokenizer, 512, True, "train", solver_rows(task_cfg))
    assert from_task == load_rows(str(file), tokenizer, 512, True, "train") and len(from_task) == 8
    ids, mask = from_task[0]
    item = task_items(task, task_cfg)[0]
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == task.solve(item) + "<|im_end|>"

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  task: {{name: addition-2d, limit: 8}}\n"
                   f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 4\n  micro_batch_size: 4\n  max_steps: 2\n")
    main(["sft", "--config", str(cfg)])
    assert "data: 8 training rows" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    for data, message in (("  max_length: 64\n", "data: give train (a file of rows) or task"),
                          (f"  train: {file}\n  task: {{name: addition-2d}}\n", "not both"),
                          (f"  task: {{file: {qa}}}\n", "has no solver")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"model:\n  path: {tiny_model}\ndata:\n{data}"
                       f"train:\n  output_dir: {tmp_path / 'bad'}\n  max_steps: 1\n")
        with pytest.raises(SystemExit):
            main(["sft", "--config", str(bad)])
        assert message in capsys.readouterr().err
