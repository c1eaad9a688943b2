"""`data.eval` pointing at a saved DatasetDict is read from `data.eval_split` (default "test", TRL's
dataset_test_split), never from `data.split` (the training split): held-out metrics come from held-out rows."""

import json

import datasets
import pytest

from alignkit.cli import main
from conftest import ROOT

ROWS = [json.loads(line) for line in (ROOT / "data" / "arith" / "train.jsonl").read_text().splitlines()]


def _saved(tmp_path):
    """train: 8 rows; test: 4 other rows whose chosen/rejected are swapped, so a model scores them worse."""
    train = ROWS[:8]
    test = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in ROWS[8:12]]
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("command", ["dpo", "rm"])
def test_eval_is_read_from_the_eval_split(command, tiny_model, tmp_path):
    saved = _saved(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {saved}\n  eval: {saved}\n  max_length: 160\n"
                   "  max_prompt_length: 96\ntrain:\n  batch_size: 4\n  micro_batch_size: 2\n  max_steps: 2\n"
                   "  eval_batch_size: 8\n")
    out = tmp_path / command
    main([command, "--config", str(cfg), f"train.output_dir={out}"])
    printed = (out / "metrics.jsonl").read_text()
    assert "eval_loss" in printed
    # 4 held-out rows (the test split), not the 8 training rows: the eval count is visible in the data line
    with pytest.raises(SystemExit):  # a split the dataset lacks is an error naming the available ones
        main([command, "--config", str(cfg), f"train.output_dir={tmp_path / 'x'}", "data.eval_split=validation"])


def test_eval_split_rows_are_the_held_out_ones(tiny_model, tmp_path, capsys):
    saved = _saved(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {saved}\n  eval: {saved}\n  max_length: 160\n"
                   "  max_prompt_length: 96\ntrain:\n  batch_size: 4\n  micro_batch_size: 2\n  max_steps: 1\n")
    main(["dpo", "--config", str(cfg), f"train.output_dir={tmp_path / 'run'}"])
    assert "data: 8 training pairs, 4 held-out pairs" in capsys.readouterr().out
    sft = tmp_path / "sft.yaml"
    sft.write_text(cfg.read_text().replace("  max_prompt_length: 96\n", ""))
    main(["sft", "--config", str(sft), f"train.output_dir={tmp_path / 'sft'}"])
    assert "data: 8 training rows, 4 held-out rows" in capsys.readouterr().out
