"""`alignkit eval mc` and `eval perplexity` on the tiny model, against a plain forward + log_softmax + gather."""

import json
import math
import re

import pytest
import torch

from alignkit.cli import main
from conftest import ROOT, write_jsonl

MMLU = ROOT / "data" / "eval" / "mmlu_sample.jsonl"


def _model(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def _continuation_logp(model, prompt_ids, choice_ids):
    """Sum of log p(choice token | everything before it), from one full forward over prompt + choice."""
    ids = torch.tensor([prompt_ids + choice_ids])
    logps = model(input_ids=ids).logits[0].float().log_softmax(-1)  # (T, V)
    positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)  # the token at t + 1 is predicted at t
    return float(logps[positions, ids[0, positions + 1]].sum())


def test_mc_scores_match_an_independent_log_likelihood(tiny_model, tmp_path):
    out = tmp_path / "mc"
    main(["eval", "mc", "--model", str(tiny_model), "--file", str(MMLU), "--batch-size", "7", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    model, tok = _model(tiny_model)
    questions = [json.loads(line) for line in MMLU.read_text().splitlines()]
    assert len(rows) == len(questions) == 20
    correct = correct_norm = 0
    for row, q in zip(rows, questions):
        prompt_ids = tok(f"Question: {q['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
        choice_ids = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in q["choices"]]
        expected = [_continuation_logp(model, prompt_ids, c) for c in choice_ids]
        assert row["logps"] == pytest.approx(expected, abs=1e-4)
        assert row["logps_per_token"] == pytest.approx([s / len(c) for s, c in zip(expected, choice_ids)], abs=1e-4)
        correct += "ABCD"[max(range(4), key=expected.__getitem__)] == q["answer"]
        correct_norm += "ABCD"[max(range(4), key=lambda i: expected[i] / len(choice_ids[i]))] == q["answer"]
    assert metrics["accuracy"] == correct / 20 and metrics["accuracy_norm"] == correct_norm / 20


def test_mc_csv_and_hub_layouts_read_the_same(tiny_model, tmp_path):
    """The shipped CSV (columns A-D, letter answers) and a hub-style file (choices list, 0-based index) give the
    same scores as the JSONL."""
    questions = [json.loads(line) for line in MMLU.read_text().splitlines()][:5]
    hub = write_jsonl(tmp_path / "hub.jsonl", [{**q, "answer": "ABCD".index(q["answer"])} for q in questions])
    scores = []
    for i, file in enumerate((MMLU, ROOT / "data" / "eval" / "mmlu_sample.csv", hub)):
        out = tmp_path / f"out{i}"
        main(["eval", "mc", "--model", str(tiny_model), "--file", str(file), "--limit", "5", "--out", str(out)])
        lines = (out / "results.jsonl").read_text().splitlines()
        scores.append([x for line in lines for x in json.loads(line)["logps"]])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and scores[0] == pytest.approx(scores[2], abs=1e-6)


def test_mc_chinese_question_in_ceval_layout(tiny_model, tmp_path):
    """C-Eval CSV (id,question,A,B,C,D,answer): a Chinese question is asked as "问题：...\\n答案：" and each choice
    is scored without a leading space."""
    data = tmp_path / "ceval.csv"
    data.write_text("id,question,A,B,C,D,answer\n0,一周有几天？,五天,六天,七天,八天,C\n", encoding="utf-8")
    out = tmp_path / "out"
    main(["eval", "mc", "--model", str(tiny_model), "--file", str(data), "--out", str(out)])
    row = json.loads((out / "results.jsonl").read_text())
    model, tok = _model(tiny_model)
    prompt_ids = tok("问题：一周有几天？\n答案：", add_special_tokens=False)["input_ids"]
    expected = [_continuation_logp(model, prompt_ids, tok(c, add_special_tokens=False)["input_ids"])
                for c in ("五天", "六天", "七天", "八天")]
    assert row["answer"] == "C" and row["logps"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("row, expected", [
    ({"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "E"}, r"row 2: field 'answer'"),
    ({"question": "q", "A": "1", "B": "2", "C": "3", "answer": "A"}, r"row 2: field 'D': missing"),
    ({"question": "q", "choices": "abcd", "answer": "A"}, r"row 2: field 'choices'"),
    ({"A": "1", "B": "2", "C": "3", "D": "4", "answer": "A"}, r"row 2: field 'question': missing"),
])
def test_bad_mc_rows_are_one_line_errors(tiny_model, tmp_path, capsys, row, expected):
    good = {"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "B"}
    data = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(SystemExit) as e:
        main(["eval", "mc", "--model", str(tiny_model), "--file", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and re.search(r"bad\.jsonl: " + expected, err), err


@torch.no_grad()
def test_perplexity_matches_an_independent_computation(tiny_model, tmp_path):
    """Windows of 16 tokens every 8: token t is scored by the first window [8k, 8k + 16) that reaches past it,
    with the window's own tokens before t as context; the text's first token is never scored."""
    text = ("The river bends twice before it reaches the sea, and the town grew up on the inside of the second "
            "bend, where the water is slow and the ground is flat.")
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "ppl"
    main(["eval", "perplexity", "--model", str(tiny_model), "--file", str(path), "--max-length", "16", "--stride", "8",
          "--out", str(out)])
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    model, tok = _model(tiny_model)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 24  # several windows
    nll = 0.0
    for t in range(1, len(ids)):
        begin = next(b for b in range(0, len(ids), 8) if b + 16 > t)
        logits = model(input_ids=torch.tensor([ids[begin:min(begin + 16, len(ids))]])).logits[0].float()
        nll -= float(logits[t - begin - 1].log_softmax(-1)[ids[t]])
    assert metrics["tokens"] == len(ids) - 1
    assert metrics["nll_per_token"] == pytest.approx(nll / (len(ids) - 1), abs=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)


def test_perplexity_bad_input(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "perplexity", "--model", str(tiny_model), "--file", str(tmp_path / "missing.txt"),
              "--out", str(tmp_path)])
    assert e.value.code == 2 and "missing.txt: file not found" in capsys.readouterr().err
    path = tmp_path / "t.txt"
    path.write_text("some words of text here", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["eval", "perplexity", "--model", str(tiny_model), "--file", str(path), "--max-length", "4",
              "--stride", "8", "--out", str(tmp_path)])
    assert "--stride 8 is longer than --max-length 4" in capsys.readouterr().err
