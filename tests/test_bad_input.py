"""Bad input: a one-line error naming file, row and field; non-zero exit; no traceback."""

import subprocess
import sys

import pytest

from alignkit.cli import main
from conftest import ROOT, write_jsonl

GOOD = {"prompt": [{"role": "user", "content": "1+1?"}], "chosen": "2", "rejected": "3"}


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _logps(tmp_path, tiny_model, rows, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    return _run(["logps", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "o.jsonl")],
                capsys), str(data)


@pytest.mark.parametrize(
    "bad, expected",
    [
        ('{"prompt": "x", "chosen": "y", "rejected": ', r"row 2: malformed JSON"),
        ({"prompt": "x", "chosen": "y"}, r"row 2: field 'rejected': missing"),
        ({"prompt": "x", "chosen": "", "rejected": "z"}, r"row 2: field 'chosen': empty response"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": "same", "rejected": "same"},
         r"row 2: field 'rejected': identical to 'chosen'"),
        ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, r"row 2: field 'prompt\[0\]'"),
        ({"prompt": "x", "chosen": ["not", "a string"], "rejected": "b"}, r"row 2: field 'chosen'"),
    ],
    ids=["malformed-json", "missing-field", "empty-response", "identical", "bad-message", "wrong-type"],
)
def test_bad_rows(bad, expected, tmp_path, tiny_model, capsys):
    err, path = _logps(tmp_path, tiny_model, [GOOD, bad], capsys)
    assert err.startswith(f"error: {path}: ")
    assert __import__("re").search(expected, err), err


def test_prompt_not_a_prefix(tmp_path, tiny_model, capsys):
    """A template that renders the prompt differently once a reply follows."""
    from transformers import AutoTokenizer

    model_dir = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_model, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant (thinking):{% endif %}")
    tok.save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    err = _run(["logps", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert f"{data}: row 1: field 'chosen': the rendered prompt is not a prefix" in err


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: x.jsonl\ntrain:\n  lr: 1e-5\n  learning_rat: 3\n")
    err = _run(["dpo", "--config", str(cfg)], capsys)
    assert f"{cfg}: invalid config: train.learning_rat: unknown key" in err


def test_wrong_type_in_override(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: x.jsonl\n")
    err = _run(["dpo", "--config", str(cfg), "train.batch_size=many"], capsys)
    assert "train.batch_size" in err and "many" in err


def test_missing_model_path(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    err = _run(["logps", "--model", str(tmp_path / "nope"), "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert f"model '{tmp_path / 'nope'}': not found" in err


def test_missing_model_in_dpo_fails_before_training(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {tmp_path / 'missing-model'}\ndata:\n  train: {data}\n")
    err = _run(["dpo", "--config", str(cfg)], capsys)
    assert "missing-model': not found" in err


def test_real_cli_process_prints_one_line(tmp_path):
    """Through the installed console entry point: exit code 2, one line on stderr, no traceback."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: x.jsonl\nloss:\n  bta: 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "dpo", "--config", str(cfg)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {cfg}: invalid config: loss.bta: unknown key"
